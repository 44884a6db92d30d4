//! The ralm command-line tool.

use clap::{Parser, Subcommand};

mod qa;

/// Retrieval-augmented language models: REALM and kNN-LM/MT.
#[derive(Parser)]
#[command(name = "ralm", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open-domain QA: passage corpora, BM25 indexes, retrieval evaluation.
    Qa(qa::QaArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Command::Qa(args) => qa::run(args),
    }
}
