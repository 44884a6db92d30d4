//! The adaptive gate on synthetic neighbours: where close neighbours agree on the reference it
//! learns a high λ, where they are far and wrong a low one; save/load keeps its outputs.

use ralm_knn::datastore::Neighbours;
use ralm_knn::knnmt::gate::GATE_CONFIG;
use ralm_knn::knnmt::{Gate, GateConfig, GateExamples, KnnMtParams, TrainOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const K: usize = 4;

/// `n` positions alternating "near" (close neighbours holding the reference, weak MT) and
/// "far" (distant neighbours with other tokens, confident MT). Returns neighbours, targets,
/// log p_MT and which rows are near.
fn synthetic(n: usize, seed: u64) -> (Neighbours, Vec<u32>, Vec<f32>, Vec<bool>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut nb = Neighbours {
        k: K,
        ..Default::default()
    };
    let (mut targets, mut lps, mut near) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let is_near = i % 2 == 0;
        let target = rng.random_range(0..50u32);
        for j in 0..K {
            let d = if is_near {
                rng.random_range(0.5..1.5)
            } else {
                rng.random_range(8.0..12.0)
            };
            nb.scores.push(-d - j as f32 * 0.1);
            nb.tokens.push(if is_near {
                target
            } else {
                100 + rng.random_range(0..20u32)
            });
        }
        targets.push(target);
        lps.push(if is_near { 0.05f32.ln() } else { 0.7f32.ln() });
        near.push(is_near);
    }
    (nb, targets, lps, near)
}

#[test]
fn gate_learns_when_to_trust_neighbours_and_round_trips() {
    let (nb, targets, lps, near) = synthetic(400, 3);
    let knn = KnnMtParams {
        k: K,
        lambda: 0.5,
        temperature: 1.0,
    };
    let (ex, scale) = GateExamples::new(&nb, &targets, &lps, K, knn).unwrap();
    assert!(scale > 0.0 && ex.len() == 400);
    let config = GateConfig {
        feature_k: K,
        hidden: 8,
        distance_scale: scale,
        knn,
    };
    assert_eq!(config.parameters(), 8 * 8 + 8 + 8 + 1);
    let (gate, [before, after]) = Gate::train(&ex, config, TrainOptions::default()).unwrap();
    let best_fixed = (0..=10)
        .map(|i| ex.fixed_loss(i as f32 / 10.0))
        .fold(f64::INFINITY, f64::min);
    assert!(
        after < before && after < best_fixed - 0.1,
        "{before} -> {after}, fixed {best_fixed}"
    );
    let lambdas = gate.lambdas(&nb).unwrap();
    for (l, is_near) in lambdas.iter().zip(&near) {
        if *is_near {
            assert!(*l > 0.8, "near row λ {l}");
        } else {
            assert!(*l < 0.2, "far row λ {l}");
        }
    }

    let dir = tempfile::tempdir().unwrap();
    gate.save(dir.path()).unwrap();
    let loaded = Gate::load(dir.path()).unwrap();
    assert_eq!(loaded.config(), gate.config());
    assert_eq!(loaded.lambdas(&nb).unwrap(), lambdas);

    // A settings file that disagrees with the weights is refused, naming the weights file.
    let wrong = GateConfig {
        hidden: 5,
        ..config
    };
    std::fs::write(
        dir.path().join(GATE_CONFIG),
        serde_json::to_vec(&wrong).unwrap(),
    )
    .unwrap();
    let err = Gate::load(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("gate.safetensors") && err.contains("w1"),
        "{err}"
    );
}
