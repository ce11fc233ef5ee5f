"""error_report.md: where a prediction file loses its points, task by task.

For every task: how many answers the official parser could not read in full (cblue/validity.py;
closed-set tasks only), how many it read but are wrong, how many are right (the structured
answer equals the gold one); the confusion of labels for classification tasks; items found,
missed and made up (micro precision and recall) for extraction tasks; a few records of each kind.
"""
from __future__ import annotations

import json
import os
from collections import Counter

from .metrics import item_key
from .outputs import atomic_write_text
from .postprocess import structure
from .prompt_options import record_task_options
from .tasks import CLS_LABELS, EXTRACTION, TASKS, main_metric
from .validity import answer_is_valid

EXAMPLES_PER_KIND = 2
_KINDS = ("unreadable", "wrong", "right")


def _items(answer) -> set:
    return {item_key(x) for x in answer}


def _shown(key: tuple) -> str:
    """An item as `value/value/...` (its fields in key order)."""
    return "/".join(x if isinstance(x := json.loads(v), str) else json.dumps(x, ensure_ascii=False) for v in key)


def _cell(text, limit: int = 120) -> str:
    text = str(text).replace("\n", "⏎").replace("|", "\\|")
    return text if len(text) <= limit else text[:limit] + "…"


def classify(task: str, gold, pred, valid: bool | None) -> str:
    """unreadable, wrong or right, for one answer."""
    if valid is False:
        return "unreadable"
    if task in EXTRACTION:
        return "right" if _items(gold) == _items(pred) else "wrong"
    return "right" if gold == pred else "wrong"


def task_report(task: str, rows: list[dict]) -> dict:
    """Counts, and for extraction the item counts, for one task's rows
    ({record, gold, pred, valid, kind})."""
    kinds = Counter(r["kind"] for r in rows)
    out = {"answers": len(rows), **{k: kinds.get(k, 0) for k in _KINDS}}
    if task in EXTRACTION:
        tp = fp = fn = 0
        for r in rows:
            g, p = _items(r["gold"]), _items(r["pred"])
            tp, fp, fn = tp + len(g & p), fp + len(p - g), fn + len(g - p)
        out.update(items_right=tp, items_made_up=fp, items_missed=fn,
                   precision=tp / (tp + fp) if tp + fp else 0.0, recall=tp / (tp + fn) if tp + fn else 0.0)
    return out


def _confusion(task: str, rows: list[dict]) -> list[str]:
    fallback = CLS_LABELS[task][0]  # what the official scores an empty answer as
    pairs = Counter((r["gold"], r["pred"] or fallback) for r in rows)
    labels = sorted({g for g, _ in pairs} | {p for _, p in pairs}, key=lambda x: (-sum(
        n for (g, p), n in pairs.items() if x in (g, p)), x))
    lines = ["Confusion (rows: gold label, columns: predicted; an empty answer counts as "
             f"`{fallback}`, as the official does):", "",
             "| gold \\ predicted | " + " | ".join(_cell(l, 20) for l in labels) + " |",
             "|---" * (len(labels) + 1) + "|"]
    for g in labels:
        if any(gg == g for gg, _ in pairs):
            lines.append(f"| {_cell(g, 20)} | " + " | ".join(str(pairs.get((g, p), "")) for p in labels) + " |")
    return lines + [""]


def _example(task: str, r: dict, response_column: str) -> str:
    rec = r["record"]
    text = f"- input: {_cell(rec.get('input', ''), 160)}  \n  target: `{_cell(rec.get(response_column, ''))}`  \n" \
           f"  answer: `{_cell(r['text']) if r['text'] else '(empty)'}`"
    if task in EXTRACTION and r["kind"] == "wrong":
        g, p = _items(r["gold"]), _items(r["pred"])
        missed, made_up = sorted(g - p)[:4], sorted(p - g)[:4]
        text += f"  \n  missed: {', '.join(_cell(_shown(x), 40) for x in missed) or '-'}; " \
                f"made up: {', '.join(_cell(_shown(x), 40) for x in made_up) or '-'}"
    return text


def write_error_report(out_dir: str, records: list[dict], predictions: list[str], version: str, scores: dict,
                       response_column: str = "target", prompt_column: str = "input") -> str:
    """Write out_dir/error_report.md for the records that have a target; return its path."""
    by_task: dict[str, list[dict]] = {}
    for rec, text in zip(records, predictions):
        if not rec.get(response_column):
            continue
        task = rec["task_dataset"]
        choices = rec.get("answer_choices")
        gold = structure(task, rec[response_column], choices, version)
        pred = structure(task, text, choices, version)
        _, options = record_task_options(rec, version, prompt_column)
        valid = answer_is_valid(task, text, options, version)
        by_task.setdefault(task, []).append({"record": rec, "text": text, "gold": gold, "pred": pred, "valid": valid,
                                             "kind": classify(task, gold, pred, valid)})
    order = [t for t in TASKS[version] if t in by_task] + [t for t in by_task if t not in TASKS[version]]
    reports = {t: task_report(t, by_task[t]) for t in order}
    tasks = scores.get("tasks", {})
    lines = [f"# Where points are lost ({os.path.basename(os.path.abspath(out_dir))})", "",
             f"Overall {scores.get('score', 0):.4f} (mean of the tasks' main metrics, PromptCBLUE {version}, "
             f"{scores.get('decoding', 'free')} decoding). *Unreadable*: the official parser cannot read the whole "
             "answer with labels from the options (closed-set tasks only); *wrong*: read, but not the gold answer; "
             "*right*: the same structured answer as the gold one. Tasks sorted as the official lists them.", "",
             "| task | main metric | value | answers | unreadable | wrong | right | precision | recall |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in order:
        r, metric = reports[t], main_metric(t)
        value = tasks.get(t, {}).get(metric)
        pr = (f"{r['precision']:.3f} | {r['recall']:.3f}" if "precision" in r else " | ")
        unreadable = r["unreadable"] if any(x["valid"] is not None for x in by_task[t]) else "-"
        lines.append(f"| [{t}](#{t.lower()}) | {metric} | {'' if value is None else f'{value:.4f}'} | {r['answers']} | "
                     f"{unreadable} | {r['wrong']} | {r['right']} | {pr} |")
    lines.append("")
    for t in order:
        rows, r = by_task[t], reports[t]
        lines += [f"## {t}", "", f"{r['answers']} answers: {r['unreadable']} unreadable, {r['wrong']} wrong, "
                                 f"{r['right']} right.", ""]
        if "precision" in r:
            lines += [f"Items: {r['items_right']} right, {r['items_missed']} missed, {r['items_made_up']} made up "
                      f"(precision {r['precision']:.3f}, recall {r['recall']:.3f}).", ""]
        if t in CLS_LABELS:
            lines += _confusion(t, rows)
        for kind in _KINDS:
            shown = [x for x in rows if x["kind"] == kind][:EXAMPLES_PER_KIND]
            if shown:
                lines += [f"{kind.capitalize()}:", ""] + [_example(t, x, response_column) for x in shown] + [""]
    path = os.path.join(out_dir, "error_report.md")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
