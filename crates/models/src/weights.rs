//! Safetensors loading shared by every HF-style model directory: clear errors, name prefixes,
//! trainable copies, atomic saving and file hashes.

use crate::{ModelError, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A memory-mapped safetensors file that remembers its path for error messages.
pub struct Safetensors {
    path: PathBuf,
    inner: MmapedSafetensors,
}

impl Safetensors {
    /// Maps `path`: a missing/unreadable file is `Io`, a corrupt header is `Format`.
    pub fn open(path: &Path) -> Result<Self> {
        File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: the file is mapped read-only; like every mmap user we rely on nobody
        // truncating the weights file while it is in use.
        let inner = unsafe { MmapedSafetensors::new(path) }
            .map_err(|e| ModelError::format(path, format!("not a valid safetensors file: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            inner,
        })
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All tensor names in the file.
    pub fn names(&self) -> Vec<String> {
        self.inner.tensors().into_iter().map(|(n, _)| n).collect()
    }

    /// Shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.inner.get(name).ok().map(|v| v.shape().to_vec())
    }

    /// The first of `candidates` (e.g. `["", "bert."]`) such that `candidate + probe` is a tensor.
    pub fn detect_prefix(&self, probe: &str, candidates: &[&str]) -> Option<String> {
        candidates
            .iter()
            .find(|p| self.shape(&format!("{p}{probe}")).is_some())
            .map(|p| p.to_string())
    }

    /// Tensor `name` resolved under `prefix` (then without it), checked against `shape`.
    pub fn load(&self, prefix: &str, name: &str, shape: &Shape, device: &Device) -> Result<Tensor> {
        self.load_checked(prefix, name, shape, DType::F32, device)
            .map_err(|msg| ModelError::format(&self.path, msg))
    }

    /// A `VarBuilder` reading from this file as `dtype`; names resolve as in
    /// [`Safetensors::load`], and a missing or mis-shaped tensor is reported with its name.
    pub fn var_builder(self, prefix: &str, dtype: DType, device: &Device) -> VarBuilder<'static> {
        let backend = PrefixedBackend {
            inner: Arc::new(self),
            prefix: prefix.to_string(),
        };
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
    }

    /// Overwrites every variable of `varmap` with the file's tensor of the same name (resolved
    /// under `prefix`); variables for which `may_be_absent` holds keep their initial values.
    pub fn load_into_varmap(
        &self,
        varmap: &VarMap,
        prefix: &str,
        may_be_absent: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let vars = varmap.data().lock().map_err(|_| {
            ModelError::Invalid("variable map poisoned by a panicking thread".into())
        })?;
        for (name, var) in vars.iter() {
            if self.resolve(prefix, name).is_none() && may_be_absent(name) {
                continue;
            }
            let t = self.load(prefix, name, var.shape(), var.device())?;
            var.set(&t)?;
        }
        Ok(())
    }

    /// `prefix + name` if that tensor exists, else `name` if it exists.
    fn resolve(&self, prefix: &str, name: &str) -> Option<String> {
        let prefixed = format!("{prefix}{name}");
        if self.shape(&prefixed).is_some() {
            Some(prefixed)
        } else {
            self.shape(name).map(|_| name.to_string())
        }
    }

    fn load_checked(
        &self,
        prefix: &str,
        name: &str,
        shape: &Shape,
        dtype: DType,
        device: &Device,
    ) -> std::result::Result<Tensor, String> {
        let full = self
            .resolve(prefix, name)
            .ok_or_else(|| format!("missing tensor `{prefix}{name}`"))?;
        let t = self
            .inner
            .load(&full, device)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(|e| format!("tensor `{full}`: {e}"))?;
        if t.shape() != shape {
            return Err(format!(
                "tensor `{full}` has shape {:?}, expected {:?}",
                t.dims(),
                shape.dims()
            ));
        }
        Ok(t)
    }
}

struct PrefixedBackend {
    inner: Arc<Safetensors>,
    prefix: String,
}

impl SimpleBackend for PrefixedBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.inner
            .load_checked(&self.prefix, name, &s, dtype, dev)
            .map_err(|msg| candle_core::Error::Msg(msg).bt())
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let full = self.inner.resolve(&self.prefix, name).ok_or_else(|| {
            candle_core::Error::Msg(format!("missing tensor `{}{name}`", self.prefix)).bt()
        })?;
        self.inner.inner.load(&full, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.resolve(&self.prefix, name).is_some()
    }
}

/// Writes `tensors` as a safetensors file at `path` via a temporary file, fsync and rename.
pub fn save_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let bytes = safetensors::serialize(tensors, None)
        .map_err(|e| ModelError::format(path, format!("cannot serialize tensors: {e}")))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` via `<path>.tmp`, fsync and rename, so readers never see a torn file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| ModelError::io(&tmp, e))?;
    f.sync_all().map_err(|e| ModelError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
}
