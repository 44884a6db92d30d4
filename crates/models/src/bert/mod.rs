//! BERT: config, tokenizer, transformer body, pooling, MLM head and sentence encoder.

pub mod checkpoint;
pub mod config;
pub mod encoder;
pub mod mlm;
pub mod model;
pub mod nn;
pub mod pooling;
pub mod tokenizer;

pub use config::{BertConfig, HiddenAct};
pub use encoder::{BertEncoder, EncoderOptions};
pub use mlm::{BertForMaskedLM, MlmHead};
pub use model::BertModel;
pub use nn::Mode;
pub use pooling::{l2_normalize, Pooling};
pub use tokenizer::{load_tokenizer, TokenBatch};
