//! A BERT body whose weights are trainable variables (a candle `VarMap`) plus a task head, with
//! its tokenizer: loaded from an HF BERT directory and saved back as one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use ralm_models::bert::checkpoint::{self as bert_files, CONFIG_FILE, WEIGHTS_FILE};
use ralm_models::bert::{load_tokenizer, BertConfig, BertModel, Mode, TokenBatch};
use ralm_models::weights::{save_safetensors, Safetensors};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenizers::{Encoding, Tokenizer};

use crate::error::{RealmError, Result};

/// A trainable BERT body and its tokenizer.
pub struct TrainableBert {
    bert: BertModel,
    varmap: VarMap,
    tokenizer: Tokenizer,
    /// The tokenizer file (`tokenizer.json` or `vocab.txt`), copied on save.
    tokenizer_path: PathBuf,
    device: Device,
}

impl TrainableBert {
    /// A body initialised as HF does (unseeded) and the head `head` builds from the same
    /// variables; `tokenizer_path` is the file `tokenizer` was loaded from.
    pub fn build<H>(
        config: &BertConfig,
        tokenizer: Tokenizer,
        tokenizer_path: PathBuf,
        device: &Device,
        head: impl FnOnce(VarBuilder) -> candle_core::Result<H>,
    ) -> Result<(Self, H)> {
        config.validate().map_err(RealmError::Invalid)?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let bert = BertModel::new(config, vb.clone())?;
        let head = head(vb)?;
        let body = Self {
            bert,
            varmap,
            tokenizer,
            tokenizer_path,
            device: device.clone(),
        };
        Ok((body, head))
    }

    /// Loads the HF BERT directory `dir` into trainable variables; head variables (names
    /// starting with `head_prefix`) are loaded when present and keep their initial values
    /// otherwise. Also returns whether the file had head tensors.
    pub fn load<H>(
        dir: &Path,
        device: &Device,
        head_prefix: Option<&str>,
        head: impl FnOnce(VarBuilder) -> candle_core::Result<H>,
    ) -> Result<(Self, H, bool)> {
        let config = BertConfig::from_file(&dir.join(CONFIG_FILE))?;
        let (tokenizer, tokenizer_path) = load_tokenizer(dir, config.max_position_embeddings)?;
        let (body, head) = Self::build(&config, tokenizer, tokenizer_path, device, head)?;
        let weights = Safetensors::open(&dir.join(WEIGHTS_FILE))?;
        let probe = "embeddings.word_embeddings.weight";
        let prefix = weights
            .detect_prefix(probe, &["", bert_files::BODY_PREFIX])
            .ok_or_else(|| RealmError::format(weights.path(), format!("missing `{probe}`")))?;
        let is_head = |name: &str| head_prefix.is_some_and(|h| name.starts_with(h));
        let head_loaded = weights.names().iter().any(|n| is_head(n));
        weights.load_into_varmap(&body.varmap, &prefix, is_head)?;
        Ok((body, head, head_loaded))
    }

    /// Re-draws, from N(0, initializer_range) with `seed`, every variable of two or more
    /// dimensions whose name satisfies `select`; biases and norms keep their values.
    pub fn reinit(&self, seed: u64, select: impl Fn(&str) -> bool) -> Result<()> {
        let std = self.bert.config().initializer_range;
        let vars = self.varmap.data().lock().map_err(|_| poisoned())?;
        let mut names: Vec<&String> = vars.keys().filter(|n| select(n)).collect();
        names.sort();
        let mut rng = StdRng::seed_from_u64(seed);
        for name in names {
            let var = &vars[name];
            if var.rank() < 2 {
                continue;
            }
            let values: Vec<f32> = (0..var.elem_count())
                .map(|_| (std * standard_normal(&mut rng)) as f32)
                .collect();
            var.set(&Tensor::from_vec(values, var.shape(), &self.device)?)?;
        }
        Ok(())
    }

    /// The BERT body.
    pub fn bert(&self) -> &BertModel {
        &self.bert
    }

    /// All trainable variables (body and head).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The tokenizer (truncating at the model's maximum length).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Mutable access to the tokenizer, e.g. to set a shorter truncation.
    pub fn tokenizer_mut(&mut self) -> &mut Tokenizer {
        &mut self.tokenizer
    }

    /// The device tensors live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Last hidden states `[b, t, h]` and the mask `[b, t]` for padded `encodings`.
    pub fn hidden_states(&self, encodings: &[&Encoding], mode: Mode) -> Result<(Tensor, Tensor)> {
        let batch = TokenBatch::new(encodings, self.bert.config().pad_token_id, &self.device)?;
        self.hidden_states_of(&batch, mode)
    }

    /// Last hidden states `[b, t, h]` and the mask `[b, t]` of a padded batch.
    pub fn hidden_states_of(&self, batch: &TokenBatch, mode: Mode) -> Result<(Tensor, Tensor)> {
        let hidden = self
            .bert
            .forward(&batch.ids, &batch.type_ids, &batch.mask, mode)?;
        Ok((hidden, batch.mask.clone()))
    }

    /// Writes `dir` as an HF BERT directory: `config.json`, `model.safetensors` (body tensors
    /// without prefix, head tensors under their own names) and the tokenizer file.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| RealmError::io(dir, e))?;
        self.bert.config().save(&dir.join(CONFIG_FILE))?;
        save_safetensors(&dir.join(WEIGHTS_FILE), &self.tensors()?)?;
        let name = self
            .tokenizer_path
            .file_name()
            .ok_or_else(|| RealmError::Invalid("tokenizer path has no file name".into()))?;
        let bytes = std::fs::read(&self.tokenizer_path)
            .map_err(|e| RealmError::io(&self.tokenizer_path, e))?;
        ralm_models::weights::write_atomic(&dir.join(name), &bytes)?;
        Ok(())
    }

    /// Every variable by name.
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        let vars = self.varmap.data().lock().map_err(|_| poisoned())?;
        Ok(vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect())
    }
}

fn poisoned() -> RealmError {
    RealmError::Invalid("variable map poisoned by a panicking thread".into())
}

/// A standard normal draw (Box–Muller).
fn standard_normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
