"""The demo's before/after on the story's kind of prompts: the base model and the tuned one, free
decoding (no grammar), greedy, as `python chat.py --constrained_decoding false` answers them.

    python bench/demo_story.py --model output/tiny-chatglm2 --checkpoint output/tiny-chatglm2-pt-128-1e-1

Prompts: bench/story/prompts.jsonl (my own wordings of the story's six: STS, search match,
diagnosis normalisation, search intent, two doctor replies; records with task_dataset and
answer_choices so the official parser's validity check applies). An answer is in format when the
parser reads all of it with labels from the options (closed-set tasks) or, for a doctor's reply,
when it is one short sentence that is not a new prompt (no "答：", no options line, at most 60
characters, ending in 。？！). Prints each answer, the counts, and JSON.
"""
import argparse
import json
import os

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
    ap.add_argument("--max_new_tokens", type=int, default=128)
    args = ap.parse_args()
    with open(args.prompts, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    rows = []
    for rec, (base, tuned) in zip(records, answers(args.model, args.checkpoint, records, args.max_new_tokens)):
        rows.append({"task": rec["task_dataset"], "base": base, "tuned": tuned, "base_chars": len(base),
                     "base_in_format": in_format(rec, base), "tuned_chars": len(tuned), "tuned_in_format": in_format(rec, tuned)})
        print(f"[{rec['task_dataset']}] {rec['input'].splitlines()[0]}\n  base  ({len(base)} chars): {base!r}\n"
              f"  tuned ({len(tuned)} chars): {tuned!r}  {'in format' if rows[-1]['tuned_in_format'] else 'OFF FORMAT'}")
    n = len(rows)
    summary = {"prompts": n, "base_in_format": sum(r["base_in_format"] for r in rows),
               "tuned_in_format": sum(r["tuned_in_format"] for r in rows),
               "base_mean_chars": round(sum(r["base_chars"] for r in rows) / n, 1),
               "tuned_mean_chars": round(sum(r["tuned_chars"] for r in rows) / n, 1)}
    print(f"\nbase: {summary['base_in_format']}/{n} in format, {summary['base_mean_chars']} chars on average; "
          f"tuned: {summary['tuned_in_format']}/{n} in format, {summary['tuned_mean_chars']} chars")
    report({"model": args.model, "checkpoint": args.checkpoint, **summary, "answers": rows})


if __name__ == "__main__":
    main()
