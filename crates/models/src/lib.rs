//! BERT encoders, Llama-family causal LMs and Marian translation models on candle, loaded from
//! HF directories, GGUF files and Marian binaries.

pub mod bert;
pub mod bpe;
pub mod device;
pub mod error;
pub mod fast_ops;
pub mod gguf;
pub mod hash;
pub mod llama;
pub mod marian;
pub mod weights;

pub use device::parse_device;
pub use error::{ModelError, Result};
