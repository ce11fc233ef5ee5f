"""The sample data the project ships: what tools/make_sample_data.py writes, every task in
several of PromptCBLUE's prompt wordings."""
import importlib.util
import json
import os
import re

from conftest import ROOT

spec = importlib.util.spec_from_file_location("make_sample_data", os.path.join(ROOT, "tools", "make_sample_data.py"))
sample = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sample)


def _records(name):
    with open(os.path.join(ROOT, "PromptCBLUE", name), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{\w+\}", template)
    return re.compile("^" + "(.+?)".join(re.escape(p) for p in parts) + "$", re.S)


def test_shipped_files_are_what_the_generator_writes():
    assert _records("train.json") == sample.build("train", 40, 1)
    assert _records("dev.json") == sample.build("dev", 5, 2)
    assert _records("test.json") == sample.build("test", 3, 3, with_targets=False)
    assert _records("dev_v1.json") == sample.build("dev_v1", 5, 4, v1=True)


def test_every_task_is_worded_several_ways():
    train = _records("train.json")
    lists = {name: [t[0] if isinstance(t, tuple) else t for t in value]
             for name, value in vars(sample).items() if name.endswith("_PROMPTS")}
    tasks_covered = {}
    for name, templates in lists.items():
        assert len(templates) >= 3, name
        tasks = set()
        for template in templates:
            matched = [r for r in train if _pattern(template).match(r["input"])]
            assert matched, f"{name}: no training record is worded {template!r}"
            tasks |= {r["task_dataset"] for r in matched}
        assert len(tasks) == 1, (name, tasks)  # one task's wordings
        tasks_covered[tasks.pop()] = len(templates)
    assert set(tasks_covered) == {r["task_dataset"] for r in train} and len(tasks_covered) == 18


def test_the_wordings_users_ask_in_are_there():
    inputs = [r["input"] for r in _records("train.json")]
    assert any(re.match(r"句子A：.+\n句子B：.+\n这两句话表达的医学意思相同吗？\n选项：相同，不同\n答：$", i) for i in inputs)
    assert any(re.match(r"下面的搜索词和页面标签的意思有多相同？\n搜索词：.+\n页面标签：.+\n选项：", i) for i in inputs)
    targets = {r["target"] for r in _records("train.json")}
    assert {"相同", "完全匹配", "鳞状细胞癌"} <= targets


def _chat_module():
    import sys

    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import sample_chat
    finally:
        sys.path.pop(0)
    return sample_chat


def test_chat_pairs_are_what_the_generator_writes_and_ask_no_task_prompt():
    """chat.json (the tiny model's chat stage) is reproducible, its answers are long, and no
    question in it is a PromptCBLUE prompt of the shipped files or one of their wordings: the
    tuned model's dev prompts stay unseen."""
    chat = _records("chat.json")
    assert chat == _chat_module().build_chat(680, seed=5)
    assert min(len(r["target"]) for r in chat) > 40
    # the answer without its chat frame (greeting, polite close) is inside it, and shorter
    assert all(r["plain_target"] in r["target"] and len(r["plain_target"]) < len(r["target"]) for r in chat)
    prompts = {r["input"] for name in ("train.json", "dev.json", "test.json", "dev_v1.json") for r in _records(name)}
    assert not prompts & {r["input"] for r in chat}
    templates = [t[0] if isinstance(t, tuple) else t for name, value in vars(sample).items()
                 if name.endswith("_PROMPTS") for t in value]
    assert not [r["input"] for r in chat for t in templates if _pattern(t).match(r["input"])]
