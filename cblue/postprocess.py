"""Model output text -> structured answers, exactly as the official PromptCBLUE post-processor.

v2 is michael-wzhu/PromptCBLUE src/evaluation/post_generate_process.py, v1 is
src/for_eval/post_generate_process.py (7e01dff). Oddities kept on purpose, because the
leaderboard has them: v1 repairs only the first 100 half-width `: , ;` of each kind; lead-in
lines are dropped by position; NER/CMeIE headers are removed wherever they occur in a line.

Where the official code raises (and so fails a whole submission) we score instead:
  * CMedCausal / Text2DT: a line that cannot be parsed is skipped;
  * Text2DT: triples are read with ast.literal_eval, never eval(); a triple whose elements are
    not all strings is dropped (the official crashes in .lower()).
"""
from __future__ import annotations

import ast

V1_FALLBACK_MDCFNPC = "无实际意义的不标注或者和病人当前的状态独立不标注"
V2_FALLBACK_MDCFNPC = "不标注"
FALLBACK_SR = "无法根据上下文确定病人是否患有该症状"
MRG_KEYS = ["主诉：", "现病史：", "辅助检查：", "既往史：", "诊断：", "建议："]
CDEE_KEYS = ["主体词", "发生状态", "描述词", "解剖部位"]


class UnknownTask(ValueError):
    pass


def _split_mentions(text: str) -> list[str]:
    return [w.strip() for w in text.split("，") if len(w.strip()) > 0]


def parse_ner(text: str, choices: list) -> list[dict]:
    out = []
    for choice in choices:
        for piece in text.split("\n"):
            if piece.startswith(f"{choice}实体"):
                for mention in _split_mentions(piece.replace(f"{choice}实体：", "")):
                    out.append({"entity": mention, "type": choice})
    return out


def parse_cmeie(text: str) -> list[dict]:
    out = []
    for line in text.split("\n"):
        predicate = line.split("关系的头尾实体对")[0][2:].strip()
        line = line.replace(f"具有{predicate}关系的头尾实体对如下：", "")
        for spo in line.split("。"):
            parts = spo.split("，尾实体为")
            if len(parts) < 2:
                continue
            head, tail = parts[:2]
            out.append({"predicate": predicate, "subject": head.replace("头实体为", "").strip(),
                        "object": tail.replace("尾实体为", "").strip()})
    return out


def parse_cmedcausal(text: str) -> list[dict]:
    out, rel = [], None
    for line in text.split("\n"):
        line = line.strip()
        if "因果关系三元组如下" in line:
            rel = "因果关系"
            continue
        if "条件关系三元组" in line:
            rel = "条件关系"
            continue
        if "上下位关系" in line:
            rel = "上下位关系"
            continue
        if "给定的文本没有指定关系的三元组" in line:
            break
        if not line:
            continue
        try:
            head = line.split("头实体：")[1].split("；尾实体：")[0]
            if rel != "条件关系":
                out.append({"predicate": rel, "subject": head, "object": line.split("；尾实体：")[1]})
            else:
                inner = line.split("；尾三元组：")[1]
                inner_head = inner.split("头实体：")[1].split("；尾实体：")[0]
                inner_tail = inner.split("；尾实体：")[1].split("；关系：")[0]
                inner_rel = inner.split("；关系：")[1].split("；关系：")[0]
                if inner_rel != "因果关系":
                    continue
                out.append({"predicate": rel, "subject": head,
                            "object": {"predicate": inner_rel, "subject": inner_head, "object": inner_tail}})
        except IndexError:
            continue  # the official raises here; we skip the malformed line
    return out


def _literal_triples(text: str) -> list:
    try:
        triples = ast.literal_eval(text)
        if not isinstance(triples, list):
            return []
        return [t for t in triples if len(t) == 3]
    except Exception:  # what the official's eval() would raise on is the empty list there too
        return []


def parse_text2dt(text: str) -> list[dict]:
    nodes = []
    for line in text.split("\n"):
        if "根据给定的指南文本抽取的诊疗决策树" in line or not line:
            continue
        if "：role=" not in line:
            continue  # the official raises IndexError here; we skip the line
        role = line.split("：role=")[1].split("；logical_rel=")[0]
        parts = line.split("；logical_rel=")
        logical_rel = parts[1].split("；triples=")[0] if len(parts) > 1 else "null"
        parts = line.split("；triples=")
        triples = _literal_triples(parts[1]) if len(parts) > 1 else []
        triples = [list(t) for t in triples if all(isinstance(x, str) for x in t)]
        nodes.append({"role": role, "logical_rel": logical_rel, "triples": triples})
    return nodes or [{"role": "D", "logical_rel": "null", "triples": []}]


