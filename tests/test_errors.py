"""Every user error ends in one line naming the file (and line), exit code 2, no traceback."""
import json
import os
import subprocess
import sys

import pytest

from conftest import GOLDEN, ROOT, needs_golden, run_main

MODEL = os.path.join(GOLDEN, "model")
pytestmark = needs_golden


def one_line_error(proc, *must_contain, tool="main.py"):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{tool}: error: "), last
    for text in must_contain:
        assert text in last, last
    return last


def train(path, tmp_path, *extra):
    return run_main(["--do_train", "--train_file", str(path), "--model_name_or_path", MODEL, "--output_dir",
                     str(tmp_path / "out"), "--overwrite_output_dir", "--pre_seq_len", "4", "--max_steps", "1",
                     "--max_source_length", "32", "--max_target_length", "16", "--report_to", "none", *extra],
                    check=False)


def test_windows_file_with_bom_crlf_and_blank_lines_trains(tmp_path):
    path = tmp_path / "train.json"
    rows = [json.dumps({"input": "问题一", "target": "答案一"}, ensure_ascii=False),
            json.dumps({"input": "问题二", "target": "答案二"}, ensure_ascii=False)]
    path.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join([rows[0], "", rows[1]]) + "\r\n\r\n").encode("utf-8"))
    proc = train(path, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Training data {path}: 2 records" in proc.stdout + proc.stderr


def test_all_targets_empty(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text('{"input": "甲", "target": ""}\n{"input": "乙", "target": ""}\n', encoding="utf-8")
    one_line_error(train(path, tmp_path), str(path), "'target' is empty")


def test_non_utf8_data_file(tmp_path):
    path = tmp_path / "gbk.json"
    path.write_bytes('{"input": "头痛", "target": "发热"}\n'.encode("utf-8") +
                     '{"input": "头痛", "target": "发热"}\n'.encode("gbk"))
    one_line_error(train(path, tmp_path), f"{path}:2", "not UTF-8")


def test_binary_data_file(tmp_path):
    path = tmp_path / "weights.json"
    path.write_bytes(bytes(range(256)) * 8)
    one_line_error(train(path, tmp_path), str(path))


def test_truncated_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoint-20"
    ckpt.mkdir()
    data = open(os.path.join(GOLDEN, "ptuning-checkpoint-20", "pytorch_model.bin"), "rb").read()
    (ckpt / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    proc = run_main(["--do_predict", "--test_file", os.path.join(GOLDEN, "data", "dev.json"), "--model_name_or_path",
                     MODEL, "--ptuning_checkpoint", str(ckpt), "--output_dir", str(tmp_path / "o"),
                     "--report_to", "none"], check=False)
    one_line_error(proc, str(ckpt / "pytorch_model.bin"), "damaged or incomplete")


def test_checkpoint_that_does_not_fit_the_flags(tmp_path):
    proc = run_main(["--do_predict", "--test_file", os.path.join(GOLDEN, "data", "dev.json"), "--model_name_or_path",
                     MODEL, "--ptuning_checkpoint", os.path.join(GOLDEN, "ptuning-checkpoint-20"),
                     "--pre_seq_len", "16", "--output_dir", str(tmp_path / "o"), "--report_to", "none"], check=False)
    one_line_error(proc, "--pre_seq_len 16", "length 8")


def test_missing_model_folder_and_debug_traceback(tmp_path):
    path = os.path.join(GOLDEN, "data", "train.json")
    args = ["--do_train", "--train_file", path, "--model_name_or_path", str(tmp_path / "nope"), "--output_dir",
            str(tmp_path / "o"), "--pre_seq_len", "4", "--report_to", "none"]
    one_line_error(run_main(args, check=False), str(tmp_path / "nope"), "no such folder")
    debug = run_main(args + ["--debug"], check=False)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_no_data_file_flag(tmp_path):
    one_line_error(run_main(["--do_train", "--model_name_or_path", MODEL, "--output_dir", str(tmp_path)],
                            check=False), "--train_file")


def test_non_utf8_prediction_file_for_scoring(tmp_path):
    pred = tmp_path / "pred.json"
    pred.write_bytes('{"input": "x", "target": "完全匹配"}\n'.encode("gbk"))
    proc = subprocess.run([sys.executable, "-m", "cblue.score", "--gold", os.path.join(ROOT, "PromptCBLUE", "dev.json"),
                           "--pred", str(pred)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{pred}:1: not UTF-8" in proc.stderr


@pytest.mark.parametrize("flag,value,expected", [
    ("--max_source_length", "-5", "--max_source_length -5: must be >= 1"),
    ("--per_device_train_batch_size", "0", "--per_device_train_batch_size 0: must be >= 1"),
    ("--pre_seq_len", "0", "--pre_seq_len 0: must be >= 1"),
    ("--quantization_bit", "3", "--quantization_bit 3: must be one of 4, 8"),
    ("--top_p", "1.5", "--top_p 1.5: must be in (0, 1]"),
])
def test_numbers_out_of_range_are_user_errors(tmp_path, flag, value, expected):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"input": "问题", "target": "答案"}, ensure_ascii=False) + "\n", encoding="utf-8")
    one_line_error(train(path, tmp_path, flag, value), expected)
