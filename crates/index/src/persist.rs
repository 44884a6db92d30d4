//! On-disk format: one directory per index with `manifest.json` and raw little-endian arrays,
//! every file written as `name.tmp`, fsynced and renamed; opening memory-maps the arrays after
//! checking their lengths (always) and crc32 checksums (optionally).

use bytemuck::Pod;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::array::Array;
use crate::error::{IndexError, Result};
use crate::flat::FlatIndex;
use crate::ivfpq::{IvfPqIndex, IvfPqParams};
use crate::metric::{KeyType, Metric};
use crate::pq;
use crate::rows::{Keys, Rows, Segment};
use crate::{Hits, Index, SearchParams};

/// Format version written by and readable by this build.
pub const FORMAT_VERSION: u32 = 1;
/// Name of the manifest file in an index directory.
pub const MANIFEST: &str = "manifest.json";

/// Which index structure a directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    /// Exact search over full keys.
    Flat,
    /// Inverted lists of residual PQ codes.
    IvfPq,
}

/// Length and checksum of one array file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File length in bytes.
    pub bytes: u64,
    /// crc32 of the whole file.
    pub crc32: u32,
}

/// IVF-PQ layout and training parameters as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IvfPqMeta {
    /// Inverted lists.
    pub nlist: usize,
    /// Sub-quantisers.
    pub m: usize,
    /// Bits per sub-quantiser code: 8, or 4 (codes stored in blocks of 32 for the fast scan).
    pub nbits: u32,
    /// Training seed.
    pub seed: u64,
    /// Training sample cap.
    pub max_train: usize,
    /// k-means iterations of the coarse quantiser.
    pub iters: usize,
    /// k-means iterations of the codebooks (absent in older manifests, whose codebooks trained
    /// for `iters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pq_iters: Option<usize>,
}

/// Contents of `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// On-disk format version.
    pub format_version: u32,
    /// Index structure.
    pub kind: IndexKind,
    /// Scoring metric.
    pub metric: Metric,
    /// Vector dimension.
    pub dim: usize,
    /// Stored rows.
    pub count: u64,
    /// Live rows (equal to `count`: saving compacts deleted rows away).
    pub live: u64,
    /// Precision of the stored full keys.
    pub key_type: KeyType,
    /// IVF-PQ parameters (absent for flat indexes).
    pub ivfpq: Option<IvfPqMeta>,
    /// Length and crc32 of every array file.
    pub files: BTreeMap<String, FileEntry>,
    /// Free-form provenance (model / tokenizer hashes, ...).
    pub provenance: serde_json::Value,
}

fn keys_name(ty: KeyType) -> String {
    format!("keys.{ty}")
}

/// Fsyncs a directory so renames inside it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| IndexError::io(dir, e))
}

/// Writes `bytes` to `path` via `path.tmp`, fsync and rename, then fsyncs the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |s| s.write(bytes))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Writes `path` with the bytes `fill` produces, via `path.tmp`, fsync and rename;
/// returns the length and crc32 written.
pub(crate) fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut Sink) -> Result<()>,
) -> Result<FileEntry> {
    let tmp = tmp_path(path);
    let mut sink = Sink::create(&tmp)?;
    fill(&mut sink)?;
    let (_, entry) = sink.finish()?;
    std::fs::rename(&tmp, path).map_err(|e| IndexError::io(path, e))?;
    Ok(entry)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// A file being written: counts bytes and computes the crc32 as it goes.
pub(crate) struct Sink {
    w: BufWriter<File>,
    crc: crc32fast::Hasher,
    len: u64,
    path: PathBuf,
}

impl Sink {
    /// Creates (or truncates) `path`, open for reading too so it can be memory-mapped.
    pub fn create(path: &Path) -> Result<Self> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| IndexError::io(path, e))?;
        Ok(Sink {
            w: BufWriter::with_capacity(1 << 20, f),
            crc: crc32fast::Hasher::new(),
            len: 0,
            path: path.to_path_buf(),
        })
    }

    /// Flushes and fsyncs the file; returns it with its length and crc32.
    pub fn finish(self) -> Result<(File, FileEntry)> {
        let f = self
            .w
            .into_inner()
            .map_err(|e| IndexError::io(&self.path, e.into_error()))?;
        f.sync_all().map_err(|e| IndexError::io(&self.path, e))?;
        let entry = FileEntry {
            bytes: self.len,
            crc32: self.crc.finalize(),
        };
        Ok((f, entry))
    }

    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.crc.update(bytes);
        self.len += bytes.len() as u64;
        self.w
            .write_all(bytes)
            .map_err(|e| IndexError::io(&self.path, e))
    }
}

