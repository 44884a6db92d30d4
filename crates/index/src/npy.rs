//! Reading and writing 2-D C-order `.npy` files of f32 or f16 so vectors can be exchanged
//! with numpy and FAISS.

use half::f16;
use memmap2::Mmap;
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

/// Shape and layout of a 2-D `.npy` array, parsed from its header.
struct Header {
    rows: usize,
    cols: usize,
    /// Bytes per value: 4 (`<f4`) or 2 (`<f2`).
    elem: usize,
    /// Offset of the data.
    data_start: usize,
}

impl Header {
    /// Parses the header at the start of `bytes` and checks that `file_len` holds the data.
    fn parse(path: &Path, bytes: &[u8], file_len: usize) -> Result<Header> {
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
        let data_start = hstart + hlen;
        let want = rows * cols * elem;
        if file_len != data_start + want {
            return Err(bad(format!(
                "data has {} bytes but shape {shape} of {descr} needs {want}",
                file_len.saturating_sub(data_start)
            )));
        }
        Ok(Header {
            rows,
            cols,
            elem,
            data_start,
        })
    }
}

/// Widens little-endian `<f4` or `<f2` values to f32.
fn widen(body: &[u8], elem: usize) -> Vec<f32> {
    if elem == 4 {
        body.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        body.chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()
    }
}

/// Reads a 2-D `<f4` or `<f2` C-order array.
pub fn read(path: &Path) -> Result<Matrix> {
    let bytes = std::fs::read(path).map_err(|e| IndexError::io(path, e))?;
    let h = Header::parse(path, &bytes, bytes.len())?;
    Ok(Matrix {
        rows: h.rows,
        cols: h.cols,
        data: widen(&bytes[h.data_start..], h.elem),
    })
}

/// A 2-D `.npy` array memory-mapped rather than read, for arrays larger than memory.
pub struct MappedMatrix {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    header: Header,
    map: Mmap,
}

impl MappedMatrix {
    /// Maps a 2-D `<f4` or `<f2` C-order array.
    pub fn open(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| IndexError::io(path, e))?;
        // SAFETY: read-only map; the file is not expected to change while it is read.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| IndexError::io(path, e))?;
        let header = Header::parse(path, &map, map.len())?;
        Ok(MappedMatrix {
            rows: header.rows,
            cols: header.cols,
            header,
            map,
        })
    }

    /// Rows `r0..r1`, widened to f32.
    pub fn rows_f32(&self, r0: usize, r1: usize) -> Vec<f32> {
        let row = self.cols * self.header.elem;
        let at = self.header.data_start;
        widen(&self.map[at + r0 * row..at + r1 * row], self.header.elem)
    }
}

/// Writes a `rows × cols` array of `<f4` (or `<f2` when `f16`) from chunks of f32 values, in
/// order, via a temporary name, fsync and rename; the chunks must fill the shape exactly.
pub fn write_chunks(
    path: &Path,
    rows: usize,
    cols: usize,
    f16: bool,
    chunks: impl IntoIterator<Item = impl AsRef<[f32]>>,
) -> Result<()> {
    let descr = if f16 { "<f2" } else { "<f4" };
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
        let mut written = 0usize;
        for chunk in chunks {
            let chunk = chunk.as_ref();
            written += chunk.len();
            if written > rows * cols {
                break;
            }
            if f16 {
                let h: Vec<f16> = chunk.iter().map(|&x| f16::from_f32(x)).collect();
                s.write(bytemuck::cast_slice(&h))?;
            } else {
                s.write(bytemuck::cast_slice(chunk))?;
            }
        }
        if written != rows * cols {
            return Err(IndexError::invalid(format!(
                "npy write: {written} values do not fill {rows} × {cols}"
            )));
        }
        Ok(())
    })?;
    Ok(())
}

/// Writes `data` (`rows × cols`) as a `<f4` array.
pub fn write_f32(path: &Path, rows: usize, cols: usize, data: &[f32]) -> Result<()> {
    write_chunks(path, rows, cols, false, [data])
}

/// Writes `data` (`rows × cols`) as a `<f2` array.
pub fn write_f16(path: &Path, rows: usize, cols: usize, data: &[f32]) -> Result<()> {
    write_chunks(path, rows, cols, true, [data])
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

    #[test]
    fn chunked_writes_and_mapped_reads_agree_with_whole_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (rows, cols) = (7, 5);
        let data: Vec<f32> = (0..rows * cols).map(|i| (i as f32 - 11.0) * 0.25).collect();
        for f16 in [false, true] {
            let p = dir.path().join(format!("c{f16}.npy"));
            write_chunks(&p, rows, cols, f16, data.chunks(3 * cols)).unwrap();
            assert_eq!(read(&p).unwrap().data, data);
            let m = MappedMatrix::open(&p).unwrap();
            assert_eq!(
                (m.rows, m.cols, m.header.elem),
                (rows, cols, if f16 { 2 } else { 4 })
            );
            assert_eq!(m.rows_f32(2, 6), data[2 * cols..6 * cols]);
            assert_eq!(m.rows_f32(0, rows), data);
        }
        let p = dir.path().join("short.npy");
        let e = write_chunks(&p, rows, cols, true, [&data[..10]]).unwrap_err();
        assert!(e.to_string().contains("do not fill 7 × 5"), "{e}");
        let e = write_chunks(&p, 2, cols, false, data.chunks(cols)).unwrap_err();
        assert!(e.to_string().contains("do not fill 2 × 5"), "{e}");
        assert!(!p.exists());
        let full = dir.path().join("cfalse.npy");
        let bytes = std::fs::read(&full).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        let e = MappedMatrix::open(&p).err().unwrap().to_string();
        assert!(e.contains("short.npy") && e.contains("needs 140"), "{e}");
    }
}