def parse_cdn(text: str, choices: list) -> list[dict]:
    answers = [w for w in _split_mentions(text.split("\n")[-1]) if w in choices]
    return [{"entity": w, "type": "normalization"} for w in dict.fromkeys(answers)]


def parse_cdee(text: str) -> list[dict]:
    events = []
    for line in text.split("\n")[1:]:
        event = {}
        for attr in line.split("；"):
            for key in CDEE_KEYS:  # `attr` is rebound inside, as in the official loop
                if attr.startswith(f"{key}："):
                    attr = attr.replace(f"{key}：", "").strip()
                    event[key] = _split_mentions(attr) if key in ("描述词", "解剖部位") else attr
        for key in CDEE_KEYS:
            event.setdefault(key, [] if key in ("描述词", "解剖部位") else "")
        events.append(event)
    return events


def parse_finding_attrs(text: str, choices: list, fallback: str) -> list[dict]:
    out = []
    for line in text.split("\n")[1:]:
        parts = line.split("：")
        if len(parts) != 2:
            continue
        finding, conclusion = parts
        if conclusion not in choices:
            conclusion = fallback
        out.append({"entity": finding.strip(), "attr": conclusion})
    return out


def parse_mrg(text: str) -> dict:
    answer = {}
    lines = text.strip().split("\n")[1:]
    for key in MRG_KEYS:
        for line in lines:
            if line.startswith(key):
                answer[key[:-1]] = line.strip().split(key)[-1].strip()
    return answer


def parse_label(text: str, task: str) -> str:
    answer = text.strip()
    if task == "CHIP-STS":
        answer = {"相同": "是的", "不同": "不是"}.get(answer, answer)
    return answer


def structure(task: str, text: str, choices, version: str):
    """The official structured answer of one output text."""
    if version == "v1":
        text = text.replace(":", "：", 100).replace(",", "，", 100).replace(";", "；", 100)
    choices = choices if isinstance(choices, list) else []
    if task in ("CMeEE-V2", "IMCS-V2-NER"):
        return parse_ner(text, choices)
    if task == ("CMeIE" if version == "v1" else "CMeIE-V2"):
        return parse_cmeie(text)
    if task == "CMedCausal" and version == "v2":
        return parse_cmedcausal(text)
    if task == "Text2DT" and version == "v2":
        return parse_text2dt(text)
    if task == "CHIP-CDN":
        return parse_cdn(text, choices)
    if task == "CHIP-CDEE":
        return parse_cdee(text)
    if task == "CHIP-MDCFNPC":
        return parse_finding_attrs(text, choices, V1_FALLBACK_MDCFNPC if version == "v1" else V2_FALLBACK_MDCFNPC)
    if task == "IMCS-V2-SR":
        return parse_finding_attrs(text, choices, FALLBACK_SR)
    if task == "IMCS-V2-MRG":
        return parse_mrg(text)
    if task in ("CHIP-STS", "CHIP-CTC", "KUAKE-IR", "KUAKE-QIC", "KUAKE-QQR", "KUAKE-QTR", "IMCS-V2-DAC", "MedDG"):
        return parse_label(text, task)
    raise UnknownTask(f"task_dataset {task!r} is not a PromptCBLUE {version} task")


def structure_records(records: list[dict], version: str, text_field: str = "target", source: str = "") -> dict:
    """{task: [{"sample_id", "answer"}]} in file order, as the official results.json."""
    out: dict[str, list] = {}
    for i, rec in enumerate(records):
        task = rec.get("task_dataset")
        try:
            answer = structure(task, rec.get(text_field) or "", rec.get("answer_choices"), version)
        except UnknownTask as e:
            where = f"{source}:{rec.get('_line', i + 1)}: " if source else ""
            raise UnknownTask(f"{where}{e}") from None
        out.setdefault(task, []).append({"sample_id": rec.get("sample_id", "xxxx"), "answer": answer})
    return out
