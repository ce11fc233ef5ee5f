"""Official PromptCBLUE scores of a prediction file.

    python -m cblue.score --gold dev.json --pred test_predictions.json --out scores.json [--version v1|v2]

GOLD and PRED are jsonl records in the submission format (the model output in `target`), or
already-structured results.json files. Samples are matched per task by position with their
sample_ids checked pairwise, as the official evaluator does. Writes
{"score": mean main metric over the tasks present, "tasks": {task: {metric: value}}}, values
in [0, 1] (the official multiplies by 100 only when it writes eval_result.json).
"""
from __future__ import annotations

import argparse
import json
import sys

from .metrics import classification_prf, extraction_prf, rouge_by_sections, rouge_scores
from .outputs import save_json
from .postprocess import structure_records
from .records import RecordError
from .tasks import CLS_LABELS, EXTRACTION, MACRO, TASKS, detect_version, main_metric
from .text2dt import text2dt_scores


class ScoreError(ValueError):
    """Gold and predictions cannot be scored together; the message names the sample."""


def _check_alignment(task: str, gold: list[dict], pred: list[dict] | None) -> None:
    if pred is None:
        raise ScoreError(f"{task}: the predictions have no record of this task ({len(gold)} in gold)")
    gold_ids = [g["sample_id"] for g in gold]
    pred_ids = [p.get("sample_id") for p in pred]
    if len(gold_ids) != len(pred_ids):
        missing = [s for s in gold_ids if s not in set(pred_ids)]
        extra = [s for s in pred_ids if s not in set(gold_ids)]
        detail = (f"missing {missing[:5]}" if missing else "") + (f" extra {extra[:5]}" if extra else "")
        raise ScoreError(f"{task}: {len(gold_ids)} gold samples but {len(pred_ids)} predictions; "
                         f"{detail.strip() or 'repeated sample_ids'}")
    for i, (g, p) in enumerate(zip(gold_ids, pred_ids)):
        if g != p:
            raise ScoreError(f"{task}: sample {i} is {g!r} in gold but {p!r} in the predictions "
                             "(the order must match, as in the official evaluator)")


def score_task(task: str, gold: list[dict], pred: list[dict]) -> dict:
    _check_alignment(task, gold, pred)
    g = [x["answer"] for x in gold]
    p = [x["answer"] for x in pred]
    if task in EXTRACTION:
        return extraction_prf(g, p)
    if task in CLS_LABELS:
        for x in gold:
            if x["answer"] == "":
                raise ScoreError(f"{task}: gold sample {x['sample_id']!r} has an empty label")
        return classification_prf(g, p, CLS_LABELS[task][0], macro=task in MACRO)
    if task == "MedDG":
        return rouge_scores(g, p)
    if task == "IMCS-V2-MRG":
        return rouge_by_sections(g, p)
    if task == "Text2DT":
        return text2dt_scores(g, p)
    raise ScoreError(f"no metric for task {task!r}")


def overall_score(tasks: dict) -> float:
    """The mean of each task's main metric over the tasks present."""
    return sum(m[main_metric(t)] for t, m in tasks.items()) / len(tasks) if tasks else 0.0


def score_structured(gold: dict, pred: dict, version: str) -> dict:
    """Scores of every task in gold, official task order first; overall = mean main metric."""
    order = [t for t in TASKS[version] if t in gold] + [t for t in gold if t not in TASKS[version]]
    extra = [t for t in pred if t not in gold]
    if extra:
        raise ScoreError(f"the predictions have tasks the gold lacks: {extra}")
    tasks = {task: score_task(task, gold[task], pred.get(task)) for task in order}
    return {"score": overall_score(tasks), "tasks": tasks, "version": version}


def score_records(gold_records: list[dict], pred_records: list[dict], version: str | None = None,
                  gold_source: str = "gold", pred_source: str = "predictions") -> dict:
    version = version or detect_version(r.get("task_dataset") for r in gold_records)
    gold = structure_records(gold_records, version, source=gold_source)
    pred = structure_records(pred_records, version, source=pred_source)
    return score_structured(gold, pred, version)


def score_one(record: dict, answer: str, version: str | None = None) -> tuple[str, float]:
    """The official main metric of one answer to one record (its task's parser and metric on a
    one-sample set): what the web demo shows next to each answer."""
    task = record["task_dataset"]
    scores = score_records([record], [dict(record, target=answer)], version)
    metric = main_metric(task)
    return metric, scores["tasks"][task][metric]


def format_table(scores: dict) -> str:
    rows = [f"{'task':<14} {'main metric':<16} {'value':>8}   other metrics"]
    for task, m in scores["tasks"].items():
        main = main_metric(task)
        others = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k != main)
        rows.append(f"{task:<14} {main:<16} {m[main]:>8.4f}   {others}")
    rows.append(f"{'overall':<14} {'mean of main':<16} {scores['score']:>8.4f}   "
                f"({len(scores['tasks'])} tasks, PromptCBLUE {scores['version']})")
    return "\n".join(rows)


def _load(path: str):
    """jsonl records, or a structured results.json (a dict of task lists)."""
    from .records import read_records

    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8-sig", errors="replace").lstrip()
    except OSError as e:
        raise RecordError(f"{path}: cannot open ({e.strerror})") from None
    if head.startswith("{"):
        try:
            with open(path, encoding="utf-8-sig") as f:
                obj = json.load(f)
            if isinstance(obj, dict) and all(isinstance(v, list) for v in obj.values()):
                return obj, True
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass  # not one JSON document: read it as JSON lines, which names the bad line
    return read_records(path, "input", "target", None, require_response=True), False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cblue.score", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gold", required=True, help="gold records (jsonl) or structured gold (results.json)")
    ap.add_argument("--pred", required=True, help="predictions in the submission format, or results.json")
    ap.add_argument("--out", help="where to write the scores JSON")
    ap.add_argument("--version", choices=["v1", "v2"], help="PromptCBLUE version (default: from task names)")
    args = ap.parse_args(argv)
    try:
        gold, gold_structured = _load(args.gold)
        pred, pred_structured = _load(args.pred)
        version = args.version or detect_version(gold if gold_structured else (r.get("task_dataset") for r in gold))
        if not gold_structured:
            gold = structure_records(gold, version, source=args.gold)
        if not pred_structured:
            pred = structure_records(pred, version, source=args.pred)
        scores = score_structured(gold, pred, version)
    except (RecordError, ScoreError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(scores))
    if args.out:
        save_json(args.out, {"score": scores["score"], "tasks": scores["tasks"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
