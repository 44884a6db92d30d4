//! Reader for Marian's binary model format (`.bin`): a header table, names, shapes and raw data.
//!
//! Layout (all little endian): `u64 version (=1)`, `u64 n`, `n x {u64 name_len, u64 type,
//! u64 shape_len, u64 data_len}`, the NUL-terminated names, the `i32` shapes, `u64 pad` and `pad`
//! bytes of alignment, then each item's `data_len` bytes in header order.

use std::path::Path;

use crate::error::{ModelError, Result};

/// Marian's type code of a float32 tensor (`TypeClass::float_type | 4`).
pub const TYPE_FLOAT32: u64 = 0x0404;
/// Marian's type code of an int8 byte array (used for the embedded YAML config).
pub const TYPE_INT8: u64 = 0x0101;
/// Marian's type code of an intgemm-prepared int8 matrix (`intgemm_type | int8`).
pub const TYPE_INTGEMM8: u64 = 0x4101;

/// One named item of a Marian binary file.
#[derive(Debug, Clone)]
pub struct Item {
    /// Parameter name, e.g. `encoder_l1_self_Wq` or `special:model.yml`.
    pub name: String,
    /// Marian's type code (see the `TYPE_*` constants).
    pub type_code: u64,
    /// Shape as stored (for intgemm matrices: the shape of the untransposed matrix).
    pub shape: Vec<usize>,
    /// Raw bytes (may include trailing padding).
    pub data: Vec<u8>,
}

impl Item {
    /// Number of elements the shape describes.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(ModelError::format(
                self.path,
                format!(
                    "truncated file: {what} needs {n} bytes at offset {} but the file has {}",
                    self.pos,
                    self.bytes.len()
                ),
            ));
        };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn len(&mut self, what: &str) -> Result<usize> {
        let v = self.u64(what)?;
        usize::try_from(v)
            .ok()
            .filter(|&v| v <= self.bytes.len())
            .ok_or_else(|| {
                ModelError::format(
                    self.path,
                    format!("truncated or corrupt file: {what} {v} exceeds the file size"),
                )
            })
    }
}

/// Parses all items of a Marian binary model held in `bytes` (read from `path`, used in errors).
pub fn parse_items(bytes: &[u8], path: &Path) -> Result<Vec<Item>> {
    let mut c = Cursor {
        bytes,
        pos: 0,
        path,
    };
    let version = c.u64("version")?;
    if version != 1 {
        return Err(ModelError::format(
            path,
            format!("not a Marian binary model: version {version}, expected 1"),
        ));
    }
    let n = c.len("item count")?;
    let mut headers = Vec::with_capacity(n);
    for i in 0..n {
        let what = format!("header {i}");
        headers.push((c.len(&what)?, c.u64(&what)?, c.len(&what)?, c.len(&what)?));
    }
    let mut names = Vec::with_capacity(n);
    for &(name_len, ..) in &headers {
        let raw = c.take(name_len, "item name")?;
        let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
        let name = std::str::from_utf8(raw)
            .map_err(|_| ModelError::format(path, "item name is not UTF-8"))?;
        names.push(name.to_string());
    }
    let mut shapes = Vec::with_capacity(n);
    for (name, &(_, _, shape_len, _)) in names.iter().zip(&headers) {
        let raw = c.take(shape_len * 4, "item shape")?;
        let dims = raw
            .chunks_exact(4)
            .map(|d| {
                let v = i32::from_le_bytes(d.try_into().expect("4 bytes"));
                usize::try_from(v).map_err(|_| {
                    ModelError::format(path, format!("item {name}: negative dimension {v}"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        shapes.push(dims);
    }
    let pad = c.len("alignment padding")?;
    c.take(pad, "alignment padding")?;
    let mut items = Vec::with_capacity(n);
    for ((name, shape), &(_, type_code, _, data_len)) in names.into_iter().zip(shapes).zip(&headers)
    {
        let data = c.take(data_len, &format!("data of {name}"))?.to_vec();
        items.push(Item {
            name,
            type_code,
            shape,
            data,
        });
    }
    Ok(items)
}

/// Reads and parses a Marian binary model file.
pub fn read_items(path: &Path) -> Result<Vec<Item>> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    parse_items(&bytes, path)
}