/// Writes the array files of one index directory, then its manifest.
pub(crate) struct DirWriter {
    dir: PathBuf,
    files: BTreeMap<String, FileEntry>,
}

impl DirWriter {
    /// Starts writing into `dir` (created if missing).
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
        Ok(DirWriter {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
        })
    }

    /// Writes file `name` with the bytes `fill` produces.
    pub fn file(&mut self, name: &str, fill: impl FnOnce(&mut Sink) -> Result<()>) -> Result<()> {
        let entry = write_with(&self.dir.join(name), fill)?;
        self.files.insert(name.to_string(), entry);
        Ok(())
    }

    /// Moves the finished, fsynced file `from` (length and crc32 in `entry`) in as file `name`.
    pub fn adopt(&mut self, name: &str, from: &Path, entry: FileEntry) -> Result<()> {
        let to = self.dir.join(name);
        std::fs::rename(from, &to).map_err(|e| IndexError::io(&to, e))?;
        self.files.insert(name.to_string(), entry);
        Ok(())
    }

    /// Writes a whole array as file `name`.
    pub fn array<T: Pod>(&mut self, name: &str, a: &[T]) -> Result<()> {
        self.file(name, |s| s.write(bytemuck::cast_slice(a)))
    }

    /// Writes the manifest (with the recorded file entries) and fsyncs the directory.
    pub fn finish(self, mut manifest: Manifest) -> Result<()> {
        manifest.files = self.files;
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| IndexError::invalid(format!("manifest serialisation: {e}")))?;
        write_atomic(&self.dir.join(MANIFEST), &json)
    }
}

/// A finished file holding exactly the keys of every row, in order, to move in as the key
/// file instead of writing the keys again (the streaming builder's spill).
pub(crate) struct KeyFile<'a> {
    pub path: &'a Path,
    pub entry: FileEntry,
}

/// Writes (or adopts, from `keys`) the keys, then the ids and norms of the live rows; returns
/// the live count.
fn write_rows(w: &mut DirWriter, rows: &Rows, keys: Option<KeyFile<'_>>) -> Result<u64> {
    let dim = rows.dim;
    let name = keys_name(rows.key_type);
    match keys {
        Some(k) => {
            let want = (rows.len() * dim * rows.key_type.size()) as u64;
            if rows.live() != rows.len() || k.entry.bytes != want {
                return Err(IndexError::invalid(format!(
                    "{}: holds {} bytes, not the {want} of {} live rows",
                    k.path.display(),
                    k.entry.bytes,
                    rows.live()
                )));
            }
            w.adopt(&name, k.path, k.entry)?;
        }
        None => w.file(&name, |s| {
            rows.for_live_runs(|seg, a, b| s.write(seg.keys.row_bytes(dim, a, b)))
        })?,
    }
    w.file("ids.u64", |s| {
        rows.for_live_runs(|seg, a, b| s.write(bytemuck::cast_slice(&seg.ids[a..b])))
    })?;
    if rows.metric == Metric::L2 {
        w.file("norms.f32", |s| {
            rows.for_live_runs(|seg, a, b| s.write(bytemuck::cast_slice(&seg.norms[a..b])))
        })?;
    }
    Ok(rows.live() as u64)
}

fn manifest(
    rows: &Rows,
    kind: IndexKind,
    ivfpq: Option<IvfPqMeta>,
    provenance: &serde_json::Value,
) -> Manifest {
    let live = rows.live() as u64;
    Manifest {
        format_version: FORMAT_VERSION,
        kind,
        metric: rows.metric,
        dim: rows.dim,
        count: live,
        live,
        key_type: rows.key_type,
        ivfpq,
        files: BTreeMap::new(),
        provenance: provenance.clone(),
    }
}

