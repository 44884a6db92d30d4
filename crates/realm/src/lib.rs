//! REALM: retriever, reader, open-domain QA and pre-training.
//!
//! This first layer has no model dependency: dataset readers ([`data`]), REALM-style passage
//! chunking ([`passages`]), answer metrics ([`metrics`]) and a BM25 baseline ([`bm25`]).

pub mod bm25;
pub mod data;
pub mod error;
mod fsutil;
pub mod metrics;
pub mod passages;

pub use error::{RealmError, Result};
