//! `ralm bench`: throughput measurements against reference numbers.

mod encode;
mod parity;
mod score;
mod search;
mod train;

use clap::{Args, Subcommand};
use std::time::Instant;

/// Arguments of `ralm bench`.
#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    cmd: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// BERT encoder forward-pass throughput (tokens/s).
    Encode(encode::EncodeArgs),
    /// Causal-LM scoring (forward + next-token log-probabilities), f32 and quantized.
    Score(score::ScoreArgs),
    /// Exact batched nearest-neighbour search (queries/s) on --device, checked against the CPU.
    Search(search::SearchArgs),
    /// BERT masked-LM training steps (forward, backward, AdamW).
    Train(train::TrainArgs),
    /// The same models on the CPU and on --device: outputs compared.
    Parity(parity::ParityArgs),
}

/// Runs a `bench` subcommand.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.cmd {
        BenchCommand::Encode(a) => encode::run(a),
        BenchCommand::Score(a) => score::run(a),
        BenchCommand::Search(a) => search::run(a),
        BenchCommand::Train(a) => train::run(a),
        BenchCommand::Parity(a) => parity::run(a),
    }
}

/// Wall-clock and process CPU time of a timed section. On a machine shared with other work the
/// wall clock measures the contention; tokens per CPU-second measure the code.
pub(crate) struct Timer {
    wall: Instant,
    cpu: f64,
}

impl Timer {
    /// Starts timing now.
    pub(crate) fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: process_cpu_seconds(),
        }
    }

    /// `(wall seconds, CPU seconds)` since the start.
    pub(crate) fn elapsed(&self) -> (f64, f64) {
        (
            self.wall.elapsed().as_secs_f64(),
            process_cpu_seconds() - self.cpu,
        )
    }
}

/// User plus system CPU time of this process, all threads.
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut u = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// A fixed linear congruential generator: deterministic pseudo-random inputs keep benchmark
/// runs comparable.
pub(crate) struct Lcg(pub(crate) u32);

impl Lcg {
    /// The next 24-bit value.
    pub(crate) fn next_u24(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        self.0 >> 8
    }

    /// `n` token ids below `vocab`.
    pub(crate) fn ids(&mut self, n: usize, vocab: usize) -> Vec<u32> {
        (0..n).map(|_| self.next_u24() % vocab as u32).collect()
    }
}

/// A `RESULT` line for scripts that collect benchmark tables: name, tokens/s, reference, ratio.
pub(crate) fn result_line(name: &str, tokens: usize, wall: f64, reference: f64) {
    let tps = tokens as f64 / wall;
    println!(
        "RESULT {name} tokens_per_s={tps:.0} reference={reference:.0} ratio={:.3}",
        tps / reference
    );
}

/// One line on throughput: wall tokens/s, tokens per CPU-second, cores used, and the ratio of
/// each to a reference measured on the 2-core machine (reference tokens/s, and per CPU-second
/// assuming the reference kept both cores busy).
pub(crate) fn report(label: &str, tokens: usize, wall: f64, cpu: f64, reference: f64) -> String {
    let (tps, per_cpu) = (tokens as f64 / wall, tokens as f64 / cpu.max(1e-9));
    format!(
        "{label}: {tps:.0} tokens/s wall ({:.2}x reference), {per_cpu:.0} tokens per CPU-second \
         ({:.2}x reference at 2 busy cores), {:.2} cores used",
        tps / reference,
        per_cpu / (reference / 2.0),
        cpu / wall
    )
}
