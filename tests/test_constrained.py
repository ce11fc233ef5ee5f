"""Constrained decoding: every closed-set answer is one the official parser reads in full, with
labels from the options, and an answer that was already valid is not changed.

The generation tests run the golden tiny ChatGLM2 (random weights): the most adversarial model
there is, it writes whatever the mask lets through."""
import json
import logging
import os
import random

import pytest

from cblue.answer_grammar import SPAN_TASKS, answer_grammar, grammars_for_records
from cblue.postprocess import parse_label, structure
from cblue.prompt_options import record_task_options, task_from_prompt
from cblue.tasks import CLS_LABELS
from cblue.validity import answer_is_valid
from conftest import GOLDEN, ROOT, SHARED_DATA, needs_golden
from chatglm.constraint import engine_for
from chatglm.generation import GenerationSettings, constraint_for, generate, stream_text
from chatglm.model import ChatGLM
from chatglm.tokenizer import ChatGLMTokenizer

MODEL = os.path.join(GOLDEN, "model")


def read(path, limit_per_task=None, seed=0):
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    if limit_per_task is None:
        return records
    random.Random(seed).shuffle(records)
    seen, out = {}, []
    for r in records:
        if seen.get(r["task_dataset"], 0) < limit_per_task:
            seen[r["task_dataset"]] = seen.get(r["task_dataset"], 0) + 1
            out.append(r)
    return out


def version_of(records):
    return "v1" if any(r["task_dataset"] == "CMeIE" for r in records) else "v2"


def shared_file(name):
    path = os.path.join(SHARED_DATA, name)
    if not os.path.exists(path):
        pytest.skip("../shared/data not present")
    return path


@pytest.fixture(scope="module")
def tok():
    if not os.path.isdir(MODEL):
        pytest.skip("../shared/golden not present")
    return ChatGLMTokenizer.from_pretrained(MODEL)


@pytest.fixture(scope="module")
def model():
    return ChatGLM.from_pretrained(MODEL).eval()


def accepts(tok, grammar, text):
    """Does the grammar accept `text` as the model would write it (sentencepiece ids)?"""
    m = engine_for(tok, len(tok)).matcher(grammar)
    return all(m.consume_token(t) for t in tok.encode_text(text)) and m.is_accepting()


def record_grammar(rec, version):
    task, options = record_task_options(rec, version)
    return answer_grammar(task, rec["input"], options, version).lark


# --- the grammar and the parser agree ------------------------------------------------------

def gold_records():
    files = [os.path.join(ROOT, "PromptCBLUE", n) for n in ("dev.json", "dev_v1.json", "train.json")]
    files += [os.path.join(SHARED_DATA, "dev.json")] if os.path.isdir(SHARED_DATA) else []
    return [(r, version_of(read(f))) for f in files for r in read(f) if r["target"]]


def test_every_gold_target_is_valid_and_in_its_grammar(tok):
    checked = 0
    for rec, version in gold_records():
        grammar = record_grammar(rec, version)
        valid = answer_is_valid(rec["task_dataset"], rec["target"], rec["answer_choices"], version)
        if rec["task_dataset"] in ("MedDG", "IMCS-V2-MRG"):
            assert grammar is None and valid is None
            continue
        assert valid, (rec["task_dataset"], rec["target"])
        assert accepts(tok, grammar, rec["target"]), (rec["task_dataset"], rec["target"])
        checked += 1
    assert checked > 1000


def spoil(rec, rng):
    """A few ways answers go wrong (what the issue saw): a stray period, a label that is not
    an option, a half-width separator, a lead-in lost, a line from another task."""
    t = rec["target"]
    yield t + "。"
    yield "答：" + t
    if rec["task_dataset"] in CLS_LABELS:
        yield t + "类"
    if "：" in t:
        yield t.replace("：", ":", 1)
    if "\n" in t:
        yield "\n".join(t.split("\n")[1:]) if rec["task_dataset"] not in ("CMeEE-V2", "IMCS-V2-NER", "CMeIE",
                                                                           "CMeIE-V2") else t + "\n不是一行"
    if rec["task_dataset"] == "CHIP-CDN" and t != "没有对应的标准化实体":
        yield t + "，不在候选中的词"


