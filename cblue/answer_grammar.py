"""What a valid answer is, per PromptCBLUE task, as a grammar for constrained decoding.

A valid answer is one the official post-processor (cblue/postprocess.py) reads completely:
every line it would look at is in the task's layout, and every label, term, attribute, type
or relation comes from the record's options. The grammar is that language (Lark syntax, as
llguidance reads it; chatglm/constraint.py applies it), so a greedy answer that was already valid
is not changed; cblue/validity.py says the same thing as a check on text, and tests hold the two
together. Stricter than the parser in two places only, where no gold answer goes: the mentions
of the span tasks below are copied from the input, and a list of options (CDN terms, NER and
CMeIE lines) has at most as many items as there are options.

Facts behind the choices (measured on ../shared/data/promptcblue, train + dev):
  * CMeEE-V2 mentions, CHIP-MDCFNPC findings and CMeIE heads/tails are spans of the input
    (100%, 100%, 99.95%: the rest differ by a `,` that v1 turns into `，`), so they are
    constrained to substrings of the input; IMCS-V2-NER symptoms (59% spans: normalised
    names), CHIP-CDEE words (88%) and IMCS-V2-SR symptoms are free text.
  * CHIP-CTC answers `非上述类型` (22 of 821) although no prompt or `answer_choices` offers it;
    it is the official label list's fallback of CTC, QIC and DAC, so it is always an option.
  * Every answer may start with the space of sentencepiece's first piece (`▁完全匹配`); it ends
    where the layout ends (no trailing whitespace, which a model could otherwise pile up).
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Callable

from .prompt_options import record_task_options
from .tasks import CLS_LABELS

logger = logging.getLogger(__name__)

FALLBACK_LABEL = "非上述类型"
NER_LEAD, NER_NONE = "上述句子中的实体包含：", "上述句子没有指定类型实体"
CMEIE_NONE = "没有指定类型的三元组"
CDN_NONE = "没有对应的标准化实体"
CDEE_LEAD = "上述句子中的临床发现事件如下："
MDCFNPC_LEAD = "上述对话中临床发现实体以及其阴阳性判别如下："
SR_LEAD = "当前对话中的症状及其阴阳性判断为："
CAUSAL_NONE = "给定的文本没有指定关系的三元组"
CAUSAL_RELATIONS = ["因果关系", "条件关系", "上下位关系"]
TEXT2DT_LEAD = "根据给定的指南文本抽取的诊疗决策树如下："

CLASSIFICATION = set(CLS_LABELS)
NER = {"CMeEE-V2", "IMCS-V2-NER"}
SPAN_TASKS = {"CMeEE-V2", "CHIP-MDCFNPC", "CMeIE", "CMeIE-V2"}  # mentions copied from the input
FREE_TEXT = {"MedDG", "IMCS-V2-MRG"}
# Tasks whose grammar is built from the record's options (the rest have a fixed layout).
NEEDS_OPTIONS = CLASSIFICATION | NER | {"CHIP-CDN", "CMeIE", "CMeIE-V2", "CHIP-MDCFNPC", "IMCS-V2-SR"}


@dataclass(frozen=True)
class AnswerGrammar:
    """A record's constraint: `lark` is None for free text, with `reason` when that is a
    fallback the user should hear about (options missing or unusable)."""
    lark: str | None
    reason: str | None = None


def _lit(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _alt(options) -> str:
    return "(" + " | ".join(_lit(o) for o in options) + ")"


# Every line of an answer is one terminal (a single regular expression) and lines are joined
# by "\n": llguidance's lexer ends a lexeme at the first byte that cannot continue it, so a
# free-text stretch must never be followed by another lexeme that starts with a multi-byte
# character (`，` `：` `；` `。` share their lead bytes with the text); inside one terminal the
# automaton sorts that out by itself.
def _grammar(answer_rule: str, *terminals: str) -> str:
    return "\n".join(['start: " "? answer', f"answer: {answer_rule}", *terminals]) + "\n"


# A mention is never blank: the parser strips mentions, and a last mention of blanks would
# leave the answer ending in a bare `，` once the prediction is stripped.
_TRIMMED = r"/.*\S.*/"


def _spans(text: str, stops: str) -> str:
    """A terminal for a substring of `text` that crosses none of the characters in `stops`
    (llguidance's substring lexeme, one per stretch between stops)."""
    chunks = sorted({c for c in re.split("[" + re.escape(stops) + "]", text) if c.strip()}, key=text.find)
    if not chunks:
        return _free(stops)
    subs = " | ".join("%regex " + json.dumps({"substring_chars": c}, ensure_ascii=False) for c in chunks)
    return f"({subs}) & {_TRIMMED}"


def _free(stops: str) -> str:
    return "/[^" + stops.replace("\n", r"\n") + "]+/ & " + _TRIMMED


def classification(task: str, options: list[str]) -> str:
    return _grammar(_alt(label_options(task, options)))


# Lists of options are bounded by the number of options (the layouts name each at most once):
# an undecided model cannot fill its budget with `胃炎，胃炎，…`.
def _upto(item: str, sep: str, n: int) -> str:
    """1 to n items joined by `sep`."""
    return item if n <= 1 else f"{item} ({sep} {item}){{0,{n - 1}}}"


def cdn(terms: list[str]) -> str:
    return _grammar(f"{_lit(CDN_NONE)} | TERMS", f"TERMS: {_upto('TERM', _lit('，'), len(terms))}",
                    f"TERM: {_alt(terms)}")


def ner(types: list[str], mention: str) -> str:
    lines = _upto("LINE", _lit("\n"), len(types))
    return _grammar(f"{_lit(NER_NONE)} | {_lit(NER_LEAD)} (\"\\n\" {lines})? | {lines}",
                    f"LINE: {_alt(t + '实体：' for t in types)} (MENTION (\"，\" MENTION)*)?",
                    f"MENTION: {mention}")


def cmeie(relations: list[str], entity: str) -> str:
    pair = '"头实体为" ENTITY "，尾实体为" ENTITY'
    return _grammar(f"{_lit(CMEIE_NONE)} | {_upto('LINE', _lit(chr(10)), len(relations))}",
                    f"LINE: {_alt('具有' + r + '关系的头尾实体对如下：' for r in relations)} ({pair} \"。\")* ({pair})?",
                    f"ENTITY: {entity}")


def cdee() -> str:
    return _grammar(f"{_lit(CDEE_LEAD)} (\"\\n\" EVENT)*",
                    "EVENT: \"主体词：\" WORD? \"；发生状态：\" \" \"* (\"否定\" | \"不确定\")? \" \"* \"；描述词：\" WORDS? "
                    "\"；解剖部位：\" WORDS?",
                    "WORDS: ITEM (\"，\" ITEM)*",
                    f"WORD: {_free('；' + chr(10))}",
                    f"ITEM: {_free('；，' + chr(10))}")


def finding_attributes(lead: str, attributes: list[str], finding: str) -> str:
    return _grammar(f"{_lit(lead)} (\"\\n\" LINE)*", f"LINE: FINDING \"：\" {_alt(attributes)}",
                    f"FINDING: {finding}")


def cmedcausal(relations: list[str]) -> str:
    sections = []
    for rel in relations:
        head = _lit(f"根据给定的文本抽取的{rel}三元组如下：")
        sections.append(f"{head} (\"\\n\" {'COND' if rel == '条件关系' else 'PAIR'})*")
    return _grammar(f"{_lit(CAUSAL_NONE)} | {_upto('section', _lit(chr(10)), len(relations))}",
                    "section: " + " | ".join(sections),
                    "PAIR: \"头实体：\" X \"；尾实体：\" X",
                    "COND: \"头实体：\" X \"；尾三元组：头实体：\" X \"；尾实体：\" X \"；关系：因果关系\"",
                    f"X: {_free('；' + chr(10))}")


def text2dt() -> str:
    return _grammar(f"{_lit(TEXT2DT_LEAD)} (\"\\n\" NODE)*",
                    "NODE: \"节点\" /[0-9]+/ \"：role=\" (\"C\" | \"D\") \"；logical_rel=\" (\"and\" | \"or\" | \"null\") "
                    "\"；triples=[\" (TRIPLE (\", \" TRIPLE)*)? \"]\"",
                    "TRIPLE: \"[\" S \", \" S \", \" S \"]\"",
                    r'S: /"[^"\\\n]*"/')


def _usable(task: str, option: str, version: str) -> bool:
    """An option the parser can read back as itself in that place of the answer."""
    if not option or option != option.strip() or "\n" in option:
        return False
    if task == "CHIP-CDN":  # terms are split on `，` (v1 first turns `,` into `，`)
        return "，" not in option and not (version == "v1" and "," in option)
    if task in ("CHIP-MDCFNPC", "IMCS-V2-SR"):  # `finding：attribute` must split into exactly two
        return "：" not in option and not (version == "v1" and ":" in option)
    return True


def answer_grammar(task: str | None, prompt: str, options, version: str = "v2",
                   can_spell: Callable[[str], bool] | None = None) -> AnswerGrammar:
    """The grammar of a valid answer to `prompt` for `task` with `options` (the record's
    answer_choices). Free text (lark None) for free-text and unknown tasks, and, with a
    reason, when a task that needs options has none that can be used."""
    if task is None or task in FREE_TEXT:
        return AnswerGrammar(None)
    if task in ("CMedCausal", "Text2DT") and version != "v2" or task == "CMeIE" and version != "v1" or \
            task == "CMeIE-V2" and version != "v2":
        return AnswerGrammar(None)  # not a task of this version: the parser rejects it anyway
    if task in NEEDS_OPTIONS or task == "CMedCausal":
        if options is None and task == "CMedCausal":
            options = CAUSAL_RELATIONS
        if not isinstance(options, list):
            return AnswerGrammar(None, f"answer_choices is {type(options).__name__}, not a list of options")
        if not all(isinstance(o, str) for o in options):
            return AnswerGrammar(None, "answer_choices holds something other than strings")
        usable = [o for o in dict.fromkeys(options) if _usable(task, o, version)]
        if not usable:
            return AnswerGrammar(None, "answer_choices is empty" if not options else
                                 f"no option the parser can read back ({options[:3]!r}...)")
        bad = [o for o in usable if can_spell is not None and not can_spell(o)]
        if bad:
            return AnswerGrammar(None, f"the tokenizer cannot spell the option {bad[0]!r}")
        options = usable
    if task in CLASSIFICATION:
        return AnswerGrammar(classification(task, options))
    if task == "CHIP-CDN":
        return AnswerGrammar(cdn(options))
    if task in NER:
        return AnswerGrammar(ner(options, _spans(prompt, "，\n") if task in SPAN_TASKS else _free("，\n")))
    if task in ("CMeIE", "CMeIE-V2"):
        return AnswerGrammar(cmeie(options, _spans(prompt, "。\n")))
    if task == "CHIP-CDEE":
        return AnswerGrammar(cdee())
    if task == "CHIP-MDCFNPC":
        return AnswerGrammar(finding_attributes(MDCFNPC_LEAD, options, _spans(prompt, "：\n")))
    if task == "IMCS-V2-SR":
        return AnswerGrammar(finding_attributes(SR_LEAD, options, _free("：\n")))
    if task == "CMedCausal":
        return AnswerGrammar(cmedcausal([r for r in options if r in CAUSAL_RELATIONS] or CAUSAL_RELATIONS))
    if task == "Text2DT":
        return AnswerGrammar(text2dt())
    return AnswerGrammar(None)


def label_options(task: str, options: list[str]) -> list[str]:
    """The labels a classification answer may take (the record's options plus the official
    fallback), as the grammar offers them."""
    if task in ("CHIP-CTC", "KUAKE-QIC", "IMCS-V2-DAC"):
        return list(dict.fromkeys(options + [FALLBACK_LABEL]))
    return list(options)


def grammars_for_records(records: list[dict], version: str, prompt_column: str = "input",
                         can_spell: Callable[[str], bool] | None = None, source: str = "") -> list[str | None]:
    """One grammar text per record (None: free text). A record whose options cannot be used
    is predicted as free text, with one warning naming it."""
    out, fallbacks = [], 0
    for i, rec in enumerate(records):
        task, options = record_task_options(rec, version, prompt_column)
        grammar = answer_grammar(task, rec.get(prompt_column) or "", options, version, can_spell)
        if grammar.reason:
            fallbacks += 1
            if fallbacks <= 20:
                logger.warning("%s:%s: %s (%s): %s; predicted as free text", source or "records", rec.get("_line", i + 1),
                               task, rec.get("sample_id", "no sample_id"), grammar.reason)
        out.append(grammar.lark)
    if fallbacks > 20:
        logger.warning("%d records in all are predicted as free text because of their options", fallbacks)
    return out


def grammar_for_prompt(prompt: str, record: dict | None = None, version: str = "v2",
                       can_spell: Callable[[str], bool] | None = None) -> str | None:
    """The grammar for one prompt typed or picked in chat.py / the web demo: a PromptCBLUE
    record's own task and options when the prompt is that record's input, else what the
    prompt's wording asks for (None: free text)."""
    rec = record if record is not None and record.get("input") == prompt else {"input": prompt}
    task, options = record_task_options(rec, version)
    return answer_grammar(task, prompt, options, version, can_spell).lark
