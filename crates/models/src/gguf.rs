//! GGUF files: metadata look-ups and tensors (quantized or dequantized) with errors naming the file.

use crate::{ModelError, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{QStorage, QTensor};
use candle_core::{Device, Tensor};
use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};

/// An open GGUF file: its parsed header and a handle to read tensors from.
pub struct GgufFile {
    path: PathBuf,
    file: File,
    content: Content,
}

impl GgufFile {
    /// Opens `path` and parses its header (metadata and tensor table).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let content = Content::read(&mut &file)
            .map_err(|e| ModelError::format(path, format!("not a readable GGUF file: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            content,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value, or `None` when the key is absent.
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn required(&self, key: &str) -> Result<&Value> {
        self.value(key)
            .ok_or_else(|| ModelError::format(&self.path, format!("missing metadata key `{key}`")))
    }

    fn bad_value(&self, key: &str, e: candle_core::Error) -> ModelError {
        ModelError::format(&self.path, format!("metadata key `{key}`: {e}"))
    }

    /// A required unsigned integer (any integer width) as `usize`.
    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self.required(key)?;
        let n = match v {
            Value::U8(_) | Value::U16(_) | Value::U32(_) => v.to_u32().map(u64::from),
            Value::I8(_) | Value::I16(_) | Value::I32(_) => v
                .to_i32()
                .and_then(|x| u64::try_from(x).map_err(candle_core::Error::wrap)),
            _ => v.to_u64(),
        };
        let n = n.map_err(|e| self.bad_value(key, e))?;
        usize::try_from(n).map_err(|e| self.bad_value(key, candle_core::Error::wrap(e)))
    }

    /// An optional unsigned integer as `usize`.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.value(key) {
            None => Ok(None),
            Some(_) => self.usize(key).map(Some),
        }
    }

    /// An optional float (f32 or f64).
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(v) => v
                .to_f32()
                .map(|x| Some(f64::from(x)))
                .map_err(|e| self.bad_value(key, e)),
        }
    }

    /// A required string.
    pub fn string(&self, key: &str) -> Result<&str> {
        let v = self.required(key)?;
        v.to_string()
            .map(String::as_str)
            .map_err(|e| self.bad_value(key, e))
    }

    /// A required array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>> {
        let arr = self
            .required(key)?
            .to_vec()
            .map_err(|e| self.bad_value(key, e))?;
        arr.iter()
            .map(|v| {
                v.to_string()
                    .map(String::as_str)
                    .map_err(|e| self.bad_value(key, e))
            })
            .collect()
    }

    /// An optional array of integers (token types and the like).
    pub fn opt_i64s(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(v) = self.value(key) else {
            return Ok(None);
        };
        let arr = v.to_vec().map_err(|e| self.bad_value(key, e))?;
        arr.iter()
            .map(|v| match v {
                Value::I8(x) => Ok(i64::from(*x)),
                Value::I16(x) => Ok(i64::from(*x)),
                Value::I32(x) => Ok(i64::from(*x)),
                Value::I64(x) => Ok(*x),
                Value::U8(x) => Ok(i64::from(*x)),
                Value::U16(x) => Ok(i64::from(*x)),
                Value::U32(x) => Ok(i64::from(*x)),
                other => Err(ModelError::format(
                    &self.path,
                    format!("metadata key `{key}`: expected integers, found {other:?}"),
                )),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Whether the file holds a tensor named `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Reads tensor `name` in its stored (possibly quantized) type, checking its shape.
    pub fn qtensor(&self, name: &str, shape: &[usize], device: &Device) -> Result<QTensor> {
        let info =
            self.content.tensor_infos.get(name).ok_or_else(|| {
                ModelError::format(&self.path, format!("missing tensor `{name}`"))
            })?;
        if info.shape.dims() != shape {
            return Err(ModelError::format(
                &self.path,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    info.shape.dims()
                ),
            ));
        }
        info.read(&mut &self.file, self.content.tensor_data_offset, device)
            .map_err(|e| ModelError::format(&self.path, format!("tensor `{name}`: {e}")))
    }

    /// Reads tensor `name` dequantized to f32.
    pub fn tensor(&self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let q = self.qtensor(name, shape, device)?;
        Ok(q.dequantize(device)?)
    }
}

/// Reorders the rows of a 2-D (possibly quantized) tensor: row `i` of the result is row
/// `order[i]` of `t`. Works on the stored bytes, so quantized blocks stay bit-identical.
pub fn permute_rows(t: &QTensor, order: &[usize]) -> Result<QTensor> {
    let (rows, _cols) = t.shape().dims2()?;
    if order.len() != rows || order.iter().any(|&r| r >= rows) {
        return Err(ModelError::Invalid(format!(
            "row order of length {} does not fit a tensor of {rows} rows",
            order.len()
        )));
    }
    let device = t.device();
    let data = t.data()?;
    let row_bytes = data.len() / rows;
    let mut out = Vec::with_capacity(data.len());
    for &r in order {
        out.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
    }
    let storage = QStorage::from_data(Cow::Owned(out), &device, t.dtype())?;
    Ok(QTensor::new(storage, t.shape().clone())?)
}

/// The row order that undoes llama.cpp's q/k permutation for `n_heads` heads of `rows / n_heads`
/// rows each: llama.cpp interleaves the two rotary halves of every head, HF keeps them apart.
pub fn unpermute_qk_order(rows: usize, n_heads: usize) -> Vec<usize> {
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut order = Vec::with_capacity(rows);
    for h in 0..n_heads {
        // HF row (h, part, i) sits at GGUF row (h, i, part).
        for part in 0..2 {
            for i in 0..half {
                order.push(h * head_dim + i * 2 + part);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: w.reshape(n_head, 2, half, cols).swapaxes(1, 2): GGUF row (h, i, p) = HF (h, p, i).
        let (n_heads, head_dim) = (3, 8);
        let rows = n_heads * head_dim;
        let half = head_dim / 2;
        let mut gguf_from_hf = vec![0; rows];
        for h in 0..n_heads {
            for i in 0..half {
                for p in 0..2 {
                    gguf_from_hf[h * head_dim + i * 2 + p] = h * head_dim + p * half + i;
                }
            }
        }
        let order = unpermute_qk_order(rows, n_heads);
        for (hf_row, &gguf_row) in order.iter().enumerate() {
            assert_eq!(gguf_from_hf[gguf_row], hf_row);
        }
    }

    #[test]
    fn permute_rows_moves_quantized_rows_intact() {
        let dev = Device::Cpu;
        let t = Tensor::arange(0f32, 4.0 * 64.0, &dev)
            .unwrap()
            .reshape((4, 64))
            .unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
        let p = permute_rows(&q, &[2, 0, 3, 1]).unwrap();
        let a = q.dequantize(&dev).unwrap();
        let b = p.dequantize(&dev).unwrap();
        for (i, &r) in [2usize, 0, 3, 1].iter().enumerate() {
            let want: Vec<f32> = a.get(r).unwrap().to_vec1().unwrap();
            let got: Vec<f32> = b.get(i).unwrap().to_vec1().unwrap();
            assert_eq!(want, got);
        }
        assert!(permute_rows(&q, &[0, 1]).is_err());
    }
}