def test_grammar_rejects_what_the_parser_does_not_read(tok):
    """Grammar and validity check agree, except that where mentions are spans of the input
    (CMeEE-V2, CHIP-MDCFNPC, CMeIE) the grammar also refuses a mention the input does not hold."""
    rng = random.Random(0)
    rejected = 0
    for rec, version in gold_records()[::7]:
        grammar = record_grammar(rec, version)
        if grammar is None:
            continue
        for bad in spoil(rec, rng):
            valid = answer_is_valid(rec["task_dataset"], bad, rec["answer_choices"], version)
            if rec["task_dataset"] in SPAN_TASKS:
                assert not accepts(tok, grammar, bad) or valid, (rec["task_dataset"], bad)
            else:
                assert accepts(tok, grammar, bad) == bool(valid), (rec["task_dataset"], bad)
            rejected += not valid
    assert rejected > 300


# --- generation -----------------------------------------------------------------------------

def closed_set_records(path, per_task, seed=0):
    return [r for r in read(path, per_task, seed) if r["task_dataset"] not in ("MedDG", "IMCS-V2-MRG")]


def constrained_answers(model, tok, records, version, settings, batch=16):
    grammars = grammars_for_records(records, version, can_spell=tok.can_spell)
    prompts = [tok.encode_prompt(r["input"])[-200:] for r in records]
    out = []
    for b in range(0, len(records), batch):
        c = constraint_for(model, tok, grammars[b:b + batch])
        out += [tok.decode(ids).strip() for ids in
                generate(model, prompts[b:b + batch], settings, tok.eos_token_id, tok.pad_token_id, c)]
    return out


def assert_all_valid(records, answers, version):
    for r, a in zip(records, answers):
        task, options = record_task_options(r, version)
        assert answer_is_valid(task, a, options, version), (task, a)
        parsed = structure(task, a, options, version)  # and what the official parser reads is from the options
        if task in CLS_LABELS:
            assert parsed in [parse_label(o, task) for o in options + ["非上述类型"]]
        elif task == "CHIP-CDN":
            assert all(x["entity"] in options for x in parsed)
        elif task in ("CMeEE-V2", "IMCS-V2-NER"):
            assert all(x["type"] in options for x in parsed)
        elif task in ("CMeIE", "CMeIE-V2"):
            assert all(x["predicate"] in options for x in parsed)
        elif task in ("CHIP-MDCFNPC", "IMCS-V2-SR"):
            assert len(parsed) == len(a.split("\n")) - 1 and all(x["attr"] in options for x in parsed)


@needs_golden
@pytest.mark.parametrize("name,per_task", [("sample dev", None), ("shared dev", 12), ("shared test", 12)])
def test_every_constrained_answer_is_valid(model, tok, name, per_task):
    """On the sample dev file and on the real dev and official test inputs (all 16 v1 tasks,
    four of them without training data), greedy, 40 new tokens: a budget that cuts many answers
    short, which then end at their last valid point."""
    path = {"sample dev": os.path.join(ROOT, "PromptCBLUE", "dev.json"),
            "shared dev": None, "shared test": None}[name] or \
        shared_file("dev.json" if name == "shared dev" else "test_inputs.json")
    records = closed_set_records(path, per_task)
    version = version_of(records)
    answers = constrained_answers(model, tok, records, version, GenerationSettings(max_new_tokens=40))
    assert_all_valid(records, answers, version)
    assert len({r["task_dataset"] for r in records}) >= 10
    assert sum(a != "" for a in answers) == len(answers)


