#!/usr/bin/env python3
"""Sentences for the real-vector index benchmark (benchmark tooling, standard library only).

Splits the Wikipedia corpus (`{title: {extract, ...}}` JSON), the Gutenberg books and the Reuters
archive of ../shared/data/lm into sentences of 5 to 60 words, drops duplicates, shuffles them with
a fixed seed and writes the first --keys to KEYS and the next --queries to QUERIES, one per line.

    bench_sentences.py --wiki corpora/wiki/summaries_en-us.json --lm ../shared/data/lm \
        --keys 200000 --queries 1000 --out-keys keys.txt --out-queries queries.txt
"""
import argparse
import json
import random
import re
import sys
import tarfile
from pathlib import Path

SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def sentences(text):
    """Sentences of 5 to 60 words in `text`, whitespace (line wraps included) collapsed."""
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        for s in SENTENCE_END.split(flat):
            if 5 <= len(s.split()) <= 60:
                yield s


def wiki(path):
    for page in json.loads(Path(path).read_text()).values():
        yield from sentences(page.get("extract") or "")


def gutenberg(folder):
    for book in sorted(Path(folder).glob("*.txt")):
        yield from sentences(book.read_text(encoding="utf-8", errors="replace"))


def reuters(archive):
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and parts[-2] in ("training", "test"):
                # A story is a title line, then its body with indented paragraphs.
                body = tar.extractfile(member).read().decode("latin-1").split("\n", 1)[-1]
                yield from sentences(re.sub(r"\n {4,}", "\n\n", body))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wiki", required=True)
    ap.add_argument("--lm", required=True, help="the lm/ folder of the shared data")
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-keys", required=True)
    ap.add_argument("--out-queries", required=True)
    a = ap.parse_args()
    lm = Path(a.lm)
    seen, found = set(), {}
    for name, source in (
        ("wikipedia", wiki(a.wiki)),
        ("gutenberg", gutenberg(lm / "gutenberg")),
        ("reuters", reuters(lm / "reuters" / "reuters.tar.gz")),
    ):
        kept = [s for s in source if not (s in seen or seen.add(s))]
        found[name] = kept
        print(f"{name}: {len(kept)} sentences", file=sys.stderr)
    pool = [s for kept in found.values() for s in kept]
    random.Random(a.seed).shuffle(pool)
    if len(pool) <= a.queries:
        sys.exit(f"only {len(pool)} sentences: fewer than --queries {a.queries}")
    queries, keys = pool[: a.queries], pool[a.queries : a.queries + a.keys]
    Path(a.out_keys).write_text("\n".join(keys) + "\n")
    Path(a.out_queries).write_text("\n".join(queries) + "\n")
    print(f"{len(keys)} key sentences, {len(queries)} query sentences", file=sys.stderr)


if __name__ == "__main__":
    main()
