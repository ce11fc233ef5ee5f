"""Before/after report: the base model and the P-tuned model on the same records.

Reads what two prediction runs wrote (test_predictions.json + scores.json in each folder) and
writes comparison.md (scores per task, then a few examples per task: input, target, base
output, tuned output) and comparison.png (per-task main metric, base vs tuned, plus overall).
Examples are the records with the smallest sha1(sample_id) of each task: the same every run.
"""
from __future__ import annotations

import hashlib
import json
import os

from .records import read_records
from .tasks import main_metric


def pick_examples(records: list[dict], per_task: int) -> dict[str, list[int]]:
    """Indices of `per_task` records per task, chosen by hash of sample_id (reproducible)."""
    by_task: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_task.setdefault(r.get("task_dataset", "?"), []).append(i)
    key = lambda i: hashlib.sha1(f"{records[i].get('sample_id', i)}#{i}".encode()).hexdigest()
    return {t: sorted(idx, key=key)[:per_task] for t, idx in by_task.items()}


def _cell(text: str, limit: int = 160) -> str:
    text = (text or "").replace("|", "\\|").replace("\n", "<br>")
    return text if len(text) <= limit else text[:limit] + "…"


def write_comparison(out_dir: str, gold: list[dict], base_dir: str, tuned_dir: str, per_task: int = 3,
                     response_column: str = "target") -> dict:
    """`gold`: the evaluated records (with their targets), in the order the runs wrote them."""
    base_pred = read_records(os.path.join(base_dir, "test_predictions.json"), require_response=False)
    tuned_pred = read_records(os.path.join(tuned_dir, "test_predictions.json"), require_response=False)
    with open(os.path.join(base_dir, "scores.json"), encoding="utf-8") as f:
        base_scores = json.load(f)
    with open(os.path.join(tuned_dir, "scores.json"), encoding="utf-8") as f:
        tuned_scores = json.load(f)
    tasks = list(tuned_scores["tasks"])
    rows = [(t, main_metric(t), base_scores["tasks"][t][main_metric(t)], tuned_scores["tasks"][t][main_metric(t)])
            for t in tasks if t in base_scores["tasks"]]

    base_valid, tuned_valid = base_scores.get("valid_answers", {}), tuned_scores.get("valid_answers", {})
    share = lambda v: "–" if v is None else f"{v:.0%}"
    lines = ["# Base vs P-tuned", "",
             f"Overall score (mean of each task's main metric, PromptCBLUE {tuned_scores['version']}): "
             f"**base {base_scores['score']:.4f} → tuned {tuned_scores['score']:.4f}**", "",
             f"Decoding: {tuned_scores.get('decoding', 'free')}. *Valid*: the share of answers the official parser "
             "reads in full with labels from the options (closed-set tasks; cblue/validity.py).", "",
             "| task | metric | base | tuned | change | valid (base) | valid (tuned) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {t} | {m} | {b:.4f} | {u:.4f} | {u - b:+.4f} | {share(base_valid.get(t))} | "
              f"{share(tuned_valid.get(t))} |" for t, m, b, u in rows]
    lines += [f"| **overall** | mean | {base_scores['score']:.4f} | {tuned_scores['score']:.4f} | "
              f"{tuned_scores['score'] - base_scores['score']:+.4f} | | |", "", "![comparison](comparison.png)", ""]
    reports = [(name, os.path.relpath(os.path.join(d, "error_report.md"), out_dir))
               for name, d in (("tuned", tuned_dir), ("base", base_dir))
               if os.path.exists(os.path.join(d, "error_report.md"))]
    if reports:
        lines += ["Where points are lost, task by task (unreadable / wrong / right answers, confusions, missed and "
                  "made-up items): " + ", ".join(f"[{name}]({path})" for name, path in reports) + ".", ""]
    examples = pick_examples(gold, per_task)
    for task in tasks:
        lines += [f"## {task}", "", "| input | target | base | tuned |", "| --- | --- | --- | --- |"]
        for i in examples.get(task, []):
            lines.append(f"| {_cell(gold[i].get('input', ''))} | {_cell(gold[i].get(response_column, ''))} | "
                         f"{_cell(base_pred[i].get(response_column, ''))} | {_cell(tuned_pred[i].get(response_column, ''))} |")
        lines.append("")
    with open(os.path.join(out_dir, "comparison.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    _plot(os.path.join(out_dir, "comparison.png"), rows, base_scores["score"], tuned_scores["score"])
    return {"base_score": base_scores["score"], "tuned_score": tuned_scores["score"]}


def _plot(path: str, rows, base_overall: float, tuned_overall: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{t}\n({m})" for t, m, _, _ in rows] + ["OVERALL"]
    base = [b for _, _, b, _ in rows] + [base_overall]
    tuned = [u for _, _, _, u in rows] + [tuned_overall]
    n = len(labels)
    fig, ax = plt.subplots(figsize=(9, 0.42 * n + 1.6), dpi=110)
    ys = list(range(n))[::-1]
    h = 0.38
    ax.barh([y + h / 2 for y in ys], base, height=h, color="#b0b0b0", label="base (no prefix)")
    ax.barh([y - h / 2 for y in ys], tuned, height=h, color="#1f77b4", label="P-tuned")
    for y, b, u in zip(ys, base, tuned):
        ax.text(max(b, 0) + 0.01, y + h / 2, f"{b:.2f}", va="center", fontsize=7, color="#555555")
        ax.text(max(u, 0) + 0.01, y - h / 2, f"{u:.2f}", va="center", fontsize=7, color="#1f77b4")
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=7)
    ax.axhline(0.5, color="black", linewidth=0.6)
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("main metric (F1 / macro-F1 / ROUGE-L / tree edit ratio)")
    ax.set_title(f"PromptCBLUE: base {base_overall:.3f} → P-tuned {tuned_overall:.3f} (overall)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