@needs_golden
def test_sampling_and_beams_stay_valid(model, tok):
    records = closed_set_records(os.path.join(ROOT, "PromptCBLUE", "dev.json"), 1, seed=3)
    answers = constrained_answers(model, tok, records, "v2", GenerationSettings(max_new_tokens=32, do_sample=True,
                                                                               temperature=1.5, seed=5))
    assert_all_valid(records, answers, "v2")
    beams = constrained_answers(model, tok, records[:6], "v2", GenerationSettings(max_new_tokens=24, num_beams=3))
    assert_all_valid(records[:6], beams, "v2")


def written(pieces, ids):
    """The text of `ids` byte for byte (without sentencepiece's leading space); None if it
    ends inside a character."""
    try:
        text = b"".join(pieces[i] for i in ids).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text[1:] if text.startswith(" ") else text


def forced(text, other="其他"):
    """A grammar that accepts exactly `text` (or `other`): whatever the model writes freely is valid."""
    return answer_grammar("KUAKE-IR", "", [text, other]).lark


@needs_golden
@pytest.mark.parametrize("settings", [GenerationSettings(max_new_tokens=20),
                                      GenerationSettings(max_new_tokens=20, repetition_penalty=1.3),
                                      GenerationSettings(max_new_tokens=12, num_beams=2)],
                         ids=["greedy", "repetition-penalty", "beams"])
def test_a_valid_answer_is_unchanged_token_for_token(model, tok, settings):
    records = read(os.path.join(ROOT, "PromptCBLUE", "dev.json"))[:12]
    prompts = [tok.encode_prompt(r["input"])[-160:] for r in records]
    free = generate(model, prompts, settings, tok.eos_token_id, tok.pad_token_id)
    pieces = tok.token_bytes()
    texts = [written(pieces, ids) for ids in free]  # the exact text the tokens spell (decode cleans spaces up)
    usable = [i for i, t in enumerate(texts) if t and t.strip() == t]
    assert len(usable) >= 6
    grammars = [forced(texts[i]) if i in usable else None for i in range(len(texts))]
    constrained = generate(model, prompts, settings, tok.eos_token_id, tok.pad_token_id,
                           constraint_for(model, tok, grammars))
    for i in usable:
        ended_by_eos = len(free[i]) < settings.max_new_tokens
        if ended_by_eos:
            assert constrained[i] == free[i]
        else:  # cut off by the budget: the free text is a valid answer only where it ends
            assert constrained[i] == free[i][:len(constrained[i])]
            assert written(pieces, constrained[i]) in ("", texts[i])


@needs_golden
def test_a_batch_of_mixed_tasks_equals_each_row_alone(model, tok):
    records = read(os.path.join(ROOT, "PromptCBLUE", "dev.json"), 1, seed=1)  # 18 tasks, free ones too
    grammars = grammars_for_records(records, "v2")
    assert len(set(grammars)) == len(records) - 1  # every task its own grammar; MedDG/MRG: None twice
    prompts = [tok.encode_prompt(r["input"])[-160:] for r in records]
    s = GenerationSettings(max_new_tokens=24)
    batch = generate(model, prompts, s, 2, 0, constraint_for(model, tok, grammars))
    alone = [generate(model, [p], s, 2, 0, constraint_for(model, tok, [g]))[0] for p, g in zip(prompts, grammars)]
    assert batch == alone
    free_rows = [i for i, g in enumerate(grammars) if g is None]
    free = generate(model, [prompts[i] for i in free_rows], s, 2, 0)
    assert [batch[i] for i in free_rows] == free  # unconstrained rows are untouched


@needs_golden
def test_streamed_constrained_text_ends_as_generate(model, tok):
    rec = next(r for r in read(os.path.join(ROOT, "PromptCBLUE", "dev.json")) if r["task_dataset"] == "CHIP-CDN")
    grammar = grammars_for_records([rec], "v2")[0]
    prompt = tok.encode_prompt(rec["input"])[-160:]
    s = GenerationSettings(max_new_tokens=30)
    steps = [texts[0] for texts in stream_text(model, tok, [prompt], s, [grammar])]
    want = tok.decode(generate(model, [prompt], s, 2, 0, constraint_for(model, tok, [grammar]))[0]).strip()
    assert steps[-1] == want
    assert all(answer_is_valid("CHIP-CDN", t, rec["answer_choices"]) for t in steps[1:] if t)


