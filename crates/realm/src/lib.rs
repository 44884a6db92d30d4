//! REALM: retriever, reader, open-domain QA and pre-training.
//!
//! The model-free layer: dataset readers ([`data`]), REALM-style passage
//! chunking ([`passages`]), answer metrics ([`metrics`]) and a BM25 baseline ([`bm25`]).
//! On top: the dense retriever ([`retriever`]), QA index directories ([`qa_index`]), the
//! generative reader ([`generative`]), the extractive reader ([`reader`]), REALM fine-tuning of
//! the query tower and reader ([`finetune`]) and end-to-end question answering ([`ask`]).

pub mod ask;
pub mod bm25;
pub mod data;
pub mod error;
pub mod finetune;
mod fsutil;
pub mod generative;
pub mod metrics;
pub mod passages;
pub mod pretrain;
pub mod prior;
pub mod qa_index;
pub mod reader;
pub mod refresh;
pub mod retriever;
pub mod salient;
pub mod trainable;

pub use error::{RealmError, Result};
