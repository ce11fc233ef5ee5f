import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "..", "shared", "golden", "chatglm2-tiny")
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data", "promptcblue")
sys.path.insert(0, ROOT)

needs_golden = pytest.mark.skipif(not os.path.isdir(GOLDEN), reason="../shared/golden not present")
needs_shared_data = pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason="../shared/data not present")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The embedded default model, built from the project's own sample data."""
    from chatglm.tiny import build_tiny_model

    return build_tiny_model(os.path.join(ROOT, "PromptCBLUE", "train.json"),
                            str(tmp_path_factory.mktemp("tiny") / "tiny-chatglm2"))


@pytest.fixture(scope="session")
def chatglm3(tmp_path_factory):
    """A tiny ChatGLM3 folder like chatglm3-6b-32k's (rope_ratio 50): role tokens, eos set."""
    from chatglm.tiny import build_tiny_model

    return build_tiny_model(os.path.join(ROOT, "PromptCBLUE", "train.json"),
                            str(tmp_path_factory.mktemp("c3") / "tiny-chatglm3"), family="chatglm3", rope_ratio=50)


@pytest.fixture(scope="session")
def glm4(tmp_path_factory):
    """A tiny GLM-4 folder (tiktoken tokenizer.model, rope_ratio 500 as glm-4-9b-chat)."""
    from chatglm.tiny import build_tiny_model

    return build_tiny_model(os.path.join(ROOT, "PromptCBLUE", "train.json"),
                            str(tmp_path_factory.mktemp("g4") / "tiny-glm4"), family="glm4", rope_ratio=500)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory):
    """A prefix for the tiny model, trained a few steps so that generations are not all alike."""
    out = tmp_path_factory.mktemp("ckpt")
    run_main(["--do_train", "--train_file", os.path.join(ROOT, "PromptCBLUE", "train.json"),
              "--model_name_or_path", tiny_model, "--output_dir", str(out), "--overwrite_output_dir",
              "--max_source_length", "128", "--max_target_length", "48", "--per_device_train_batch_size", "8",
              "--learning_rate", "2e-2", "--pre_seq_len", "8", "--max_steps", "20", "--save_steps", "10",
              "--report_to", "none"])
    return str(out / "checkpoint-20")


# A main.py run that has not ended by then is stuck (a hung rendezvous, a dead-locked worker):
# the slowest run of the suite takes about a minute on two cores.
RUN_TIMEOUT_S = 600


def run_main(args, cwd=ROOT, env=None, check=True, torchrun=None):
    """Run main.py in a fresh process (as train.sh does) and return the CompletedProcess."""
    cmd = [sys.executable, "main.py", *args]
    full_env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_DATASETS_DISABLE_PROGRESS_BARS="1",
                    **(env or {}))
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
               f"--nproc-per-node={torchrun}", "main.py", *args]
        # gloo binds the address the host name resolves to, which on some machines is an
        # interface the processes cannot reach each other on; loopback always works.
        full_env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # Its own session, so that a timeout kills torchrun's workers too, not only torchrun.
    with subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as p:
        try:
            stdout, stderr = p.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            stdout, stderr = p.communicate()
            raise AssertionError(f"main.py did not end in {RUN_TIMEOUT_S} s: {' '.join(cmd)}\n"
                                 f"{stdout[-3000:]}\n{stderr[-5000:]}")
    proc = subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"main.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def logged_losses(out_dir) -> dict:
    """{step: training loss} from a run's trainer_state.json."""
    import json

    with open(os.path.join(out_dir, "trainer_state.json")) as f:
        return {h["step"]: h["loss"] for h in json.load(f)["log_history"] if "loss" in h}


def tiny_train_args(model, out, *extra) -> list[str]:
    """main.py --do_train on the sample data with small lengths (batch 4, seed 7, a log line per
    step); `extra` adds the method and its settings (a later flag wins)."""
    return ["--do_train", "--train_file", os.path.join(ROOT, "PromptCBLUE", "train.json"), "--model_name_or_path",
            model, "--output_dir", str(out), "--max_source_length", "96", "--max_target_length", "48",
            "--per_device_train_batch_size", "4", "--logging_steps", "1", "--seed", "7", "--report_to", "none",
            "--dataloader_num_workers", "0", *extra]
