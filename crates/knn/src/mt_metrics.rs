//! Corpus BLEU and chrF compatible with sacreBLEU's defaults (BLEU: 13a tokenisation, 4-grams,
//! `exp` smoothing, brevity penalty; chrF: character 6-grams, beta 2, whitespace removed).

use std::collections::HashMap;
use std::hash::Hash;

/// Corpus BLEU result.
#[derive(Debug, Clone, PartialEq)]
pub struct Bleu {
    /// The score, 0–100.
    pub score: f64,
    /// Modified n-gram precisions (percent), n = 1..4, after smoothing.
    pub precisions: [f64; 4],
    /// Brevity penalty.
    pub brevity_penalty: f64,
    /// Total hypothesis tokens.
    pub hyp_len: usize,
    /// Total reference tokens.
    pub ref_len: usize,
}

fn is_13a_punct(c: char) -> bool {
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

/// Applies a two-character rewrite left to right without overlaps, like Python's `re.sub`
/// with a pattern of two single-character classes.
fn rewrite_pairs(
    chars: &[char],
    matches: impl Fn(char, char) -> bool,
    out_sep: (bool, bool, bool),
) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        if i + 1 < chars.len() && matches(chars[i], chars[i + 1]) {
            let (before, middle, after) = out_sep;
            if before {
                out.push(' ');
            }
            out.push(chars[i]);
            if middle {
                out.push(' ');
            }
            out.push(chars[i + 1]);
            if after {
                out.push(' ');
            }
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// sacreBLEU's `13a` tokeniser (mteval-v13a): splits punctuation, and periods/commas unless
/// next to digits, and dashes after digits.
pub fn tokenize_13a(line: &str) -> Vec<String> {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut chars: Vec<char> = Vec::with_capacity(line.len() + 2);
    chars.push(' ');
    for c in line.chars() {
        if is_13a_punct(c) {
            chars.extend([' ', c, ' ']);
        } else {
            chars.push(c);
        }
    }
    chars.push(' ');
    let digit = |c: char| c.is_ascii_digit();
    let period_comma = |c: char| c == '.' || c == ',';
    // ([^0-9])([\.,]) -> '\1 \2 '
    let chars = rewrite_pairs(
        &chars,
        |a, b| !digit(a) && period_comma(b),
        (false, true, true),
    );
    // ([\.,])([^0-9]) -> ' \1 \2'
    let chars = rewrite_pairs(
        &chars,
        |a, b| period_comma(a) && !digit(b),
        (true, true, false),
    );
    // ([0-9])(-) -> '\1 \2 '
    let chars = rewrite_pairs(&chars, |a, b| digit(a) && b == '-', (false, true, true));
    let s: String = chars.into_iter().collect();
    s.split_whitespace().map(str::to_string).collect()
}

fn ngram_counts<T: Hash + Eq + Clone>(items: &[T], n: usize) -> HashMap<&[T], usize> {
    let mut counts = HashMap::new();
    if items.len() >= n {
        for w in items.windows(n) {
            *counts.entry(w).or_insert(0) += 1;
        }
    }
    counts
}

/// (matches, hypothesis total) of clipped n-grams of order `n`.
fn clipped<T: Hash + Eq + Clone>(hyp: &[T], reference: &[T], n: usize) -> (usize, usize) {
    let h = ngram_counts(hyp, n);
    let r = ngram_counts(reference, n);
    let matches = h
        .iter()
        .map(|(g, &c)| c.min(r.get(g).copied().unwrap_or(0)))
        .sum();
    (matches, hyp.len().saturating_sub(n - 1))
}

/// Corpus BLEU of `hyps` against one reference each (sacreBLEU defaults).
///
/// Panics if the two slices differ in length (a caller bug, not a data error).
pub fn corpus_bleu<H: AsRef<str>, R: AsRef<str>>(hyps: &[H], refs: &[R]) -> Bleu {
    assert_eq!(hyps.len(), refs.len(), "one reference per hypothesis");
    let mut correct = [0usize; 4];
    let mut total = [0usize; 4];
    let (mut hyp_len, mut ref_len) = (0, 0);
    for (h, r) in hyps.iter().zip(refs) {
        let h = tokenize_13a(h.as_ref());
        let r = tokenize_13a(r.as_ref());
        hyp_len += h.len();
        ref_len += r.len();
        for n in 1..=4 {
            let (m, t) = clipped(&h, &r, n);
            correct[n - 1] += m;
            total[n - 1] += t;
        }
    }
    let brevity_penalty = if hyp_len == 0 {
        0.0
    } else if hyp_len < ref_len {
        (1.0 - ref_len as f64 / hyp_len as f64).exp()
    } else {
        1.0
    };
    let mut precisions = [0f64; 4];
    let mut smooth = 1f64;
    for n in 0..4 {
        if total[n] == 0 {
            break;
        }
        precisions[n] = if correct[n] == 0 {
            smooth *= 2.0;
            100.0 / (smooth * total[n] as f64)
        } else {
            100.0 * correct[n] as f64 / total[n] as f64
        };
    }
    let score = if hyp_len == 0 {
        0.0
    } else {
        let log_sum: f64 = precisions
            .iter()
            .map(|&p| if p == 0.0 { -9_999_999_999.0 } else { p.ln() })
            .sum();
        brevity_penalty * (log_sum / 4.0).exp()
    };
    Bleu {
        score,
        precisions,
        brevity_penalty,
        hyp_len,
        ref_len,
    }
}

/// Corpus chrF (character n-grams up to 6, beta 2, whitespace ignored), 0–100.
///
/// Panics if the two slices differ in length (a caller bug, not a data error).
pub fn corpus_chrf<H: AsRef<str>, R: AsRef<str>>(hyps: &[H], refs: &[R]) -> f64 {
    const ORDER: usize = 6;
    const BETA: f64 = 2.0;
    assert_eq!(hyps.len(), refs.len(), "one reference per hypothesis");
    // Per order: (hypothesis n-grams, reference n-grams, matches).
    let mut stats = [(0usize, 0usize, 0usize); ORDER];
    for (h, r) in hyps.iter().zip(refs) {
        let h: Vec<char> = h.as_ref().chars().filter(|c| !c.is_whitespace()).collect();
        let r: Vec<char> = r.as_ref().chars().filter(|c| !c.is_whitespace()).collect();
        for (n, s) in (1..=ORDER).zip(stats.iter_mut()) {
            let (m, ht) = clipped(&h, &r, n);
            s.0 += ht;
            s.1 += r.len().saturating_sub(n - 1);
            s.2 += m;
        }
    }
    let factor = BETA * BETA;
    let (mut avg_prec, mut avg_rec, mut effective) = (0f64, 0f64, 0usize);
    for &(n_hyp, n_ref, n_match) in &stats {
        if n_hyp > 0 && n_ref > 0 {
            avg_prec += n_match as f64 / n_hyp as f64;
            avg_rec += n_match as f64 / n_ref as f64;
            effective += 1;
        }
    }
    if effective == 0 {
        return 0.0;
    }
    avg_prec /= effective as f64;
    avg_rec /= effective as f64;
    if avg_prec + avg_rec == 0.0 {
        return 0.0;
    }
    100.0 * (1.0 + factor) * avg_prec * avg_rec / (factor * avg_prec + avg_rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_13a_splits_punctuation_but_not_numbers() {
        assert_eq!(tokenize_13a("Hello, world!"), ["Hello", ",", "world", "!"]);
        assert_eq!(
            tokenize_13a("pi is 3.14, e 2,71."),
            ["pi", "is", "3.14", ",", "e", "2,71", "."]
        );
        assert_eq!(
            tokenize_13a("x86-64 (a/b) don't"),
            ["x86", "-", "64", "(", "a", "/", "b", ")", "don't"]
        );
        assert_eq!(
            tokenize_13a("a &amp; b &lt;c&gt;"),
            ["a", "&", "b", "<", "c", ">"]
        );
    }

    #[test]
    fn bleu_hand_cases() {
        let perfect = corpus_bleu(&["the cat sat on the mat ."], &["the cat sat on the mat ."]);
        assert!((perfect.score - 100.0).abs() < 1e-9);
        let empty = corpus_bleu(&[""], &["the cat sat on the mat"]);
        assert_eq!(empty.score, 0.0);
        // 5/6 unigrams, 3/5 bigrams, 2/4 trigrams, 1/3 four-grams.
        let b = corpus_bleu(&["the cat sat on a mat"], &["the cat sat on the mat"]);
        let expect = (500.0f64 / 6.0 * 60.0 * 50.0 * 100.0 / 3.0).powf(0.25);
        assert!((b.score - expect).abs() < 1e-9, "{}", b.score);
        // 4/5 unigrams, 2/4 bigrams, 0/3 trigrams (-> 100/(2*3)), 0/2 four-grams (-> 100/(4*2)).
        let s = corpus_bleu(&["a b c d e"], &["a b x d e"]);
        let expect = (80.0f64 * 50.0 * (100.0 / 6.0) * (100.0 / 8.0)).powf(0.25);
        assert!((s.score - expect).abs() < 1e-9, "{}", s.score);
        // Brevity penalty for a short hypothesis.
        let short = corpus_bleu(&["the cat"], &["the cat sat"]);
        assert!((short.brevity_penalty - (1.0f64 - 1.5).exp()).abs() < 1e-12);
    }

    #[test]
    fn chrf_hand_cases() {
        assert!((corpus_chrf(&["abc def"], &["abc def"]) - 100.0).abs() < 1e-9);
        assert_eq!(corpus_chrf(&[""], &["abc"]), 0.0);
        // Value printed by sacreBLEU's CHRF() for this pair (quoted in the HF metric card).
        let s = corpus_chrf(
            &["The relationship between Obama and Netanyahu is not exactly friendly."],
            &["The ties between Obama and Netanyahu are not particularly friendly."],
        );
        assert!((s - 61.576379378113785).abs() < 1e-9, "{s}");
    }

    /// BLEU of the Bergamot engine's translations of the first 200 dev sentences, as scored by
    /// sacreBLEU 2.6 (`software_ui_dev_first200_bleu` in `../shared/golden/bergamot_enpt_golden.json`).
    #[test]
    fn bleu_matches_sacrebleu_on_golden_translations() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/golden/bergamot_enpt_golden.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!("skipping: {} is absent", path.display());
            return;
        };
        let golden: serde_json::Value = serde_json::from_str(&text).expect("golden JSON");
        let rows = golden["software_ui_dev_first200"].as_array().expect("rows");
        let hyps: Vec<&str> = rows
            .iter()
            .map(|r| r["hyp"].as_str().expect("hyp"))
            .collect();
        let refs: Vec<&str> = rows
            .iter()
            .map(|r| r["ref"].as_str().expect("ref"))
            .collect();
        let bleu = corpus_bleu(&hyps, &refs);
        eprintln!("BLEU {} chrF {}", bleu.score, corpus_chrf(&hyps, &refs));
        assert!((bleu.score - 44.76145787026479).abs() < 1e-2, "{bleu:?}");
    }
}
