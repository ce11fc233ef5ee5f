"""Prediction throughput with constrained decoding against free text, side by side in one run.

    python bench/constrained_throughput.py [--model DIR] [--checkpoint CKPT] [--data FILE]
        [--samples 256] [--batch 16 64] [--max_new_tokens 64] [--repeats 3]

Greedy, batches sorted by length as main.py predicts; each repeat times free then
constrained on the same records, so drift of the machine hits both. The constrained time
includes everything the constraint costs: the grammar of every record (cblue/answer_grammar.py),
its compilation by llguidance and the mask at every step. Reports samples/s and new tokens for
both, their time ratio, the time spent in the constraint itself (grammars, compilation, masks,
matcher steps: timed around those calls) as a share of the constrained run, and how many answers
came out identical (a valid free answer is never changed). A constrained answer can be longer
than the free one (a model that stops at once is made to finish a valid answer), so the time
ratio mixes the constraint's cost with the extra tokens; the constraint's share is its cost alone.
"""
import argparse
import statistics
import time

from _util import data_file, default_model, read_jsonl, report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--checkpoint", default=None, help="a P-tuning or LoRA checkpoint (default: none)")
    ap.add_argument("--data", default=None, help="PromptCBLUE records (default: the official test inputs)")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--source", type=int, default=700)
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from cblue.answer_grammar import grammars_for_records
    from cblue.features import prompt_ids
    from cblue.tasks import detect_version
    from chatglm.constraint import engine_for
    from chatglm.generation import GenerationSettings, constraint_for, generate
    from chatglm.model import ChatGLM
    from chatglm.tokenizer import ChatGLMTokenizer

    model_dir = args.model or default_model()
    tok = ChatGLMTokenizer.from_pretrained(model_dir)
    path = args.data or data_file("test_inputs.json", "test.json")
    records = read_jsonl(path, args.samples)
    version = detect_version(r["task_dataset"] for r in records)
    prompts = [prompt_ids(tok, r["input"], None, args.source, "left")[0] for r in records]
    model = ChatGLM.from_pretrained(model_dir, ptuning_checkpoint=args.checkpoint).eval()
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    t0 = time.perf_counter()
    engine_for(tok, model.base.config.vocab_size)  # once per process, as in main.py: timed apart
    engine_seconds = time.perf_counter() - t0
    generate(model, [prompts[order[0]]], GenerationSettings(max_new_tokens=2), tok.eos_token_id, tok.pad_token_id)

    spent = [0.0]

    def timed(fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t
        return wrapper

    from chatglm.constraint import BatchConstraint

    for name in ("__init__", "mask_", "advance", "finish"):  # everything generation asks of the constraint
        setattr(BatchConstraint, name, timed(getattr(BatchConstraint, name)))
    build = timed(grammars_for_records)

    def run(bs, constrained):
        start = time.perf_counter()
        grammars = build(records, version, can_spell=tok.can_spell) if constrained else None
        outs = {}
        for b in range(0, len(order), bs):
            idx = order[b:b + bs]
            c = constraint_for(model, tok, [grammars[i] for i in idx]) if constrained else None
            for i, ids in zip(idx, generate(model, [prompts[i] for i in idx], settings, tok.eos_token_id,
                                            tok.pad_token_id, c)):
                outs[i] = ids
        return time.perf_counter() - start, outs

    results = {}
    for bs in args.batch:
        free_t, cons_t, share = [], [], []
        for _ in range(args.repeats):
            engine_for(tok, model.base.config.vocab_size)._compiled.clear()  # compile every grammar anew
            t, free = run(bs, False)
            free_t.append(t)
            spent[0] = 0.0
            t, cons = run(bs, True)
            cons_t.append(t)
            share.append(spent[0] / t)
        free_s, cons_s = statistics.median(free_t), statistics.median(cons_t)
        results[f"batch_{bs}"] = {
            "free_samples_per_second": round(len(prompts) / free_s, 2),
            "constrained_samples_per_second": round(len(prompts) / cons_s, 2),
            "constrained_over_free_time": round(cons_s / free_s, 3),
            "constraint_share_of_constrained_time": round(statistics.median(share), 4),
            "free_new_tokens": sum(len(v) for v in free.values()),
            "constrained_new_tokens": sum(len(v) for v in cons.values()),
            "identical_answers": sum(free[i] == cons[i] for i in free)}
    report({"bench": "constrained_throughput", "model": model_dir, "checkpoint": args.checkpoint, "data": path,
            "samples": len(prompts), "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
            "vocab": len(tok), "engine_build_seconds": round(engine_seconds, 3), **results})


if __name__ == "__main__":
    main()
