//! `ralm ask "question"`: retrieve, read (generative reader, or a fine-tuned extractive one with
//! `--reader <ralm qa train output>`), marginalise, print.

use std::path::PathBuf;

use clap::Args;
use ralm_realm::ask::AskResult;

use crate::qa_dense::{ModelArgs, ReaderArgs};

/// Runner-up answers printed after the best one (all of them are in `--json`).
const OTHER_ANSWERS: usize = 4;

/// Answer a question from the QA index.
#[derive(Args)]
pub struct AskArgs {
    /// The question.
    question: String,
    /// QA index directory (build it with `ralm qa index`).
    #[arg(long, default_value = "runs/qa/wiki")]
    index: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Characters of each evidence passage to print.
    #[arg(long, default_value_t = 160)]
    snippet: usize,
    #[command(flatten)]
    models: ModelArgs,
    #[command(flatten)]
    reader: ReaderArgs,
}

/// Runs `ralm ask`.
pub fn run(a: AskArgs) -> anyhow::Result<()> {
    let system = a.reader.system(&a.index, &a.models, true)?.system;
    let result = system.ask(&a.question, a.reader.k, a.reader.retriever)?;
    for w in &result.warnings {
        eprintln!("warning: {w}");
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_text(&result, a.snippet);
    }
    Ok(())
}

fn snippet(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

fn print_text(r: &AskResult, chars: usize) {
    println!("Q: {}", r.question);
    match &r.answer {
        Some(a) => println!("A: {}  (p = {:.3})", a.text, a.prob),
        None => println!("A: (no answer)"),
    }
    if r.answers.len() > 1 {
        let others: Vec<String> = r.answers[1..]
            .iter()
            .take(OTHER_ANSWERS)
            .map(|a| format!("{} ({:.3})", a.text, a.prob))
            .collect();
        println!("   also: {}", others.join(", "));
    }
    println!("Evidence ({:?} retriever):", r.retriever);
    for (i, e) in r.evidence.iter().enumerate() {
        println!(
            "  [{}] {} — score {:.3}, BM25 {:.1}, p(z|x) {:.3}, reader: {:?}",
            i + 1,
            e.title,
            e.score,
            e.bm25,
            e.prob,
            e.reader_answer
        );
        println!("      {}", snippet(&e.text, chars));
    }
}
