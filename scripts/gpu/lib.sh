# Shared by the GPU scripts (check.sh, finetune.sh, pretrain.sh); sourced, not run.
#   BUNDLE (.gpu, made by bundle.sh), WORK: set by the caller before sourcing.
#   RALM: a `ralm` binary to use instead of the bundle's (a CPU dry run here); DEVICE: cuda.
#   BUDGET_S: the whole script's budget in seconds (default 540).
bundle=$(cd "$BUNDLE" && pwd)
work=$WORK
mkdir -p "$work"
results=$work/results.txt
: >"$results"
t0=$(date +%s)
device=${DEVICE:-cuda}

libdirs=$(find /usr /opt -xdev \( -name 'libcublas.so.13' -o -name 'libnvrtc.so.13' \
  -o -name 'libcurand.so.10' \) 2>/dev/null | xargs -r -n1 dirname | sort -u | paste -sd:)
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RALM_DATA_DIR=$bundle/data
if [ -n "${RALM:-}" ]; then
  ralm=$RALM
else
  ralm=$work/ralm
  gunzip -c "$bundle/ralm.gz" >"$ralm" && chmod +x "$ralm"
fi
have_smi() { command -v nvidia-smi >/dev/null; }
have_smi && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "CUDA libraries from: ${libdirs:-none found}"

# step NAME LIMIT_S COMMAND...: runs one step, keeps its RESULT lines, status and GPU use.
step() {
  local name=$1 limit=$2; shift 2
  if [ $(( $(date +%s) - t0 + limit )) -gt "${BUDGET_S:-540}" ]; then
    echo "=== $name: skipped (the ${BUDGET_S:-540} s budget would be exceeded)"
    printf 'STEP %s rc=skipped seconds=0\n' "$name" >>"$results"
    return
  fi
  echo; echo "=== $name: $*"
  local s=$(date +%s.%N) smi=
  # GPU utilisation sampled every 100 ms while the step runs (model loading included).
  if have_smi; then
    nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 100 \
      >"$work/$name.util" 2>/dev/null &
    smi=$!
  fi
  timeout "$limit" "$@" 2>&1 | tee "$work/$name.log"
  local rc=${PIPESTATUS[0]}
  [ -n "$smi" ] && { kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null; }
  local secs; secs=$(awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
  local util; util=$(awk '{ s += $1; n++ } END { if (n) printf "%.0f", s / n; else print "-" }' \
    "$work/$name.util" 2>/dev/null)
  grep '^RESULT ' "$work/$name.log" | sed "s/^RESULT /$name /" >>"$results"
  printf 'STEP %s rc=%s seconds=%.1f gpu_util=%s\n' "$name" "$rc" "$secs" "${util:--}" >>"$results"
}

# real_minilm DIR: the bundle's MiniLM (int8 rows) unpacked to an f32 HF directory in DIR.
real_minilm() {
  mkdir -p "$1"
  cp "$bundle"/minilm/{config.json,tokenizer.json,vocab.txt} "$1/"
  step unpack 120 python3 "$bundle/int8_weights.py" unpack "$bundle/minilm/model.int8.safetensors" \
    "$1/model.safetensors"
}

# index_corpus MODEL: the squad-open paragraphs plus the Wikipedia passages (squad alone with
# NO_WIKI=1) indexed with MODEL into $work/qa; sets `corpus`, the `qa index` options of the choice.
index_corpus() {
  if [ -n "${NO_WIKI:-}" ]; then
    corpus=(--no-wiki)
  else
    gunzip -c "$bundle/wiki/summaries_en-us.json.gz" >"$work/wiki.json"
    corpus=(--wiki "$work/wiki.json")
  fi
  step qa-index "${INDEX_LIMIT_S:-120}" "$ralm" --device "$device" qa index --with-squad \
    "${corpus[@]}" --encoder "$1" --out "$work/qa" --batch 128
}

# report TITLE: prints the table of the steps run so far.
report() {
  echo
  echo "## $1, $(( $(date +%s) - t0 )) s"
  echo
  echo "| step | status | seconds | GPU busy % | result |"
  echo "| --- | --- | --- | --- | --- |"
  awk '
    $1 == "STEP" { split($3, r, "="); split($4, s, "="); split($5, u, "="); util[$2] = u[2]; st[$2] = (r[2] == "0" ? "ok" : (r[2] == "skipped" ? "skipped" : "FAILED rc=" r[2])); sec[$2] = s[2]; order[++n] = $2; next }
    { name = $1; $1 = ""; res[name] = res[name] (res[name] == "" ? "" : "; ") substr($0, 2) }
    END { for (i = 1; i <= n; i++) printf "| %s | %s | %s | %s | %s |\n", order[i], st[order[i]], sec[order[i]], util[order[i]], res[order[i]] }
  ' "$results"
}
