#!/usr/bin/env python
"""Ask the base model and the P-tuned model the same question, answers one above the other.

    python chat.py                                   # embedded tiny model, its newest checkpoint
    python chat.py --model_name_or_path /path/to/chatglm2-6b --ptuning_checkpoint output/RUN/checkpoint-3000
    python chat.py --file prompts.txt                # one prompt per line (or PromptCBLUE jsonl)
    echo '判断下面搜索词的意图：…' | python chat.py    # piped input works too

A line may be a PromptCBLUE record (JSON with "input"); a literal \\n in a plain line is a newline.
Greedy decoding, as evaluate.sh, so the answers are reproducible.
"""
import argparse
import glob
import json
import os
import sys

import torch

from glm2.generation import GenerationSettings, generate
from glm2.model import ChatGLM2, without_prefix
from glm2.tokenizer import ChatGLM2Tokenizer

DEFAULT_MODEL = "output/tiny-chatglm2"


def newest_checkpoint(model_dir: str) -> str | None:
    """The newest complete checkpoint under output/ (embedded default only)."""
    found = [d for d in glob.glob("output/*/checkpoint-*") if os.path.isfile(os.path.join(d, "trainer_state.json"))]
    return max(found, key=os.path.getmtime) if found and model_dir == DEFAULT_MODEL else None


def parse_prompt(line: str) -> str:
    line = line.rstrip("\n")
    if line.lstrip().startswith("{"):
        try:
            rec = json.loads(line)
            if isinstance(rec, dict) and isinstance(rec.get("input"), str):
                return rec["input"]
        except json.JSONDecodeError:
            pass
    return line.replace("\\n", "\n")


def prompts(args):
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            yield from (parse_prompt(l) for l in f if l.strip())
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
    ap.add_argument("--model_name_or_path", default=DEFAULT_MODEL)
    ap.add_argument("--ptuning_checkpoint", default=None, help="default: the newest one (embedded model only)")
    ap.add_argument("--file", help="prompts, one per line; default: standard input")
    ap.add_argument("--max_source_length", type=int, default=700)
    ap.add_argument("--max_new_tokens", type=int, default=128)
    ap.add_argument("--quantization_bit", type=int, default=None)
    args = ap.parse_args()

    ckpt = args.ptuning_checkpoint or newest_checkpoint(args.model_name_or_path)
    if not ckpt:
        sys.exit("chat.py: no --ptuning_checkpoint given (and none found under output/)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = ChatGLM2.from_pretrained(args.model_name_or_path, ptuning_checkpoint=ckpt, device=device,
                                     dtype=torch.float16 if device == "cuda" else torch.float32,
                                     quantization_bit=args.quantization_bit)
    tok = ChatGLM2Tokenizer.from_pretrained(args.model_name_or_path)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    from cblue.features import prompt_ids

    print(f"base: {args.model_name_or_path}   tuned: {ckpt}")
    for text in prompts(args):
        ids, _ = prompt_ids(tok, text, None, args.max_source_length, "left")
        with without_prefix(model):
            base = tok.decode(generate(model, [ids], settings, tok.eos_token_id, tok.pad_token_id)[0]).strip()
        tuned = tok.decode(generate(model, [ids], settings, tok.eos_token_id, tok.pad_token_id)[0]).strip()
        print(f"\n问：{text}\n── base ──────────────\n{base or '(empty)'}\n── P-tuned ───────────\n{tuned or '(empty)'}",
              flush=True)


if __name__ == "__main__":
    from glm2.cli import run_cli

    run_cli(main, "chat.py")
