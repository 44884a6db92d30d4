//! Reading and writing 2-D C-order `.npy` files of f32 or f16 so vectors can be exchanged
//! with numpy and FAISS.

use half::f16;
use std::path::Path;

use crate::error::{IndexError, Result};
use crate::persist::write_with;

const MAGIC: &[u8] = b"\x93NUMPY";

/// A row-major matrix read from a `.npy` file (f16 files are widened to f32).
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// `rows × cols` values.
    pub data: Vec<f32>,
}

/// Value of `key` in a numpy header dict (the text after `'key':` up to the next top-level comma).
fn field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

/// Reads a 2-D `<f4` or `<f2` C-order array.
pub fn read(path: &Path) -> Result<Matrix> {
    let bytes = std::fs::read(path).map_err(|e| IndexError::io(path, e))?;
    let bad = |msg: String| IndexError::format(path, msg);
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("not a .npy file (missing \\x93NUMPY magic)".into()));
    }
    let (hlen, hstart) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!("unsupported .npy version {v}"))),
    };
    let header = bytes
        .get(hstart..hstart + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("header is truncated or not text".into()))?;
    let descr = field(header, "descr").ok_or_else(|| bad("header has no 'descr'".into()))?;
    let elem = match descr.trim_matches(['\'', '"']) {
        "<f4" => 4,
        "<f2" => 2,
        d => {
            return Err(bad(format!(
                "header 'descr' is {d}; only <f4 and <f2 are supported"
            )))
        }
    };
    if field(header, "fortran_order") != Some("False") {
        return Err(bad("header 'fortran_order' must be False (C order)".into()));
    }
    let shape = field(header, "shape").ok_or_else(|| bad("header has no 'shape'".into()))?;
    let dims: Vec<usize> = shape
        .trim_matches(['(', ')'])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| bad(format!("header 'shape' {shape} is not integers")))
        })
        .collect::<Result<_>>()?;
    let [rows, cols] = dims[..] else {
        return Err(bad(format!("header 'shape' {shape} is not 2-D")));
    };
    let body = &bytes[hstart + hlen..];
    let want = rows * cols * elem;
    if body.len() != want {
        return Err(bad(format!(
            "data has {} bytes but shape {shape} of {descr} needs {want}",
            body.len()
        )));
    }
    let data = if elem == 4 {
        body.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        body.chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()
    };
    Ok(Matrix { rows, cols, data })
}

fn write_npy(path: &Path, descr: &str, rows: usize, cols: usize, body: &[u8]) -> Result<()> {
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let pad = 64 - (10 + header.len() + 1) % 64;
    header.push_str(&" ".repeat(pad % 64));
    header.push('\n');
    let hlen =
        u16::try_from(header.len()).map_err(|_| IndexError::invalid("npy header too long"))?;
    write_with(path, |s| {
        s.write(MAGIC)?;
        s.write(&[1, 0])?;
        s.write(&hlen.to_le_bytes())?;
        s.write(header.as_bytes())?;
        s.write(body)
    })?;
    Ok(())
}

fn check_shape(rows: usize, cols: usize, data: &[f32]) -> Result<()> {
    if rows * cols != data.len() {
        return Err(IndexError::invalid(format!(
            "npy write: {} values do not fill {rows} × {cols}",
            data.len()
        )));
    }
    Ok(())
}

/// Writes `data` (`rows × cols`) as a `<f4` array.
pub fn write_f32(path: &Path, rows: usize, cols: usize, data: &[f32]) -> Result<()> {
    check_shape(rows, cols, data)?;
    write_npy(path, "<f4", rows, cols, bytemuck::cast_slice(data))
}

/// Writes `data` (`rows × cols`) as a `<f2` array.
pub fn write_f16(path: &Path, rows: usize, cols: usize, data: &[f32]) -> Result<()> {
    check_shape(rows, cols, data)?;
    let h: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
    write_npy(path, "<f2", rows, cols, bytemuck::cast_slice(&h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_headers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        write_f32(&p, 3, 4, &data).unwrap();
        assert_eq!(
            read(&p).unwrap(),
            Matrix {
                rows: 3,
                cols: 4,
                data: data.clone()
            }
        );
        write_f16(&p, 4, 3, &data).unwrap();
        assert_eq!(
            read(&p).unwrap(),
            Matrix {
                rows: 4,
                cols: 3,
                data
            }
        );
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&p, &bytes).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("a.npy") && e.contains("needs 24"), "{e}");
        std::fs::write(&p, b"hello").unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("magic"));
    }
}
