#!/usr/bin/env bash
# The GPU check of issue 9, run on a machine with an NVIDIA GPU, its driver and the CUDA 13
# libraries (cuBLAS, cuRAND, NVRTC; PyTorch's wheels bring them) and PyTorch + transformers for
# the random weights; no Rust needed. It runs the bundle made by scripts/gpu/bundle.sh:
# GPU-vs-CPU parity, MiniLM encoding (f32, bf16), MLM training, SmolLM2 scoring (bf16, f32),
# exact search over 1M and 10M keys, a short REALM fine-tuning run and a kNN-LM datastore build,
# then prints one table. Steps that would overrun BUDGET_S (default 540 s) are skipped.
#   scripts/gpu/check.sh [BUNDLE (.gpu)] [WORK (/tmp/ralm-gpu)]
set -uo pipefail
bundle=$(cd "${1:-.gpu}" && pwd)
work=${2:-/tmp/ralm-gpu}
mkdir -p "$work"
results=$work/results.txt
: >"$results"
t0=$(date +%s)

libdirs=$(find /usr /opt -xdev \( -name 'libcublas.so.13' -o -name 'libnvrtc.so.13' \
  -o -name 'libcurand.so.10' \) 2>/dev/null | xargs -r -n1 dirname | sort -u | paste -sd:)
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RALM_DATA_DIR=$bundle/data
ralm=$work/ralm
gunzip -c "$bundle/ralm.gz" >"$ralm" && chmod +x "$ralm"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "CUDA libraries from: $libdirs"

# step NAME LIMIT_S COMMAND...: runs one check, keeps its RESULT lines and its status.
step() {
  local name=$1 limit=$2; shift 2
  if [ $(( $(date +%s) - t0 + limit )) -gt "${BUDGET_S:-540}" ]; then
    echo "=== $name: skipped (the ${BUDGET_S:-540} s budget would be exceeded)"
    printf 'STEP %s rc=skipped seconds=0\n' "$name" >>"$results"
    return
  fi
  echo; echo "=== $name: $*"
  local s=$(date +%s.%N)
  # GPU utilisation sampled every 100 ms while the step runs (model loading included).
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 100 \
    >"$work/$name.util" 2>/dev/null &
  local smi=$!
  timeout "$limit" "$@" 2>&1 | tee "$work/$name.log"
  local rc=${PIPESTATUS[0]}
  kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
  local secs; secs=$(awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
  local util; util=$(awk '{ s += $1; n++ } END { if (n) printf "%.0f", s / n; else print "-" }' "$work/$name.util")
  grep '^RESULT ' "$work/$name.log" | sed "s/^RESULT /$name /" >>"$results"
  printf 'STEP %s rc=%s seconds=%.1f gpu_util=%s\n' "$name" "$rc" "$secs" "$util" >>"$results"
}

step models 150 python3 "$bundle/random_models.py" "$bundle" "$work/models"
m=$work/models
step parity 90 "$ralm" --device cuda bench parity --bert "$m/minilm" --llama "$m/smollm2"
step encode-f32 60 "$ralm" --device cuda bench encode --model "$m/minilm" --batch 256 --seq 128 --iters 20 --dtype f32
step encode-bf16 60 "$ralm" --device cuda bench encode --model "$m/minilm" --batch 256 --seq 128 --iters 20 --dtype bf16
step score-bf16 60 "$ralm" --device cuda bench score --model "$m/smollm2" --batch 16 --seq 1024 --iters 5 --modes bf16
step search-1m 60 "$ralm" --device cuda bench search --keys 1000000 --dim 576 --queries 1024 --k 32 --metric l2 --check 64
RALM_GPU_TIMING=1 step search-phases 60 "$ralm" --device cuda bench search --keys 1000000 --dim 576 --queries 1024 --k 32 --metric l2 --check 0 --iters 2
step train-mlm 60 "$ralm" --device cuda bench train --model "$m/minilm" --batch 64 --seq 128 --iters 10
step qa-index 60 "$ralm" --device cuda qa index --no-wiki --with-squad --encoder "$m/minilm" --out "$work/qa" --batch 128
step realm-train 90 "$ralm" --device cuda qa train --index "$work/qa" --encoder "$m/minilm" --out "$work/ft" \
  --questions 64 --batch-questions 8 --k 4 --eval-questions 0 --checkpoint-every 100
step knnlm-build 90 "$ralm" --device cuda knnlm build --model "$m/smollm2" --f32 --out "$work/ds" \
  --corpus "$bundle/data/lm/wikitext-2/valid.txt" --max-tokens 100000 --batch 16 --index flat
step score-f32 60 "$ralm" --device cuda bench score --model "$m/smollm2" --batch 16 --seq 1024 --iters 3 --modes f32
step search-10m 120 "$ralm" --device cuda bench search --keys 10000000 --dim 576 --queries 1024 --k 32 --metric l2 --check 4

echo
echo "## GPU check on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), $(( $(date +%s) - t0 )) s"
echo
echo "| step | status | seconds | GPU busy % | result |"
echo "| --- | --- | --- | --- | --- |"
awk '
  $1 == "STEP" { split($3, r, "="); split($4, s, "="); split($5, u, "="); util[$2] = u[2]; st[$2] = (r[2] == "0" ? "ok" : (r[2] == "skipped" ? "skipped" : "FAILED rc=" r[2])); sec[$2] = s[2]; order[++n] = $2; next }
  { name = $1; $1 = ""; res[name] = res[name] (res[name] == "" ? "" : "; ") substr($0, 2) }
  END { for (i = 1; i <= n; i++) printf "| %s | %s | %s | %s | %s |\n", order[i], st[order[i]], sec[order[i]], util[order[i]], res[order[i]] }
' "$results"
[ -n "${OUT:-}" ] && tar czf "$OUT/gpu-check-logs.tgz" -C "$work" results.txt $(cd "$work" && ls *.log)
exit 0
