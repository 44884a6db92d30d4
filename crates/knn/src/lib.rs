//! kNN-LM and kNN-MT: datastores of hidden states and nearest-neighbour next-token distributions.

pub mod datastore;
pub mod error;
pub mod knnlm;
pub mod knnmt;
pub mod mixture;
pub mod mt_metrics;

pub use error::{KnnError, Result};
