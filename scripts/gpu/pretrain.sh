#!/usr/bin/env bash
# REALM pre-training (issue 6) of the real MiniLM on the GPU machine, from the bundle of
# scripts/gpu/bundle.sh made with EXAMPLES=FILE (masked sentences from `ralm realm examples`
# over the squad-open plus Wikipedia index: the tagger stays on the CPU machine, its sentences
# travel). Steps:
#   1. index the squad-open paragraphs plus the Wikipedia passages (12,218) with MiniLM;
#   2. two pre-training runs side by side, same examples and seed: the index refreshed every
#      REFRESH_EVERY updates ("refresh"), and the stale-index ablation ("stale"); meanwhile
#      the recall of MiniLM as it starts;
#   3. recall@1/5/20 on the squad-open eval questions with each run's last checkpoint: the
#      index re-embedded by its document tower, questions by its input tower.
#   scripts/gpu/pretrain.sh [BUNDLE (.gpu)] [WORK (/tmp/ralm-pt)]
# Settings (environment), defaults those of the H100 run in docs/realm-pretraining.md:
# SENTENCES (2400), EVAL_SENTENCES (200), BATCH (4), K (8), MLM_WARMUP (800), REFRESH_EVERY
# (10), CHECKPOINT_EVERY (100), TRAIN_LIMIT_S (280), RECALL_LIMIT (questions, 0 = all),
# RECALL_LIMIT_S (80), INDEX_LIMIT_S (default 120 for the first index, 60 for the re-embedded
# ones), NO_WIKI=1 (squad passages only), OUT (a folder for pretrain.tgz: logs, plots, recall);
# BUDGET_S, RALM and DEVICE as in lib.sh. A training step keeps every row's activations (about
# 12 GB at BATCH 4, K 8): the two runs at BATCH 8 outgrew an 80 GB H100.
set -uo pipefail
BUNDLE=${1:-.gpu} WORK=${2:-/tmp/ralm-pt}
source "$(dirname "$0")/lib.sh"

examples=$bundle/pretrain/examples.jsonl
[ -f "$examples" ] || { echo "pretrain.sh: $examples missing: bundle with EXAMPLES=FILE" >&2; exit 1; }
m=$work/minilm
real_minilm "$m"
index_corpus "$m"

# pretrain NAME REFRESH_EVERY: one pre-training run into $work/NAME.
pretrain() {
  step "$1" "${TRAIN_LIMIT_S:-280}" "$ralm" --device "$device" realm pretrain --index "$work/qa" \
    --encoder "$m" --examples "$examples" --out "$work/$1" --sentences "${SENTENCES:-2400}" \
    --eval-sentences "${EVAL_SENTENCES:-200}" --batch "${BATCH:-4}" --k "${K:-8}" \
    --mlm-warmup "${MLM_WARMUP:-800}" --refresh-every "$2" \
    --checkpoint-every "${CHECKPOINT_EVERY:-100}" --warmup 20
}

# recall NAME INDEX DOCS INPUT: retrieval recall on the squad-open eval questions.
recall() {
  step "recall-$1" "${RECALL_LIMIT_S:-80}" "$ralm" --device "$device" qa eval --index "$2" \
    --encoder "$3" --query-encoder "$4" --reader-limit 0 --limit "${RECALL_LIMIT:-0}" \
    --json-out "$work/recall-$1.json"
}

# recall_of NAME: recall with the towers of run NAME's last checkpoint.
recall_of() {
  local c=$work/$1/checkpoint
  [ -d "$c/docs" ] || { echo "=== recall-$1: no checkpoint"; return; }
  step "index-$1" "${INDEX_LIMIT_S:-60}" "$ralm" --device "$device" qa index --with-squad "${corpus[@]}" \
    --encoder "$c/docs" --out "$work/qa-$1" --batch 128
  recall "$1" "$work/qa-$1" "$c/docs" "$c/input"
}

pretrain refresh "${REFRESH_EVERY:-10}" &
pretrain stale 0 &
recall minilm "$work/qa" "$m" "$m" &
wait
recall_of refresh &
recall_of stale &
wait

for run in refresh stale; do
  grep -h '"eval_accuracy"' "$work/$run/train.jsonl" 2>/dev/null | sed "s/^/$run /"
done
# Logs, plots and recall results in one file (the device tool brings back few files).
if [ -n "${OUT:-}" ]; then
  (cd "$work" && tar czf "$OUT/pretrain.tgz" --ignore-failed-read ./*.log ./recall-*.json results.txt \
    {refresh,stale}/{train.jsonl,config.json,*.svg} 2>/dev/null)
fi
report "REALM pre-training on $(have_smi && nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
exit 0
