//! `ralm`: retrieval-augmented language models from the command line.

mod bench;
mod embed;

use clap::{Parser, Subcommand};

/// Retrieval-augmented language models: encoders, indexes, kNN-LM/MT and REALM.
#[derive(Parser)]
#[command(name = "ralm", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed texts with a BERT encoder into a .npy matrix.
    Embed(embed::EmbedArgs),
    /// Measure throughput.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Command::Embed(args) => embed::run(args),
        Command::Bench(args) => bench::run(args),
    }
}
