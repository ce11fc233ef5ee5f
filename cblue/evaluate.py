"""What main.py's --do_eval/--do_predict write after generating: the official structured
results, the PromptCBLUE scores (when the data has targets) and the original's ROUGE/BLEU."""
from __future__ import annotations

import logging
import os

from .error_report import write_error_report
from .outputs import save_json
from .postprocess import structure_records
from .score import ScoreError, format_table, overall_score, score_structured, score_task
from .tasks import detect_version, main_metric
from .validity import validity_by_task

logger = logging.getLogger(__name__)


def original_rouge_bleu(predictions: list[str], labels: list[str]) -> dict:
    """The original main.py's compute_metrics: jieba words, rouge-chinese, char BLEU-4 (x100)."""
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    jieba.setLogLevel(logging.WARNING)
    scores = {"rouge-1": [], "rouge-2": [], "rouge-l": [], "bleu-4": []}
    for pred, label in zip(predictions, labels):
        hyp, ref = " ".join(jieba.cut(pred)), " ".join(jieba.cut(label))
        if hyp.strip() and ref.strip():
            result = Rouge().get_scores(hyp, ref)[0]
            for k in ("rouge-1", "rouge-2", "rouge-l"):
                scores[k].append(round(result[k]["f"] * 100, 4))
        else:  # rouge-chinese raises on empty text (the original crashed); count it as 0
            for k in ("rouge-1", "rouge-2", "rouge-l"):
                scores[k].append(0.0)
        bleu = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
        scores["bleu-4"].append(round(bleu * 100, 4))
    return {k: (sum(v) / len(v) if v else 0.0) for k, v in scores.items()}


def evaluate_predictions(out_dir: str, records: list[dict], predictions: list[str], labels: list[str],
                         data_args, version: str | None, prefix: str, decoding: str = "free",
                         table: bool = True) -> dict:
    """Write results.json (+ scores.json and error_report.md when targets exist); return metrics
    for *_results.json. `decoding` (constrained or free) is recorded in scores.json, with each
    closed-set task's share of answers the official parser reads in full (cblue/validity.py).
    `table`: print the scores by task (an evaluation during training prints one line instead)."""
    response = data_args.response_column
    pred_records = [dict(r, **{response: p}) for r, p in zip(records, predictions)]
    metrics = {}
    if any(labels):
        metrics.update({f"{prefix}_{k}": v for k, v in original_rouge_bleu(predictions, labels).items()})
    if not all("task_dataset" in r for r in records):
        logger.info("No task_dataset field: PromptCBLUE post-processing and scores skipped")
        return metrics
    try:
        version = version or detect_version(r["task_dataset"] for r in records)
        structured = structure_records(pred_records, version, response, source="predictions")
    except ValueError as e:  # e.g. unknown task names: the predictions are written, scores are not
        logger.warning("PromptCBLUE post-processing skipped: %s", e)
        return metrics
    save_json(os.path.join(out_dir, "results.json"), structured)
    valid = {t: round(v / n, 4) for t, (v, n) in validity_by_task(records, predictions, version,
                                                                   data_args.prompt_column).items()}
    metrics[f"{prefix}_valid_answers"] = valid
    if any(r.get(response) for r in records):
        scores = dict(_score_with_targets(records, pred_records, version, response), decoding=decoding,
                      valid_answers=valid)
        save_json(os.path.join(out_dir, "scores.json"), scores)
        write_error_report(out_dir, records, predictions, version, scores, response, data_args.prompt_column)
        if table:
            print(format_table(scores))
        metrics[f"{prefix}_score"] = scores["score"]
        for task, m in scores["tasks"].items():
            metrics[f"{prefix}_{task}_{main_metric(task)}"] = m[main_metric(task)]
    return metrics


def _score_with_targets(records, pred_records, version, response) -> dict:
    """Scores over the records that have a target; a task the official would refuse (e.g. an
    empty gold label) is reported and left out of the overall score instead of failing."""
    keep = [i for i, r in enumerate(records) if r.get(response)]
    if len(keep) < len(records):
        logger.warning("%d records have no target and are not scored", len(records) - len(keep))
    gold = structure_records([records[i] for i in keep], version, response)
    pred = structure_records([pred_records[i] for i in keep], version, response)
    try:
        return score_structured(gold, pred, version)
    except ScoreError:
        tasks, skipped = {}, {}
        for task in gold:
            try:
                tasks[task] = score_task(task, gold[task], pred[task])
            except ScoreError as e:
                skipped[task] = str(e)
                logger.warning("not scored: %s", e)
        return {"score": overall_score(tasks), "tasks": tasks, "version": version, "not_scored": skipped}
