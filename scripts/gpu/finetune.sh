#!/usr/bin/env bash
# REALM fine-tuning for open-domain QA (issue 5) on the real MiniLM, run on the GPU machine from
# the bundle made by scripts/gpu/bundle.sh (its MiniLM travels as int8 rows, see
# int8_weights.py; Python's standard library unpacks it). Steps:
#   1. index the 2,067 squad-open paragraphs plus the 10,033 Wikipedia passages (12,218 chunks);
#   2. `qa train`: the query tower and the extractive reader on the train-article questions,
#      the first GOLD_STEPS updates on the gold paragraph only;
#   3. `qa eval`: recall@1/5/20 and the extractive reader's EM/F1 with BM25, zero-shot and
#      fine-tuned retrieval, on the eval-article questions.
#   scripts/gpu/finetune.sh [BUNDLE (.gpu)] [WORK (/tmp/ralm-ft)]
# Settings (environment): QUESTIONS (0 = all 3,834), EPOCHS (1), GOLD_STEPS (120), LR (1e-4),
# QUERY_LR (1e-5), EVAL_LIMIT (questions read by the reader: 1331 = all), NO_WIKI=1 (squad passages only),
# BUDGET_S (540), INDEX_LIMIT_S (120), TRAIN_LIMIT_S (300), EVAL_LIMIT_S (150); RALM and DEVICE
# as in lib.sh.
set -uo pipefail
BUNDLE=${1:-.gpu} WORK=${2:-/tmp/ralm-ft}
source "$(dirname "$0")/lib.sh"

m=$work/minilm
real_minilm "$m"

index_corpus "$m"

step realm-finetune "${TRAIN_LIMIT_S:-300}" "$ralm" --device "$device" qa train --index "$work/qa" \
  --encoder "$m" --out "$work/ft" --questions "${QUESTIONS:-0}" --epochs "${EPOCHS:-1}" \
  --batch-questions 8 --k 4 --gold-steps "${GOLD_STEPS:-120}" --lr "${LR:-1e-4}" \
  --query-lr "${QUERY_LR:-1e-5}" --warmup 30 --checkpoint-every 120 --eval-questions 200

step qa-eval "${EVAL_LIMIT_S:-150}" "$ralm" --device "$device" qa eval --index "$work/qa" --encoder "$m" \
  --reader extractive --checkpoint "$work/ft" --k 5 --reader-limit "${EVAL_LIMIT:-1331}" \
  --json-out "$work/eval.json"

report "REALM fine-tuning on $(have_smi && nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
exit 0
