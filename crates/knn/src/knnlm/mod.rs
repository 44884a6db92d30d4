//! kNN-LM (Khandelwal et al. 2020): nearest-neighbour next-token distributions mixed into a causal LM.

pub mod chunks;
pub mod corpus;
pub mod datastore;
pub mod model;
pub mod sweep;

pub use crate::datastore::store;
pub use crate::{error, mixture};
pub use datastore::{build, BuildOptions, BuildOutcome, Datastore, DatastoreExpect, IndexSpec};
pub use error::{KnnError, Result};
pub use model::{KnnLm, KnnParams, ScoringOptions};
