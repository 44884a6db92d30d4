//! A kNN-MT datastore opened for decoding: the datastore, the mixing parameters it was tuned
//! with (or the caller's), its adaptive gate when asked for, and the search knobs.

use super::datastore::{MtDatastore, MtExpect};
use super::decode::{KnnMtParams, Retrieval};
use super::gate::Gate;
use crate::datastore::{read_json, write_json};
use crate::error::Result;
use ralm_index::SearchParams;
use std::path::Path;

/// File in the datastore directory holding the parameters `ralm knnmt eval` tuned.
pub const TUNED_FILE: &str = "tuned.json";

/// Parameters used when neither the caller nor `tuned.json` gives a value.
pub const DEFAULT_PARAMS: KnnMtParams = KnnMtParams {
    k: 8,
    lambda: 0.5,
    temperature: 10.0,
};

/// Values that replace the datastore's tuned ones (`None` keeps the tuned value).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ParamOverrides {
    pub k: Option<usize>,
    pub lambda: Option<f32>,
    pub temperature: Option<f32>,
}

impl ParamOverrides {
    /// Whether any value is given.
    pub fn any(&self) -> bool {
        self.k.is_some() || self.lambda.is_some() || self.temperature.is_some()
    }
}

/// The tuned parameters saved in datastore `dir`, if any.
pub fn read_tuned(dir: &Path) -> Result<Option<KnnMtParams>> {
    read_json(&dir.join(TUNED_FILE))
}

/// Saves tuned parameters in datastore `dir` (atomically).
pub fn write_tuned(dir: &Path, params: &KnnMtParams) -> Result<()> {
    write_json(&dir.join(TUNED_FILE), params)
}

/// A datastore ready to mix into decoding, shared by any number of decoding runs.
pub struct MtMixer {
    datastore: MtDatastore,
    params: KnnMtParams,
    gate: Option<Gate>,
    search: SearchParams,
}

impl MtMixer {
    /// Opens datastore `dir` for the translation model in `model_dir` (another model's is
    /// refused). With `adaptive`, the gate trained there picks λ and its k and temperature are
    /// the base; otherwise `tuned.json` (else [`DEFAULT_PARAMS`]). `overrides` win over both.
    pub fn open(
        dir: &Path,
        model_dir: &Path,
        adaptive: bool,
        overrides: ParamOverrides,
        search: SearchParams,
    ) -> Result<Self> {
        let datastore = MtDatastore::open(dir, &MtExpect::of_model_dir(model_dir)?)?;
        let (gate, base) = if adaptive {
            let g = Gate::load(dir)?;
            let p = g.config().knn;
            (Some(g), p)
        } else {
            (None, read_tuned(dir)?.unwrap_or(DEFAULT_PARAMS))
        };
        let params = KnnMtParams {
            k: overrides.k.unwrap_or(base.k),
            lambda: overrides.lambda.unwrap_or(base.lambda),
            temperature: overrides.temperature.unwrap_or(base.temperature),
        };
        // Refuse bad parameters when opening, not at the first sentence.
        Retrieval::new(&datastore, params, search.clone(), gate.as_ref())?;
        Ok(Self {
            datastore,
            params,
            gate,
            search,
        })
    }

    /// A fresh retrieval state (counters at zero) for one decoding run.
    pub fn retrieval(&self) -> Result<Retrieval<'_>> {
        Retrieval::new(
            &self.datastore,
            self.params,
            self.search.clone(),
            self.gate.as_ref(),
        )
    }

    /// The datastore.
    pub fn datastore(&self) -> &MtDatastore {
        &self.datastore
    }

    /// The mixing parameters in use (λ is the gate's choice per step when adaptive).
    pub fn params(&self) -> KnnMtParams {
        self.params
    }

    /// Whether the gate picks λ.
    pub fn adaptive(&self) -> bool {
        self.gate.is_some()
    }
}
