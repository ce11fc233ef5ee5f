"""What --task_sampling does to the official score: one training run per mode, same model, data,
seed and budget, each scored on the validation file during training (main.py --eval_steps).

    python bench/task_sampling.py --out output/bench-sampling                     # the embedded demo
    python bench/task_sampling.py --model output/tiny-real --train_file ../shared/data/promptcblue/train.json \
        --validation_file ../shared/data/promptcblue/dev.json --out output/bench-sampling-real -- --max_source_length 256

Each run is `main.py` as train.sh ran it before 2026-12-03 (P-tuning, prefix 128, lr 3e-2 on the
tiny model), `--task_sampling <mode>` added (`none`: plain shuffling, the original). Prints a markdown table of
the best and final overall score and each task's metric at the best step, and its JSON.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from _util import ROOT, machine, report
from trainer_seq2seq import logged_tasks


def run(mode: str, args, extra: list[str]) -> dict:
    out = os.path.join(args.out, mode.replace(":", "-"))
    cmd = [sys.executable, "main.py", "--do_train", "--do_eval", "--train_file", args.train_file,
           "--validation_file", args.validation_file, "--model_name_or_path", args.model, "--output_dir", out,
           "--overwrite_output_dir", "--max_source_length", "128", "--max_target_length", "96",
           "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--learning_rate", "3e-2",
           "--pre_seq_len", "128", "--max_steps", str(args.max_steps), "--save_steps", str(args.eval_steps),
           "--eval_steps", str(args.eval_steps), "--logging_steps", "50", "--dataloader_num_workers", "0",
           "--report_to", "none", "--seed", str(args.seed)]
    if args.max_eval_samples:
        cmd += ["--max_eval_samples", str(args.max_eval_samples)]
    if mode != "none":
        cmd += ["--task_sampling", mode]
    start = time.time()
    subprocess.run(cmd + extra, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    with open(os.path.join(out, "trainer_state.json"), encoding="utf-8") as f:
        state = json.load(f)
    evals = {h["step"]: h for h in state["log_history"] if "eval_score" in h}
    best = state["best_global_step"]
    tasks = {t: evals[best][f"eval_{t}"] for t in logged_tasks(evals[best])}
    return {"mode": mode, "best_step": best, "best_score": evals[best]["eval_score"],
            "final_score": evals[max(evals)]["eval_score"], "scores": {s: h["eval_score"] for s, h in evals.items()},
            "tasks_at_best": tasks, "minutes": round((time.time() - start) / 60, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="output/tiny-chatglm2")
    ap.add_argument("--train_file", default="PromptCBLUE/train.json")
    ap.add_argument("--validation_file", default="PromptCBLUE/dev.json")
    ap.add_argument("--modes", default="none,proportional,uniform,temperature:2")
    ap.add_argument("--max_steps", type=int, default=1600)
    ap.add_argument("--eval_steps", type=int, default=400)
    ap.add_argument("--max_eval_samples", type=int, default=None)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default="output/bench-sampling")
    args, extra = ap.parse_known_args()
    extra = [a for a in extra if a != "--"]
    results = [run(m, args, extra) for m in args.modes.split(",")]
    tasks = list(results[0]["tasks_at_best"])
    print(f"{machine()}; {args.train_file}, {args.max_steps} steps, scored on {args.validation_file}\n")
    print("| task | " + " | ".join(r["mode"] for r in results) + " |")
    print("|---|" + "---:|" * len(results))
    for t in tasks:
        print(f"| {t} | " + " | ".join(f"{r['tasks_at_best'].get(t, 0):.3f}" for r in results) + " |")
    print("| **best overall** (step) | " + " | ".join(f"**{r['best_score']:.4f}** ({r['best_step']})"
                                                   for r in results) + " |")
    print("| final overall | " + " | ".join(f"{r['final_score']:.4f}" for r in results) + " |")
    report({"runs": results, "extra_args": extra})


if __name__ == "__main__":
    main()
