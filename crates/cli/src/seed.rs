//! Seeds of training runs beyond their data order: the dropout masks.

/// Seeds dropout for a training run that has taken `step` updates: a run given the same `--seed`
/// draws the same masks (so an ablation and its baseline differ only by what they ablate), and
/// a resumed run draws masks its first updates did not.
pub fn dropout(seed: u64, step: usize) {
    ralm_models::fast_ops::train::seed_dropout(seed ^ ((step as u64) << 32));
}
