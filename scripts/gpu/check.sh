#!/usr/bin/env bash
# The GPU check of issue 9, run on a machine with an NVIDIA GPU, its driver and the CUDA 13
# libraries (cuBLAS, cuRAND, NVRTC; PyTorch's wheels bring them) and PyTorch + transformers for
# the random weights; no Rust needed. It runs the bundle made by scripts/gpu/bundle.sh:
# GPU-vs-CPU parity, MiniLM encoding (f32, bf16), MLM training, SmolLM2 scoring (bf16, f32),
# exact search over 1M and 10M keys, a short REALM fine-tuning run and a kNN-LM datastore build,
# then prints one table. Steps that would overrun BUDGET_S (default 540 s) are skipped.
#   scripts/gpu/check.sh [BUNDLE (.gpu)] [WORK (/tmp/ralm-gpu)]
# STEPS="parity encode-f32 ..." runs only the steps named.
set -uo pipefail
BUNDLE=${1:-.gpu} WORK=${2:-/tmp/ralm-gpu}
source "$(dirname "$0")/lib.sh"
want() { [ -z "${STEPS:-}" ] || [[ " $STEPS " == *" $1 "* ]]; }
run_step() { want "$1" && step "$@"; }

run_step models 60 python3 "$bundle/random_models.py" "$bundle" "$work/models"
m=$work/models
run_step parity 60 "$ralm" --device "$device" bench parity --bert "$m/minilm" --llama "$m/smollm2"
run_step encode-f32 30 "$ralm" --device "$device" bench encode --model "$m/minilm" --batch 256 --seq 128 --iters 20 --dtype f32
run_step encode-bf16 30 "$ralm" --device "$device" bench encode --model "$m/minilm" --batch 256 --seq 128 --iters 20 --dtype bf16
run_step score-bf16 30 "$ralm" --device "$device" bench score --model "$m/smollm2" --batch 16 --seq 1024 --iters 5 --modes bf16
run_step search-1m 40 "$ralm" --device "$device" bench search --keys 1000000 --dim 576 --queries 1024 --k 32 --metric l2 --check 64
RALM_GPU_TIMING=1 run_step search-phases 30 "$ralm" --device "$device" bench search --keys 1000000 --dim 576 --queries 1024 --k 32 --metric l2 --check 0 --iters 2
run_step train-mlm 30 "$ralm" --device "$device" bench train --model "$m/minilm" --batch 64 --seq 128 --iters 10
run_step qa-index 30 "$ralm" --device "$device" qa index --no-wiki --with-squad --encoder "$m/minilm" --out "$work/qa" --batch 128
run_step realm-train 60 "$ralm" --device "$device" qa train --index "$work/qa" --encoder "$m/minilm" --out "$work/ft" \
  --questions 64 --batch-questions 8 --k 4 --eval-questions 0 --checkpoint-every 100
run_step knnlm-build 45 "$ralm" --device "$device" knnlm build --model "$m/smollm2" --f32 --out "$work/ds" \
  --corpus "$bundle/data/lm/wikitext-2/valid.txt" --max-tokens 100000 --batch 16 --index flat
run_step score-f32 30 "$ralm" --device "$device" bench score --model "$m/smollm2" --batch 16 --seq 1024 --iters 3 --modes f32
run_step search-10m 100 "$ralm" --device "$device" bench search --keys 10000000 --dim 576 --queries 1024 --k 32 --metric l2 --check 4

report "GPU check on $(have_smi && nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
exit 0
