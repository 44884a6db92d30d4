//! kNN-LM (Khandelwal et al. 2020): nearest-neighbour next-token distributions mixed into a causal LM.

pub mod mixture;
pub mod sweep;
