"""--do_predict: batched generation, output files, resume after interruption."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_main
from chatglm.generation import GenerationSettings, generate
from chatglm.model import ChatGLM
from chatglm.tokenizer import ChatGLMTokenizer

DEV = os.path.join(ROOT, "PromptCBLUE", "dev.json")
TEST = os.path.join(ROOT, "PromptCBLUE", "test.json")


def predict_args(model, ckpt, out, data=DEV, *extra):
    return ["--do_predict", "--test_file", data, "--model_name_or_path", model, "--ptuning_checkpoint", ckpt,
            "--output_dir", str(out), "--max_source_length", "128", "--max_target_length", "32",
            "--report_to", "none", *extra]


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_batch_16_equals_batch_1(tiny_model, tiny_checkpoint):
    tok = ChatGLMTokenizer.from_pretrained(tiny_model)
    m = ChatGLM.from_pretrained(tiny_model, pre_seq_len=8)
    m.load_prefix(tiny_checkpoint)
    prompts = [tok.encode_prompt(r["input"])[-100:] for r in read_lines(DEV)[:32]]
    assert len({len(p) for p in prompts}) > 5  # really different lengths: real padding
    s = GenerationSettings(max_new_tokens=24)
    one = [generate(m, [p], s, tok.eos_token_id, tok.pad_token_id)[0] for p in prompts]
    sixteen = generate(m, prompts[:16], s, tok.eos_token_id, tok.pad_token_id) + \
        generate(m, prompts[16:], s, tok.eos_token_id, tok.pad_token_id)
    assert one == sixteen
    assert len({tuple(x) for x in one}) > 1


def test_sampling_is_reproducible_and_beams_run(tiny_model, tiny_checkpoint):
    tok = ChatGLMTokenizer.from_pretrained(tiny_model)
    m = ChatGLM.from_pretrained(tiny_model, pre_seq_len=8)
    m.load_prefix(tiny_checkpoint)
    prompts = [tok.encode_prompt(r["input"])[-100:] for r in read_lines(DEV)[:4]]
    s = GenerationSettings(max_new_tokens=12, do_sample=True, top_p=0.7, temperature=0.95, seed=3)
    assert generate(m, prompts, s, 2, 0) == generate(m, prompts, s, 2, 0)
    beams = generate(m, prompts[:2], GenerationSettings(max_new_tokens=12, num_beams=3), 2, 0)
    assert len(beams) == 2 and all(len(b) <= 12 for b in beams)


def test_predict_writes_every_output(tiny_model, tiny_checkpoint, tmp_path):
    proc = run_main(predict_args(tiny_model, tiny_checkpoint, tmp_path, DEV, "--per_device_eval_batch_size", "16"),
                    env={"GLM2_PROGRESS_SECONDS": "0"})
    records = read_lines(DEV)
    # Progress as log lines (the output is not a terminal): as each record finishes, then the total.
    progress = [l.split(" - ")[-1] for l in proc.stdout.splitlines() if "chatglm.progress" in l]
    assert progress[0].startswith("predict test: 1/90 samples (1%), ") and progress[0].endswith(" left")
    assert "samples/s" in progress[0]
    assert progress[-1].startswith("predict test: 90/90 samples (100%), ") and ", took " in progress[-1]
    assert len(progress) == 90  # the last record's line is the total
    lines = read_lines(tmp_path / "generated_predictions.txt")
    assert len(lines) == len(records) and set(lines[0]) == {"labels", "predict"}
    assert [l["labels"] for l in lines[:5]] == [r["target"] for r in records[:5]]
    submission = read_lines(tmp_path / "test_predictions.json")
    assert [s["sample_id"] for s in submission] == [r["sample_id"] for r in records]
    assert [s["target"] for s in submission] == [l["predict"] for l in lines]
    results = json.load(open(tmp_path / "results.json", encoding="utf-8"))
    assert sum(len(v) for v in results.values()) == len(records)
    scores = json.load(open(tmp_path / "scores.json"))
    assert len(scores["tasks"]) == 18 and 0 <= scores["score"] <= 1
    metrics = json.load(open(tmp_path / "predict_results.json"))
    for key in ("predict_runtime", "predict_samples_per_second", "predict_score", "predict_rouge-l", "predict_bleu-4"):
        assert key in metrics
    assert not [f for f in os.listdir(tmp_path) if "progress" in f]
    # The CLI scores the submission file the same way.
    from cblue.score import main as score_main

    assert score_main(["--gold", DEV, "--pred", str(tmp_path / "test_predictions.json"),
                       "--out", str(tmp_path / "cli.json")]) == 0
    assert json.load(open(tmp_path / "cli.json"))["score"] == pytest.approx(scores["score"], abs=1e-12)


def test_records_without_targets_are_predicted(tiny_model, tiny_checkpoint, tmp_path):
    run_main(predict_args(tiny_model, tiny_checkpoint, tmp_path, TEST, "--per_device_eval_batch_size", "16"))
    assert len(read_lines(tmp_path / "test_predictions.json")) == len(read_lines(TEST))
    assert os.path.exists(tmp_path / "results.json") and not os.path.exists(tmp_path / "scores.json")


def test_interrupted_prediction_resumes_to_the_same_files(tiny_model, tiny_checkpoint, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    args = ["--per_device_eval_batch_size", "1", "--max_predict_samples", "30"]
    run_main(predict_args(tiny_model, tiny_checkpoint, full, DEV, *args))
    proc = subprocess.Popen([sys.executable, "main.py", *predict_args(tiny_model, tiny_checkpoint, cut, DEV, *args)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = cut / ".predict_progress.rank0.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (progress.exists() and progress.read_text().count("\n") >= 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = progress.read_text().count("\n")
    assert 3 <= done_before < 30 and not (cut / "generated_predictions.txt").exists()
    with open(progress, "a") as f:
        f.write('{"index": 29, "pred')  # a line torn by the kill
    run_main(predict_args(tiny_model, tiny_checkpoint, cut, DEV, *args))
    for name in ("generated_predictions.txt", "test_predictions.json", "results.json", "scores.json"):
        assert (cut / name).read_bytes() == (full / name).read_bytes(), name


def test_progress_of_another_run_is_not_reused(tmp_path):
    from cblue.outputs import PredictionLog

    path = str(tmp_path / "progress.jsonl")
    log = PredictionLog(path, "run A")
    log.add(0, "from A")
    log.close()
    again = PredictionLog(path, "run A")
    assert again.done == {0: "from A"}
    again.close()
    other = PredictionLog(path, "run B")
    assert other.done == {}
    other.close()
