//! The ralm command-line tool.

mod ask;
mod io;
mod plot;
mod qa_dense;

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
    /// Answer a question from a QA index (retrieve, read, marginalise).
    Ask(ask::AskArgs),
    /// Open-domain QA: build dense + BM25 indexes, evaluate retrievers and reader.
    Qa(qa_dense::QaArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Command::Ask(a) => ask::run(a),
        Command::Qa(a) => qa_dense::run(a),
    }
}
