"""Is an answer valid: does the official post-processor read all of it, with labels from the options?

The same language as the grammars of cblue/answer_grammar.py, written the other way round:
as checks on text in the terms of the parser (cblue/postprocess.py), so that the two can be
held against each other (tests) and so that free-text predictions can be measured
(comparison.md's validity column). Free-text tasks have no notion of validity (None).
"""
from __future__ import annotations

import ast
import re

from . import answer_grammar as g
from .prompt_options import record_task_options

_CMEIE_PAIR = re.compile(r"头实体为(.+)，尾实体为(.+)")
_CDEE_EVENT = re.compile(r"主体词：([^；]*)；发生状态：( *(?:否定|不确定)? *)；描述词：([^；]*)；解剖部位：([^；]*)")
_NODE = re.compile(r"节点[0-9]+：role=[CD]；logical_rel=(?:and|or|null)；triples=(.*)")
_CAUSAL_PAIR = re.compile(r"头实体：([^；]+)；尾实体：([^；]+)")
_CAUSAL_COND = re.compile(r"头实体：([^；]+)；尾三元组：头实体：([^；]+)；尾实体：([^；]+)；关系：因果关系")


def _items(text: str) -> bool:
    """An empty list, or items joined by `，` with none empty."""
    return text == "" or all(text.split("，"))


def _lines_after(text: str, lead: str) -> list[str] | None:
    lines = text.split("\n")
    return lines[1:] if lines[0] == lead else None


def answer_is_valid(task: str, text: str, options, version: str = "v2") -> bool | None:
    """True if `text` (a prediction, stripped as predictions are) is in the task's layout with
    every label from `options`; None for free-text and unknown tasks."""
    if task in g.FREE_TEXT or task not in g.CLASSIFICATION | g.NEEDS_OPTIONS | {"CHIP-CDEE", "CMedCausal", "Text2DT"}:
        return None
    # No v1 repair of half-width `: , ;` here: a valid answer is written in the targets' own
    # full-width layout, which both versions read (an answer that needs the repair is not).
    text = text.strip()
    options = [o for o in options if isinstance(o, str)] if isinstance(options, list) else []
    if task in g.CLASSIFICATION:
        return text in g.label_options(task, options)
    if task == "CHIP-CDN":
        terms = text.split("，")
        return text == g.CDN_NONE or ("\n" not in text and text != "" and not (version == "v1" and "," in text) and
                                      len(terms) <= len(options) and all(p.strip() in options for p in terms))
    if task in g.NER:
        if text == g.NER_NONE:
            return True
        lines = text.split("\n")
        lines = lines[1:] if lines[0] == g.NER_LEAD else lines
        heads = [t + "实体：" for t in options]
        return len(lines) <= len(options) and all(any(line.startswith(h) and _items(line[len(h):]) for h in heads)
                                                  for line in lines)
    if task in ("CMeIE", "CMeIE-V2"):
        lines = text.split("\n")
        return text == g.CMEIE_NONE or (len(lines) <= len(options) and all(_cmeie_line(line, options) for line in lines))
    if task == "CHIP-CDEE":
        lines = _lines_after(text, g.CDEE_LEAD)
        return lines is not None and all(_cdee_event(line) for line in lines)
    if task in ("CHIP-MDCFNPC", "IMCS-V2-SR"):
        lines = _lines_after(text, g.MDCFNPC_LEAD if task == "CHIP-MDCFNPC" else g.SR_LEAD)
        return lines is not None and all(len(p := line.split("：")) == 2 and p[0] and p[1] in options
                                         for line in lines)
    if task == "CMedCausal":
        return text == g.CAUSAL_NONE or _causal(text, options or g.CAUSAL_RELATIONS)
    if task == "Text2DT":
        lines = _lines_after(text, g.TEXT2DT_LEAD)
        return lines is not None and all(_node(line) for line in lines)
    return None


def _cmeie_line(line: str, relations: list[str]) -> bool:
    for rel in relations:
        head = f"具有{rel}关系的头尾实体对如下："
        if line.startswith(head):
            pairs = line[len(head):].split("。")
            if pairs[-1] == "":
                pairs = pairs[:-1]
            return all((m := _CMEIE_PAIR.fullmatch(p)) and "，尾实体为" not in m.group(1) for p in pairs)
    return False


def _cdee_event(line: str) -> bool:
    m = _CDEE_EVENT.fullmatch(line)
    return bool(m) and all(_items(m.group(i)) for i in (3, 4))


def _causal(text: str, relations: list[str]) -> bool:
    current, sections = None, 0
    for line in text.split("\n"):
        header = next((r for r in relations if line == f"根据给定的文本抽取的{r}三元组如下："), None)
        if header:
            current, sections = header, sections + 1
        elif current is None or not (_CAUSAL_COND if current == "条件关系" else _CAUSAL_PAIR).fullmatch(line):
            return False
    return sections <= len(relations)


def _node(line: str) -> bool:
    m = _NODE.fullmatch(line)
    if not m:
        return False
    try:
        triples = ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError):
        return False
    return isinstance(triples, list) and all(
        isinstance(t, list) and len(t) == 3 and all(isinstance(x, str) for x in t) for t in triples)


def validity_by_task(records: list[dict], predictions: list[str], version: str,
                     prompt_column: str = "input") -> dict[str, tuple[int, int]]:
    """{task: (valid answers, answers)} over the closed-set tasks of `records` (options as the
    constraint takes them: the record's, else the prompt's)."""
    out: dict[str, list[int]] = {}
    for rec, pred in zip(records, predictions):
        task, options = record_task_options(rec, version, prompt_column)
        ok = answer_is_valid(task, pred, options, version)
        if ok is not None:
            counts = out.setdefault(task, [0, 0])
            counts[0] += bool(ok)
            counts[1] += 1
    return {t: (v, n) for t, (v, n) in out.items()}
