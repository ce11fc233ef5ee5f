"""PromptCBLUE records: one JSON object per line.

Every record is checked before anything else reads the file, so a bad line stops the run
with the file, line and field named, instead of a pyarrow traceback halfway through training.
"""
from __future__ import annotations

import json
import logging
from collections import Counter

logger = logging.getLogger(__name__)


class RecordError(ValueError):
    """A malformed PromptCBLUE file; the message names file, line and field."""


def _where(path: str, lineno: int, field: str | None = None) -> str:
    return f"{path}:{lineno}" + (f": field {field!r}" if field else "")


def read_records(path: str, prompt_column: str = "input", response_column: str | None = "target",
                 history_column: str | None = None, require_response: bool = True) -> list[dict]:
    """Parse and validate a jsonl file; return its records in file order.

    `require_response=False` accepts records without the response field (official test
    inputs); a present response must still be a string.
    """
    records = []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise RecordError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        for lineno, line in enumerate(_text_lines(f, path), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{_where(path, lineno)}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(rec, dict):
                raise RecordError(f"{_where(path, lineno)}: expected a JSON object, got {type(rec).__name__}")
            _check_str(rec, prompt_column, path, lineno, required=True)
            if response_column:
                _check_str(rec, response_column, path, lineno, required=require_response)
            if history_column:
                _check_history(rec, history_column, path, lineno)
            rec["_line"] = lineno
            records.append(rec)
    if not records:
        raise RecordError(f"{path}: the file holds no records")
    _report_repeated_ids(records, path)
    return records


def _text_lines(f, path: str):
    """Lines of a UTF-8 file as text, as Windows editors save them too (a BOM, CRLF line ends);
    anything else is named by file and line instead of a bare UnicodeDecodeError."""
    for lineno, raw in enumerate(f, 1):
        try:
            yield raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise RecordError(f"{_where(path, lineno)}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                              f"{e.start + 1}); save the file as UTF-8 JSON lines") from None


def _check_str(rec: dict, field: str, path: str, lineno: int, required: bool) -> None:
    if field not in rec:
        if required:
            raise RecordError(f"{_where(path, lineno, field)}: missing (columns present: {sorted(rec)})")
        return
    if not isinstance(rec[field], str):
        raise RecordError(f"{_where(path, lineno, field)}: expected a string, got {type(rec[field]).__name__}")


def _check_history(rec: dict, field: str, path: str, lineno: int) -> None:
    history = rec.get(field)
    if history is None:
        return
    ok = isinstance(history, list) and all(
        isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(x, str) for x in turn)
        for turn in history)
    if not ok:
        raise RecordError(f"{_where(path, lineno, field)}: expected a list of [question, answer] string pairs")


def _report_repeated_ids(records: list[dict], path: str) -> None:
    counts = Counter(r.get("sample_id") for r in records if "sample_id" in r)
    repeated = {k: n for k, n in counts.items() if n > 1}
    if repeated:
        examples = ", ".join(f"{k!r} x{n}" for k, n in list(repeated.items())[:5])
        logger.warning("%s: %d sample_id values repeat (%s%s)", path, len(repeated), examples,
                       ", ..." if len(repeated) > 5 else "")

