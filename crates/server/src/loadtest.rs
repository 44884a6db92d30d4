//! A bounded closed-loop load generator: `clients` tasks each send a request, wait for the
//! answer and send the next, until the deadline; throughput, latency percentiles and errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::Client;

/// The `i`-th request of client `c`: path and JSON body.
pub type MakeRequest = Arc<dyn Fn(usize, usize) -> (String, serde_json::Value) + Send + Sync>;

/// What one load run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Concurrent clients.
    pub clients: usize,
    /// Wall time of the run.
    pub seconds: f64,
    /// Requests answered 200.
    pub ok: usize,
    /// Requests answered otherwise or failed in transport.
    pub errors: usize,
    /// Successful requests per second.
    pub rps: f64,
    /// Median latency of successful requests, milliseconds.
    pub p50_ms: f64,
    /// 99th-percentile latency of successful requests, milliseconds.
    pub p99_ms: f64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

/// The `q`-quantile of sorted `xs` (nearest rank).
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    xs[rank - 1]
}

/// Runs `clients` closed-loop clients for `duration`.
pub async fn run(
    client: &Client,
    clients: usize,
    duration: Duration,
    make: MakeRequest,
) -> LoadReport {
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let client = client.clone();
            let make = make.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0;
                let mut first_error = None;
                let mut i = 0;
                while Instant::now() < deadline {
                    let (path, body) = make(c, i);
                    i += 1;
                    let t = Instant::now();
                    match client.post_json(&path, &body).await {
                        Ok(r) if r.status == 200 => lat.push(t.elapsed().as_secs_f64() * 1e3),
                        Ok(r) => {
                            errors += 1;
                            first_error.get_or_insert(format!("{}: {}", r.status, r.text()));
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e.to_string());
                        }
                    }
                }
                (lat, errors, first_error)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok((l, e, f)) => {
                lat.extend(l);
                errors += e;
                first_error = first_error.or(f);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(format!("client task failed: {e}"));
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    LoadReport {
        clients,
        seconds,
        ok: lat.len(),
        errors,
        rps: lat.len() as f64 / seconds,
        p50_ms: quantile(&lat, 0.5),
        p99_ms: quantile(&lat, 0.99),
        first_error,
    }
}

/// Resident set size of this process in MiB (Linux; `None` elsewhere).
pub fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&xs, 0.5), 50.0);
        assert_eq!(quantile(&xs, 0.99), 99.0);
        assert_eq!(quantile(&xs, 1.0), 100.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
