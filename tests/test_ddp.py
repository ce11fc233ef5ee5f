"""`torchrun --nproc-per-node=2` on CPU: real DDP with two gloo processes."""
import json
import os

import torch

from conftest import ROOT, run_main
from chatglm.prefix import CHECKPOINT_PREFIX


def test_two_process_training(tiny_model, tmp_path):
    proc = run_main(["--do_train", "--train_file", os.path.join(ROOT, "PromptCBLUE", "train.json"),
                     "--model_name_or_path", tiny_model, "--output_dir", str(tmp_path), "--overwrite_output_dir",
                     "--max_source_length", "96", "--max_target_length", "48", "--per_device_train_batch_size", "4",
                     "--pre_seq_len", "8", "--max_steps", "4", "--save_steps", "4", "--logging_steps", "1",
                     "--learning_rate", "1e-2", "--report_to", "none"], torchrun=2)
    state = json.load(open(tmp_path / "trainer_state.json"))
    # One run of two processes: every step consumes 2 x 4 samples of the file's records.
    n = sum(1 for _ in open(os.path.join(ROOT, "PromptCBLUE", "train.json"), encoding="utf-8"))
    assert state["global_step"] == 4
    assert abs(state["log_history"][-1]["epoch"] - 4 * 8 / n) < 1e-3
    assert proc.stdout.count("Checkpoints (prefix only) are in") == 1  # only rank 0 reports and saves
    prefix = torch.load(tmp_path / "checkpoint-4" / "pytorch_model.bin", weights_only=True)
    assert torch.isfinite(prefix[CHECKPOINT_PREFIX + "embedding.weight"]).all()


def test_two_process_prediction_gathers_in_input_order(tiny_model, tiny_checkpoint, tmp_path):
    dev = os.path.join(ROOT, "PromptCBLUE", "dev.json")
    args = ["--do_predict", "--test_file", dev, "--model_name_or_path", tiny_model, "--ptuning_checkpoint",
            tiny_checkpoint, "--max_source_length", "128", "--max_target_length", "16",
            "--per_device_eval_batch_size", "8", "--max_predict_samples", "40", "--report_to", "none"]
    run_main(args + ["--output_dir", str(tmp_path / "one")])
    proc = run_main(args + ["--output_dir", str(tmp_path / "two")], torchrun=2, env={"GLM2_PROGRESS_SECONDS": "0"})
    progress = [l for l in proc.stdout.splitlines() if "chatglm.progress" in l]
    assert progress and all("(rank 0, 1/2 of the records)" in l for l in progress)
    assert sum("(100%)" in l for l in progress) == 1  # one process reports
    for name in ("generated_predictions.txt", "test_predictions.json", "results.json", "scores.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
