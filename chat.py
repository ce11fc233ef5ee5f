#!/usr/bin/env python
"""Ask the base model and the tuned model (P-tuning prefix or LoRA adapter) the same question: both answers stream, one above the other.

    python chat.py                                   # embedded tiny model, its newest checkpoint
    python chat.py --model_name_or_path /path/to/chatglm2-6b --ptuning_checkpoint output/RUN/checkpoint-3000
    python chat.py --file prompts.txt                # one prompt per line (or PromptCBLUE jsonl)
    echo '判断下面搜索词的意图：…' | python chat.py    # piped input works too

A line may be a PromptCBLUE record (JSON with "input"); a literal \\n in a plain line is a newline.
Greedy decoding by default, as evaluate.sh, so the answers are reproducible (--do_sample samples).
Answers are printed as they are generated, on a terminal and into a pipe alike.
"""
import argparse
import json
import sys

from chatglm.generation import NO_ANSWER, GenerationSettings, stream_text
from chatglm.model import base_only
from chatglm.tuned import add_model_flags, load_tuned


def parse_prompt(line: str) -> dict:
    """The line as a record: a PromptCBLUE record as it is, plain text as {"input": text}."""
    line = line.rstrip("\n")
    if line.lstrip().startswith("{"):
        try:
            rec = json.loads(line)
            if isinstance(rec, dict) and isinstance(rec.get("input"), str):
                return rec
        except json.JSONDecodeError:
            pass
    return {"input": line.replace("\\n", "\n")}


def prompts(args):
    if args.file:
        with open(args.file, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError:
                    raise ValueError(f"{args.file}:{lineno}: not UTF-8 text; save the prompts file as UTF-8") from None
                if line.strip():
                    yield parse_prompt(line.rstrip("\r\n"))
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("\n问（空行结束 / empty line quits）：", end=" ", flush=True)
        line = sys.stdin.readline()
        if not line or (interactive and not line.strip()):
            return
        if line.strip():
            yield parse_prompt(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(ap)
    ap.add_argument("--file", help="prompts, one per line; default: standard input")
    ap.add_argument("--max_new_tokens", type=int, default=128)
    ap.add_argument("--do_sample", action="store_true", help="sample instead of greedy decoding")
    ap.add_argument("--temperature", type=float, default=0.95)
    ap.add_argument("--top_p", type=float, default=0.7)
    args = ap.parse_args()

    model, tok, ckpt = load_tuned(args.model_name_or_path, args.ptuning_checkpoint, args.quantization_bit,
                                  args.model_family, args.prompt_format)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                                  temperature=args.temperature if args.do_sample else 1.0,
                                  top_p=args.top_p if args.do_sample else 1.0)
    from cblue.features import prompt_ids

    from cblue.answer_grammar import grammar_for_prompt

    tuned_label = "LoRA" if model.lora_config is not None else "P-tuned"
    print(f"base: {args.model_name_or_path}   tuned: {ckpt}   decoding: "
          f"{'constrained' if args.constrained_decoding else 'free'}")
    for record in prompts(args):
        text = record["input"]
        ids, _ = prompt_ids(tok, text, None, args.max_source_length, "left")
        grammar = grammar_for_prompt(text, record, can_spell=tok.can_spell) if args.constrained_decoding else None
        print(f"\n问：{text}")
        print("── base ──────────────")
        with base_only(model):
            print_streamed(stream_text(model, tok, [ids], settings, [grammar]))
        print(f"── {tuned_label} ───────────")
        print_streamed(stream_text(model, tok, [ids], settings, [grammar]))


def print_streamed(texts) -> None:
    """Print an answer as it grows: only what is new at each step."""
    shown = ""
    for (text,) in texts:
        if text.startswith(shown):
            sys.stdout.write(text[len(shown):])
        else:  # rare: decoding more tokens changed earlier characters; start the line again
            sys.stdout.write("\n" + text)
        shown = text
        sys.stdout.flush()
    print("" if shown else NO_ANSWER, flush=True)

if __name__ == "__main__":
    from chatglm.cli import run_cli

    run_cli(main, "chat.py")
