"""Official metrics on cases whose answers are worked out by hand."""
import pytest

from cblue.metrics import classification_prf, extraction_prf, rouge_by_sections, rouge_scores
from cblue.text2dt import text2dt_scores


def test_extraction_micro_prf_over_sets():
    gold = [[{"entity": "a", "type": "t"}, {"entity": "b", "type": "t"}]]
    pred = [[{"entity": "a", "type": "t"}, {"entity": "c", "type": "t"}, {"type": "t", "entity": "a"}]]
    assert extraction_prf(gold, pred) == {"precision": 0.5, "recall": 0.5, "f1": 0.5}


def test_extraction_is_zero_without_true_positives():
    assert extraction_prf([[]], [[]])["f1"] == 0  # the official rule: TP = 0 gives 0 even when both are empty


def test_macro_counts_every_invalid_string_as_a_class():
    gold = ["病因分析", "治疗方案", "医疗费用", "注意事项", "病情诊断"]
    pred = ["病因分析", "治疗方案", "随便", "乱写", "胡说"]
    assert classification_prf(gold, pred, "非上述类型", macro=True)["macro-f1"] == pytest.approx(2 / 8)
    assert classification_prf(gold, pred, "非上述类型", macro=False)["f1"] == pytest.approx(2 / 5)


def test_empty_prediction_becomes_the_first_label():
    gold, pred = ["是的", "不是"], ["", "不是"]
    assert classification_prf(gold, pred, "是的", macro=False)["f1"] == pytest.approx(1.0)


def test_rouge_exact_copy_is_not_quite_one():
    r = rouge_scores(["发热三天。"], ["发热三天。"])
    assert r["rougeL"] == pytest.approx(1 - 5e-9, abs=1e-10)
    assert rouge_scores(["头痛"], [""])["rougeL"] == pytest.approx(0.0, abs=1e-9)


def test_report_rouge_averages_gold_sections():
    gold = [{"主诉": "发热。", "诊断": "肺炎。"}]
    pred = [{"主诉": "发热。", "建议": "休息"}]  # 诊断 missing: scored as an empty section, 建议 ignored
    r = rouge_by_sections(gold, pred)
    # 主诉: exact (1 - 5e-9). 诊断: "无 。" against "肺 炎 。" shares only "。": P 1/2, R 1/3, F 0.4.
    assert r["rougeL"] == pytest.approx((1 - 5e-9 + 0.4) / 2, abs=1e-6)


def tree(*triples):
    c, d1, d2 = triples
    return [{"role": "C", "logical_rel": "null", "triples": [c]},
            {"role": "D", "logical_rel": "null", "triples": [d1]},
            {"role": "D", "logical_rel": "null", "triples": [d2]}]


def test_text2dt_identical_trees():
    t = tree(["a", "r", "b"], ["a", "治疗", "x"], ["a", "治疗", "y"])
    s = text2dt_scores([t], [tree(["A", "r", "b"], ["a", "治疗", "x"], ["a", "治疗", "y"])])  # case-insensitive
    assert s["tree_lenv_radio"] == pytest.approx(1.0)
    assert s["node_f1"] == pytest.approx(1.0) and s["path_f1"] == pytest.approx(1.0)


def test_text2dt_one_wrong_leaf():
    gold = tree(["a", "r", "b"], ["a", "治疗", "x"], ["a", "治疗", "y"])
    pred = tree(["a", "r", "b"], ["a", "治疗", "x"], ["a", "治疗", "z"])
    s = text2dt_scores([gold], [pred])
    # edit: the wrong leaf's two triples differ (2); max: (3 + 2*3) + (3 + 2*3) = 18
    assert s["tree_lenv_radio"] == pytest.approx(1 - 2 / 18, abs=1e-6)
    assert s["node_f1"] == pytest.approx(2 / 3, abs=1e-5)  # 2 of 3 nodes right
    assert s["path_f1"] == pytest.approx(1 / 2, abs=1e-5)  # 1 of 2 root-to-leaf paths right


def test_text2dt_missing_subtree_costs_its_nodes():
    gold = tree(["a", "r", "b"], ["a", "治疗", "x"], ["a", "治疗", "y"])
    pred = [{"role": "D", "logical_rel": "null", "triples": []}]
    s = text2dt_scores([gold], [pred])
    # root: role (1) + 1 triple (1); two unmatched leaves: role (1) + 1 triple (1) each => 6 of (0) + (3 + 6)
    assert s["tree_lenv_radio"] == pytest.approx(1 - 6 / 9, abs=1e-6)