@needs_golden
@pytest.mark.parametrize("variant", ["prefix", "lora", "int8"])
def test_constraint_on_prefix_lora_and_quantized_bases(tok, variant):
    if variant == "prefix":
        m = ChatGLM.from_pretrained(MODEL, ptuning_checkpoint=os.path.join(GOLDEN, "ptuning-checkpoint-20"))
    elif variant == "lora":
        m = ChatGLM.from_pretrained(MODEL)
        m.add_lora(4, 8.0, 0.0, ["q_proj", "v_proj"], seed=1)
    else:
        m = ChatGLM.from_pretrained(MODEL, quantization_bit=8)
    records = closed_set_records(os.path.join(ROOT, "PromptCBLUE", "dev.json"), 1, seed=2)
    answers = constrained_answers(m.eval(), tok, records, "v2", GenerationSettings(max_new_tokens=24))
    assert_all_valid(records, answers, "v2")


# --- records whose options do not fit their task ---------------------------------------------

@pytest.mark.parametrize("choices,reason", [([], "empty"), ("相关，不相关", "str"), ([1, 2], "other than strings")])
def test_unusable_options_fall_back_to_free_text_with_one_warning(choices, reason, caplog):
    rec = {"input": "医疗搜索：x\n回答内容：y\n选项: 相关，不相关\n答：", "target": "", "answer_choices": choices,
           "task_dataset": "KUAKE-IR", "sample_id": "s1", "_line": 7}
    with caplog.at_level(logging.WARNING, logger="cblue"):
        grammars = grammars_for_records([rec, dict(rec, answer_choices=["相关", "不相关"], sample_id="s2")], "v2",
                                        source="my.json")
    assert grammars[0] is None and grammars[1] is not None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("my.json:7: KUAKE-IR (s1)") and reason in lines[0]


def test_an_option_the_tokenizer_cannot_spell_falls_back():
    g = answer_grammar("KUAKE-IR", "", ["相关", "不相关☃"], can_spell=lambda text: "☃" not in text)
    assert g.lark is None and "cannot spell" in g.reason


def test_a_grammar_llguidance_rejects_is_free_text(tok, caplog):
    engine = engine_for(tok, len(tok))
    with caplog.at_level(logging.WARNING, logger="chatglm"):
        assert engine.matcher("start: undefined_rule\n") is None
    assert "free text" in caplog.text


# --- options from the prompt's wording --------------------------------------------------------

@pytest.mark.parametrize("prompt,task,some_option", [
    ("句子A：糖尿病怎么治\n句子B：糖尿病该怎么治好\n这两句话表达的医学意思相同吗？\n选项：相同，不同\n答：", "CHIP-STS", "相同"),
    ("下面的搜索词和页面标签的意思有多相同？\n搜索词：哮喘怎么办\n页面标签：哮喘怎么办\n选项：完全不匹配或者没有参考价值，"
     "很少匹配有一些参考价值，部分匹配，完全匹配", "KUAKE-QTR", "完全匹配"),
    ("诊断归一化：\n右肺鳞癌术后\n候选集：贫血，鳞状细胞癌，肺炎，胃炎\n说明：从候选的若干个ICD-10诊断标准词中选择出与原诊断描述匹配的词",
     "CHIP-CDN", "鳞状细胞癌"),
    ("请问是什么意图类型？\n高血压要注意什么\n搜索意图选项：病情诊断，病因分析，治疗方案，就医建议，指标解读，疾病描述，后果表述，"
     "注意事项，功效作用，医疗费用", "KUAKE-QIC", "注意事项"),
    ("患者：有点发热\n这句话的意图是什么？\n可选意图：关于症状的询问，关于症状的回答，给出诊断", "IMCS-V2-DAC", "给出诊断"),
])
def test_options_come_from_the_prompt(prompt, task, some_option):
    found_task, options = task_from_prompt(prompt)
    assert found_task == task and some_option in options
    grammar = answer_grammar(found_task, prompt, options).lark
    assert grammar and some_option in grammar


