//! Salient-span masking: the entity tagger on a tiny random BERT (its loss against a direct
//! computation, a gradient for every parameter, training to the gold tags, save and load) and
//! salient spans found with it; CoNLL-2003 itself when the shared data is present.

use candle_core::Device;
use ralm_models::bert::{load_tokenizer, Mode};
use ralm_realm::salient::conll::{read_conll, TaggedSentence};
use ralm_realm::salient::tagger::{EntityTagger, TaggerInput, TaggerTrainer, CONLL_LABELS};
use ralm_realm::salient::{SalientSpans, SpanKind};

mod common;

const WORDS: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "paris", "is", "in", "france",
    "berlin", "germany", "the", "capital", "of", "city", "a", "big", "rome", "italy", "##s",
    "visited", "anna", "she", "1990",
];
const MAX_SEQ: usize = 32;

fn sentence(words: &str, tags: &str) -> TaggedSentence {
    TaggedSentence {
        words: words.split(' ').map(String::from).collect(),
        tags: tags.split(' ').map(String::from).collect(),
    }
}

fn data() -> Vec<TaggedSentence> {
    vec![
        sentence("Paris is in France .", "B-LOC O O B-LOC O"),
        sentence("The capital of Germany is Berlin", "O O O B-LOC O B-LOC"),
        sentence("Anna visited Rome , a big city", "B-PER O B-LOC O O O O"),
        sentence("She visited Italys capital", "O O B-LOC O"),
        sentence("Anna visited Paris in 1990", "B-PER O B-LOC O O"),
    ]
}

fn tiny(root: &std::path::Path, seed: u64) -> EntityTagger {
    let (dir, config) = common::tiny_bert(root, WORDS, MAX_SEQ);
    let (tok, path) = load_tokenizer(&dir, MAX_SEQ).unwrap();
    EntityTagger::new_random(&config, tok, &path, &CONLL_LABELS, seed, &Device::Cpu).unwrap()
}

#[test]
fn loss_is_cross_entropy_of_first_wordpieces_and_reaches_every_parameter() {
    let tmp = tempfile::tempdir().unwrap();
    let tagger = tiny(tmp.path(), 3);
    let sentences = data();
    let inputs: Vec<TaggerInput> = sentences
        .iter()
        .map(|s| tagger.prepare(&s.words).unwrap())
        .collect();
    // "Italys" is two wordpieces (italy ##s): only the first is scored.
    assert_eq!(inputs[3].encoding.len(), 2 + 5);
    assert_eq!(inputs[3].first_piece, [Some(1), Some(2), Some(3), Some(5)]);
    let refs: Vec<&TaggerInput> = inputs.iter().collect();
    let tags: Vec<Vec<u32>> = sentences
        .iter()
        .map(|s| tagger.label_ids(&s.tags).unwrap())
        .collect();
    let (loss, tokens) = tagger.loss(&refs, &tags).unwrap();
    assert_eq!(
        tokens,
        inputs.iter().map(|i| i.encoding.len()).sum::<usize>()
    );

    // Direct computation in f64 from the logits (no dropout in the tiny model).
    let logits = tagger
        .logits(&refs, Mode::Train)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let (mut total, mut n) = (0.0f64, 0usize);
    for (i, input) in inputs.iter().enumerate() {
        for (w, p) in input.first_piece.iter().enumerate() {
            let row: Vec<f64> = logits[i][p.unwrap()].iter().map(|&x| x as f64).collect();
            let max = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            total += lse - row[tags[i][w] as usize];
            n += 1;
        }
    }
    let direct = total / n as f64;
    let got = loss.to_scalar::<f32>().unwrap() as f64;
    assert!(
        (got - direct).abs() < 1e-4 * direct.max(1.0),
        "{got} vs {direct}"
    );

    let grads = loss.backward().unwrap();
    let without = common::without_gradient(tagger.body().varmap(), &grads);
    assert!(without.is_empty(), "no gradient for {without:?}");
    let vars = tagger.body().varmap().data().lock().unwrap();
    assert!(vars.keys().any(|n| n == "classifier.weight"));
}

#[test]
fn trains_to_the_gold_tags_and_survives_save_and_load() {
    let tmp = tempfile::tempdir().unwrap();
    let sentences = data();
    let mut trainer = TaggerTrainer::new(tiny(tmp.path(), 5), 1e-2, 5, 150).unwrap();
    let batch: Vec<&TaggedSentence> = sentences.iter().collect();
    let first = trainer.step(&batch).unwrap();
    let mut last = first.clone();
    for _ in 1..150 {
        last = trainer.step(&batch).unwrap();
    }
    assert!(
        first.loss > 1.0 && last.loss < 0.05,
        "{first:?} -> {last:?}"
    );
    let words: Vec<Vec<String>> = sentences.iter().map(|s| s.words.clone()).collect();
    let gold: Vec<Vec<String>> = sentences.iter().map(|s| s.tags.clone()).collect();
    assert_eq!(trainer.tagger().predict(&words).unwrap(), gold);

    let dir = tmp.path().join("tagger");
    trainer.tagger().save(&dir).unwrap();
    // Saving again replaces the directory whole.
    trainer.tagger().save(&dir).unwrap();
    let loaded = EntityTagger::load(&dir, &["O"], 99, &Device::Cpu).unwrap();
    assert_eq!(loaded.labels(), CONLL_LABELS);
    assert_eq!(loaded.predict(&words).unwrap(), gold);

    // Salient spans of raw text use the tagger's entities plus dates.
    let finder = SalientSpans::new(Some(loaded));
    let text = "Anna visited Paris in 1990";
    let spans = finder.find(&[text]).unwrap();
    let found: Vec<(&str, SpanKind)> = spans[0]
        .iter()
        .map(|s| (&text[s.start..s.end], s.kind.clone()))
        .collect();
    assert_eq!(
        found,
        [
            ("Anna", SpanKind::Entity("PER".into())),
            ("Paris", SpanKind::Entity("LOC".into())),
            ("1990", SpanKind::Date),
        ]
    );
}

#[test]
fn unknown_tags_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let tagger = tiny(tmp.path(), 1);
    let e = tagger
        .label_ids(&["B-LOC".into(), "B-DATE".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("B-DATE"), "{e}");
}

#[test]
fn reads_conll_2003() {
    let Some(dir) = common::shared("ner/conll2003") else {
        return;
    };
    let train = read_conll(&dir.join("train.txt")).unwrap();
    let dev = read_conll(&dir.join("dev.txt")).unwrap();
    let test = read_conll(&dir.join("test.txt")).unwrap();
    assert_eq!((train.len(), dev.len(), test.len()), (14_041, 3_250, 3_453));
    assert!(train
        .iter()
        .flat_map(|s| &s.tags)
        .all(|t| CONLL_LABELS.contains(&t.as_str())));
}
