"""The official PromptCBLUE metrics (src/evaluation/evaluators.py), on structured answers.

scikit-learn's classification_report and rouge-chinese do the counting, as in the official
code; only the glue is ours. All functions take two aligned lists of answers (gold, predicted).
"""
from __future__ import annotations

import json

from sklearn.metrics import classification_report


def item_key(item: dict) -> tuple:
    return tuple(json.dumps(item[k], ensure_ascii=False) for k in sorted(item))


def extraction_prf(gold: list[list[dict]], pred: list[list[dict]]) -> dict:
    """Micro P/R/F1 over per-sample sets of items; 0 when nothing is right (TP = 0)."""
    tp = fp = fn = 0
    for g, p in zip(gold, pred):
        gs, ps = {item_key(x) for x in g}, {item_key(x) for x in p}
        tp += len(gs & ps)
        fp += len(ps - gs)
        fn += len(gs - ps)
    if not tp:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return {"precision": precision, "recall": recall, "f1": 2 * precision * recall / (precision + recall)}


def classification_prf(gold: list[str], pred: list[str], empty_fallback: str, macro: bool) -> dict:
    """sklearn's report over the union of gold and predicted strings; an empty prediction
    becomes `empty_fallback`. Macro averaging for CTC/QIC/DAC, support-weighted otherwise."""
    pred = [p if p != "" else empty_fallback for p in pred]
    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    avg = report["macro avg" if macro else "weighted avg"]
    prefix = "macro-" if macro else ""
    return {f"{prefix}precision": avg["precision"], f"{prefix}recall": avg["recall"],
            f"{prefix}f1": avg["f1-score"]}


_basic_tokenizer = None


def _rouge_text(text: str) -> str:
    """Characters split like the official: BERT's BasicTokenizer (lower-cases, splits CJK and
    punctuation), joined by spaces; empty text becomes `无 。`."""
    global _basic_tokenizer
    if _basic_tokenizer is None:
        from transformers import BasicTokenizer

        _basic_tokenizer = BasicTokenizer(tokenize_chinese_chars=True)
    out = " ".join(_basic_tokenizer.tokenize(text)).strip()
    return out if out else "无 。"


def _rouge(hyps: list[str], refs: list[str]) -> dict:
    from rouge_chinese import Rouge

    scores = Rouge().get_scores(hyps, refs, avg=True)
    return {"rouge1": scores["rouge-1"]["f"], "rouge2": scores["rouge-2"]["f"], "rougeL": scores["rouge-l"]["f"]}


def rouge_scores(gold: list[str], pred: list[str]) -> dict:
    """MedDG: one ROUGE item per sample."""
    return _rouge([_rouge_text(p) for p in pred], [_rouge_text(g) for g in gold])


def rouge_by_sections(gold: list[dict], pred: list[dict]) -> dict:
    """IMCS-V2-MRG: one ROUGE item per (sample, section of the GOLD report)."""
    hyps, refs = [], []
    for g, p in zip(gold, pred):
        for key in g:
            hyps.append(_rouge_text(p.get(key, "").strip()))
            refs.append(_rouge_text(g[key].strip()))
    if not refs:  # no gold sections at all: rouge-chinese cannot average nothing
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    return _rouge(hyps, refs)
