//! The ralm HTTP service: retrieval and question answering over QA indexes, kNN-LM scoring and
//! streamed generation, translation; hot swap of indexes and datastores; batching of
//! concurrent requests into one model forward; limits, metrics and an OpenAPI document.

pub mod api;
pub mod batch;
pub mod client;
pub mod config;
pub mod error;
pub mod lm;
pub mod loadtest;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod state;

pub use config::ServerConfig;
pub use error::{ApiError, LoadError};
pub use routes::{router, serve};
pub use state::AppState;
