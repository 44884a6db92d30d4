//! kNN-MT (Khandelwal et al. 2021): a datastore of decoder states over a parallel corpus searched
//! at every decoding step, with a fixed λ or an adaptive gate (Zheng et al. 2021).

pub mod datastore;
pub mod decode;
pub mod forced;
pub mod gate;
pub mod mixer;
pub mod pairs;
pub mod tune;

pub use datastore::{build, MtBuildOptions, MtDatastore, MtExpect, MtManifest};
pub use decode::{KnnMtParams, Retrieval};
pub use forced::{teacher_force, Forced, TokenPairs};
pub use gate::{Gate, GateConfig, GateExamples, TrainOptions};
pub use mixer::{MtMixer, ParamOverrides};
pub use pairs::Pairs;