impl FlatIndex {
    /// Saves to `dir` (compacting deleted rows away).
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_with(dir, None)
    }

    /// Saves to `dir`, moving `keys` in as the key file when given.
    pub(crate) fn save_with(&self, dir: &Path, keys: Option<KeyFile<'_>>) -> Result<()> {
        let mut w = DirWriter::new(dir)?;
        write_rows(&mut w, &self.rows, keys)?;
        w.finish(manifest(
            &self.rows,
            IndexKind::Flat,
            None,
            &self.provenance,
        ))
    }
}

impl IvfPqIndex {
    /// Saves to `dir` (compacting deleted rows away and merging appended codes into the lists).
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_with(dir, None)
    }

    /// Saves to `dir`, moving `keys` in as the key file when given.
    pub(crate) fn save_with(&self, dir: &Path, keys: Option<KeyFile<'_>>) -> Result<()> {
        let mut w = DirWriter::new(dir)?;
        write_rows(&mut w, &self.rows, keys)?;
        let p = &self.params;
        let remap = self.rows.compaction_map();
        // Compaction only lowers row numbers, so they stay within u32.
        let (offsets, codes, list_rows) =
            self.merged_lists(&|r| remap[r as usize].map(|nr| nr as u32));
        w.array("centroids.f32", &self.centroids)?;
        w.array("codebooks.f32", &self.books)?;
        w.array("list_offsets.u64", &offsets)?;
        w.array("list_codes.u8", &codes)?;
        w.array("list_rows.u32", &list_rows)?;
        let meta = IvfPqMeta {
            nlist: p.nlist,
            m: p.m,
            nbits: p.nbits,
            seed: p.seed,
            max_train: p.max_train,
            iters: p.iters,
            pq_iters: Some(p.pq_iters),
        };
        w.finish(manifest(
            &self.rows,
            IndexKind::IvfPq,
            Some(meta),
            &self.provenance,
        ))
    }
}

/// Options for opening an index directory.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Verify every file's crc32 (reads all bytes; length checks always run).
    pub verify_checksums: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            verify_checksums: true,
        }
    }
}

/// What a caller requires of an index it opens.
#[derive(Clone, Debug, Default)]
pub struct Expect {
    /// Required dimension.
    pub dim: Option<usize>,
    /// Required metric.
    pub metric: Option<Metric>,
    /// Required provenance entries (a JSON object each of whose keys must match; `Null` for none).
    pub provenance: serde_json::Value,
}

/// An opened index of either kind.
// Opened once per version, so the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum AnyIndex {
    /// Exact index.
    Flat(FlatIndex),
    /// IVF-PQ index.
    IvfPq(IvfPqIndex),
}

impl AnyIndex {
    fn inner(&self) -> &dyn Index {
        match self {
            AnyIndex::Flat(i) => i,
            AnyIndex::IvfPq(i) => i,
        }
    }

    /// Appends vectors with ids.
    pub fn append(&mut self, vectors: &[f32], ids: &[u64]) -> Result<()> {
        match self {
            AnyIndex::Flat(i) => i.append(vectors, ids),
            AnyIndex::IvfPq(i) => i.append(vectors, ids),
        }
    }

    /// Deletes keys by id; returns how many rows were deleted.
    pub fn delete(&mut self, ids: &[u64]) -> usize {
        match self {
            AnyIndex::Flat(i) => i.delete(ids),
            AnyIndex::IvfPq(i) => i.delete(ids),
        }
    }

    /// Saves to `dir`, compacting deletions.
    pub fn save(&self, dir: &Path) -> Result<()> {
        match self {
            AnyIndex::Flat(i) => i.save(dir),
            AnyIndex::IvfPq(i) => i.save(dir),
        }
    }

    /// Free-form provenance.
    pub fn provenance(&self) -> &serde_json::Value {
        match self {
            AnyIndex::Flat(i) => i.provenance(),
            AnyIndex::IvfPq(i) => i.provenance(),
        }
    }
}

impl Index for AnyIndex {
    fn dim(&self) -> usize {
        self.inner().dim()
    }
    fn len(&self) -> usize {
        self.inner().len()
    }
    fn metric(&self) -> Metric {
        self.inner().metric()
    }
    fn search(&self, queries: &[f32], k: usize, params: &SearchParams) -> Result<Hits> {
        self.inner().search(queries, k, params)
    }
}

