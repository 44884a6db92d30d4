//! Models: BERT encoders and Llama-family causal LMs.
