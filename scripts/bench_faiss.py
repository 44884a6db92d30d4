#!/usr/bin/env python3
"""FAISS side of the index benchmark: the same settings as ralm-index-bench on the same .npy files.

Prints one JSON line per setting (and appends them to --json), fields as ralm-index-bench:
build_s, bytes_per_key, qps_1t, qps_2t, recall (against FAISS exact search).

With --stream the keys are memory-mapped and added a chunk at a time, as ralm-index-bench does
with --stream: exact search keeps them as f16 (IndexScalarQuantizer fp16, so 10M x 576 keys fit in
24 GiB), IVF-PQ trains on a random sample of 256 x nlist keys (16k to 512k: ralm's sample size)
and re-ranks from f16 keys.
"""
import argparse
import json
import time

import faiss
import numpy as np


def qps(index, q, k, batch, threads, min_s):
    """Queries/s: one untimed pass over the query set (it gives the ids and pages data in), then
    whole passes repeated until min_s seconds have passed."""
    faiss.omp_set_num_threads(threads)

    def one_pass():
        return np.concatenate([index.search(q[i:i + batch], k)[1] for i in range(0, len(q), batch)])

    ids = one_pass()
    t = time.perf_counter()
    passes = 0
    while passes == 0 or time.perf_counter() - t < min_s:
        one_pass()
        passes += 1
    return passes * len(q) / (time.perf_counter() - t), ids


STREAM_CHUNK = 65536


def streamed(index, xb, prep):
    """Adds the rows of the memory-mapped xb to index, a chunk at a time."""
    for i in range(0, len(xb), STREAM_CHUNK):
        index.add(prep(xb[i:i + STREAM_CHUNK]))
    return index


def recall(got, want):
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want)]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--metric", choices=["ip", "l2", "cos"], required=True)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--ivf", action="append", default=[],
                    help="nlist,m,nprobe[/nprobe...][,nbits]: nbits 4 is FAISS's fast-scan IVF-PQ")
    ap.add_argument("--rerank", type=int)
    ap.add_argument("--min-time", type=float, default=2.0,
                    help="seconds each queries/s figure is measured over, at least")
    ap.add_argument("--json")
    ap.add_argument("--stream", metavar="DIR",
                    help="memory-map the keys and add them in chunks (DIR: ralm's scratch folder, unused)")
    a = ap.parse_args()

    def prep(x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if a.metric == "cos":
            faiss.normalize_L2(x)
        return x

    xb = np.load(a.keys, mmap_mode="r") if a.stream else prep(np.load(a.keys))
    xq = prep(np.load(a.queries))
    mt = faiss.METRIC_L2 if a.metric == "l2" else faiss.METRIC_INNER_PRODUCT
    fp16 = faiss.ScalarQuantizer.QT_fp16
    n, d = xb.shape
    out = open(a.json, "a") if a.json else None

    def emit(**row):
        row.update(engine="faiss", metric=a.metric, n=n, dim=d, nq=len(xq), k=a.k, batch=a.batch)
        line = json.dumps(row)
        print(line, flush=True)
        if out:
            out.write(line + "\n")

    t = time.perf_counter()
    if a.stream:
        flat = streamed(faiss.IndexScalarQuantizer(d, fp16, mt), xb, prep)
    else:
        flat = faiss.IndexFlat(d, mt)
        flat.add(xb)
    build = time.perf_counter() - t
    q1, exact = qps(flat, xq, a.k, a.batch, 1, a.min_time)
    q2, _ = qps(flat, xq, a.k, a.batch, 2, a.min_time)
    del flat
    emit(index="flat", build_s=build, bytes_per_key=(2 if a.stream else 4) * d, qps_1t=q1,
         qps_2t=q2, recall=1.0)
    for spec in a.ivf:
        nlist, m, nprobes, *rest = spec.split(",")
        nlist, m, nbits = int(nlist), int(m), int(rest[0]) if rest else 8
        faiss.omp_set_num_threads(2)
        t = time.perf_counter()
        quant = faiss.IndexFlat(d, mt)
        if nbits == 4:
            ivf = faiss.IndexIVFPQFastScan(quant, d, nlist, m, 4, mt)
        else:
            ivf = faiss.IndexIVFPQ(quant, d, nlist, m, nbits, mt)
        ivf.cp.seed = 1
        if a.stream:
            sample = np.random.default_rng(1).choice(n, min(n, max(256 * nlist, 16384), 1 << 19), replace=False)
            ivf.train(prep(xb[np.sort(sample)]))
            streamed(ivf, xb, prep)
        else:
            ivf.train(xb)
            ivf.add(xb)
        build = time.perf_counter() - t
        keys16 = None
        for nprobe in map(int, nprobes.split("/")):
            ivf.nprobe = nprobe
            for rr in [None, a.rerank] if a.rerank else [None]:
                index = ivf
                if rr and a.stream:
                    if keys16 is None:
                        keys16 = streamed(faiss.IndexScalarQuantizer(d, fp16, mt), xb, prep)
                    index = faiss.IndexRefine(ivf, keys16)
                    index.k_factor = rr / a.k
                elif rr:
                    index = faiss.IndexRefineFlat(ivf, faiss.swig_ptr(xb))
                    index.k_factor = rr / a.k
                q1, got = qps(index, xq, a.k, a.batch, 1, a.min_time)
                q2, _ = qps(index, xq, a.k, a.batch, 2, a.min_time)
                emit(index="ivfpq", nlist=nlist, m=m, nbits=nbits, nprobe=nprobe, rerank=rr,
                     build_s=build, bytes_per_key=m * nbits // 8 + 8, qps_1t=q1, qps_2t=q2,
                     recall=recall(got, exact))

if __name__ == "__main__":
    main()