/// Reads and validates `manifest.json` of `dir`.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(|e| IndexError::io(&path, e))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| IndexError::format(&path, format!("invalid JSON: {e}")))?;
    match value.get("format_version").and_then(|v| v.as_u64()) {
        Some(v) if v == FORMAT_VERSION as u64 => {}
        Some(v) => {
            return Err(IndexError::format(
                &path,
                format!(
                    "field format_version = {v}, but this build reads version {FORMAT_VERSION}"
                ),
            ))
        }
        None => return Err(IndexError::format(&path, "field format_version is missing")),
    }
    let m: Manifest = serde_json::from_value(value)
        .map_err(|e| IndexError::format(&path, format!("invalid manifest: {e}")))?;
    if m.live > m.count {
        return Err(IndexError::format(
            &path,
            format!("field live = {} exceeds field count = {}", m.live, m.count),
        ));
    }
    if m.dim == 0 {
        return Err(IndexError::format(&path, "field dim is 0"));
    }
    Ok(m)
}

/// Maps the arrays of one directory, checking them against the manifest.
struct DirReader<'a> {
    dir: &'a Path,
    manifest: &'a Manifest,
    verify: bool,
}

impl DirReader<'_> {
    /// File `name` as `elems` elements of `T`; `what` explains how `elems` follows from the manifest.
    fn array<T: Pod>(&self, name: &str, elems: u64, what: &str) -> Result<Array<T>> {
        let mpath = self.dir.join(MANIFEST);
        let entry = self.manifest.files.get(name).ok_or_else(|| {
            IndexError::format(&mpath, format!("field files has no entry for {name}"))
        })?;
        let want = elems * std::mem::size_of::<T>() as u64;
        if entry.bytes != want {
            return Err(IndexError::format(
                &mpath,
                format!(
                    "field files.{name}.bytes = {} but {what} gives {want} bytes",
                    entry.bytes
                ),
            ));
        }
        let path = self.dir.join(name);
        let file = File::open(&path).map_err(|e| IndexError::io(&path, e))?;
        let actual = file.metadata().map_err(|e| IndexError::io(&path, e))?.len();
        if actual != entry.bytes {
            return Err(IndexError::format(
                &path,
                format!(
                    "file has {actual} bytes but the manifest says {} (truncated or overwritten)",
                    entry.bytes
                ),
            ));
        }
        if actual == 0 {
            return Ok(Array::default());
        }
        // SAFETY: index files are immutable once published; nothing writes them while mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| IndexError::io(&path, e))?;
        if self.verify {
            let crc = crc32fast::hash(&map);
            if crc != entry.crc32 {
                return Err(IndexError::format(
                    &path,
                    format!(
                        "crc32 mismatch: file has {crc:08x}, manifest says {:08x} (corrupt file)",
                        entry.crc32
                    ),
                ));
            }
        }
        Ok(Array::mapped(Arc::new(map), elems as usize))
    }
}

fn load_rows(r: &DirReader<'_>) -> Result<Rows> {
    let m = r.manifest;
    let (n, dim) = (m.count, m.dim as u64);
    let kname = keys_name(m.key_type);
    let keys = match m.key_type {
        KeyType::F32 => Keys::F32(r.array(&kname, n * dim, "count × dim")?),
        KeyType::F16 => Keys::F16(r.array(&kname, n * dim, "count × dim")?),
    };
    let norms = if m.metric == Metric::L2 {
        r.array("norms.f32", n, "count")?
    } else {
        Array::default()
    };
    let base = Segment {
        keys,
        ids: r.array("ids.u64", n, "count")?,
        norms,
    };
    Ok(Rows::new(m.dim, m.metric, m.key_type, base))
}

