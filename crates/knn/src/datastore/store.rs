//! Per-chunk key/value files: written atomically (temporary name, fsync, rename) so an
//! interrupted build keeps every finished chunk, read back for indexing and export.
//!
//! Layout: magic `RKNC`, u32 version, u64 rows, u64 dim, `rows × dim` f16 keys, `rows` u32
//! values, all little-endian.

use crate::error::{KnnError, Result};
use half::f16;
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 4] = b"RKNC";
const VERSION: u32 = 1;
const HEADER: usize = 4 + 4 + 8 + 8;

/// Writes `bytes` to `path` through a temporary file that is fsynced and renamed.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| KnnError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| KnnError::io(&tmp, e))?;
    f.sync_all().map_err(|e| KnnError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| KnnError::io(path, e))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| KnnError::io(dir, e))?;
    }
    Ok(())
}

/// Keys (as f32, rounded through f16) and values of one chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkData {
    /// Key dimension.
    pub dim: usize,
    /// `values.len() × dim` keys.
    pub keys: Vec<f32>,
    /// Next-token ids.
    pub values: Vec<u32>,
}

/// Writes one chunk's keys (stored as f16) and values atomically.
pub fn write_chunk(path: &Path, dim: usize, keys: &[f32], values: &[u32]) -> Result<()> {
    if keys.len() != values.len() * dim {
        return Err(KnnError::Invalid(format!(
            "chunk {}: {} key floats for {} values of dim {dim}",
            path.display(),
            keys.len(),
            values.len()
        )));
    }
    let mut b = Vec::with_capacity(HEADER + keys.len() * 2 + values.len() * 4);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&(values.len() as u64).to_le_bytes());
    b.extend_from_slice(&(dim as u64).to_le_bytes());
    for &k in keys {
        b.extend_from_slice(&f16::from_f32(k).to_le_bytes());
    }
    for &v in values {
        b.extend_from_slice(&v.to_le_bytes());
    }
    write_atomic(path, &b)
}

/// Reads a chunk file, checking its header and length.
pub fn read_chunk(path: &Path) -> Result<ChunkData> {
    let b = std::fs::read(path).map_err(|e| KnnError::io(path, e))?;
    let bad = |msg: String| KnnError::format(path, msg);
    if b.len() < HEADER || &b[..4] != MAGIC {
        return Err(bad("not a datastore chunk (missing RKNC header)".into()));
    }
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8])) as usize;
    let version = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if version != VERSION {
        return Err(bad(format!("chunk version {version}, expected {VERSION}")));
    }
    let (rows, dim) = (u64_at(8), u64_at(16));
    let want = rows
        .checked_mul(dim)
        .and_then(|e| e.checked_mul(2))
        .and_then(|k| k.checked_add(rows * 4 + HEADER));
    if want != Some(b.len()) {
        return Err(bad(format!(
            "{} bytes, but {rows} rows of dim {dim} need {}",
            b.len(),
            want.map_or_else(|| "overflow".into(), |w| w.to_string())
        )));
    }
    let key_end = HEADER + rows * dim * 2;
    let keys = b[HEADER..key_end]
        .chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    let values = b[key_end..]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(ChunkData { dim, keys, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.bin");
        let keys = [0.5f32, -1.25, 3.0, 0.1];
        write_chunk(&p, 2, &keys, &[7, 9]).unwrap();
        let c = read_chunk(&p).unwrap();
        assert_eq!(c.values, vec![7, 9]);
        assert_eq!(c.keys[..3], keys[..3]);
        assert!((c.keys[3] - 0.1).abs() < 1e-3);
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() - 1]).unwrap();
        let err = read_chunk(&p).unwrap_err().to_string();
        assert!(err.contains("c.bin") && err.contains("bytes"), "{err}");
        assert!(write_chunk(&p, 3, &keys, &[1]).is_err());
    }
}
