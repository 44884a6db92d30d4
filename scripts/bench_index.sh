#!/usr/bin/env bash
# Index benchmark, ralm vs FAISS, side by side (outside CI).
#   scripts/bench_index.sh --keys K.npy --queries Q.npy --metric ip [--key-type f16] --k 10 \
#       --batch 100 --ivf 1024,64,8/32 --ivf 1024,96,8,4 --rerank 100
#   (--ivf nlist,m,nprobe[/nprobe...][,nbits]: one build per --ivf, searched at each nprobe)
# Prints both engines side by side, the two compared at equal recall, and writes
# .cache/ralm/bench/recall-qps.svg (scripts/bench_report.py).
# Creates a throwaway venv with faiss-cpu + numpy in .cache/ralm/faiss-venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/ralm/faiss-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet faiss-cpu numpy
fi
out=.cache/ralm/bench
mkdir -p "$out"
rm -f "$out/ralm.jsonl" "$out/faiss.jsonl"
cargo build --release -p ralm-index --bin ralm-index-bench
target/release/ralm-index-bench "$@" --json "$out/ralm.jsonl"
# FAISS takes the same arguments except the key type (it always searches f32 keys).
faiss_args=()
skip=0
for a in "$@"; do
    if [ "$skip" = 1 ]; then skip=0; continue; fi
    if [ "$a" = "--key-type" ]; then skip=1; continue; fi
    faiss_args+=("$a")
done
"$venv/bin/python" scripts/bench_faiss.py "${faiss_args[@]}" --json "$out/faiss.jsonl"
python3 scripts/bench_report.py "$out/ralm.jsonl" "$out/faiss.jsonl" --plot "$out/recall-qps.svg"