@pytest.mark.parametrize("prompt", ["自动生成问诊对话中的医生下一句回复：\n患者：头痛一个多月了，一直没好",
                                    "患者：最近咳嗽，怎么办？（女，30岁）\n医生应该如何回复？", "你好"])
def test_prompts_without_a_template_are_free_text(prompt):
    assert task_from_prompt(prompt) == (None, None)


def test_prompt_task_agrees_with_the_data():
    """On every real record, with answer_choices taken away, the prompt alone gives the record's
    task (or free text) for nearly all the closed-set ones."""
    records = read(shared_file("test_inputs.json"))
    same = sum(task_from_prompt(r["input"], "v1")[0] == r["task_dataset"] for r in records
               if r["task_dataset"] not in ("MedDG", "IMCS-V2-MRG", "IMCS-V2-NER"))
    total = sum(r["task_dataset"] not in ("MedDG", "IMCS-V2-MRG", "IMCS-V2-NER") for r in records)
    assert same / total > 0.95


# --- the entry points ---------------------------------------------------------------------------

def test_predict_is_constrained_by_default_and_says_so(tiny_model, tiny_checkpoint, tmp_path):
    from conftest import run_main

    args = ["--do_predict", "--test_file", os.path.join(ROOT, "PromptCBLUE", "dev.json"), "--model_name_or_path",
            tiny_model, "--ptuning_checkpoint", tiny_checkpoint, "--max_source_length", "128",
            "--max_target_length", "32", "--per_device_eval_batch_size", "16", "--report_to", "none"]
    proc = run_main(args + ["--output_dir", str(tmp_path / "on")])
    run_main(args + ["--output_dir", str(tmp_path / "off"), "--constrained_decoding", "false"])
    assert "Constrained decoding: 80 of 90 records have an answer grammar" in proc.stdout
    records = read(os.path.join(ROOT, "PromptCBLUE", "dev.json"))
    for mode, want in (("on", "constrained"), ("off", "free")):
        results = json.load(open(tmp_path / mode / "predict_results.json"))
        scores = json.load(open(tmp_path / mode / "scores.json"))
        assert results["predict_decoding"] == scores["decoding"] == want
        assert set(scores["valid_answers"]) == {r["task_dataset"] for r in records} - {"MedDG", "IMCS-V2-MRG"}
    on = json.load(open(tmp_path / "on" / "scores.json"))["valid_answers"]
    assert all(v == 1.0 for v in on.values()), on
    answers = [json.loads(l)["target"] for l in open(tmp_path / "on" / "test_predictions.json", encoding="utf-8")]
    closed = [(r, a) for r, a in zip(records, answers) if r["task_dataset"] not in ("MedDG", "IMCS-V2-MRG")]
    assert_all_valid([r for r, _ in closed], [a for _, a in closed], "v2")


def test_chat_answers_the_story_prompt_with_an_option(tiny_model, tiny_checkpoint):
    import subprocess
    import sys

    prompt = "句子A：糖尿病怎么治\\n句子B：糖尿病该怎么治好\\n这两句话表达的医学意思相同吗？\\n选项：相同，不同\\n答：\n"
    run = lambda *extra: subprocess.run(
        [sys.executable, "chat.py", "--model_name_or_path", tiny_model, "--ptuning_checkpoint", tiny_checkpoint,
         "--max_new_tokens", "16", *extra], input=prompt, cwd=ROOT, capture_output=True, text=True, timeout=300)
    on, off = run(), run("--constrained_decoding", "false")
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    answers = [block.split("\n", 1)[1].strip() for block in on.stdout.split("── ")[1:]]
    assert len(answers) == 2 and all(a in ("相同", "不同") for a in answers), on.stdout
    assert "decoding: constrained" in on.stdout and "decoding: free" in off.stdout
    free = [block.split("\n", 1)[1].strip() for block in off.stdout.split("── ")[1:]]
    assert len(free) == 2 and all(free), off.stdout  # an answer of no text says so (chatglm.generation.NO_ANSWER)


