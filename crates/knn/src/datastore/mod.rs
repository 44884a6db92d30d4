//! Datastore machinery shared by kNN-LM and kNN-MT: chunk files of (key, value) rows, the index
//! built over them, the opened key/value store, and JSON manifests written atomically.

pub mod build;
pub mod kv;
pub mod store;

pub use kv::{
    differing_fields, read_json, require_equal, write_json, IndexSpec, KeyValues, Layout,
    Neighbours,
};
