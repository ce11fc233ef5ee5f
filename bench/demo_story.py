"""The demo's before/after on the story's kind of prompts: the base model and the tuned one, free
decoding (no grammar), greedy, as `python chat.py --constrained_decoding false` answers them.

    python bench/demo_story.py --model output/tiny-chatglm2 --checkpoint output/tiny-chatglm2-pt-128-1e-1

Prompts: bench/story/prompts.jsonl (my own wordings of the story's six: STS, search match,
diagnosis normalisation, search intent, two doctor replies; records with task_dataset and
answer_choices so the official parser's validity check applies). An answer is in format when the
parser reads all of it with labels from the options (closed-set tasks) or, for a doctor's reply,
when it is one short sentence that is not a new prompt (no "答：", no options line, at most 60
characters, ending in 。？！). An answer is at length (the story's "before") when it is off format
and at least 30 characters long. Prints each answer, the counts, and JSON.

`--records FILE ... --per_task N` asks, instead, N records per story task drawn (seeded) from
PromptCBLUE-format files, e.g. the real wordings of ../shared/data/promptcblue/dev.json and
test_inputs.json (MedDG): prompts the tiny model's sample data never phrased that way.
"""
import argparse
import json
import os
import random

from _util import ROOT, report


def in_format(record: dict, answer: str) -> bool:
    from cblue.validity import answer_is_valid

    valid = answer_is_valid(record["task_dataset"], answer, record.get("answer_choices", []))
    if valid is not None:
        return valid
    # A doctor's reply is one short sentence (every MedDG target of the sample data ends in 。 or
    # ？), so a bare label such as "病因分析" is not one, nor a new prompt.
    text = answer.strip()
    return (bool(text) and "\n" not in text and "答：" not in text and "选项" not in text and len(text) <= 60
            and text[-1] in "。？！")


AT_LENGTH_CHARS = 30
STORY_TASKS = ("CHIP-STS", "KUAKE-QTR", "CHIP-CDN", "KUAKE-QIC", "MedDG")


def at_length(record: dict, answer: str) -> bool:
    """The story's "before": the base answers in its own words, not with the bare label."""
    return not in_format(record, answer) and len(answer.strip()) >= AT_LENGTH_CHARS


def sample_records(files: list[str], per_task: int, seed: int = 1, tasks=STORY_TASKS,
                   max_chars: int = 160) -> list[dict]:
    """per_task records of each story task from PromptCBLUE-format files, seeded; prompts short
    enough for the tiny model's 128-token source."""
    pool = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line) if line.strip() else None
                if rec and rec.get("task_dataset") in tasks and len(rec["input"]) <= max_chars:
                    pool.setdefault(rec["task_dataset"], []).append(rec)
    rng = random.Random(seed)
    drawn = [rec for task in tasks for rec in rng.sample(pool.get(task, []), min(per_task, len(pool.get(task, []))))]
    return [{k: rec.get(k) for k in ("input", "answer_choices", "task_dataset")} for rec in drawn]


def answers(model_path: str, checkpoint: str, records: list[dict], max_new_tokens: int) -> list[tuple[str, str]]:
    """(base answer, tuned answer) per record: the same loaded weights, the prefix or adapter set
    aside for the base; all prompts in one batch (left-padded greedy equals one at a time)."""
    from cblue.features import prompt_ids
    from chatglm.generation import GenerationSettings, generate
    from chatglm.model import base_only
    from chatglm.tuned import load_tuned

    model, tok, _ = load_tuned(model_path, checkpoint, None, None, None)
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    prompts = [prompt_ids(tok, rec["input"], None, 512, "left")[0] for rec in records]

    def texts() -> list[str]:
        return [tok.decode(ids).strip() for ids in generate(model, prompts, settings, tok.stop_ids, tok.pad_token_id)]

    with base_only(model):
        base = texts()
    return list(zip(base, texts()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "output", "tiny-chatglm2"))
    ap.add_argument("--checkpoint", required=True, help="a checkpoint-N or run folder (its best checkpoint)")
    ap.add_argument("--prompts", default=os.path.join(ROOT, "bench", "story", "prompts.jsonl"))
    ap.add_argument("--records", nargs="+", help="draw the prompts from these PromptCBLUE-format files instead")
    ap.add_argument("--per_task", type=int, default=4, help="with --records: prompts per story task")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max_new_tokens", type=int, default=128)
    args = ap.parse_args()
    if args.records:
        records = sample_records(args.records, args.per_task, args.seed)
    else:
        with open(args.prompts, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    rows = []
    for rec, (base, tuned) in zip(records, answers(args.model, args.checkpoint, records, args.max_new_tokens)):
        rows.append({"task": rec["task_dataset"], "base": base, "tuned": tuned, "base_chars": len(base),
                     "base_in_format": in_format(rec, base), "base_at_length": at_length(rec, base),
                     "tuned_chars": len(tuned), "tuned_in_format": in_format(rec, tuned)})
        print(f"[{rec['task_dataset']}] {rec['input'].splitlines()[0]}\n  base  ({len(base)} chars): {base!r}\n"
              f"  tuned ({len(tuned)} chars): {tuned!r}  {'in format' if rows[-1]['tuned_in_format'] else 'OFF FORMAT'}")
    n = len(rows)
    summary = {"prompts": n, "base_in_format": sum(r["base_in_format"] for r in rows),
               "base_at_length": sum(r["base_at_length"] for r in rows),
               "tuned_in_format": sum(r["tuned_in_format"] for r in rows),
               "base_mean_chars": round(sum(r["base_chars"] for r in rows) / n, 1),
               "tuned_mean_chars": round(sum(r["tuned_chars"] for r in rows) / n, 1)}
    print(f"\nbase: {summary['base_at_length']}/{n} at length, {summary['base_in_format']}/{n} in format, "
          f"{summary['base_mean_chars']} chars on average; "
          f"tuned: {summary['tuned_in_format']}/{n} in format, {summary['tuned_mean_chars']} chars")
    report({"model": args.model, "checkpoint": args.checkpoint, **summary, "answers": rows})


if __name__ == "__main__":
    main()
