"""A prompt's task and options from its own wording, for prompts that come without a record
(`chat.py`, the web demo, a user's file without `answer_choices`).

PromptCBLUE prompts list their options on one line, `<key>：a，b，c`; the keys below are
every one the real data uses (../shared/data/promptcblue: train, dev and the official test
inputs) plus `可选意图`. The task follows from the options (a closed label set contains them)
or, for extraction tasks, from the wording around them. Anything else is free text.
"""
from __future__ import annotations

import re

from .postprocess import FALLBACK_SR, V1_FALLBACK_MDCFNPC
from .tasks import CLS_LABELS

OPTION_KEYS = ("选项", "类型选项", "临床试验筛选标准选项", "实体选项", "医学实体选项", "候选集", "实体候选",
               "实体间关系", "实体间关系标签", "三元组关系选项", "三元组关系类型", "阴阳性选项", "症状阴阳性选项",
               "候选", "搜索意图选项", "意图选项", "可选意图", "实体类型", "实体类型选项")
_OPTION_LINE = re.compile(r"^\s*(" + "|".join(sorted(map(re.escape, OPTION_KEYS), key=len, reverse=True)) +
                          r")\s*[：:]\s*(.+?)\s*$")
_STS = {"是的", "不是", "相同", "不同"}
_MDCFNPC = {"已有症状疾病或者假设未来可能发生的疾病等", "未患有症状疾病", "没有回答、不知道、回答不明确或者模棱两可不好推断",
            V1_FALLBACK_MDCFNPC, "不标注"}
_SR = {"患有该症状", "没有患有该症状", FALLBACK_SR}
_RELATION_KEYS = {"实体间关系", "实体间关系标签", "三元组关系选项", "三元组关系类型"}
# Tasks known by wording alone (no option line): what their prompts always say.
_BY_WORDING = (("临床发现事件", "CHIP-CDEE"), ("诊疗决策树", "Text2DT"), ("因果关系", "CMedCausal"))
# Options written inside the question: `句子中的药物，身体部位实体是什么`, `具有X，Y关系类型的实体对`.
_INLINE_TYPES = re.compile(r"(?:句子中的|找出下面句子中的|抽取出|中的具有|具有)([^：\n？?。]+?)(?:实体|关系类型)")


def prompt_options(prompt: str) -> tuple[str | None, list[str] | None]:
    """(option-line key, options) of the last option line of a prompt, or (None, None)."""
    for line in reversed(prompt.split("\n")):
        m = _OPTION_LINE.match(line)
        if m:
            return m.group(1), [o.strip() for o in re.split("[，,]", m.group(2)) if o.strip()]
    return None, None


def task_from_prompt(prompt: str, version: str = "v2") -> tuple[str | None, list[str] | None]:
    """(task, options) that the prompt's wording asks for, or (None, None) when it matches no
    PromptCBLUE template."""
    key, options = prompt_options(prompt)
    if options is None:
        for task, labels in CLS_LABELS.items():  # a full label list written inline
            if "，".join(labels[1:] if labels[0] == "非上述类型" else labels) in prompt:
                return task, list(labels)
        inline = _INLINE_TYPES.search(prompt)
        if inline:
            options = [o.strip() for o in inline.group(1).split("，") if o.strip()]
            if "关系" in inline.group(0) or "实体对" in prompt:
                return ("CMeIE" if version == "v1" else "CMeIE-V2"), options
            return ("IMCS-V2-NER" if "症状" in options or "对话" in prompt else "CMeEE-V2"), options
        for cue, task in _BY_WORDING:
            if cue in prompt and (task == "CHIP-CDEE" or version == "v2"):
                return task, None
        return None, None
    labels = set(options) - {"非上述类型"}
    cls = [t for t, lab in CLS_LABELS.items() if labels <= (_STS if t == "CHIP-STS" else set(lab))]
    if labels and cls:
        return min(cls, key=lambda t: len(CLS_LABELS[t])), options  # the tightest label set
    if labels and labels <= _MDCFNPC:
        return "CHIP-MDCFNPC", options
    if labels and labels <= _SR:
        return "IMCS-V2-SR", options
    if key in _RELATION_KEYS or "实体对" in prompt or "三元组" in prompt:
        return ("CMeIE" if version == "v1" else "CMeIE-V2"), options
    if key in ("候选集", "实体候选") or "标准" in prompt or "归一" in prompt:
        return "CHIP-CDN", options
    if "实体" in prompt:
        return ("IMCS-V2-NER" if "症状" in options or "对话" in prompt else "CMeEE-V2"), options
    return None, None


def record_task_options(record: dict, version: str = "v2", prompt_column: str = "input"):
    """The (task, options) a record's answer is constrained by: the record's own when it has
    them, else what the prompt's wording says (keeping the record's task if it names one)."""
    task, options, has_options = record.get("task_dataset"), record.get("answer_choices"), "answer_choices" in record
    if has_options and task is not None:
        return task, options
    found_task, found_options = task_from_prompt(record.get(prompt_column) or "", version)
    if task is None:
        return found_task, (options if has_options else found_options)
    return task, found_options
