//! A parser for the flat YAML subset Marian writes: `key: scalar` and `key:` followed by `- item` lines.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{ModelError, Result};

/// A value of a flat Marian YAML document.
#[derive(Debug, Clone, PartialEq)]
pub enum YamlValue {
    /// A single scalar (quotes removed).
    Scalar(String),
    /// A block list of scalars.
    List(Vec<String>),
}

/// A parsed flat YAML document; `source` names the file or item in error messages.
#[derive(Debug, Clone)]
pub struct FlatYaml {
    source: String,
    entries: BTreeMap<String, YamlValue>,
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return s[1..s.len() - 1].to_string();
        }
    }
    s.to_string()
}

fn strip_comment(line: &str) -> &str {
    match line.find(" #") {
        Some(i) => &line[..i],
        None if line.trim_start().starts_with('#') => "",
        None => line,
    }
}

impl FlatYaml {
    /// Parses `text`; `path` is used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut entries = BTreeMap::new();
        let mut open_list: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = strip_comment(raw);
            if line.trim().is_empty() {
                continue;
            }
            let err =
                |msg: &str| ModelError::format(path, format!("line {}: {msg}: {raw:?}", i + 1));
            let trimmed = line.trim_start();
            if let Some(item) = trimmed.strip_prefix('-') {
                let key = open_list
                    .as_ref()
                    .ok_or_else(|| err("list item outside a list"))?;
                if let Some(YamlValue::List(items)) = entries.get_mut(key) {
                    items.push(unquote(item));
                }
                continue;
            }
            if line.starts_with(char::is_whitespace) {
                return Err(err("unexpected indentation"));
            }
            let (key, value) = line
                .split_once(':')
                .ok_or_else(|| err("expected `key: value`"))?;
            let key = key.trim().to_string();
            if key.is_empty() {
                return Err(err("empty key"));
            }
            let value = value.trim();
            if value.is_empty() {
                entries.insert(key.clone(), YamlValue::List(Vec::new()));
                open_list = Some(key);
            } else if value == "[]" {
                entries.insert(key, YamlValue::List(Vec::new()));
                open_list = None;
            } else {
                entries.insert(key, YamlValue::Scalar(unquote(value)));
                open_list = None;
            }
        }
        Ok(Self {
            source: path.display().to_string(),
            entries,
        })
    }

    fn bad(&self, key: &str, msg: String) -> ModelError {
        ModelError::format(Path::new(&self.source), format!("field `{key}`: {msg}"))
    }

    /// The scalar under `key`, if present.
    pub fn scalar(&self, key: &str) -> Result<Option<&str>> {
        match self.entries.get(key) {
            None => Ok(None),
            Some(YamlValue::Scalar(s)) => Ok(Some(s)),
            Some(YamlValue::List(_)) => {
                Err(self.bad(key, "expected a scalar, found a list".into()))
            }
        }
    }

    /// The list under `key` (empty when absent).
    pub fn list(&self, key: &str) -> Result<Vec<String>> {
        match self.entries.get(key) {
            None => Ok(Vec::new()),
            Some(YamlValue::List(l)) => Ok(l.clone()),
            Some(YamlValue::Scalar(s)) => Ok(vec![s.clone()]),
        }
    }

    /// Parses the scalar under `key` as `T`, or returns `default` when absent.
    pub fn get_or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T> {
        match self.scalar(key)? {
            None => Ok(default),
            Some(s) => s
                .parse()
                .map_err(|_| self.bad(key, format!("cannot parse {s:?}"))),
        }
    }

    /// Parses the required scalar under `key` as `T`.
    pub fn get<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        let s = self
            .scalar(key)?
            .ok_or_else(|| self.bad(key, "missing".into()))?;
        s.parse()
            .map_err(|_| self.bad(key, format!("cannot parse {s:?}")))
    }

    /// Parses a Marian boolean (`true`/`false`, also `1`/`0`) under `key`.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool> {
        match self.scalar(key)? {
            None => Ok(default),
            Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(s) => Err(self.bad(key, format!("expected true/false, found {s:?}"))),
        }
    }
}
