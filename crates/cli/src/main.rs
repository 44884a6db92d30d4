//! The ralm command-line tool.

mod generate;
mod io;
mod knnlm;
mod plot;

use clap::{Parser, Subcommand};

/// Retrieval-augmented language models: REALM question answering, kNN-LM and kNN-MT.
#[derive(Parser)]
#[command(name = "ralm", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// kNN-LM datastores and evaluation.
    #[command(subcommand)]
    Knnlm(knnlm::KnnlmCommand),
    /// Generate text with a causal LM, optionally mixed with a kNN-LM datastore.
    Generate(generate::GenerateArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Command::Knnlm(c) => knnlm::run(&c),
        Command::Generate(a) => generate::run(&a),
    }
}
