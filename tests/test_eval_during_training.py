"""The official score during training: every --eval_steps the model generates for the
validation records and is scored as `main.py --do_predict` would score that checkpoint; the
best checkpoint is chosen by it, survives --save_total_limit and a kill, and DDP equals one
process. One training run (the `run` fixture) serves every check that only reads it."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, logged_losses, run_main, tiny_train_args

DEV = os.path.join(ROOT, "PromptCBLUE", "dev.json")
STEPS, EVERY = 30, 10


def train_args(model, out, valid, *extra):
    return tiny_train_args(model, out, "--learning_rate", "3e-2", "--pre_seq_len", "8", "--max_steps", str(STEPS),
                           "--save_steps", str(EVERY), "--eval_steps", str(EVERY), "--do_eval",
                           "--validation_file", valid, "--per_device_eval_batch_size", "8",
                           "--save_total_limit", "1", "--load_best_model_at_end", "--max_train_samples", "40", *extra)


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory):
    """2 dev records of each of the 18 tasks."""
    path = tmp_path_factory.mktemp("valid") / "valid.json"
    seen, lines = {}, []
    for line in open(DEV, encoding="utf-8"):
        task = json.loads(line)["task_dataset"]
        if seen.get(task, 0) < 2:
            seen[task] = seen.get(task, 0) + 1
            lines.append(line)
    path.write_text("".join(lines), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def run(tiny_model, valid_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = run_main(train_args(tiny_model, out, valid_file, "--overwrite_output_dir", "--report_to", "tensorboard"))
    return out, proc.stdout + proc.stderr


def evaluations(out) -> dict:
    state = json.load(open(out / "trainer_state.json"))
    return {h["step"]: h for h in state["log_history"] if "eval_score" in h}


def test_every_evaluation_is_scored_logged_and_written(run):
    out, log = run
    evals = evaluations(out)
    assert sorted(evals) == [10, 20, 30]
    for step, h in evals.items():
        scores = json.load(open(out / f"eval-{step}" / "scores.json"))
        assert h["eval_score"] == scores["score"]
        assert {k[5:] for k in h if k[5:] in scores["tasks"]} == set(scores["tasks"]) and len(scores["tasks"]) == 18
        assert h["eval_loss"] > 0  # the loss on the same records
        for name in ("error_report.md", "generated_predictions.txt", "test_predictions.json"):
            assert (out / f"eval-{step}" / name).is_file(), name
        line = next(l for l in log.splitlines() if l.startswith(f"eval step {step}: official score"))
        assert f"{scores['score']:.4f}" in line and "CHIP-CDN" in line
    assert (out / "score_curve.png").stat().st_size > 10_000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((out / "runs").iterdir()))).Reload()
    assert [e.step for e in events.Scalars("eval/score")] == [10, 20, 30]
    assert [e.value for e in events.Scalars("eval/CHIP-CDN")] == pytest.approx(
        [evals[s]["eval_CHIP-CDN"] for s in (10, 20, 30)])


def test_the_best_checkpoint_is_chosen_by_the_score_and_kept(run):
    out, log = run
    evals = evaluations(out)
    state = json.load(open(out / "trainer_state.json"))
    best = max(evals, key=lambda s: (evals[s]["eval_score"], -s))  # the first of equal scores
    assert state["best_global_step"] == best and state["best_metric"] == evals[best]["eval_score"]
    assert os.path.basename(state["best_model_checkpoint"]) == f"checkpoint-{best}"
    kept = sorted(d for d in os.listdir(out) if d.startswith("checkpoint-"))
    # --save_total_limit 1 keeps the newest and the best while training, the best alone at the end
    assert kept == [f"checkpoint-{best}"]
    final = json.load(open(out / "eval_results.json"))
    assert final["eval_step"] == best and final["eval_score"] == evals[best]["eval_score"]
    found = subprocess.run([sys.executable, "-m", "chatglm.checkpoint", str(out)], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert found == str(out / f"checkpoint-{best}")


def test_scores_equal_do_predict_on_that_checkpoint(run, tiny_model, valid_file, tmp_path):
    out, _ = run
    state = json.load(open(out / "trainer_state.json"))
    step = state["best_global_step"]
    run_main(["--do_predict", "--test_file", valid_file, "--model_name_or_path", tiny_model, "--ptuning_checkpoint",
              str(out / f"checkpoint-{step}"), "--output_dir", str(tmp_path), "--max_source_length", "96",
              "--max_target_length", "48", "--per_device_eval_batch_size", "8", "--report_to", "none"])
    for name in ("scores.json", "generated_predictions.txt", "error_report.md"):
        assert (tmp_path / name).read_text() == (out / f"eval-{step}" / name).read_text().replace(
            f"eval-{step}", os.path.basename(tmp_path)), name


def test_a_killed_run_resumes_to_the_same_best(run, tiny_model, valid_file, tmp_path):
    out, _ = run
    args = train_args(tiny_model, tmp_path, valid_file)
    cmd = [sys.executable, "main.py", *args]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "checkpoint-20" / "trainer_state.json").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "checkpoint-30").exists(), "the run ended before it could be killed"
    resumed = run_main(args)
    assert "Resuming from" in resumed.stdout and "checkpoint-20" in resumed.stdout
    a, b = json.load(open(out / "trainer_state.json")), json.load(open(tmp_path / "trainer_state.json"))
    assert (b["best_global_step"], b["best_metric"]) == (a["best_global_step"], a["best_metric"])
    assert os.path.basename(b["best_model_checkpoint"]) == os.path.basename(a["best_model_checkpoint"])
    assert evaluations(tmp_path)[30]["eval_score"] == evaluations(out)[30]["eval_score"]
    assert (tmp_path / "eval-30" / "generated_predictions.txt").read_text() == \
        (out / "eval-30" / "generated_predictions.txt").read_text()


def test_evaluating_does_not_change_what_training_does(run, tiny_model, tmp_path):
    """Evaluation draws from the global random generators; restored, the next epochs shuffle as
    in a run that never evaluates (30 steps of batch 4 are a few epochs of the sample data)."""
    out, _ = run
    run_main(tiny_train_args(tiny_model, tmp_path, "--learning_rate", "3e-2", "--pre_seq_len", "8",
                             "--max_steps", str(STEPS), "--save_steps", str(STEPS), "--max_train_samples", "40",
                             "--overwrite_output_dir"))
    with_eval = logged_losses(out)
    without = logged_losses(tmp_path)
    assert without == pytest.approx(with_eval, abs=1e-6)


def test_two_processes_score_as_one(tiny_model, valid_file, tmp_path):
    """Each process generates its half; the score is computed once, on rank 0, and equals one
    process's evaluation of the same checkpoint."""
    two = tmp_path / "two"
    proc = run_main(train_args(tiny_model, two, valid_file, "--max_steps", "10", "--save_total_limit", "2",
                               "--overwrite_output_dir"), torchrun=2)
    assert proc.stdout.count("eval step 10: official score") == 1
    run_main(["--do_predict", "--test_file", valid_file, "--model_name_or_path", tiny_model, "--ptuning_checkpoint",
              str(two / "checkpoint-10"), "--output_dir", str(tmp_path / "one"), "--max_source_length", "96",
              "--max_target_length", "48", "--per_device_eval_batch_size", "8", "--report_to", "none"])
    assert json.load(open(tmp_path / "one" / "scores.json")) == json.load(open(two / "eval-10" / "scores.json"))
    assert evaluations(two)[10]["eval_score"] == json.load(open(two / "eval-10" / "scores.json"))["score"]


