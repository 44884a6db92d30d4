//! The ralm command-line tool.

mod io;
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
enum Command {}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {}
}
