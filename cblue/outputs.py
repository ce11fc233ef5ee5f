"""Prediction files: written as they are produced, assembled in input order at the end.

`PredictionLog` appends one JSON line per finished sample and flushes it, so an interrupted
run loses at most the batch in flight; started again, it skips what is already there. A
torn last line (a crash mid-write) is ignored and that sample is predicted again.
"""
from __future__ import annotations

import json
import logging
import os

logger = logging.getLogger(__name__)


class PredictionLog:
    """`fingerprint` names what is being predicted (model, checkpoint, data, settings): a log
    left by a different run is started afresh rather than mixed into this one."""

    def __init__(self, path: str, fingerprint: str = ""):
        self.path, self.fingerprint = path, fingerprint
        done = read_log(path, fingerprint)
        if done is None and os.path.exists(path):
            logger.warning("%s belongs to another run; predicting from the start", path)
            os.remove(path)
        self.done: dict[int, str] = done or {}
        if done is not None:
            self._truncate_torn_tail()
        fresh = not os.path.exists(path)
        self._f = open(path, "a", encoding="utf-8")
        if fresh:
            self._f.write(json.dumps({"fingerprint": fingerprint}) + "\n")
            self.flush()

    def _truncate_torn_tail(self) -> None:
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def add(self, index: int, text: str) -> None:
        self._f.write(json.dumps({"index": index, "predict": text}, ensure_ascii=False) + "\n")
        self.done[index] = text

    def flush(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _parse(line: str) -> dict | None:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None


def read_log(path: str, fingerprint: str) -> dict[int, str] | None:
    """{index: prediction} of a progress log written by this run; None if there is none (or
    it is another run's). A torn last line is skipped: that sample is simply predicted again."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    header = _parse(lines[0]) if lines else None
    if header is None or header.get("fingerprint") != fingerprint:
        return None
    done = {}
    for line in lines[1:]:
        rec = _parse(line)
        if rec is not None and "index" in rec and "predict" in rec:
            done[int(rec["index"])] = rec["predict"]
    return done


def merge_logs(paths: list[str], fingerprint: str) -> dict[int, str]:
    merged: dict[int, str] = {}
    for p in paths:
        merged.update(read_log(p, fingerprint) or {})
    return merged


def atomic_write_text(path: str, text: str) -> None:
    """Write to a temporary name, then rename: a reader never sees a half-written file."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def save_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2))


def write_prediction_files(output_dir: str, records: list[dict], predictions: list[str], labels: list[str],
                           response_column: str = "target") -> None:
    """generated_predictions.txt (the original's) and test_predictions.json (submission format)."""
    lines = [json.dumps({"labels": l, "predict": p}, ensure_ascii=False) for p, l in zip(predictions, labels)]
    atomic_write_text(os.path.join(output_dir, "generated_predictions.txt"), "\n".join(lines) + "\n")
    submission = []
    for rec, pred in zip(records, predictions):
        rec = {k: v for k, v in rec.items() if not k.startswith("_")}
        rec[response_column] = pred
        submission.append(json.dumps(rec, ensure_ascii=False))
    atomic_write_text(os.path.join(output_dir, "test_predictions.json"), "\n".join(submission) + "\n")
