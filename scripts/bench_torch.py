"""PyTorch (HF transformers, float32, CPU) side of `scripts/bench_models.sh`: the same shapes
and inputs as `ralm bench encode` and `ralm bench score`, timed the same way (one warm-up pass,
then --iters timed passes). Prints one `TORCH name tokens_per_s` line per benchmark.

  encode: MiniLM (the real weights from --bert) over a batch of 32 x 128 ids, attention mask all
          ones, last hidden states.
  score:  a Llama with the architecture read from the GGUF's metadata (--gguf) and random
          weights (speed does not depend on the values), over 4 x 512 ids: final hidden states,
          then the next-token log-probabilities of all positions but the last.
"""

import argparse
import time

import torch


def lcg_ids(n, vocab, seed=0x2545F491):
    """The ids of ralm's bench `Lcg`: x <- x * 1664525 + 1013904223 (mod 2^32),
    id = (x >> 8) % vocab."""
    x, out = seed, []
    for _ in range(n):
        x = (x * 1664525 + 1013904223) % (1 << 32)
        out.append((x >> 8) % vocab)
    return out


def timed(run, iters):
    run()
    start = time.perf_counter()
    for _ in range(iters):
        run()
    return time.perf_counter() - start


def encode(args):
    from transformers import BertModel

    model = BertModel.from_pretrained(args.bert, torch_dtype=torch.float32).eval()
    b, t = args.batch or 32, args.seq or 128
    vocab = model.config.vocab_size
    ids = [101 if i % t == 0 else 102 if i % t == t - 1 else (i * 7919) % (1 << 32) % vocab
           for i in range(b * t)]
    ids = torch.tensor(ids).reshape(b, t)
    mask = torch.ones(b, t, dtype=torch.long)
    types = torch.zeros(b, t, dtype=torch.long)
    with torch.inference_mode():
        wall = timed(lambda: model(input_ids=ids, attention_mask=mask, token_type_ids=types),
                     args.iters)
    return b * t * args.iters / wall


def llama_config(path):
    from gguf import GGUFReader
    from transformers import LlamaConfig

    fields = GGUFReader(path).fields

    def get(key):
        return fields[f"llama.{key}"].contents()

    return LlamaConfig(
        vocab_size=len(fields["tokenizer.ggml.tokens"].data),
        hidden_size=get("embedding_length"),
        intermediate_size=get("feed_forward_length"),
        num_hidden_layers=get("block_count"),
        num_attention_heads=get("attention.head_count"),
        num_key_value_heads=get("attention.head_count_kv"),
        max_position_embeddings=get("context_length"),
        rope_theta=get("rope.freq_base"),
        rms_norm_eps=get("attention.layer_norm_rms_epsilon"),
        tie_word_embeddings=True,
    )


def score(args):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    cfg = llama_config(args.gguf)
    model = LlamaForCausalLM(cfg).eval()
    b, t = args.batch or 4, args.seq or 512
    ids = torch.tensor(lcg_ids(b * t, cfg.vocab_size)).reshape(b, t)

    def run():
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
        logits = model.lm_head(hidden[:, :-1])
        lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None])
        assert torch.isfinite(lp).all()

    with torch.inference_mode():
        wall = timed(run, args.iters)
    return b * t * args.iters / wall


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["encode", "score"])
    p.add_argument("--bert", default="models/minilm")
    p.add_argument("--gguf", default="models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--batch", type=int, help="sequences per pass (encode 32, score 4)")
    p.add_argument("--seq", type=int, help="tokens per sequence (encode 128, score 512)")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tps = encode(args) if args.what == "encode" else score(args)
    print(f"TORCH {args.what} {tps:.1f}", flush=True)


if __name__ == "__main__":
    main()
