"""bench/demo_story.py's judgement of an answer: the story's "before" (long, in its own words)
is off format, the "after" (the label, a short doctor's reply) is in it."""
import json
import os
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
from demo_story import STORY_TASKS, at_length, in_format, sample_records  # noqa: E402

sys.path.pop(0)


def _story() -> list[dict]:
    with open(os.path.join(ROOT, "bench", "story", "prompts.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_labels_in_format_chat_answers_not():
    sts, qtr, cdn = _story()[:3]
    assert in_format(sts, "相同") and not in_format(sts, "您好！这两句话的意思是相同的。希望对您有帮助。")
    assert in_format(qtr, "完全匹配") and not in_format(qtr, "完全")
    assert in_format(cdn, "鳞状细胞癌") and not in_format(cdn, "鳞癌")


def test_a_reply_is_one_short_line_not_a_new_prompt():
    reply = _story()[4]
    assert reply["task_dataset"] == "MedDG"
    assert in_format(reply, "建议去医院做个胃镜看看。")
    assert not in_format(reply, "")
    assert not in_format(reply, "病因分析")  # another task's label is not a reply
    assert not in_format(reply, "胃疼好几天了\n答：建议去医院")
    assert not in_format(reply, "你好，" + "胃疼的原因有很多，" * 8)


def test_at_length_is_a_long_answer_off_format():
    sts = _story()[0]
    chatty = "您好！我比较了一下这两句话，它们问的都是高血压该吃什么药，只是说法不一样，所以意思是相同的。"
    assert at_length(sts, chatty)
    assert not at_length(sts, "相同")  # the label: in format
    assert not at_length(sts, "这是一个很常见的问题。")  # off format, but not an answer at length


def test_real_wordings_are_drawn_per_task_seeded_and_short():
    shared = os.path.join(ROOT, "..", "shared", "data", "promptcblue")
    files = [os.path.join(shared, "dev.json"), os.path.join(shared, "test_inputs.json")]
    if not all(os.path.isfile(f) for f in files):
        import pytest

        pytest.skip("../shared/data/promptcblue is not beside this checkout")
    drawn = sample_records(files, 3, seed=1)
    assert [r["task_dataset"] for r in drawn] == [t for t in STORY_TASKS for _ in range(3)]
    assert all(len(r["input"]) <= 160 for r in drawn)
    assert drawn == sample_records(files, 3, seed=1) != sample_records(files, 3, seed=2)
