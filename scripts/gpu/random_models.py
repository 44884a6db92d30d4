"""Random-weight MiniLM- and SmolLM2-shaped models for the GPU check (scripts/gpu/check.sh).

The GPU machine has HF transformers and PyTorch but cannot fetch the real weights, and the
benchmarks' PyTorch reference points were measured on random weights of the same shapes.
Usage: python3 random_models.py BUNDLE OUT   (BUNDLE holds the carried config/tokenizer files)
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

bundle, out = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)

bert_dir = out / "minilm"
bert_dir.mkdir(parents=True, exist_ok=True)
cfg = BertConfig(**json.loads((bundle / "minilm" / "config.json").read_text()))
BertModel(cfg).float().save_pretrained(bert_dir)
for name in ("tokenizer.json", "vocab.txt"):
    shutil.copy(bundle / "minilm" / name, bert_dir / name)

llama_dir = out / "smollm2"
llama_dir.mkdir(parents=True, exist_ok=True)
# SmolLM2-135M's hyper-parameters (as its GGUF metadata gives them).
lcfg = LlamaConfig(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    max_position_embeddings=8192,
    tie_word_embeddings=True,
)
LlamaForCausalLM(lcfg).float().save_pretrained(llama_dir)
shutil.copy(bundle / "smollm2" / "tokenizer.json", llama_dir / "tokenizer.json")
print(f"random models written under {out}")
