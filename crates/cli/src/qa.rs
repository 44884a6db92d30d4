//! `ralm qa`: build passage corpora and BM25 indexes, evaluate retrieval recall.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use ralm_realm::bm25::Bm25Index;
use ralm_realm::data::{
    read_jsonl_field, read_text_document, read_wiki_summaries, repo_root, shared_data_dir,
    split_by_article, Dataset, Document, SQUAD_EVAL_ARTICLES,
};
use ralm_realm::metrics::rankings_recall;
use ralm_realm::passages::{
    build_corpus, read_passages, write_passages, Chunker, WordPieceCounter,
};

#[derive(Subcommand)]
pub(crate) enum QaCommand {
    /// Chunk squad-open paragraphs and Wikipedia summaries (plus optional extra documents)
    /// into passages of at most 288 wordpieces.
    BuildCorpus(BuildCorpusArgs),
    /// Build a BM25 index over a passages file.
    Bm25(Bm25Args),
    /// Measure retrieval recall@k on a QA dataset.
    EvalRetrieval(EvalRetrievalArgs),
}

const DEFAULT_PASSAGES: &str = "runs/qa/passages.jsonl";
const DEFAULT_INDEX: &str = "runs/qa/bm25";

fn squad_passages_path() -> PathBuf {
    shared_data_dir().join("qa/squad-open/passages.jsonl")
}

#[derive(Args)]
pub(crate) struct BuildCorpusArgs {
    /// Output passages JSONL.
    #[arg(long, default_value = DEFAULT_PASSAGES)]
    out: PathBuf,
    /// squad-open paragraphs `{id, title, text}` (default: the shared data set).
    #[arg(long)]
    squad_passages: Option<PathBuf>,
    /// Wikipedia summaries JSON (default: corpora/wiki/summaries_en-us.json in the repository).
    #[arg(long)]
    wiki: Option<PathBuf>,
    /// Leave the Wikipedia distractors out.
    #[arg(long)]
    no_wiki: bool,
    /// Extra documents from a JSONL file, text taken from `--field`.
    #[arg(long, requires = "field")]
    jsonl: Option<PathBuf>,
    /// The JSONL field holding each extra document's text.
    #[arg(long)]
    field: Option<String>,
    /// Extra plain-text files, one document each.
    #[arg(long, num_args = 1..)]
    text: Vec<PathBuf>,
    /// BERT tokenizer.json used to count wordpieces (default: models/minilm/tokenizer.json).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct Bm25Args {
    /// Passages JSONL to index.
    #[arg(long, default_value = DEFAULT_PASSAGES)]
    passages: PathBuf,
    /// Index directory to create (replaced if it already holds an index).
    #[arg(long, default_value = DEFAULT_INDEX)]
    index: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum Retriever {
    /// Lexical BM25 over a tantivy index.
    Bm25,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Split {
    /// Every question.
    All,
    /// squad-open questions of the training articles.
    Train,
    /// squad-open questions of the held-out articles.
    Eval,
}

#[derive(Args)]
pub(crate) struct EvalRetrievalArgs {
    #[arg(long, value_enum, default_value = "bm25")]
    retriever: Retriever,
    /// squad-open, entityquestions, webquestions or curatedtrec.
    #[arg(long, default_value = "squad-open")]
    dataset: Dataset,
    /// Which questions: train/eval split by article (squad-open only). Default: eval for
    /// squad-open, all otherwise.
    #[arg(long, value_enum)]
    split: Option<Split>,
    /// Recall cut-offs.
    #[arg(long, value_delimiter = ',', default_value = "1,5,20")]
    k: Vec<usize>,
    /// Passages JSONL the index was built from.
    #[arg(long, default_value = DEFAULT_PASSAGES)]
    passages: PathBuf,
    /// BM25 index directory.
    #[arg(long, default_value = DEFAULT_INDEX)]
    index: PathBuf,
    /// Shared data directory (default: ../shared/data beside the repository).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Seed of the by-article split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of squad-open articles held out for evaluation.
    #[arg(long, default_value_t = SQUAD_EVAL_ARTICLES)]
    eval_articles: usize,
    /// Evaluate only the first N questions.
    #[arg(long)]
    limit: Option<usize>,
}

/// Runs `ralm qa`.
pub(crate) fn run(cmd: QaCommand) -> anyhow::Result<()> {
    match cmd {
        QaCommand::BuildCorpus(a) => build_corpus_cmd(a),
        QaCommand::Bm25(a) => bm25_cmd(a),
        QaCommand::EvalRetrieval(a) => eval_retrieval_cmd(a),
    }
}

fn create_parent(path: &Path) -> anyhow::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
        }
        _ => Ok(()),
    }
}

