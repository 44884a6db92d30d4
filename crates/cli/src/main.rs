//! The `ralm` command-line tool.

mod bench;
mod embed;
mod io;
mod lm;
mod plot;

use clap::{Parser, Subcommand};

/// Retrieval-augmented language models: REALM question answering, kNN-LM and kNN-MT.
#[derive(Parser)]
#[command(name = "ralm", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed texts with a BERT encoder into a .npy matrix.
    Embed(embed::EmbedArgs),
    /// Causal language-model commands.
    Lm(lm::LmArgs),
    /// Speed benchmarks.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Command::Embed(args) => embed::run(args),
        Command::Lm(args) => lm::run(args),
        Command::Bench(args) => bench::run(args),
    }
}