fn load_ivfpq(r: &DirReader<'_>, rows: Rows, meta: &IvfPqMeta) -> Result<IvfPqIndex> {
    let m = r.manifest;
    let params = IvfPqParams {
        nlist: meta.nlist,
        m: meta.m,
        nbits: meta.nbits,
        seed: meta.seed,
        max_train: meta.max_train,
        iters: meta.iters,
        pq_iters: meta.pq_iters.unwrap_or(meta.iters),
    };
    params.check(m.dim).map_err(|e| {
        IndexError::format(
            &r.dir.join(MANIFEST),
            format!(
                "field ivfpq (nlist {}, m {}, nbits {}, dim {}): {e}",
                meta.nlist, meta.m, meta.nbits, m.dim
            ),
        )
    })?;
    let (nlist, dim, n) = (meta.nlist as u64, m.dim as u64, m.count);
    let centroids = r.array("centroids.f32", nlist * dim, "nlist × dim")?;
    let ksub = pq::ksub(meta.nbits) as u64;
    let books = r.array("codebooks.f32", ksub * dim, &format!("{ksub} × dim"))?;
    let offsets: Array<u64> = r.array("list_offsets.u64", nlist + 1, "nlist + 1")?;
    let opath = r.dir.join("list_offsets.u64");
    if offsets[0] != 0 || offsets.windows(2).any(|w| w[0] > w[1]) || offsets[meta.nlist] != n {
        return Err(IndexError::format(
            &opath,
            format!("offsets are not non-decreasing from 0 to count = {n}"),
        ));
    }
    let code_bytes = params.code_starts(&offsets)[meta.nlist] as u64;
    let codes = r.array(
        "list_codes.u8",
        code_bytes,
        if meta.nbits == 8 {
            "count × m"
        } else {
            "Σ ⌈list length / 32⌉ × 16 · m"
        },
    )?;
    if m.files.contains_key("list_rows.u64") {
        return Err(IndexError::format(
            &r.dir.join(MANIFEST),
            "field files lists list_rows.u64: this index was written by an older ralm, which \
             numbered list rows with u64; rebuild it (this build reads list_rows.u32)",
        ));
    }
    let list_rows: Array<u32> = r.array("list_rows.u32", n, "count")?;
    if let Some(bad) = list_rows.iter().find(|&&x| x as u64 >= n) {
        return Err(IndexError::format(
            &r.dir.join("list_rows.u32"),
            format!("row {bad} out of range (count = {n})"),
        ));
    }
    Ok(IvfPqIndex::from_parts(
        rows,
        params,
        centroids,
        books,
        offsets,
        codes,
        list_rows,
        m.provenance.clone(),
    ))
}

/// Opens the index in `dir`, memory-mapping its arrays.
pub fn open_index(dir: &Path, opts: &OpenOptions) -> Result<AnyIndex> {
    let manifest = read_manifest(dir)?;
    let r = DirReader {
        dir,
        manifest: &manifest,
        verify: opts.verify_checksums,
    };
    let rows = load_rows(&r)?;
    match (manifest.kind, &manifest.ivfpq) {
        (IndexKind::Flat, _) => Ok(AnyIndex::Flat(FlatIndex {
            rows,
            provenance: manifest.provenance.clone(),
        })),
        (IndexKind::IvfPq, Some(meta)) => Ok(AnyIndex::IvfPq(load_ivfpq(&r, rows, meta)?)),
        (IndexKind::IvfPq, None) => Err(IndexError::format(
            &dir.join(MANIFEST),
            "field ivfpq is missing for kind ivfpq",
        )),
    }
}

/// Checks a manifest against what the caller expects.
pub fn check_expect(dir: &Path, m: &Manifest, expect: &Expect) -> Result<()> {
    if let Some(d) = expect.dim.filter(|&d| d != m.dim) {
        return Err(IndexError::mismatch(
            dir,
            format!("index has dim {} but {d} was expected", m.dim),
        ));
    }
    if let Some(x) = expect.metric.filter(|&x| x != m.metric) {
        return Err(IndexError::mismatch(
            dir,
            format!("index has metric {} but {x} was expected", m.metric),
        ));
    }
    match &expect.provenance {
        serde_json::Value::Null => {}
        serde_json::Value::Object(want) => {
            for (key, v) in want {
                let have = m.provenance.get(key).unwrap_or(&serde_json::Value::Null);
                if have != v {
                    return Err(IndexError::mismatch(
                        dir,
                        format!("provenance.{key} is {have} but {v} was expected"),
                    ));
                }
            }
        }
        other => {
            return Err(IndexError::invalid(format!(
                "expected provenance must be a JSON object, got {other}"
            )))
        }
    }
    Ok(())
}

/// Opens the index in `dir` (verifying checksums), refusing one whose dimension, metric or
/// provenance differs from `expect`.
pub fn open_expecting(dir: &Path, expect: &Expect) -> Result<AnyIndex> {
    check_expect(dir, &read_manifest(dir)?, expect)?;
    open_index(dir, &OpenOptions::default())
}
