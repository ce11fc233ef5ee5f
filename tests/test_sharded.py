"""Full fine-tuning sharded with FSDP2 over two gloo processes (the engine the Trainer drives on
GPUs), exact resume from the engine's sharded files, the gathered chatglm2 folder, and a
two-"node" torchrun on 127.0.0.1."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch

from conftest import RUN_TIMEOUT_S, ROOT, logged_losses as losses, run_main, tiny_train_args

TRAIN = os.path.join(ROOT, "PromptCBLUE", "train.json")
DEV = os.path.join(ROOT, "PromptCBLUE", "dev.json")
FSDP = ["--fsdp", "full_shard auto_wrap", "--fsdp_config", os.path.join(ROOT, "configs", "fsdp.json")]


def full_args(model, out, batch, *extra):
    return tiny_train_args(model, out, "--learning_rate", "5e-4", "--per_device_train_batch_size", str(batch), *extra)


@pytest.fixture(scope="module")
def fsdp_run(tiny_model, tmp_path_factory):
    """Two processes, 2 rows each, 4 steps, a checkpoint every 2."""
    out = tmp_path_factory.mktemp("fsdp")
    proc = run_main(full_args(tiny_model, out, 2, "--max_steps", "4", "--save_steps", "2", "--overwrite_output_dir",
                              *FSDP), torchrun=2)
    return out, proc


def test_fsdp_shards_parameters_and_optimizer_state(fsdp_run, tiny_model):
    _, proc = fsdp_run
    reports = re.findall(r"sharding: rank (\d) holds ([\d.]+)M of ([\d.]+)M parameters \((\d+)%\) and "
                         r"([\d.]+)M optimizer-state values", proc.stdout)
    assert sorted(r[0] for r in reports) == ["0", "1"]
    for _, held, full, percent, opt in reports:
        assert float(held) == pytest.approx(float(full) / 2, rel=0.02)  # half the model each
        assert float(opt) == pytest.approx(2 * float(held), rel=0.02)  # Adam's two moments, of its half only


def test_fsdp_learns_like_one_process_with_the_same_global_batch(fsdp_run, tiny_model, tmp_path):
    out, _ = fsdp_run
    run_main(full_args(tiny_model, tmp_path, 4, "--max_steps", "4", "--save_steps", "4", "--overwrite_output_dir"))
    one, two = losses(tmp_path), losses(out)
    assert two == pytest.approx(one, rel=1e-4)
    assert len(set(round(v, 3) for v in two.values())) > 1  # it trains


def test_fsdp_checkpoint_holds_engine_shards_and_a_gathered_chatglm2_folder(fsdp_run, tiny_model, tmp_path):
    out, _ = fsdp_run
    ckpt = out / "checkpoint-4"
    names = set(os.listdir(ckpt))
    assert {"pytorch_model_fsdp_0", "optimizer_0", "pytorch_model.bin", "config.json", "tokenizer.model"} <= names
    assert len([f for f in os.listdir(ckpt / "optimizer_0") if f.endswith(".distcp")]) == 2  # one shard per rank
    gathered = torch.load(ckpt / "pytorch_model.bin", weights_only=True)
    original = torch.load(os.path.join(tiny_model, "pytorch_model.bin"), weights_only=True)
    assert set(gathered) == set(original)
    assert all(gathered[k].shape == original[k].shape for k in original)  # whole tensors, not shards
    assert any(not torch.equal(gathered[k], original[k]) for k in original if k.endswith("weight"))
    # It is a chatglm2 folder: a model of its own, and a checkpoint evaluation recognises.
    run_main(["--do_predict", "--test_file", DEV, "--model_name_or_path", str(ckpt), "--output_dir",
              str(tmp_path / "a"), "--max_source_length", "96", "--max_target_length", "8", "--max_predict_samples",
              "18", "--report_to", "none"])
    run_main(["--do_predict", "--test_file", DEV, "--model_name_or_path", tiny_model, "--ptuning_checkpoint",
              str(ckpt), "--output_dir", str(tmp_path / "b"), "--max_source_length", "96", "--max_target_length", "8",
              "--max_predict_samples", "18", "--report_to", "none"])
    assert (tmp_path / "a" / "generated_predictions.txt").read_text() == \
        (tmp_path / "b" / "generated_predictions.txt").read_text()
    # and the export tool takes it as it takes any chatglm2 folder
    export = subprocess.run([sys.executable, "-m", "chatglm.export", "--model_name_or_path", str(ckpt), "--output_dir",
                             str(tmp_path / "hf")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert export.returncode == 0, export.stderr[-2000:]
    assert json.load(open(tmp_path / "hf" / "config.json"))["model_type"] == "glm"


def test_fsdp_bare_flag_with_bf16_and_activation_checkpointing(tiny_model, tmp_path):
    """The flag alone, as old scripts pass it (no config file): FSDP2, decoder layers as units."""
    proc = run_main(full_args(tiny_model, tmp_path, 2, "--max_steps", "3", "--save_steps", "3", "--bf16",
                              "--gradient_checkpointing", "--overwrite_output_dir", "--fsdp", "full_shard auto_wrap"),
                    torchrun=2)
    assert os.path.isdir(tmp_path / "checkpoint-3" / "optimizer_0")  # sharded optimizer state
    assert "(50%)" in proc.stdout
    curve = losses(tmp_path)
    assert len(curve) == 3 and all(torch.isfinite(torch.tensor(v)) for v in curve.values())
    assert curve[3] < curve[1]


def test_fsdp_resume_continues_exactly(fsdp_run, tiny_model, tmp_path):
    out, _ = fsdp_run
    shutil.copytree(out / "checkpoint-2", tmp_path / "checkpoint-2")
    proc = run_main(full_args(tiny_model, tmp_path, 2, "--max_steps", "4", "--save_steps", "2", *FSDP), torchrun=2)
    assert "Resuming from" in proc.stdout + proc.stderr
    a, b = losses(out), losses(tmp_path)
    for step in (3, 4):
        assert b[step] == pytest.approx(a[step], abs=1e-6)
    end_a = torch.load(out / "checkpoint-4" / "pytorch_model.bin", weights_only=True)
    end_b = torch.load(tmp_path / "checkpoint-4" / "pytorch_model.bin", weights_only=True)
    assert all(torch.equal(end_a[k], end_b[k]) for k in end_a)


def test_two_nodes_on_one_machine_train_one_run(tiny_model, tmp_path):
    """train.sh with NNODES=2 on two launchers, one process each, rendezvous on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # EVAL_STEPS=0 and no memory estimate: what is tested is the rendezvous and the resume.
    env = dict(os.environ, NNODES="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), MODEL=tiny_model,
               PRE_SEQ_LEN="8", EVAL_STEPS="0", TOKENIZERS_PARALLELISM="false", HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    extra = ["--print_memory_estimate", "false", "--max_steps", "3", "--save_steps", "3", "--logging_steps", "1",
             "--max_source_length", "96",
             "--max_target_length", "48", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps",
             "1", "--output_dir", str(tmp_path / "run"), "--report_to", "none", "--preprocessing_num_workers", "1"]

    def both_nodes(*more):
        nodes = [subprocess.Popen(["bash", "train.sh", *extra, *more], cwd=ROOT, env=dict(env, NODE_RANK=str(rank)),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
                 for rank in (0, 1)]
        try:
            outputs = [p.communicate(timeout=RUN_TIMEOUT_S)[0] for p in nodes]
        except subprocess.TimeoutExpired:
            for p in nodes:  # a stuck node and its workers go, and the failure shows what they printed
                os.killpg(p.pid, signal.SIGKILL)
            outputs = [p.communicate()[0] for p in nodes]
            raise AssertionError(f"a node did not end in {RUN_TIMEOUT_S} s:\n" + outputs[0][-2000:] + outputs[1][-2000:])
        assert all(p.returncode == 0 for p in nodes), outputs[0][-2000:] + outputs[1][-2000:]
        return outputs

    outputs = both_nodes()
    state = json.load(open(tmp_path / "run" / "trainer_state.json"))
    n = sum(1 for _ in open(TRAIN, encoding="utf-8"))
    assert state["global_step"] == 3
    assert state["log_history"][-1]["epoch"] == pytest.approx(3 * 2 * 2 / n, abs=1e-4)  # two processes' rows
    assert os.path.isfile(tmp_path / "run" / "checkpoint-3" / "pytorch_model.bin")
    assert sum("Checkpoints (prefix only) are in" in o for o in outputs) == 1  # written once, by node 0
    # Started again with more steps, both nodes resume from checkpoint-3 (train.sh resumes by default).
    outputs = both_nodes("--max_steps", "5")
    assert all("Resuming from" in o and "checkpoint-3" in o for o in outputs[:1])
    state = json.load(open(tmp_path / "run" / "trainer_state.json"))
    assert state["global_step"] == 5 and [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3, 4, 5]
