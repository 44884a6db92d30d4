//! kNN-LM and kNN-MT engine.

pub mod mt_metrics;
