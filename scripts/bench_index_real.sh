#!/usr/bin/env bash
# Issue 3's index benchmark on real vectors, ralm against FAISS side by side (outside CI).
#   scripts/bench_index_real.sh [vectors|sentences|lm|all|scale]   (default: all)
# vectors: make the vectors (about 20 min of MiniLM and 30 min of SmolLM2 on 2 cores; kept in
#          $WORK, so a second run reuses them)
# sentences: (a) MiniLM sentence embeddings of the Wikipedia corpus, Gutenberg and Reuters,
#          1,000 held-out sentences as queries, k 10, inner product, batches of 100
# lm:      (b) SmolLM2 kNN-LM keys (final-norm hidden states, f16, dim 576) of WikiText-2 valid,
#          1,000 held-out positions as queries, k 32, L2, batches of 64
# scale:   (c) synthetic keys at scale (SCALE_N, default 10M; clustered Gaussian, f16, dim 576),
#          100 queries, k 32, L2, batches of 64: memory and speed only. Both engines stream the
#          keys from the memory-mapped file (ralm builds its indexes on disk under $WORK/scratch),
#          so 10M x 576 keys (11 GiB as f16) fit in 24 GiB; about an hour on 2 cores.
# Settings: WORK (runs/bench-real), SENTENCES (200000: all the corpora give, if fewer),
# LM_TOKENS (all of WikiText-2 valid; or put lm.npy and lm.queries.npy from `ralm knnlm
# export-keys` of any datastore in $WORK), IVF_A, IVF_B and IVF_C (lists of nlist,m,nprobe[/nprobe...][,nbits]), MIN_TIME (seconds
# each queries/s figure is measured over, at least: 2).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${WORK:-runs/bench-real}
data=${RALM_DATA:-../shared/data}
what=${1:-all}
mkdir -p "$work"
ralm=target/release/ralm

# Makes the vectors of workload $1 (sentences, lm or all) that $work does not hold yet.
vectors() {
    cargo build --release -p ralm-cli --bin ralm
    if [ "$1" != lm ] && [ ! -f "$work/sentences.npy" ]; then
        python3 scripts/bench_sentences.py --wiki corpora/wiki/summaries_en-us.json \
            --lm "$data/lm" --keys "${SENTENCES:-200000}" --queries 1000 \
            --out-keys "$work/sentences.txt" --out-queries "$work/sentences.queries.txt"
        for f in sentences.queries sentences; do
            "$ralm" embed --model models/minilm --normalize --batch-size 64 \
                --input "$work/$f.txt" --output "$work/$f.tmp.npy"
            mv "$work/$f.tmp.npy" "$work/$f.npy"
        done
    fi
    if [ "$1" != sentences ] && [ ! -f "$work/lm.npy" ]; then
        limit=()
        [ -n "${LM_TOKENS:-}" ] && limit=(--max-tokens "$LM_TOKENS")
        "$ralm" knnlm build --model models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --f32 \
            --out "$work/lm-datastore" --corpus "$data/lm/wikitext-2/valid.txt" "${limit[@]}" \
            --context 512 --stride 448 --index flat
        "$ralm" knnlm export-keys "$work/lm-datastore" --queries 1000 --seed 1 \
            --out "$work/lm.tmp.npy" --queries-out "$work/lm.queries.npy"
        mv "$work/lm.tmp.npy" "$work/lm.npy"
    fi
}

ivf_flags() {
    for s in $1; do printf -- '--ivf %s ' "$s"; done
}

case "$what" in
    vectors) vectors all ;;
    sentences | lm | all)
        vectors "$what"
        if [ "$what" != lm ]; then
            echo "== (a) MiniLM sentence embeddings, inner product, k 10"
            # shellcheck disable=SC2046
            scripts/bench_index.sh --keys "$work/sentences.npy" \
                --queries "$work/sentences.queries.npy" --metric ip --k 10 --batch 100 \
                --min-time "${MIN_TIME:-2}" \
                $(ivf_flags "${IVF_A:-1024,48,8/16/32 1024,96,8/16/32 1024,96,8/16/32,4}")
        fi
        if [ "$what" != sentences ]; then
            echo "== (b) SmolLM2 kNN-LM keys, L2, k 32"
            # shellcheck disable=SC2046
            scripts/bench_index.sh --keys "$work/lm.npy" --queries "$work/lm.queries.npy" \
                --metric l2 --key-type f16 --k 32 --batch 64 --rerank 128 \
                --min-time "${MIN_TIME:-2}" $(ivf_flags "${IVF_B:-256,64,8/16/32 256,144,8/16/32,4}")
        fi
        ;;
    scale)
        n=${SCALE_N:-10000000}
        if [ ! -f "$work/scale-$n.npy" ]; then
            cargo build --release -p ralm-index --bin ralm-index-bench
            target/release/ralm-index-bench gen --n "$n" --nq 100 --dim 576 --clusters 10000 \
                --seed 1 --f16 --out "$work/scale-$n.npy" --queries "$work/scale-$n.queries.npy"
        fi
        echo "== (c) $n synthetic keys, L2, k 32, streamed"
        # shellcheck disable=SC2046
        scripts/bench_index.sh --keys "$work/scale-$n.npy" --queries "$work/scale-$n.queries.npy" \
            --metric l2 --key-type f16 --k 32 --batch 64 --rerank 128 --stream "$work/scratch" \
            --min-time "${MIN_TIME:-2}" $(ivf_flags "${IVF_C:-4096,64,16}")
        ;;
    *) echo "usage: $0 [vectors|sentences|lm|all|scale]" >&2; exit 2 ;;
esac