fn build_corpus_cmd(a: BuildCorpusArgs) -> anyhow::Result<()> {
    let tokenizer = a
        .tokenizer
        .unwrap_or_else(|| repo_root().join("models/minilm/tokenizer.json"));
    let chunker = Chunker::new(WordPieceCounter::from_file(&tokenizer)?);
    let squad = read_passages(&a.squad_passages.unwrap_or_else(squad_passages_path))?;
    let wiki = if a.no_wiki {
        Vec::new()
    } else {
        read_wiki_summaries(
            &a.wiki
                .unwrap_or_else(|| repo_root().join("corpora/wiki/summaries_en-us.json")),
        )?
    };
    let started = Instant::now();
    let (n_squad, n_wiki) = (squad.len(), wiki.len());
    let mut corpus = build_corpus(&chunker, squad, &wiki)?;
    if let (Some(path), Some(field)) = (&a.jsonl, &a.field) {
        let docs: Vec<Document> = read_jsonl_field(path, field)?
            .into_iter()
            .enumerate()
            .map(|(i, text)| Document {
                id: i.to_string(),
                title: String::new(),
                text,
            })
            .collect();
        corpus.extend(chunker.chunk_all("jsonl", &docs)?);
    }
    let texts = a
        .text
        .iter()
        .map(|p| read_text_document(p))
        .collect::<Result<Vec<_>, _>>()?;
    corpus.extend(chunker.chunk_all("text", &texts)?);
    create_parent(&a.out)?;
    write_passages(&a.out, &corpus)?;
    println!(
        "{} passages from {n_squad} squad paragraphs, {n_wiki} wikipedia articles, {} extra documents in {:.1}s -> {}",
        corpus.len(),
        a.jsonl.is_some() as usize + texts.len(),
        started.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

fn bm25_cmd(a: Bm25Args) -> anyhow::Result<()> {
    create_parent(&a.index)?;
    let bar = crate::progress::bar(
        0,
        "indexing {bar:40} {pos}/{len} passages {per_sec} eta {eta}",
    );
    let started = Instant::now();
    let manifest = Bm25Index::build(&a.passages, &a.index, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish();
    println!(
        "indexed {} passages in {:.1}s -> {}",
        manifest.passages,
        started.elapsed().as_secs_f64(),
        a.index.display()
    );
    Ok(())
}

fn eval_retrieval_cmd(a: EvalRetrievalArgs) -> anyhow::Result<()> {
    if a.k.is_empty() || a.k.contains(&0) {
        bail!("--k needs positive cut-offs");
    }
    let data_dir = a.data_dir.unwrap_or_else(shared_data_dir);
    let mut questions = a.dataset.load(&data_dir)?;
    let default_split = if a.dataset == Dataset::SquadOpen {
        Split::Eval
    } else {
        Split::All
    };
    match (a.dataset, a.split.unwrap_or(default_split)) {
        (_, Split::All) => {}
        (Dataset::SquadOpen, split) => {
            let squad = read_passages(&data_dir.join("qa/squad-open/passages.jsonl"))?;
            let s = split_by_article(&questions, &squad, a.eval_articles, a.seed)?;
            println!(
                "split seed {}: {} train articles ({} questions), {} eval articles ({} questions)",
                a.seed,
                s.train_articles.len(),
                s.train.len(),
                s.eval_articles.len(),
                s.eval.len()
            );
            questions = if split == Split::Train {
                s.train
            } else {
                s.eval
            };
        }
        _ => bail!("--split train/eval exists only for squad-open; use --split all"),
    }
    if let Some(n) = a.limit {
        questions.truncate(n);
    }
    let passages = read_passages(&a.passages)?;
    let k_max = a.k.iter().copied().max().unwrap_or(1);
    let ranked = match a.retriever {
        Retriever::Bm25 => {
            let index = Bm25Index::open(&a.index, &a.passages)?;
            let texts: Vec<String> = questions.iter().map(|q| q.question.clone()).collect();
            let started = Instant::now();
            let ranked = index.search_batch(&texts, k_max)?;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "bm25: {} questions over {} passages in {secs:.2}s ({:.0} questions/s, {} threads)",
                texts.len(),
                passages.len(),
                texts.len() as f64 / secs,
                rayon::current_num_threads()
            );
            ranked
        }
    };
    let recall = rankings_recall(&questions, &ranked, &passages, &a.k)?;
    for (k, r) in recall.recalls() {
        println!("recall@{k}: {:.4} ({} questions)", r, recall.total());
    }
    Ok(())
}
