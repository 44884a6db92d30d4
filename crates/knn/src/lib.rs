//! kNN-LM and kNN-MT: datastores of hidden states and nearest-neighbour next-token distributions.

pub mod knnlm;
pub mod mt_metrics;