@pytest.mark.parametrize("task,answer,cut_at", [
    ("Text2DT", '根据给定的指南文本抽取的诊疗决策树如下：\n节点0：role=C；logical_rel=null；triples=[["肺炎", "临床表现", "胸闷"]]'
                '\n节点1：role=D；logical_rel=null；triples=[["肺', '"]]'),
    ("KUAKE-QTR", "很少匹配有一些", None),
    ("CMeEE-V2", "上述句子中的实体包含：\n疾病实体：肺炎，", "肺炎"),
])
def test_an_answer_cut_by_the_budget_ends_where_the_grammar_accepted(tok, task, answer, cut_at):
    """Hold-back and the final cut, on the tokens of a half-written answer: what comes out is
    the longest prefix the grammar accepts, even inside a token (`"]]\\n`)."""
    from chatglm.constraint import BatchConstraint

    rec = {"input": "肺炎患者若伴有胸闷，则用阿莫西林。", "task_dataset": task,
           "answer_choices": {"KUAKE-QTR": ["完全匹配", "很少匹配有一些参考价值"], "CMeEE-V2": ["疾病"]}.get(task, [])}
    grammar = grammars_for_records([rec], "v2")[0]
    c = BatchConstraint(engine_for(tok, len(tok)), [grammar])
    out = [t for token in tok.encode_text(answer) for t in c.advance(0, token)] + c.finish(0)
    text = b"".join(tok.token_bytes()[t] for t in out).decode("utf-8").lstrip(" ")
    want = "" if cut_at is None else answer[:answer.rindex(cut_at) + len(cut_at)]
    assert text == want
    assert text == "" or answer_is_valid(task, text, rec["answer_choices"])


@needs_golden
def test_compiled_decode_step_gives_the_same_constrained_answers(model, tok):
    records = closed_set_records(os.path.join(ROOT, "PromptCBLUE", "dev.json"), 1, seed=4)[:6]
    eager = constrained_answers(model, tok, records, "v2", GenerationSettings(max_new_tokens=16), batch=6)
    compiled = constrained_answers(model, tok, records, "v2", GenerationSettings(max_new_tokens=16, compiled=True),
                                   batch=6)
    assert compiled == eager
    assert_all_valid(records, compiled, "v2")


@needs_golden
def test_beams_never_take_a_forbidden_token(model, tok, caplog):
    """A classification grammar leaves fewer than 2 x beams candidates: the -inf ones are never kept."""
    rec = next(r for r in read(os.path.join(ROOT, "PromptCBLUE", "dev.json")) if r["task_dataset"] == "CHIP-STS")
    with caplog.at_level(logging.WARNING, logger="chatglm"):
        answers = constrained_answers(model, tok, [rec], "v2", GenerationSettings(max_new_tokens=8, num_beams=4))
    assert answers[0] in rec["answer_choices"]
    assert "outside the grammar" not in caplog.text


def test_a_row_whose_grammar_failed_goes_on_as_free_text(tok, caplog):
    """A token outside the grammar (not reachable through the mask, but never an error) turns
    the row into free text: every later token passes through."""
    from chatglm.constraint import BatchConstraint

    c = BatchConstraint(engine_for(tok, len(tok)), [answer_grammar("KUAKE-IR", "", ["相关", "不相关"]).lark])
    bad = tok.encode_fragment("胃炎")
    with caplog.at_level(logging.WARNING, logger="chatglm"):
        out = [t for token in bad + bad for t in c.advance(0, token)]
    assert out == bad + bad and "outside the grammar" in caplog.text
    assert c.finish(0) == []
