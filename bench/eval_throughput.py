"""Evaluation (generation) throughput on a tiny ChatGLM2 on the CPU, on the real input lengths
of the official test inputs.

    python bench/eval_throughput.py [--model DIR] [--samples 64] [--batch 1 16] [--max_new_tokens 64]

Greedy decoding with a P-tuning prefix (pre_seq_len 128), prompts left-truncated to
--source tokens, batches sorted by length as main.py does. Model loading is not timed.
"""
import argparse
import time

from _util import data_file, default_model, peak_rss_mb, read_jsonl, report

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--source", type=int, default=700)
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--pre_seq_len", type=int, default=128)
    ap.add_argument("--quantization_bit", type=int, default=None)
    ap.add_argument("--hf_generate_baseline", action="store_true",
                    help="also time transformers' generate() the way the original predicts: one sample at a "
                         "time, top_p 0.7 / temperature 0.95 sampling, always source+target+1 positions")
    args = ap.parse_args()

    from cblue.features import prompt_ids
    from chatglm.generation import GenerationSettings, generate
    from chatglm.model import ChatGLM
    from chatglm.tokenizer import ChatGLMTokenizer

    model_dir = args.model or default_model()
    tok = ChatGLMTokenizer.from_pretrained(model_dir)
    records = read_jsonl(data_file("test_inputs.json", "test.json"), args.samples)
    prompts = [prompt_ids(tok, r["input"], None, args.source, "left")[0] for r in records]
    model = ChatGLM.from_pretrained(model_dir, pre_seq_len=args.pre_seq_len, seed=42,
                                     quantization_bit=args.quantization_bit).eval()
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    results = {}
    for bs in args.batch:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        generate(model, [prompts[order[0]]], GenerationSettings(max_new_tokens=2), tok.eos_token_id, tok.pad_token_id)
        start, new_tokens = time.perf_counter(), 0
        for b in range(0, len(order), bs):
            outs = generate(model, [prompts[i] for i in order[b:b + bs]], settings, tok.eos_token_id, tok.pad_token_id)
            new_tokens += sum(len(o) for o in outs)
        elapsed = time.perf_counter() - start
        results[f"batch_{bs}"] = {"samples_per_second": round(len(prompts) / elapsed, 2),
                                  "new_tokens_per_second": round(new_tokens / elapsed, 1),
                                  "seconds": round(elapsed, 2)}
    if args.hf_generate_baseline:
        results["hf_generate_batch_1_original_pattern"] = hf_generate_baseline(model, prompts, args)
    report({"bench": "eval_throughput", "model": model_dir, "samples": len(prompts),
            "mean_prompt_tokens": round(sum(map(len, prompts)) / len(prompts), 1), "source": args.source,
            "max_new_tokens": args.max_new_tokens, "pre_seq_len": args.pre_seq_len,
            "quantization_bit": args.quantization_bit, **results, "peak_rss_mb": round(peak_rss_mb(), 1)})


def hf_generate_baseline(model, prompts, args) -> dict:
    """A lower bound on the original's cost: transformers' generate() on the same base model
    (no prefix, which would only add work), batch 1, sampling, and a fixed length of
    max_source_length + max_target_length + 1 positions as the original's max_length, here
    128 + 64 + 1 with prompts right-truncated to 128."""
    base = model.base
    torch.manual_seed(0)
    start, n = time.perf_counter(), 0
    for ids in prompts:
        ids = torch.tensor([ids[:128]])
        new = 128 + 64 + 1 - ids.shape[1]
        base.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=0.7, temperature=0.95,
                      max_new_tokens=new, min_new_tokens=new, pad_token_id=0, eos_token_id=2)
        n += new
    elapsed = time.perf_counter() - start
    return {"samples_per_second": round(len(prompts) / elapsed, 2), "new_tokens_per_second": round(n / elapsed, 1),
            "seconds": round(elapsed, 2)}


if __name__ == "__main__":
    main()
