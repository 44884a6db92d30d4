#!/usr/bin/env bash
# Issue 2's model benchmarks with the PyTorch baseline measured in the same run (outside CI):
#   scripts/bench_models.sh [ROUNDS]   (default 3)
# Each round runs PyTorch (HF transformers, f32, scripts/bench_torch.py) and then ralm
# (`ralm bench encode`, `ralm bench score`: f32 and quantized weights) on the same shapes, one after the other,
# so machine drift hits both; each ralm line prints its ratio to the PyTorch figure of its round.
# PyTorch comes from a throwaway venv in .cache/ralm/torch-venv, made on first use (about 6 GB:
# the PyPI wheel pulls in the CUDA libraries even for CPU use). Set RALM=path to time another
# ralm binary (default target/release/ralm, built here).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
venv=.cache/ralm/torch-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, transformers, gguf" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch transformers gguf safetensors
fi
ralm=${RALM:-target/release/ralm}
if [ -z "${RALM:-}" ]; then
    cargo build --release -p ralm-cli --bin ralm
fi
"$venv/bin/python" -c "import torch; print('PyTorch', torch.__version__, 'CPU capability', torch.backends.cpu.get_cpu_capability())"
grep -m1 "model name" /proc/cpuinfo || true
for round in $(seq "$rounds"); do
    echo "== round $round"
    enc=$("$venv/bin/python" scripts/bench_torch.py encode --iters 5 | awk '/^TORCH/ {print $3}')
    echo "PyTorch encode: $enc tokens/s"
    "$ralm" bench encode --reference "$enc" | grep -E "^(encode|RESULT)"
    score=$("$venv/bin/python" scripts/bench_torch.py score --iters 3 | awk '/^TORCH/ {print $3}')
    echo "PyTorch score: $score tokens/s"
    "$ralm" bench score --modes both --reference "$score" | grep -E "^(per pass|f32|quantized|RESULT)"
done
