//! The `ralm` command-line tool.

mod translate;

use clap::{Parser, Subcommand};

/// Retrieval-augmented language models.
#[derive(Parser)]
#[command(name = "ralm", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Translate sentences (one per line) with a Marian/Bergamot or Hugging Face Marian model.
    Translate(translate::TranslateArgs),
    /// Machine-translation utilities.
    Mt(translate::MtArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Command::Translate(args) => translate::run(args),
        Command::Mt(args) => translate::run_mt(args),
    }
}
