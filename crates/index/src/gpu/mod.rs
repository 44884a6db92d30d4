//! Exact search on an NVIDIA GPU (feature `cuda`): keys live in GPU memory as f16; each query
//! batch is scored against each block of keys with one cuBLAS GEMM (f16 inputs, f32 accumulation
//! and output), a run-time compiled kernel keeps the top-k of every chunk of the score rows, and
//! the host merges the per-chunk candidates.
//!
//! The planning and merging live in `host` (plain Rust, unit-tested without a GPU); the CUDA
//! side in `index`.

mod host;
#[cfg(feature = "cuda")]
mod index;

#[cfg(feature = "cuda")]
pub use index::GpuFlatIndex;
