//! BERT encoders and Llama-family causal LMs on candle, loaded from HF directories and GGUF files.

pub mod error;
pub mod marian;

pub use error::{ModelError, Result};
