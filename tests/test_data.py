"""Reading PromptCBLUE files: errors that name file, line and field; truncation."""
import json
import os

import pytest

from cblue.features import prompt_ids, train_features
from cblue.records import RecordError, read_records
from conftest import ROOT, run_main
from chatglm.tokenizer import ChatGLMTokenizer


def write(path, lines):
    path.write_text("".join(l + "\n" for l in lines), encoding="utf-8")
    return str(path)


GOOD = json.dumps({"input": "问题", "target": "答案", "sample_id": "a"}, ensure_ascii=False)


@pytest.mark.parametrize("bad, expect", [
    ('{"input": "x", "target": ', r":2: invalid JSON"),
    ('{"target": "y"}', r":2: field 'input': missing"),
    ('{"input": "x"}', r":2: field 'target': missing"),
    ('{"input": 3, "target": "y"}', r":2: field 'input': expected a string, got int"),
    ('{"input": "x", "target": ["y"]}', r":2: field 'target': expected a string, got list"),
    ('["x", "y"]', r":2: expected a JSON object"),
])
def test_malformed_lines_are_named(tmp_path, bad, expect):
    path = write(tmp_path / "train.json", [GOOD, bad])
    with pytest.raises(RecordError, match=expect) as e:
        read_records(path)
    assert str(e.value).startswith(path)


def test_empty_file(tmp_path):
    path = write(tmp_path / "empty.json", [])
    with pytest.raises(RecordError, match="holds no records"):
        read_records(path)


def test_bad_history_field(tmp_path):
    path = write(tmp_path / "h.json", [json.dumps({"input": "x", "target": "y", "history": [["q"]]})])
    with pytest.raises(RecordError, match=":1: field 'history'"):
        read_records(path, history_column="history")


def test_repeated_sample_ids_are_reported(tmp_path, caplog):
    path = write(tmp_path / "r.json", [GOOD, GOOD])
    read_records(path)
    assert "1 sample_id values repeat" in caplog.text and "'a' x2" in caplog.text


def test_main_reports_bad_input_and_stops(tiny_model, tmp_path):
    path = write(tmp_path / "train.json", [GOOD, '{"input": "x", "target": 5}'])
    proc = run_main(["--do_train", "--train_file", path, "--model_name_or_path", tiny_model,
                     "--output_dir", str(tmp_path / "out"), "--pre_seq_len", "4", "--max_steps", "1"], check=False)
    assert proc.returncode != 0
    assert f"{path}:2: field 'target': expected a string, got int" in proc.stderr


def test_empty_targets_are_skipped_and_counted(tiny_model):
    tok = ChatGLMTokenizer.from_pretrained(tiny_model)
    batch = {"input": ["甲", "乙", "丙"], "target": ["一", "", "三"]}
    out = train_features(batch, tok, "input", "target", None, 64, 16, "left")
    assert len(out["input_ids"]) == 2
    for ids, labels in zip(out["input_ids"], out["labels"]):
        assert ids[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id
        n_prompt = labels.count(-100)
        assert ids[:2] == tok.prefix_ids and labels[:n_prompt] == [-100] * n_prompt
        assert labels[n_prompt:] == ids[n_prompt:]


def test_left_truncation_keeps_the_question(tiny_model):
    tok = ChatGLMTokenizer.from_pretrained(tiny_model)
    with open(os.path.join(ROOT, "PromptCBLUE", "train.json"), encoding="utf-8") as f:
        rec = next(r for r in map(json.loads, f) if r["task_dataset"] == "CHIP-CTC")
    full = tok.encode_prompt(rec["input"])
    kept, cut = prompt_ids(tok, rec["input"], None, 24, "left")
    assert cut and len(kept) == 24 and kept[:2] == tok.prefix_ids and kept[2:] == full[-22:]
    assert tok.decode(kept).endswith("答：\n\n答：")  # the options and the question's end survive
    right, _ = prompt_ids(tok, rec["input"], None, 24, "right")
    assert right == full[:24]


def test_history_rounds_come_first(tiny_model):
    tok = ChatGLMTokenizer.from_pretrained(tiny_model)
    ids = tok.encode_prompt("再问", [["先问", "先答"]])
    assert tok.decode(ids) == "[Round 1]\n\n问：先问\n\n答：先答\n\n[Round 2]\n\n问：再问\n\n答："


def test_special_tokens_written_in_text_are_split_out(tiny_model):
    """The original (slow HF tokenizer) maps a literal `</s>`/`<unk>` to its id and encodes the
    text around it separately, whitespace next to it dropped."""
    tok = ChatGLMTokenizer.from_pretrained(tiny_model)
    assert tok.encode_text("头痛 </s> 发热") == tok.encode_text("头痛") + [tok.eos_token_id] + tok.encode_text("发热")
    assert tok.encode_text("<unk>") == [tok.unk_token_id]


def test_targets_longer_than_max_target_length_are_counted(tiny_model):
    """A cut target ends in eos mid-answer, which the model then learns: main.py warns with this count."""
    tok = ChatGLMTokenizer.from_pretrained(tiny_model)
    batch = {"input": ["问题一", "问题二"], "target": ["短", "很长的答案" * 20]}
    out = train_features(batch, tok, "input", "target", None, 64, 8, "left")
    assert out["target_cut"] == [False, True]
    assert len(out["labels"][1]) - out["labels"][1].count(-100) == 8 + 1  # 8 answer tokens + eos
