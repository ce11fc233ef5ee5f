"""P-tuning end to end on the embedded tiny model: loss, checkpoints, resume."""
import json
import os
import shutil

import pytest
import torch

from conftest import GOLDEN, ROOT, logged_losses as losses, needs_golden, run_main, tiny_train_args
from chatglm.model import ChatGLM
from chatglm.prefix import CHECKPOINT_PREFIX

TRAIN = os.path.join(ROOT, "PromptCBLUE", "train.json")


def train_args(model, out, *extra):
    return tiny_train_args(model, out, "--learning_rate", "3e-2", "--pre_seq_len", "8", *extra)


def test_loss_falls_when_overfitting(tiny_model, tmp_path):
    run_main(train_args(tiny_model, tmp_path, "--max_train_samples", "4", "--max_steps", "40", "--save_steps", "40",
                        "--overwrite_output_dir"))
    curve = losses(tmp_path)
    first, last = sum(curve[s] for s in (1, 2, 3)) / 3, sum(curve[s] for s in (38, 39, 40)) / 3
    assert last < first - 0.5, curve
    assert os.path.isfile(tmp_path / "loss_curve.png")
    results = json.load(open(tmp_path / "train_results.json"))
    assert results["train_samples_per_second"] > 0


def test_checkpoint_holds_only_the_prefix_in_original_format(tiny_model, tmp_path):
    run_main(train_args(tiny_model, tmp_path, "--max_steps", "2", "--save_steps", "2", "--overwrite_output_dir"))
    state = torch.load(tmp_path / "checkpoint-2" / "pytorch_model.bin", weights_only=True)
    cfg = json.load(open(os.path.join(tiny_model, "config.json")))
    width = 2 * cfg["num_layers"] * cfg["multi_query_group_num"] * cfg["kv_channels"]
    assert list(state) == [CHECKPOINT_PREFIX + "embedding.weight"]
    assert state[CHECKPOINT_PREFIX + "embedding.weight"].shape == (8, width)
    assert state[CHECKPOINT_PREFIX + "embedding.weight"].dtype == torch.float32
    assert os.path.getsize(tmp_path / "checkpoint-2" / "pytorch_model.bin") < 100_000
    ckpt_cfg = json.load(open(tmp_path / "checkpoint-2" / "config.json"))
    assert ckpt_cfg["pre_seq_len"] == 8 and ckpt_cfg["prefix_projection"] is False


def test_prefix_projection_checkpoint_names(tiny_model, tmp_path):
    run_main(train_args(tiny_model, tmp_path, "--max_steps", "1", "--save_steps", "1", "--prefix_projection",
                        "--overwrite_output_dir"))
    state = torch.load(tmp_path / "checkpoint-1" / "pytorch_model.bin", weights_only=True)
    assert sorted(state) == sorted(CHECKPOINT_PREFIX + k for k in (
        "embedding.weight", "trans.0.weight", "trans.0.bias", "trans.2.weight", "trans.2.bias"))
    m = ChatGLM.from_pretrained(tiny_model, pre_seq_len=8, prefix_projection=True)
    m.load_prefix(str(tmp_path / "checkpoint-1"))  # and it loads back


