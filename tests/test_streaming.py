"""Answers as they are generated: stream_text / side_by_side (chat.py, web demo), and the
per-sample official score the demo shows."""
import json
import os

import pytest

from conftest import ROOT

DEV = os.path.join(ROOT, "PromptCBLUE", "dev.json")


@pytest.fixture(scope="module")
def loaded(tiny_model, tiny_checkpoint):
    from chatglm.model import ChatGLM
    from chatglm.tokenizer import ChatGLMTokenizer

    model = ChatGLM.from_pretrained(tiny_model, ptuning_checkpoint=tiny_checkpoint)
    return model, ChatGLMTokenizer.from_pretrained(tiny_model)


def _prompts(tok, n):
    from cblue.features import prompt_ids

    recs = [json.loads(l) for l in open(DEV, encoding="utf-8")][:n]
    return [prompt_ids(tok, r["input"], None, 128, "left")[0] for r in recs]


def test_streamed_text_grows_to_exactly_what_generate_gives(loaded):
    from chatglm.generation import GenerationSettings, generate, stream_text

    model, tok = loaded
    prompts = _prompts(tok, 4)
    settings = GenerationSettings(max_new_tokens=24)
    final = [tok.decode(ids).strip() for ids in generate(model, prompts, settings, tok.eos_token_id, tok.pad_token_id)]
    steps = list(stream_text(model, tok, prompts, settings))
    assert steps[-1] == final
    assert len(steps) > 10  # one update per generated token, not one at the end
    for row in range(len(prompts)):
        seen = [s[row] for s in steps]
        assert any(0 < len(t) < len(final[row]) for t in seen) or len(final[row]) <= 1
        grown = sum(1 for a, b in zip(seen, seen[1:]) if b.startswith(a))
        assert grown >= len(seen) - 3  # text only ever grows (rare re-decodes of a merged character aside)
        assert not any(t.endswith("\ufffd") for t in seen[:-1])  # a half-generated character is held back


def test_side_by_side_interleaves_base_and_tuned(loaded):
    from chatglm.generation import GenerationSettings, generate, side_by_side
    from chatglm.model import base_only

    model, tok = loaded
    prompt = _prompts(tok, 1)[0]
    settings = GenerationSettings(max_new_tokens=20)
    tuned = tok.decode(generate(model, [prompt], settings, tok.eos_token_id, tok.pad_token_id)[0]).strip()
    with base_only(model):
        base = tok.decode(generate(model, [prompt], settings, tok.eos_token_id, tok.pad_token_id)[0]).strip()
    assert base != tuned  # the prefix matters, so a mix-up would show
    pairs = list(side_by_side(model, tok, prompt, settings))
    assert pairs[-1] == (base, tuned)
    assert model.prefix_encoder is not None  # the prefix is back after the base's prompt pass
    partial = [p for p in pairs if 0 < len(p[0]) < len(base) and 0 < len(p[1]) < len(tuned)]
    assert partial  # both were growing at the same time


def test_sampling_streams_the_same_answer_as_generate(loaded):
    from chatglm.generation import GenerationSettings, generate, stream_text

    model, tok = loaded
    prompts = _prompts(tok, 2)
    settings = GenerationSettings(max_new_tokens=16, do_sample=True, top_p=0.8, temperature=0.9, seed=3)
    final = [tok.decode(ids).strip() for ids in generate(model, prompts, settings, tok.eos_token_id, tok.pad_token_id)]
    assert list(stream_text(model, tok, prompts, settings))[-1] == final


def test_chat_prints_each_piece_as_it_comes(monkeypatch):
    import sys

    import chat

    writes = []

    class Recorder:
        def write(self, text):
            writes.append(text)

        def flush(self):
            writes.append("<flush>")

    monkeypatch.setattr(sys, "stdout", Recorder())
    chat.print_streamed(iter([["高"], ["高血"], ["高血压"], ["高血压"]]))
    assert "".join(w for w in writes if w != "<flush>").startswith("高血压")
    assert writes[:6] == ["高", "<flush>", "血", "<flush>", "压", "<flush>"]


def test_per_sample_official_score():
    from cblue.score import score_one

    recs = [json.loads(l) for l in open(DEV, encoding="utf-8")]
    by_task = {}
    for r in recs:  # each task's longest target: an answer with no items scores 0 (the official P/R/F1)
        if len(r["target"]) > len(by_task.get(r["task_dataset"], {}).get("target", "")):
            by_task[r["task_dataset"]] = r
    assert len(by_task) == 18
    for task, rec in by_task.items():
        metric, perfect = score_one(rec, rec["target"])
        assert perfect == pytest.approx(1.0), task
    sts = by_task["CHIP-STS"]
    wrong = next(c for c in sts["answer_choices"] if c != sts["target"])
    assert score_one(sts, wrong) == ("f1", 0.0)
    assert score_one(by_task["KUAKE-QIC"], "胡言乱语")[0] == "macro-f1"


def test_demo_scores_only_an_unedited_example():
    from chatglm.web_app import score_lines

    rec = {"input": "p", "target": "相同", "task_dataset": "CHIP-STS"}
    scorer = lambda r, a: ("f1", float(a == r["target"]))
    text = score_lines(rec, "p", "不同", "相同", scorer)
    assert "相同" in text and "| base | 0.000 |" in text and "| tuned | 1.000 |" in text
    assert score_lines(rec, "p edited", "不同", "相同", scorer) == ""
    assert score_lines(dict(rec, target=""), "p", "不同", "相同", scorer) == ""
