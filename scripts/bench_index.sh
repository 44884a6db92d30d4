#!/usr/bin/env bash
# Index benchmark, ralm vs FAISS, side by side (outside CI).
#   scripts/bench_index.sh --keys K.npy --queries Q.npy --metric ip [--key-type f16] --k 10 \
#       --batch 100 --ivf 1024,64,8 --ivf 1024,96,8,4 --rerank 100   (nlist,m,nprobe[,nbits])
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
"$venv/bin/python" - "$out/ralm.jsonl" "$out/faiss.jsonl" <<'PY'
import json, sys
def load(p):
    rows = {}
    for line in open(p):
        r = json.loads(line)
        rows[(r["index"], r.get("nlist"), r.get("m"), r.get("nbits"), r.get("nprobe"), r.get("rerank"))] = r
    return rows
ralm, faiss = load(sys.argv[1]), load(sys.argv[2])
print(f"{'setting':<28}{'engine':>7}{'build s':>9}{'B/key':>7}{'qps 1t':>10}{'qps 2t':>10}{'recall':>8}")
for key, r in ralm.items():
    f = faiss.get(key)
    name = key[0] if key[0] == "flat" else f"ivfpq {key[1]},{key[2]}x{key[3]},{key[4]} rr={key[5]}"
    for eng, x in (("ralm", r), ("faiss", f)):
        if x:
            print(f"{name:<28}{eng:>7}{x['build_s']:>9.2f}{x['bytes_per_key']:>7}{x['qps_1t']:>10.0f}{x['qps_2t']:>10.0f}{x['recall']:>8.3f}")
    if f:
        print(f"{'':<28}{'ratio':>7}{'':>16}{r['qps_1t']/f['qps_1t']:>10.2f}{r['qps_2t']/f['qps_2t']:>10.2f}")
PY
