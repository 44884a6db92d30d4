#!/usr/bin/env bash
# Pack what the GPU check needs into .gpu/ (git-ignored; the device tool carries it): the CUDA
# `ralm` binary (stripped, gzipped), MiniLM (int8 rows) with its config and tokenizer, SmolLM2's
# tokenizer, the Wikipedia corpus and small data; with EXAMPLES=FILE, the masked sentences of
# `ralm realm examples` for pretrain.sh.
#   scripts/gpu/bundle.sh        (after scripts/build-cuda.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=.gpu
bin=target/cuda/release/ralm
[ -x "$bin" ] || { echo "bundle.sh: $bin missing: run scripts/build-cuda.sh first" >&2; exit 1; }
rm -rf "$out.tmp"; mkdir -p "$out.tmp"/{minilm,smollm2,wiki,data/qa,data/lm}
# Stripped and gzipped: the binary embeds candle's PTX and is over the device tool's 64 MiB.
strip -o "$out.tmp/ralm" "$bin"
gzip -9 "$out.tmp/ralm"
cp models/minilm/{config.json,tokenizer.json,vocab.txt} "$out.tmp/minilm/"
# The real MiniLM for finetune.sh, as int8 rows (23 MB; its f32 weights would not fit).
python3 scripts/gpu/int8_weights.py pack models/minilm/model.safetensors \
  "$out.tmp/minilm/model.int8.safetensors"
gzip -9 -c corpora/wiki/summaries_en-us.json >"$out.tmp/wiki/summaries_en-us.json.gz"
# The CUDA binary needs libcuda.so.1 only to start: the link stub lets it run CPU-only commands here.
stub=$(mktemp -d); toolkit=.cache/ralm/cuda/toolkit-13.0
ln -s "$root/$toolkit/lib/stubs/libcuda.so" "$stub/libcuda.so.1"
LD_LIBRARY_PATH="$stub:$root/$toolkit/lib" "$bin" lm tokenizer \
  --model models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --out "$out.tmp/smollm2/tokenizer.json"
rm -rf "$stub"
data=${RALM_DATA_DIR:-../shared/data}
cp -r "$data/qa/squad-open" "$out.tmp/data/qa/"
cp -r "$data/lm/wikitext-2" "$out.tmp/data/lm/"
cp scripts/gpu/{random_models.py,int8_weights.py} "$out.tmp/"
if [ -n "${EXAMPLES:-}" ]; then
  mkdir -p "$out.tmp/pretrain"
  cp "$EXAMPLES" "$out.tmp/pretrain/examples.jsonl"
fi
rm -rf "$out"; mv "$out.tmp" "$out"
du -sh "$out"/* | sort -h
