"""What the embedded demo needs: a tiny base built with a given recipe, then tuning runs on it
(P-tuning v2 variants, LoRA), each as train.sh runs the tiny model, scored on the dev sample with
free decoding during training (the format a method learns, with no grammar to help it).

    python bench/demo_sweep.py --pretrain_steps 300 --chat_steps 200 --max_steps 800 \
        --run "pt128:--pre_seq_len 128 --learning_rate 3e-2" --run "lora8:--lora_rank 8 --learning_rate 2e-3"

Prints, per run, the best free-text score (step), the share of closed-set answers the official
parser reads in full at that step, and the minutes taken (build and each run apart), then JSON.
With `--fit_tasks`, also each run's score on its own training records of those tasks.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time

from _util import ROOT, machine, report

TINY_DEFAULTS = ["--max_source_length", "128", "--max_target_length", "96", "--per_device_train_batch_size", "8",
                 "--per_device_eval_batch_size", "16", "--logging_steps", "50", "--dataloader_num_workers", "0",
                 "--report_to", "none", "--task_sampling", "temperature:2"]  # as train.sh trains the tiny model


def build(args) -> tuple[str, float]:
    from chatglm.tiny import PRETRAIN_LR, build_tiny_model, parse_shape

    shape = parse_shape(args.shape)
    tag = "".join(f"-{k.split('_')[-1][:3]}{v}" for k, v in shape.items())
    tag += "-cue" if args.terse_cue else ""
    tag += f"-lr{args.pretrain_lr:g}" if args.pretrain_lr else ""
    tag += f"-seed{args.seed}" if args.seed else ""
    out = os.path.join(args.out, f"tiny-{args.documents}{tag}-p{args.pretrain_steps}-c{args.chat_steps}")
    start = time.time()
    build_tiny_model(os.path.join(ROOT, args.train_file), out, seed=args.seed, pretrain_steps=args.pretrain_steps,
                     chat_file=os.path.join(ROOT, args.chat_file) if args.chat_steps else None,
                     chat_steps=args.chat_steps, documents=args.documents, shape=shape,
                     terse_cue=args.terse_cue, pretrain_lr=args.pretrain_lr or PRETRAIN_LR)
    return out, time.time() - start


def tune(name: str, flags: str, model: str, args) -> dict:
    out = os.path.join(args.out, os.path.basename(model) + "-" + name)
    every = str(args.eval_steps or args.max_steps // 2)
    cmd = [sys.executable, "main.py", "--do_train", "--do_eval", "--train_file", args.train_file,
           "--validation_file", args.validation_file, "--model_name_or_path", model, "--output_dir", out,
           "--overwrite_output_dir", "--max_steps", str(args.max_steps), "--save_steps", every, "--eval_steps", every,
           "--constrained_decoding", "false", *TINY_DEFAULTS, *shlex.split(flags)]
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    minutes = (time.time() - start) / 60
    with open(os.path.join(out, "trainer_state.json"), encoding="utf-8") as f:
        state = json.load(f)
    evals = {h["step"]: h["eval_score"] for h in state["log_history"] if "eval_score" in h}
    best = state["best_global_step"]
    with open(os.path.join(out, f"eval-{best}", "scores.json"), encoding="utf-8") as f:
        valid = json.load(f).get("valid_answers", {})
    result = {"run": name, "flags": flags, "best_step": best, "best_free_score": evals[best], "scores": evals,
              "valid_share": round(sum(valid.values()) / max(1, len(valid)), 3), "minutes": round(minutes, 2)}
    if args.fit_tasks:
        result["fit"] = fit_score(model, out, args.max_steps, args)
    return result


def fit_score(model: str, run_dir: str, step: int, args) -> dict:
    """How well the run's last checkpoint answers its own training records of --fit_tasks (free
    decoding): whether a method falls short on dev because it cannot fit what it was shown
    (a capacity limit) or because it does not carry it over to new queries."""
    tasks = set(args.fit_tasks.split(","))
    path = os.path.join(run_dir, "fit_records.json")
    with open(os.path.join(ROOT, args.train_file), encoding="utf-8") as f, open(path, "w", encoding="utf-8") as g:
        g.writelines(line for line in f if line.strip() and json.loads(line)["task_dataset"] in tasks)
    out = os.path.join(run_dir, f"fit-{step}")
    subprocess.run([sys.executable, "main.py", "--do_predict", "--validation_file", path, "--test_file", path,
                    "--model_name_or_path", model, "--ptuning_checkpoint", os.path.join(run_dir, f"checkpoint-{step}"),
                    "--output_dir", out, "--overwrite_output_dir", "--predict_with_generate",
                    "--constrained_decoding", "false", *TINY_DEFAULTS[:4], "--per_device_eval_batch_size", "16",
                    "--report_to", "none"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    from cblue.tasks import main_metric

    with open(os.path.join(out, "scores.json"), encoding="utf-8") as f:
        scores = json.load(f)
    return {"score": round(scores["score"], 4),
            "tasks": {t: round(m[main_metric(t)], 3) for t, m in scores["tasks"].items()}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train_file", default="PromptCBLUE/train.json")
    ap.add_argument("--validation_file", default="PromptCBLUE/dev.json")
    ap.add_argument("--chat_file", default="PromptCBLUE/chat.json")
    ap.add_argument("--pretrain_steps", type=int, default=300)
    ap.add_argument("--chat_steps", type=int, default=200)
    ap.add_argument("--documents", default="split", choices=["split", "paired"], help="as python -m chatglm.tiny's")
    ap.add_argument("--shape", default="", help="the tiny shape's fields to change: num_key_value_heads=8,num_hidden_layers=6")
    ap.add_argument("--terse_cue", default="", help="as python -m chatglm.tiny's")
    ap.add_argument("--pretrain_lr", type=float, default=None, help="as python -m chatglm.tiny's (default: its own)")
    ap.add_argument("--seed", type=int, default=0, help="the base's build seed (as python -m chatglm.tiny's)")
    ap.add_argument("--max_steps", type=int, default=800)
    ap.add_argument("--eval_steps", type=int, default=0, help="default: half of --max_steps")
    ap.add_argument("--run", action="append", required=True, help="NAME:main.py flags")
    ap.add_argument("--fit_tasks", default="",
                    help="also score each run's last checkpoint on its own training records of these tasks "
                         "(comma-separated), e.g. KUAKE-QIC,CHIP-CTC,CHIP-CDN,CHIP-STS,KUAKE-QQR,KUAKE-QTR")
    ap.add_argument("--out", default="output/bench-demo")
    args = ap.parse_args()
    model, build_s = build(args)
    results = []
    for spec in args.run:
        name, flags = spec.split(":", 1)
        results.append(tune(name, flags, model, args))
        r = results[-1]
        fit = f", own training records {r['fit']['score']:.3f}" if "fit" in r else ""
        print(f"{r['run']}: free {r['best_free_score']:.4f} (step {r['best_step']}), valid {r['valid_share']:.2f}, "
              f"{r['minutes']:.1f} min{fit}", flush=True)
    print(f"\n{machine()}; base {os.path.basename(model)} built in {build_s / 60:.1f} min (0 = cached); "
          f"{args.max_steps} steps\n")
    print("| run | flags | best free score (step) | valid closed-set answers | minutes |")
    print("|---|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['run']} | `{r['flags']}` | {r['best_free_score']:.4f} ({r['best_step']}) | {r['valid_share']:.2f} "
              f"| {r['minutes']:.1f} |")
    report({"base": model, "build_minutes": round(build_s / 60, 2), "runs": results})


if __name__ == "__main__":
    main()
