"""GPU benchmark: a ChatGLM2-6B-shaped model with random weights (no download needed).

    python bench/gpu_bench.py                      # all settings below, on cuda:0
    python bench/gpu_bench.py --bits 16 4 --skip_eval
    python bench/gpu_bench.py --tiny --device cpu  # the same code path on a 2-layer model (a smoke test)

Training: the user's settings (batch 32, source 64 + target 128 + eos = 193 tokens per row,
every row full length: the worst case), pre_seq_len 128, fp16 base with the prefix in fp32,
gradient checkpointing as the original; at 16, 8 and 4 bits; plus int4 at batch 1 (the
original's 6.7 GB setting). Reports peak GPU memory (torch.cuda.max_memory_allocated) and
tokens/s. Evaluation: greedy generation of 64 new tokens from 120-160-token prompts at batch 1, 16 and 64, and
the decode step time at batch 64.
The original reports 28 GB (fp16, batch 32) and 6.7 GB (int4, batch 1) on a V100.
"""
import argparse
import time

from _util import report

import torch

CHATGLM2_6B = dict(model_type="chatglm", num_layers=28, hidden_size=4096, num_attention_heads=32, kv_channels=128,
                   multi_query_attention=True, multi_query_group_num=2, ffn_hidden_size=13696,
                   padded_vocab_size=65024, layernorm_epsilon=1e-5, seq_length=32768, eos_token_id=2, pad_token_id=0)
TINY = dict(CHATGLM2_6B, num_layers=2, hidden_size=256, num_attention_heads=8, kv_channels=32, ffn_hidden_size=688,
            padded_vocab_size=4096)


def random_model(shape: dict, bits: int | None, device: str, pre_seq_len: int):
    from chatglm.checkpoint import random_glm
    from chatglm.convert import glm_config_from_chatglm
    from chatglm.model import ChatGLM
    from chatglm.prefix import PrefixEncoder

    dtype = torch.float16 if device != "cpu" else torch.float32
    base = random_glm(glm_config_from_chatglm(shape), dtype, device, bits)
    c = base.config
    prefix = PrefixEncoder(pre_seq_len, c.num_hidden_layers, c.num_key_value_heads, c.head_dim, c.hidden_size).to(device)
    return ChatGLM(base, prefix)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_train(model, device, batch, seq, steps, vocab):
    model.train()
    model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(model.prefix_encoder.parameters(), lr=1e-2)
    ids = torch.randint(5, vocab - 10, (batch, seq), device=device)
    labels = ids.clone()
    labels[:, :64] = -100
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for step in range(steps + 1):
        if step == 1:
            sync(device)
            start = time.perf_counter()
        loss = model(ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    elapsed = time.perf_counter() - start
    out = {"tokens_per_second": round(batch * seq * steps / elapsed, 1), "loss": round(loss.item(), 3)}
    if device.startswith("cuda"):
        out["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    return out


def bench_eval(model, device, vocab, prompt_len=160, new_tokens=64, samples=64):
    """Greedy generation with no eos (every row runs the full length) at batch 1, 16 and 64,
    and the decode step time at batch 64: (time for 64 new tokens - time for 1) / 63."""
    from chatglm.decode import compile_by_default
    from chatglm.generation import GenerationSettings, generate

    model.eval()
    compiled = compile_by_default(device)
    prompts = [torch.randint(5, vocab - 10, (prompt_len - (i % 40),)).tolist() for i in range(samples)]
    s = GenerationSettings(max_new_tokens=new_tokens, compiled=compiled)
    out = {"compiled": compiled}
    generate(model, prompts[:64], s, eos_token_id=-1, pad_token_id=0)  # warm-up (and compilation)
    for bs in (1, 16, 64):
        n = samples if bs > 1 else min(samples, 8)
        sync(device)
        start = time.perf_counter()
        for b in range(0, n, bs):
            generate(model, prompts[b:b + bs], s, eos_token_id=-1, pad_token_id=0)  # no eos: full length
        sync(device)
        out[f"batch_{bs}_samples_per_second"] = round(n / (time.perf_counter() - start), 2)
    times = {}
    for k in (1, new_tokens):
        sync(device)
        start = time.perf_counter()
        generate(model, prompts[:64], GenerationSettings(max_new_tokens=k, compiled=compiled), -1, 0)
        sync(device)
        times[k] = time.perf_counter() - start
    out["batch_64_decode_step_ms"] = round((times[new_tokens] - times[1]) / (new_tokens - 1) * 1000, 3)
    out["batch_64_prefill_ms"] = round(times[1] * 1000, 2)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--bits", type=int, nargs="+", default=[16, 8, 4])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--skip_eval", action="store_true")
    args = ap.parse_args()
    shape = TINY if args.tiny else CHATGLM2_6B
    results = {}
    runs = [(b, 32) for b in args.bits] + ([(4, 1)] if 4 in args.bits else [])
    for bits, batch in runs:
        q = None if bits == 16 else bits
        model = random_model(shape, q, args.device, 128)
        key = f"train_{bits}bit_batch{batch}"
        try:
            results[key] = bench_train(model, args.device, batch, 193, args.steps, shape["padded_vocab_size"])
        except torch.OutOfMemoryError as e:
            results[key] = {"error": f"out of memory: {e}"[:200]}
        if not args.skip_eval and batch == 32:
            results[f"eval_{bits}bit"] = bench_eval(model, args.device, shape["padded_vocab_size"])
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    report({"bench": "gpu_bench", "shape": "tiny" if args.tiny else "chatglm2-6b", "seq_len": 193,
            "pre_seq_len": 128, **results})


if __name__ == "__main__":
    main()
