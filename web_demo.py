#!/usr/bin/env python
"""Web demo: the base and the tuned model answer the same prompt side by side, streamed, with
PromptCBLUE examples per task and the official score of each answer (THUDM's web_demo.py, gradio).

    python web_demo.py                                   # embedded tiny model, its newest checkpoint
    python web_demo.py --model_name_or_path /path/to/chatglm2-6b --ptuning_checkpoint output/RUN/checkpoint-3000
    bash web_demo.sh                                     # the same, settings from the environment

Then open http://127.0.0.1:7860 (--host 0.0.0.0 to serve other machines).
"""
import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a demo (or an offline node)

from cblue.answer_grammar import grammar_for_prompt
from cblue.compare import pick_examples
from cblue.features import prompt_ids
from cblue.records import read_records
from cblue.score import score_one
from chatglm.tuned import add_model_flags, load_tuned
from chatglm.web_app import build_app


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(ap)
    ap.add_argument("--examples_file", default="PromptCBLUE/dev.json", help="PromptCBLUE records to pick examples from")
    ap.add_argument("--examples_per_task", type=int, default=3)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    args = ap.parse_args()

    records = read_records(args.examples_file, require_response=False)
    examples = [records[i] for idx in pick_examples(records, args.examples_per_task).values() for i in idx]
    model, tokenizer, checkpoint = load_tuned(args.model_name_or_path, args.ptuning_checkpoint, args.quantization_bit,
                                              args.model_family, args.prompt_format)

    def encode(text: str) -> list[int]:
        return prompt_ids(tokenizer, text, None, args.max_source_length, "left")[0]

    def grammar(text: str, record: dict | None) -> str | None:
        return grammar_for_prompt(text, record, can_spell=tokenizer.can_spell)

    app = build_app(model, tokenizer, examples, encode, score_one,
                    title=f"PromptCBLUE: base {args.model_name_or_path} vs tuned {checkpoint}",
                    grammar_for=grammar, constrained=args.constrained_decoding)
    print(f"web_demo.py: {len(examples)} examples from {args.examples_file}; serving http://{args.host}:{args.port}",
          flush=True)
    app.queue().launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False)


if __name__ == "__main__":
    from chatglm.cli import run_cli

    run_cli(main, "web_demo.py")
