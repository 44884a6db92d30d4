//! Parallel corpora as `catalog<TAB>source<TAB>target` TSV files with a header line.

use crate::error::{KnnError, Result};
use std::path::Path;

/// Source sentences and their reference translations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pairs {
    /// Source sentences.
    pub sources: Vec<String>,
    /// Reference translations, one per source.
    pub targets: Vec<String>,
}

impl Pairs {
    /// Reads a three-column TSV (header skipped), keeping at most `limit` pairs.
    pub fn read_tsv(path: &Path, limit: Option<usize>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| KnnError::io(path, e))?;
        let mut out = Pairs::default();
        for (i, line) in text.lines().enumerate().skip(1) {
            if limit.is_some_and(|n| out.len() >= n) {
                break;
            }
            let cols: Vec<&str> = line.split('\t').collect();
            let [_, source, target] = cols[..] else {
                return Err(KnnError::format(
                    path,
                    format!(
                        "line {}: expected 3 tab-separated columns, found {}",
                        i + 1,
                        cols.len()
                    ),
                ));
            };
            out.sources.push(source.to_string());
            out.targets.push(target.to_string());
        }
        Ok(out)
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Pairs `range` as a new set.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        Pairs {
            sources: self.sources[range.clone()].to_vec(),
            targets: self.targets[range].to_vec(),
        }
    }

    /// The first and the second half (the first holds the extra pair of an odd count).
    pub fn halves(&self) -> (Self, Self) {
        let mid = self.len().div_ceil(2);
        (self.slice(0..mid), self.slice(mid..self.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_limits_halves_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.tsv");
        std::fs::write(
            &p,
            "catalog\ten\tpt\na\tone\tum\nb\ttwo\tdois\nc\tthree\ttrês\n",
        )
        .unwrap();
        let all = Pairs::read_tsv(&p, None).unwrap();
        assert_eq!(all.targets, vec!["um", "dois", "três"]);
        assert_eq!(Pairs::read_tsv(&p, Some(2)).unwrap().len(), 2);
        let (a, b) = all.halves();
        assert_eq!((a.len(), b.sources.clone()), (2, vec!["three".to_string()]));
        std::fs::write(&p, "h\th\th\na\tonly two\n").unwrap();
        let err = Pairs::read_tsv(&p, None).unwrap_err().to_string();
        assert!(err.contains("d.tsv") && err.contains("line 2"), "{err}");
    }
}
