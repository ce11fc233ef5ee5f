"""python -m cblue.score: output format, version detection, alignment errors."""
import json

import pytest

from cblue.score import main, score_records
from cblue.tasks import detect_version


def rec(task, sid, target, choices=None):
    return {"input": "x", "target": target, "answer_choices": choices or [], "task_type": "t",
            "task_dataset": task, "sample_id": sid}


GOLD = [rec("KUAKE-IR", "1", "相关"), rec("KUAKE-IR", "2", "不相关"), rec("MedDG", "3", "多喝水。"),
        rec("CMeEE-V2", "4", "上述句子中的实体包含：\n疾病实体：肺炎", ["疾病"])]


def write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_perfect_predictions(tmp_path, capsys):
    out = tmp_path / "scores.json"
    assert main(["--gold", write(tmp_path / "g.json", GOLD), "--pred", write(tmp_path / "p.json", GOLD),
                 "--out", str(out)]) == 0
    scores = json.load(open(out))
    assert set(scores) == {"score", "tasks"} and set(scores["tasks"]) == {"KUAKE-IR", "MedDG", "CMeEE-V2"}
    assert scores["tasks"]["KUAKE-IR"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert scores["score"] == pytest.approx((1 + 1 + (1 - 5e-9)) / 3)
    assert "overall" in capsys.readouterr().out


def test_structured_results_are_accepted(tmp_path):
    from cblue.postprocess import structure_records

    structured = tmp_path / "results.json"
    structured.write_text(json.dumps(structure_records(GOLD, "v2"), ensure_ascii=False), encoding="utf-8")
    assert main(["--gold", write(tmp_path / "g.json", GOLD), "--pred", str(structured), "--out",
                 str(tmp_path / "s.json")]) == 0
    assert json.load(open(tmp_path / "s.json"))["score"] > 0.99


@pytest.mark.parametrize("pred, message", [
    (GOLD[:1] + GOLD[2:], "KUAKE-IR: 2 gold samples but 1 predictions; missing ['2']"),
    (GOLD + [rec("MedDG", "9", "x")], "MedDG: 1 gold samples but 2 predictions; extra ['9']"),
    ([GOLD[1], GOLD[0]] + GOLD[2:], "KUAKE-IR: sample 0 is '1' in gold but '2' in the predictions"),
    ([r for r in GOLD if r["task_dataset"] != "MedDG"], "MedDG: the predictions have no record of this task"),
])
def test_alignment_errors_name_the_sample(tmp_path, capsys, pred, message):
    assert main(["--gold", write(tmp_path / "g.json", GOLD), "--pred", write(tmp_path / "p.json", pred)]) == 2
    assert message in capsys.readouterr().err


def test_bad_prediction_line_is_named(tmp_path, capsys):
    p = tmp_path / "p.json"
    p.write_text(json.dumps(GOLD[0]) + "\n{oops\n", encoding="utf-8")
    assert main(["--gold", write(tmp_path / "g.json", GOLD), "--pred", str(p)]) == 2
    assert f"{p}:2: invalid JSON" in capsys.readouterr().err


def test_garbage_outputs_score_without_crashing():
    gold = [rec("Text2DT", "1", '根据给定的指南文本抽取的诊疗决策树如下：\n节点0：role=D；logical_rel=null；triples=[["a","b","c"]]'),
            rec("CMedCausal", "2", "根据给定的文本抽取的因果关系三元组如下：\n头实体：A；尾实体：B"),
            rec("CHIP-CTC", "3", "疾病")]
    pred = [dict(g, target="%%% garbage ::: [[1,2,3]]") for g in gold]
    scores = score_records(gold, pred)
    assert scores["version"] == "v2" and 0 <= scores["score"] < 0.5


def test_version_detection():
    assert detect_version(["CMeIE", "CHIP-CTC"]) == "v1"
    assert detect_version(["CMeIE-V2", "Text2DT"]) == "v2"
    with pytest.raises(ValueError, match="mixes"):
        detect_version(["CMeIE", "Text2DT"])
