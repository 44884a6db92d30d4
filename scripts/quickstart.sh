#!/usr/bin/env bash
# ralm quickstart: fetch the models and the Wikipedia corpus, build the release binary, index
# the corpus for open-domain QA (reused on later runs), and answer three example questions.
#
#   scripts/quickstart.sh            # everything, from the repository root or anywhere
#   RALM_QUICKSTART_K=3 scripts/quickstart.sh   # passages read per question (default 5)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
k=${RALM_QUICKSTART_K:-5}

step() { printf '\n== %s\n' "$*" >&2; }

step "fetching models and corpus (scripts/setup.sh)"
scripts/setup.sh >/dev/null

step "building ralm (release)"
cargo build --release --quiet -p ralm-cli
ralm="$root/target/release/ralm"

step "indexing the Wikipedia corpus into runs/qa/wiki"
"$ralm" qa index --out runs/qa/wiki --wiki corpora/wiki/summaries_en-us.json

step "asking"
for q in \
  "Who directed the film 2001: A Space Odyssey?" \
  "Who painted the Mona Lisa?" \
  "Which engineer is the Eiffel Tower named after?"; do
  "$ralm" ask --index runs/qa/wiki --k "$k" --snippet 120 "$q"
  echo
done
