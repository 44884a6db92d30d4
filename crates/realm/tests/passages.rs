//! Chunking into bounded passages: limits, sentence boundaries, coverage, stable ids, files.

mod common;

use ralm_realm::data::{read_wiki_summaries, Document};
use ralm_realm::passages::{
    build_corpus, read_passages, write_passages, Chunker, Passage, TokenCounter, WordPieceCounter,
    MAX_PASSAGE_WORDPIECES,
};
use ralm_realm::Result;

/// One token per whitespace-separated word.
struct Words;
impl TokenCounter for Words {
    fn count(&self, text: &str) -> Result<usize> {
        Ok(text.split_whitespace().count())
    }
}

/// One token per non-whitespace character (so a long word exceeds any budget).
struct Chars;
impl TokenCounter for Chars {
    fn count(&self, text: &str) -> Result<usize> {
        Ok(text.chars().filter(|c| !c.is_whitespace()).count())
    }
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect()
}

fn doc(id: &str, title: &str, text: &str) -> Document {
    Document {
        id: id.into(),
        title: title.into(),
        text: text.into(),
    }
}

/// Every passage fits, and the passages' texts put together are the document's text.
fn assert_fits_and_covers<C: TokenCounter>(
    chunker: &Chunker<C>,
    limit: usize,
    d: &Document,
    ps: &[Passage],
) {
    for p in ps {
        let n =
            chunker.counter().count(&p.title).unwrap() + chunker.counter().count(&p.text).unwrap();
        assert!(n <= limit, "{} has {n} tokens", p.id);
        assert_eq!(p.title, d.title);
    }
    let joined: String = ps.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(squash(&joined), squash(&d.text), "{} not covered", d.id);
}

#[test]
fn chunks_break_at_sentence_ends_within_the_limit() {
    let sentences: Vec<String> = (0..30)
        .map(|i| format!("Sentence number {i} has exactly seven words."))
        .collect();
    let d = doc("D1", "Two words", &sentences.join("  "));
    let chunker = Chunker::with_max_tokens(Words, 40);
    let ps = chunker.chunk("src", &d).unwrap();
    assert_fits_and_covers(&chunker, 40, &d, &ps);
    // 38 tokens of budget hold 5 seven-word sentences: 30 sentences -> 6 passages.
    assert_eq!(ps.len(), 6);
    for (i, p) in ps.iter().enumerate() {
        assert_eq!(p.id, format!("src:D1:{i}"));
        assert!(p.text.starts_with("Sentence number") && p.text.ends_with("words."));
    }
}

#[test]
fn over_long_sentences_split_on_words_and_over_long_words_on_characters() {
    let long_sentence = (0..25)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let long_word = "x".repeat(70);
    let text = format!("Short one. {long_sentence}. Then {long_word} ends! Last?");
    let d = doc("D2", "T", &text);
    let chunker = Chunker::with_max_tokens(Chars, 31);
    let ps = chunker.chunk("s", &d).unwrap();
    assert_fits_and_covers(&chunker, 31, &d, &ps);
    assert!(ps.iter().any(|p| p.text == "x".repeat(30)), "{ps:?}");
    let words = Chunker::with_max_tokens(Words, 10);
    let ps = words.chunk("s", &d).unwrap();
    assert_fits_and_covers(&words, 10, &d, &ps);
}

#[test]
fn empty_documents_give_no_passages_and_long_titles_are_refused() {
    let chunker = Chunker::with_max_tokens(Words, 10);
    assert!(chunker
        .chunk("s", &doc("E", "t", "  \n "))
        .unwrap()
        .is_empty());
    let err = chunker
        .chunk("s", &doc("Long", "a b c d e f", "text"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("s:Long") && err.contains("title"), "{err}");
}

#[test]
fn passages_file_round_trips_and_bad_lines_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.jsonl");
    let ps = vec![
        Passage {
            id: "a:1:0".into(),
            title: "Title \"quoted\"".into(),
            text: "Line one\nline two ünïcode".into(),
        },
        Passage {
            id: "a:2:0".into(),
            title: String::new(),
            text: "x".into(),
        },
    ];
    write_passages(&path, &ps).unwrap();
    assert_eq!(read_passages(&path).unwrap(), ps);
    let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(leftovers, 1, "temporary file left behind");

    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"id\": \"b\", \"title\": \"t\"}\n");
    std::fs::write(&path, &text).unwrap();
    let err = read_passages(&path).unwrap_err().to_string();
    assert!(
        err.contains("p.jsonl") && err.contains("line 3") && err.contains("text"),
        "{err}"
    );
    let missing = read_passages(&dir.path().join("none.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("none.jsonl"), "{missing}");
}

#[test]
fn real_corpus_fits_288_wordpieces_with_stable_ids() {
    let (Some(tok), Some(squad), Some(wiki)) = (
        common::in_repo("models/minilm/tokenizer.json"),
        common::shared("qa/squad-open/passages.jsonl"),
        common::in_repo("corpora/wiki/summaries_en-us.json"),
    ) else {
        return;
    };
    let chunker = Chunker::new(WordPieceCounter::from_file(&tok).unwrap());
    let squad = read_passages(&squad).unwrap();
    let wiki = read_wiki_summaries(&wiki).unwrap();
    assert_eq!((squad.len(), wiki.len()), (2067, 10033));
    let corpus = build_corpus(&chunker, squad.clone(), &wiki).unwrap();
    let ids: std::collections::HashSet<&str> = corpus.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids.len(), corpus.len(), "duplicate passage ids");
    assert!(corpus.len() >= squad.len() + wiki.len());
    for p in &corpus {
        let n =
            chunker.counter().count(&p.title).unwrap() + chunker.counter().count(&p.text).unwrap();
        assert!(n <= MAX_PASSAGE_WORDPIECES, "{} has {n} wordpieces", p.id);
    }
    // Coverage, document by document, for every squad paragraph and article.
    let squad_docs: Vec<Document> = squad.into_iter().map(Document::from).collect();
    for (source, docs) in [("squad", &squad_docs), ("wiki", &wiki)] {
        let mut rest = corpus
            .iter()
            .filter(|p| p.id.starts_with(source))
            .peekable();
        for d in docs.iter() {
            let prefix = format!("{source}:{}:", d.id);
            let mut parts = Vec::new();
            while let Some(p) = rest.next_if(|p| p.id.starts_with(&prefix)) {
                parts.push(p.clone());
            }
            assert_fits_and_covers(&chunker, MAX_PASSAGE_WORDPIECES, d, &parts);
        }
    }
    // Stable: chunking again (another run, other thread interleavings) gives the same passages.
    let again = chunker.chunk_all("wiki", &wiki[..500]).unwrap();
    let first: Vec<&Passage> = corpus
        .iter()
        .filter(|p| p.id.starts_with("wiki:"))
        .take(again.len())
        .collect();
    assert_eq!(again.iter().collect::<Vec<_>>(), first);
    assert_eq!(corpus[0].id, "squad:squad-0-0:0");
}