def test_resume_continues_exactly(tiny_model, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_main(train_args(tiny_model, full, "--max_steps", "6", "--save_steps", "3", "--overwrite_output_dir"))
    # An interrupted run: it got as far as checkpoint-3, and was writing checkpoint-6 when killed.
    os.makedirs(resumed)
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")
    os.makedirs(resumed / "checkpoint-6")
    shutil.copy(full / "checkpoint-6" / "pytorch_model.bin", resumed / "checkpoint-6")  # no trainer_state.json
    proc = run_main(train_args(tiny_model, resumed, "--max_steps", "6", "--save_steps", "3"))
    assert "Resuming from" in proc.stdout + proc.stderr and "checkpoint-3" in proc.stdout + proc.stderr
    a, b = losses(full), losses(resumed)
    for step in (4, 5, 6):
        assert b[step] == pytest.approx(a[step], abs=1e-4)
    key = CHECKPOINT_PREFIX + "embedding.weight"
    a_end = torch.load(full / "checkpoint-6" / "pytorch_model.bin", weights_only=True)[key]
    b_end = torch.load(resumed / "checkpoint-6" / "pytorch_model.bin", weights_only=True)[key]
    assert torch.equal(a_end, b_end)


@needs_golden
def test_original_checkpoint_round_trips(tmp_path):
    m = ChatGLM.from_pretrained(os.path.join(GOLDEN, "model"), pre_seq_len=8)
    m.load_prefix(os.path.join(GOLDEN, "ptuning-checkpoint-20"))
    m.save_prefix(str(tmp_path))
    ours = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    theirs = torch.load(os.path.join(GOLDEN, "ptuning-checkpoint-20", "pytorch_model.bin"), weights_only=True)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_wrong_prefix_length_is_a_clear_error(tiny_model, tmp_path):
    m = ChatGLM.from_pretrained(tiny_model, pre_seq_len=8)
    m.save_prefix(str(tmp_path))
    other = ChatGLM.from_pretrained(tiny_model, pre_seq_len=4)
    with pytest.raises(ValueError, match="pre_seq_len"):
        other.load_prefix(str(tmp_path))


def test_base_only_the_whole_model_is_fine_tuned_and_saved(tiny_model, tmp_path):
    args = ["--do_train", "--train_file", TRAIN, "--model_name_or_path", tiny_model, "--output_dir", str(tmp_path),
            "--max_source_length", "64", "--max_target_length", "32", "--per_device_train_batch_size", "4",
            "--learning_rate", "1e-3", "--max_steps", "2", "--save_steps", "2", "--report_to", "none"]
    run_main(args + ["--overwrite_output_dir"])
    tuned = ChatGLM.from_pretrained(str(tmp_path / "checkpoint-2"))  # a complete chatglm2 folder
    before = ChatGLM.from_pretrained(tiny_model)
    w0, w1 = before.base.lm_head.weight, tuned.base.lm_head.weight
    assert w0.shape == w1.shape and not torch.equal(w0, w1)
    proc = run_main(args[:-4] + ["--max_steps", "3", "--save_steps", "3", "--report_to", "none"])
    assert "Resuming from" in proc.stdout + proc.stderr and os.path.isdir(tmp_path / "checkpoint-3")


def test_the_original_command_line_runs_unchanged(tiny_model, tmp_path):
    """THUDM's train.sh flags, verbatim, with two overrides appended: the last value wins."""
    original = ("--do_train --train_file PromptCBLUE/train.json --validation_file PromptCBLUE/dev.json "
                "--preprocessing_num_workers 10 --prompt_column input --response_column target --overwrite_cache "
                f"--model_name_or_path {tiny_model} --output_dir {tmp_path} --overwrite_output_dir "
                "--max_source_length 64 --max_target_length 128 --per_device_train_batch_size 32 "
                "--per_device_eval_batch_size 1 --gradient_accumulation_steps 1 --predict_with_generate "
                "--max_steps 1000 --logging_steps 10 --save_steps 200 --learning_rate 1e-2 --pre_seq_len 128").split()
    proc = run_main(original + ["--max_steps", "2", "--save_steps", "2", "--print_memory_estimate"])
    # the memory check's estimate comes first, for exactly these settings
    assert "memory estimate per device: P-tuning, prefix 128, batch 32 x 193 tokens, float32" in proc.stdout
    state = json.load(open(tmp_path / "trainer_state.json"))
    assert state["global_step"] == 2 and state["train_batch_size"] == 32
    prefix = torch.load(tmp_path / "checkpoint-2" / "pytorch_model.bin", weights_only=True)
    assert prefix[CHECKPOINT_PREFIX + "embedding.weight"].shape[0] == 128


def test_prefix_from_training_rows_holds_their_keys_and_values(tiny_model):
    """--prefix_init train_rows: each layer's prefix is exactly the key/value cache the base
    model builds for those tokens (the original's N(0, 1) prefix is the default)."""
    from chatglm.prefix import init_from_activations

    m = ChatGLM.from_pretrained(tiny_model, pre_seq_len=6).eval()
    ids = list(range(10, 20))
    init_from_activations(m.prefix_encoder, m.base, ids)
    cache = m.base(input_ids=torch.tensor([ids[:6]]), use_cache=True).past_key_values
    for (k, v), layer in zip(m.prefix_encoder.key_values(1, torch.float32), cache.layers):
        torch.testing.assert_close(k, layer.keys)
        torch.testing.assert_close(v, layer.values)
    with pytest.raises(ValueError, match="needs 6 tokens"):
        init_from_activations(m.prefix_encoder, m.base, ids[:3])