def test_scoring_during_training_needs_a_validation_file(tiny_model, tmp_path):
    proc = run_main(tiny_train_args(tiny_model, tmp_path, "--pre_seq_len", "8", "--max_steps", "4",
                                    "--eval_steps", "2"), check=False)
    assert proc.returncode == 2
    assert "need a --validation_file" in proc.stderr and "Traceback" not in proc.stderr


def test_tools_take_the_recorded_best_else_the_newest(tmp_path):
    from chatglm.checkpoint import run_checkpoint

    def checkpoint(step, best=None):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "pytorch_model.bin").write_bytes(b"x")
        (d / "trainer_state.json").write_text(json.dumps({"best_model_checkpoint": best}))

    checkpoint(10)
    checkpoint(20, best="elsewhere/run/checkpoint-10")  # recorded where the run ran: the name counts
    assert run_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert run_checkpoint(str(tmp_path / "checkpoint-20")) == str(tmp_path / "checkpoint-20")  # a step is itself
    (tmp_path / "checkpoint-10" / "trainer_state.json").unlink()  # the best is gone (incomplete): the newest
    assert run_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-20")


def test_task_sampling_resumes_exactly(tiny_model, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    args = ("--learning_rate", "3e-2", "--pre_seq_len", "8", "--max_steps", "6", "--save_steps", "3",
            "--task_sampling", "temperature:2")
    proc = run_main(tiny_train_args(tiny_model, full, *args, "--overwrite_output_dir"))
    assert "--task_sampling temperature:2: 720 draws an epoch over 18 tasks" in proc.stdout
    os.makedirs(resumed)
    import shutil

    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")
    run_main(tiny_train_args(tiny_model, resumed, *args))
    a, b = logged_losses(full), logged_losses(resumed)
    assert [b[s] for s in (4, 5, 6)] == pytest.approx([a[s] for s in (4, 5, 6)], abs=1e-6)


@pytest.mark.parametrize("argv,implied", [
    (["--eval_steps", "5"], ["--eval_strategy", "steps", "--metric_for_best_model", "score"]),
    # train.sh's default (evaluate at each checkpoint) with the user's own --save_steps
    (["--eval_strategy", "steps", "--save_steps", "400", "--save_steps", "3"],
     ["--eval_steps", "3", "--metric_for_best_model", "score"]),
    (["--eval_steps", "5", "--metric_for_best_model", "loss"], ["--eval_strategy", "steps"]),
    (["--eval_strategy", "steps", "--load_best_model_at_end", "--eval_strategy", "no"],
     ["--load_best_model_at_end", "false"]),
    (["--do_eval", "--save_steps", "3"], []),  # evaluation after training only, as the original
])
def test_flags_the_evaluation_flags_imply(argv, implied):
    from main import evaluation_defaults

    assert evaluation_defaults(argv) == implied
