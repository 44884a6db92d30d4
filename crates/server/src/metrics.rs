//! Prometheus metrics kept in memory and rendered as the text exposition format: request
//! counts by route and status, latency histograms by route, batch-size histograms by batcher,
//! and the loaded version of every index and datastore.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds (seconds) of the latency histogram buckets.
const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds of the batch-size histogram buckets.
const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// A cumulative histogram with fixed bucket bounds.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (c, &b) in self.counts.iter_mut().zip(self.bounds) {
            if v <= b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, label: &str) {
        for (c, b) in self.counts.iter().zip(self.bounds) {
            let _ = writeln!(out, "{name}_bucket{{{label},le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{label},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{label}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{label}}} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    batches: BTreeMap<String, Histogram>,
    versions: BTreeMap<(&'static str, String), u64>,
}

/// The server's metrics registry.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// Escapes a label value (`\`, `"` and newlines).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one finished request on `route` with `status` that took `seconds`.
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        let mut m = self.lock();
        *m.requests.entry((route.to_string(), status)).or_default() += 1;
        m.latency
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(LATENCY_BOUNDS))
            .observe(seconds);
    }

    /// Records one batch of `size` requests run by `batcher`.
    pub fn batch(&self, batcher: &str, size: usize) {
        self.lock()
            .batches
            .entry(batcher.to_string())
            .or_insert_with(|| Histogram::new(BATCH_BOUNDS))
            .observe(size as f64);
    }

    /// Sets the loaded version of the `kind` (`qa_index` or `datastore`) called `name`.
    pub fn set_version(&self, kind: &'static str, name: &str, version: u64) {
        self.lock()
            .versions
            .insert((kind, name.to_string()), version);
    }

    /// Number of requests counted on `route` with `status`.
    pub fn request_count(&self, route: &str, status: u16) -> u64 {
        self.lock()
            .requests
            .get(&(route.to_string(), status))
            .copied()
            .unwrap_or(0)
    }

    /// The Prometheus text exposition of everything recorded.
    pub fn render(&self) -> String {
        let m = self.lock();
        let mut out = String::new();
        out.push_str("# HELP ralm_requests_total Requests answered, by route and status.\n");
        out.push_str("# TYPE ralm_requests_total counter\n");
        for ((route, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "ralm_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        out.push_str("# HELP ralm_request_duration_seconds Request latency, by route.\n");
        out.push_str("# TYPE ralm_request_duration_seconds histogram\n");
        for (route, h) in &m.latency {
            let label = format!("route=\"{}\"", escape(route));
            h.render(&mut out, "ralm_request_duration_seconds", &label);
        }
        out.push_str("# HELP ralm_batch_size Requests per batched model run, by batcher.\n");
        out.push_str("# TYPE ralm_batch_size histogram\n");
        for (name, h) in &m.batches {
            let label = format!("batcher=\"{}\"", escape(name));
            h.render(&mut out, "ralm_batch_size", &label);
        }
        out.push_str("# HELP ralm_index_version Loaded version of each index and datastore.\n");
        out.push_str("# TYPE ralm_index_version gauge\n");
        for ((kind, name), v) in &m.versions {
            let _ = writeln!(
                out,
                "ralm_index_version{{kind=\"{kind}\",name=\"{}\"}} {v}",
                escape(name)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.request("/v1/retrieve", 200, 0.003);
        m.request("/v1/retrieve", 200, 0.2);
        m.request("/v1/retrieve", 400, 0.0005);
        m.batch("retrieve:wiki", 3);
        m.set_version("qa_index", "wiki", 2);
        let text = m.render();
        assert!(text.contains("ralm_requests_total{route=\"/v1/retrieve\",status=\"200\"} 2"));
        assert!(text.contains("ralm_requests_total{route=\"/v1/retrieve\",status=\"400\"} 1"));
        assert!(text.contains(
            "ralm_request_duration_seconds_bucket{route=\"/v1/retrieve\",le=\"0.001\"} 1"
        ));
        assert!(text.contains(
            "ralm_request_duration_seconds_bucket{route=\"/v1/retrieve\",le=\"0.005\"} 2"
        ));
        assert!(text.contains(
            "ralm_request_duration_seconds_bucket{route=\"/v1/retrieve\",le=\"+Inf\"} 3"
        ));
        assert!(text.contains("ralm_batch_size_bucket{batcher=\"retrieve:wiki\",le=\"2\"} 0"));
        assert!(text.contains("ralm_batch_size_bucket{batcher=\"retrieve:wiki\",le=\"4\"} 1"));
        assert!(text.contains("ralm_index_version{kind=\"qa_index\",name=\"wiki\"} 2"));
        assert_eq!(m.request_count("/v1/retrieve", 200), 2);
    }
}
