"""error_report.md counts what the parser could not read, what is wrong and right, the
confusion of labels and the items found, missed and made up, from the official parsing."""
import json
import os

from conftest import ROOT
from cblue.error_report import task_report, write_error_report

DEV = [json.loads(l) for l in open(os.path.join(ROOT, "PromptCBLUE", "dev.json"), encoding="utf-8")]


def of(task, n):
    return [r for r in DEV if r["task_dataset"] == task][:n]


def test_counts_confusion_and_items(tmp_path):
    sts = of("CHIP-STS", 3)  # targets 不同, 是的, 不是
    ner = of("CMeEE-V2", 1)  # 疾病 肠炎, 医学检验项目 肝功能
    records = sts + ner
    predictions = ["不同",                    # right
                   "不是",                    # wrong: gold 是的
                   "我觉得不一样",             # unreadable: not an option
                   "上述句子中的实体包含：\n疾病实体：肠炎，胃炎\n医学检验项目实体："]  # 1 right, 1 made up, 1 missed
    scores = {"score": 0.5, "decoding": "free", "tasks": {"CHIP-STS": {"f1": 0.3}, "CMeEE-V2": {"f1": 0.5}}}
    path = write_error_report(str(tmp_path), records, predictions, "v2", scores)
    text = open(path, encoding="utf-8").read()
    assert "| [CHIP-STS](#chip-sts) | f1 | 0.3000 | 3 | 1 | 1 | 1 |" in text
    assert "| [CMeEE-V2](#cmeee-v2) | f1 | 0.5000 | 1 | 0 | 1 | 0 | 0.500 | 0.500 |" in text
    assert "Items: 1 right, 1 missed, 1 made up (precision 0.500, recall 0.500)." in text
    assert "missed: 肝功能/医学检验项目; made up: 胃炎/疾病" in text
    # Confusion as the official reads labels: 相同/不同 are 是的/不是; the unreadable answer is its own label.
    assert "| gold \\ predicted |" in text
    confusion = [l for l in text.splitlines() if l.startswith("| 是的 |")]
    assert confusion, text
    header = next(l for l in text.splitlines() if l.startswith("| gold \\ predicted |")).split(" | ")
    row = confusion[0].split(" | ")
    assert row[header.index("不是")] == "1"  # gold 是的, answered 不是
    assert "Unreadable:" in text and "我觉得不一样" in text and "Right:" in text and "Wrong:" in text


def test_free_text_tasks_have_no_unreadable_answers():
    rows = [{"gold": "多喝水", "pred": "多喝水", "valid": None, "kind": "right"},
            {"gold": "多喝水", "pred": "", "valid": None, "kind": "wrong"}]
    assert task_report("MedDG", rows) == {"answers": 2, "unreadable": 0, "wrong": 1, "right": 1}
