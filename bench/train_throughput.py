"""Training throughput and peak memory of P-tuning on a tiny ChatGLM2 on the CPU.

    python bench/train_throughput.py [--model DIR] [--steps 20] [--pad_to_max]

The user's settings by default (batch 32, source 64, target 128, pre_seq_len 128) on real
PromptCBLUE records. Tokens/s counts the tokens of the rows (prompt + answer + eos), padding
excluded. `--pad_to_max` pads every row to source + target + 1 as the original does, to show
what dynamic padding saves; `--gradient_checkpointing` as the original always trains;
`--full_logits` computes the output layer at every position as the original does. All three
together are the original's work pattern on our model code.
"""
import argparse
import time

from _util import data_file, default_model, peak_rss_mb, read_jsonl, report

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--source", type=int, default=64)
    ap.add_argument("--target", type=int, default=128)
    ap.add_argument("--pre_seq_len", type=int, default=128)
    ap.add_argument("--pad_to_max", action="store_true")
    ap.add_argument("--gradient_checkpointing", action="store_true")
    ap.add_argument("--quantization_bit", type=int, default=None)
    ap.add_argument("--full_logits", action="store_true",
                    help="compute logits at every position and the loss from them, as the original does")
    args = ap.parse_args()

    from cblue.features import train_features
    from chatglm.model import ChatGLM
    from chatglm.tokenizer import ChatGLMTokenizer
    from trainer_seq2seq import PadCollator

    model_dir = args.model or default_model()
    tok = ChatGLMTokenizer.from_pretrained(model_dir)
    records = read_jsonl(data_file("train.json", "train.json"), args.batch * args.steps * 2)
    feats = train_features({"input": [r["input"] for r in records], "target": [r["target"] for r in records]},
                           tok, "input", "target", None, args.source, args.target, "left")
    rows = [{"input_ids": i, "labels": l} for i, l in zip(feats["input_ids"], feats["labels"])]
    torch.manual_seed(0)
    model = ChatGLM.from_pretrained(model_dir, pre_seq_len=args.pre_seq_len, seed=42,
                                     quantization_bit=args.quantization_bit)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    opt = torch.optim.AdamW(model.prefix_encoder.parameters(), lr=1e-2)
    collate = PadCollator(tok.pad_token_id)
    width = args.source + args.target + 1
    tokens = padded = 0
    start = None
    for step in range(args.steps + 2):  # two warm-up steps
        if step == 2:
            start, tokens, padded = time.perf_counter(), 0, 0
        batch = collate(rows[step * args.batch:(step + 1) * args.batch])
        if args.pad_to_max:
            extra = width - batch["input_ids"].shape[1]
            batch = {"input_ids": torch.nn.functional.pad(batch["input_ids"], (0, extra), value=tok.pad_token_id),
                     "labels": torch.nn.functional.pad(batch["labels"], (0, extra), value=-100)}
        tokens += sum(len(r["input_ids"]) for r in rows[step * args.batch:(step + 1) * args.batch])
        padded += batch["input_ids"].numel()
        if args.full_logits:
            logits = model(batch["input_ids"]).logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten())
        else:
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    elapsed = time.perf_counter() - start
    report({"bench": "train_throughput", "model": model_dir, "steps": args.steps, "batch": args.batch,
            "source": args.source, "target": args.target, "pre_seq_len": args.pre_seq_len,
            "pad_to_max": args.pad_to_max, "gradient_checkpointing": args.gradient_checkpointing,
            "quantization_bit": args.quantization_bit, "full_logits": args.full_logits,
            "tokens_per_second": round(tokens / elapsed, 1), "padded_positions_per_second": round(padded / elapsed, 1),
            "samples_per_second": round(args.steps * args.batch / elapsed, 2), "peak_rss_mb": round(peak_rss_mb(), 1)})


if __name__ == "__main__":
    main()
