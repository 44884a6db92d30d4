//! Seeded dropout: the masks drawn after `seed_dropout` depend only on the seed and the order of
//! the calls. One test in its own process, since the stream is process-wide.

use candle_core::{Device, Tensor};
use ralm_models::fast_ops::train::{dropout, seed_dropout};

fn masks(x: &Tensor, calls: usize) -> Vec<Vec<f32>> {
    (0..calls)
        .map(|_| {
            dropout(x, 0.25)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect()
}

#[test]
fn a_seed_repeats_the_masks_in_order_and_another_seed_does_not() {
    let x = Tensor::ones((16, 256), candle_core::DType::F32, &Device::Cpu).unwrap();
    seed_dropout(7);
    let first = masks(&x, 3);
    seed_dropout(7);
    let again = masks(&x, 3);
    assert_eq!(first, again);
    // Each call draws a new mask, dropping about a quarter and scaling the rest by 4/3.
    assert_ne!(first[0], first[1]);
    for mask in &first {
        let dropped = mask.iter().filter(|&&v| v == 0.0).count() as f64 / mask.len() as f64;
        assert!((dropped - 0.25).abs() < 0.03, "dropped {dropped}");
        assert!(mask
            .iter()
            .all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-6));
    }
    seed_dropout(8);
    assert_ne!(masks(&x, 1)[0], first[0]);
    // Neighbouring seeds and calls do not share masks (seed 7's second is not seed 8's first).
    seed_dropout(6);
    assert_ne!(masks(&x, 2)[1], first[0]);
}
