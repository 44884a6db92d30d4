//! SQuAD metric behaviour (official evaluation script), DrQA regex matching, DPR has_answer.

use ralm_realm::data::AnswerKind;
use ralm_realm::data::QaExample;
use ralm_realm::metrics::{
    bootstrap_ratio, exact_match, f1_score, first_hit, has_answer, normalize_answer,
    rankings_recall, regex_match, AnswerMatcher, RecallAtK,
};
use ralm_realm::passages::Passage;
use rand::{Rng, SeedableRng};

fn golds(answers: &[&str]) -> Vec<String> {
    answers.iter().map(|s| s.to_string()).collect()
}

#[test]
fn normalisation_matches_the_official_script() {
    assert_eq!(normalize_answer("The  Cat!"), "cat");
    assert_eq!(normalize_answer("  an Apple, a day "), "apple day");
    // Articles only as whole words; punctuation removed before articles.
    assert_eq!(normalize_answer("Theory of the-art"), "theory of theart");
    assert_eq!(normalize_answer("Denver Broncos."), "denver broncos");
    // Only ASCII punctuation is stripped, as with Python's string.punctuation.
    assert_eq!(normalize_answer("24–10"), "24–10");
    assert_eq!(normalize_answer("U.S."), "us");
}

#[test]
fn exact_match_takes_any_gold() {
    let g = golds(&["Denver Broncos", "the Broncos"]);
    assert_eq!(exact_match("broncos", &g), 1.0);
    assert_eq!(exact_match("The Denver Broncos!", &g), 1.0);
    assert_eq!(exact_match("Denver", &g), 0.0);
    assert_eq!(exact_match("anything", &[]), 0.0);
}

#[test]
fn f1_of_partial_overlaps_by_hand() {
    // pred {denver, broncos, team} vs gold {denver, broncos}: P=2/3, R=1 -> F1=0.8
    let g = golds(&["Denver Broncos"]);
    assert!((f1_score("the Denver Broncos team", &g) - 0.8).abs() < 1e-12);
    // pred {in, 10th, century} vs gold {10th, and, 11th, centuries}: one common token,
    // P=1/3, R=1/4 -> F1 = 2/7.
    let g = golds(&["10th and 11th centuries"]);
    assert!((f1_score("in 10th century", &g) - 2.0 / 7.0).abs() < 1e-12);
    // Repeated tokens count only as often as they appear in both (Counter intersection):
    // pred {new, new, york} vs gold {new, york}: common 2, P=2/3, R=1 -> 0.8.
    assert!((f1_score("new new york", &golds(&["New York"])) - 0.8).abs() < 1e-12);
    // Max over golds; no overlap at all is 0; articles alone normalise to nothing.
    let g = golds(&["Carolina Panthers", "Panthers"]);
    assert_eq!(f1_score("Panthers", &g), 1.0);
    assert_eq!(f1_score("Broncos", &g), 0.0);
    assert_eq!(f1_score("the", &g), 0.0);
}

#[test]
fn curatedtrec_regexes_match_case_insensitively_anywhere() {
    let pattern = "Sept?(ember)?|Feb(ruary)?$";
    assert!(regex_match("in SEPTEMBER each year", pattern));
    assert!(regex_match("usually feb", pattern));
    assert!(!regex_match("in march", pattern));
    // `$` is multi-line: end of any line.
    assert!(regex_match(
        "it is held in February\nand again later",
        pattern
    ));
    assert!(regex_match(
        "flew from Long Island",
        r"Long Island|New\s?York|Roosevelt Field$"
    ));
    assert!(regex_match("newyork", r"New\s?York"));
    assert!(!regex_match("anything", "(unclosed"));
}

#[test]
fn has_answer_is_token_sequence_containment() {
    let text = "The Normans were in Normandy in the 10th and 11th centuries.";
    assert!(has_answer(text, &golds(&["10th and 11th centuries"])));
    assert!(has_answer(text, &golds(&["NORMANDY"])));
    // Tokens, not substrings: "Norman" is not a token of the text.
    assert!(!has_answer(text, &golds(&["Norman"])));
    assert!(!has_answer(text, &golds(&["11th and 10th"])));
    // Punctuation is its own token, so "24–10" matches across the dash.
    assert!(has_answer(
        "defeated the Panthers 24–10 to earn",
        &golds(&["24–10"])
    ));
    // NFD: a precomposed accent matches a decomposed one.
    assert!(has_answer("Pelé scored", &golds(&["Pele\u{301}"])));
    // Empty answers never match.
    assert!(!has_answer(text, &golds(&[""])));
}

