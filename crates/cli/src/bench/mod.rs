//! `ralm bench`: throughput measurements against reference numbers.

mod encode;
mod score;

use clap::{Args, Subcommand};

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
}

/// Runs a `bench` subcommand.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.cmd {
        BenchCommand::Encode(a) => encode::run(a),
        BenchCommand::Score(a) => score::run(a),
    }
}
