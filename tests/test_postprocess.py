"""Official post-processing on hand-made outputs with known structured answers."""

import pytest

from cblue.postprocess import UnknownTask, structure, structure_records

NER_TYPES = ["疾病", "药物"]


def test_ner_lines_and_empty_wording():
    text = "上述句子中的实体包含：\n疾病实体：高血压，糖尿病\n药物实体：\n答：疾病实体：肺炎"
    assert structure("CMeEE-V2", text, NER_TYPES, "v2") == [
        {"entity": "高血压", "type": "疾病"}, {"entity": "糖尿病", "type": "疾病"}]
    assert structure("IMCS-V2-NER", "上述句子没有指定类型实体", NER_TYPES, "v1") == []
    assert structure("CMeEE-V2", "疾病实体：胃炎、肠炎", NER_TYPES, "v1") == [{"entity": "胃炎、肠炎", "type": "疾病"}]


def test_half_width_repaired_in_v1_only():
    text = "上述句子中的实体包含：\n疾病实体:高血压,糖尿病"
    assert structure("CMeEE-V2", text, NER_TYPES, "v1") == [
        {"entity": "高血压", "type": "疾病"}, {"entity": "糖尿病", "type": "疾病"}]
    assert structure("CMeEE-V2", text, NER_TYPES, "v2") == [{"entity": "疾病实体:高血压,糖尿病", "type": "疾病"}]
    many = "疾病实体：" + ",".join(f"d{i}" for i in range(102))  # only the first 100 commas are repaired
    got = structure("CMeEE-V2", many, NER_TYPES, "v1")
    assert len(got) == 101 and got[-1]["entity"] == "d100,d101"


def test_cmeie_triples_and_empty():
    text = ("具有临床表现关系的头尾实体对如下：头实体为肺炎，尾实体为发热。头实体为胃炎，尾实体为腹痛。\n"
            "具有药物治疗关系的头尾实体对如下：")
    assert structure("CMeIE", text, [], "v1") == [
        {"predicate": "临床表现", "subject": "肺炎", "object": "发热"},
        {"predicate": "临床表现", "subject": "胃炎", "object": "腹痛"}]
    assert structure("CMeIE-V2", "没有指定类型的三元组", [], "v2") == []
    with pytest.raises(UnknownTask):
        structure("CMeIE", "x", [], "v2")
    with pytest.raises(UnknownTask):
        structure("Text2DT", "x", [], "v1")


def test_cdn_keeps_only_choices_of_the_last_line():
    choices = ["高血压", "糖尿病"]
    got = structure("CHIP-CDN", "好的\n高血压，糖尿病，高血压，感冒", choices, "v2")
    assert sorted(x["entity"] for x in got) == ["糖尿病", "高血压"]
    assert structure("CHIP-CDN", "没有对应的标准化实体", choices, "v2") == []


def test_cdee_events_and_dropped_first_line():
    text = "上述句子中的临床发现事件如下：\n主体词：咳嗽；发生状态：否定；描述词：反复，加重；解剖部位：肺"
    assert structure("CHIP-CDEE", text, [], "v2") == [
        {"主体词": "咳嗽", "发生状态": "否定", "描述词": ["反复", "加重"], "解剖部位": ["肺"]}]
    assert structure("CHIP-CDEE", "主体词：咳嗽；发生状态：", [], "v2") == []  # no lead-in: event lost
    trailing = structure("CHIP-CDEE", text + "\n", [], "v2")  # a trailing newline is an empty event
    assert trailing[-1] == {"主体词": "", "发生状态": "", "描述词": [], "解剖部位": []}


def test_finding_attribute_fallbacks_differ_by_version():
    choices = ["已有症状疾病或者假设未来可能发生的疾病等", "未患有症状疾病"]
    text = "上述对话中临床发现实体以及其阴阳性判别如下：\n发热 ：未患有症状疾病\n咳嗽：不知道\n乱码"
    v1 = structure("CHIP-MDCFNPC", text, choices, "v1")
    v2 = structure("CHIP-MDCFNPC", text, choices, "v2")
    assert v1[0] == {"entity": "发热", "attr": "未患有症状疾病"}
    assert v1[1]["attr"] == "无实际意义的不标注或者和病人当前的状态独立不标注" and v2[1]["attr"] == "不标注"
    assert len(v1) == 2
    sr = structure("IMCS-V2-SR", "x\n头痛：有", ["患有该症状"], "v2")
    assert sr == [{"entity": "头痛", "attr": "无法根据上下文确定病人是否患有该症状"}]


def test_report_sections():
    text = "上述问诊对话的诊疗报告如下：\n主诉：发热。\n诊断：肺炎。\n诊断：支气管炎。\n 建议：休息"
    assert structure("IMCS-V2-MRG", text, [], "v2") == {"主诉": "发热。", "诊断": "支气管炎。"}
    assert structure("IMCS-V2-MRG", "主诉：发热。", [], "v2") == {}  # the first line is always dropped


@pytest.mark.parametrize("task", ["CHIP-CTC", "KUAKE-QIC", "KUAKE-IR", "KUAKE-QQR", "KUAKE-QTR", "IMCS-V2-DAC", "MedDG"])
def test_labels_are_stripped_text(task):
    assert structure(task, "  某标签 \n", [], "v2") == "某标签"


def test_sts_maps_same_and_different():
    assert structure("CHIP-STS", "相同", [], "v2") == "是的"
    assert structure("CHIP-STS", "不同", [], "v1") == "不是"


def test_cmedcausal_sections_and_garbage():
    text = ("根据给定的文本抽取的因果关系三元组如下：\n头实体：A；尾实体：B\n这一行是乱码\n"
            "根据给定的文本抽取的条件关系三元组如下：\n头实体：C；尾三元组：头实体：A；尾实体：B；关系：因果关系\n"
            "头实体：D；尾三元组：头实体：A；尾实体：B；关系：上下位关系")
    assert structure("CMedCausal", text, [], "v2") == [
        {"predicate": "因果关系", "subject": "A", "object": "B"},
        # the official head split leaves "；尾三元组：" on a conditional head; gold gets the same
        {"predicate": "条件关系", "subject": "C；尾三元组：",
         "object": {"predicate": "因果关系", "subject": "A", "object": "B"}}]
    assert structure("CMedCausal", "给定的文本没有指定关系的三元组\n头实体：A；尾实体：B", [], "v2") == []


def test_text2dt_is_parsed_as_data_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    text = ("根据给定的指南文本抽取的诊疗决策树如下：\n"
            '节点0：role=C；logical_rel=null；triples=[["A", "临床表现", "B"], ["x"]]\n'
            f"节点1：role=D；logical_rel=and；triples=__import__('os').system('touch {marker}')\n"
            "chatty text without the marker\n"
            "节点2：role=D；triples=[[1, 2, 3]]")
    tree = structure("Text2DT", text, [], "v2")
    assert not marker.exists()
    assert tree == [{"role": "C", "logical_rel": "null", "triples": [["A", "临床表现", "B"]]},
                    {"role": "D", "logical_rel": "and", "triples": []},
                    # no "；logical_rel=": the official role runs to the end of the line
                    {"role": "D；triples=[[1, 2, 3]]", "logical_rel": "null", "triples": []}]
    assert structure("Text2DT", "胡言乱语", [], "v2") == [{"role": "D", "logical_rel": "null", "triples": []}]


def test_unknown_task_names_the_line():
    with pytest.raises(UnknownTask, match=r"pred.json:7: task_dataset 'CMeIE-V3'"):
        structure_records([{"task_dataset": "CMeIE-V3", "target": "", "_line": 7}], "v2", source="pred.json")