#[test]
fn regex_matcher_and_recall_at_k() {
    let m = AnswerMatcher::new(&golds(&["Saudi Arabia$"]), AnswerKind::Regex);
    let ranked = ["Mecca is in the Hejaz.", "It lies in saudi arabia", "x"];
    assert_eq!(first_hit(ranked, &m), Some(1));
    let mut r = RecallAtK::new(&[1, 2, 20]);
    r.add(Some(0));
    r.add(Some(1));
    r.add(Some(5));
    r.add(None);
    assert_eq!(r.total(), 4);
    assert_eq!(r.recalls(), vec![(1, 0.25), (2, 0.5), (20, 0.75)]);
}

#[test]
fn python_style_escapes_of_non_ascii_characters_are_literal() {
    // From CuratedTREC: Python's `re` reads `\°` as `°`.
    let pattern = r"\b134\b|56\.7|\b116\b|\b47\b|56\.6\°C";
    assert!(regex_match("it reached 56.6°C in the valley", pattern));
    assert!(regex_match("about 134 degrees", pattern));
    assert!(!regex_match("56x6°C", pattern));
    assert!(regex_match(r"a\b", r"a\\b"));
}

#[test]
fn recall_of_rankings_uses_passage_texts_and_checks_indices() {
    let passages: Vec<Passage> = ["Paris is in France.", "Berlin is in Germany.", "Rome."]
        .iter()
        .enumerate()
        .map(|(i, t)| Passage {
            id: i.to_string(),
            title: "Paris".into(),
            text: t.to_string(),
        })
        .collect();
    let q = |id: &str, answer: &str| QaExample {
        id: id.into(),
        question: "?".into(),
        answers: vec![answer.into()],
        kind: AnswerKind::Text,
        gold_passage: None,
    };
    let questions = vec![q("a", "Germany"), q("b", "Madrid"), q("c", "Rome")];
    let rankings = vec![vec![(0, 2.0), (1, 1.0)], vec![(0, 1.0)], vec![(2, 3.0)]];
    let r = rankings_recall(&questions, &rankings, &passages, &[1, 2]).unwrap();
    assert_eq!(r.recalls(), vec![(1, 1.0 / 3.0), (2, 2.0 / 3.0)]);
    let bad = vec![vec![(7, 1.0)], vec![], vec![]];
    let err = rankings_recall(&questions, &bad, &passages, &[1])
        .unwrap_err()
        .to_string();
    assert!(err.contains("question a"), "{err}");
    assert!(rankings_recall(&questions, &bad[..1], &passages, &[1]).is_err());
}

#[test]
fn bootstrap_ratio_estimates_and_bounds_the_ratio_of_sums() {
    // Accuracy difference on the same items: Σ(right_b − right_a) / Σ tokens = (1 − 1 + 2) / 6.
    let items = [(1.0, 2.0), (-1.0, 1.0), (2.0, 3.0)];
    let i = bootstrap_ratio(&items, 2000, 7).unwrap();
    assert!((i.estimate - 2.0 / 6.0).abs() < 1e-12);
    assert!(
        i.low <= i.estimate && i.estimate <= i.high && i.low < i.high,
        "{i:?}"
    );
    // Seeded: the same interval again.
    assert_eq!(bootstrap_ratio(&items, 2000, 7), Some(i));
    // Every item alike: no spread.
    let same = bootstrap_ratio(&[(0.5, 1.0); 10], 500, 0).unwrap();
    assert_eq!((same.low, same.high), (0.5, 0.5));
    assert_eq!(bootstrap_ratio(&[], 100, 0), None);
    assert_eq!(bootstrap_ratio(&[(1.0, 0.0)], 100, 0), None);
}

#[test]
fn bootstrap_interval_of_a_mean_has_the_normal_width() {
    // 400 draws of N(0.3, 1) (Box–Muller): the mean's 95 % interval is about ±1.96/√400 = ±0.098.
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let items: Vec<(f64, f64)> = (0..400)
        .map(|_| {
            let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
            let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
            (0.3 + z, 1.0)
        })
        .collect();
    let i = bootstrap_ratio(&items, 4000, 3).unwrap();
    let half = (i.high - i.low) / 2.0;
    assert!((0.07..0.13).contains(&half), "{i:?}");
    assert!(i.low < 0.3 && 0.3 < i.high, "{i:?}");
    assert!((i.low + half - i.estimate).abs() < 0.03, "{i:?}");
}
