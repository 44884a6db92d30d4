//! BERT encoders and Llama-family causal LMs on candle, loaded from HF directories and GGUF files.

pub mod bert;
pub mod bpe;
pub mod error;
pub mod gguf;
pub mod hash;
pub mod llama;
pub mod weights;

pub use error::{ModelError, Result};
