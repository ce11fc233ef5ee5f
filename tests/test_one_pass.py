"""Several models in one pass of the engine: --compare_base (base and tuned rows side by side)
and several checkpoints of a run (evaluate.sh STEP=all) give each model exactly the files and
scores of its own separate evaluation."""
import json
import os
import subprocess

from conftest import ROOT, run_main

DEV = os.path.join(ROOT, "PromptCBLUE", "dev.json")
SETTINGS = ["--max_source_length", "128", "--max_target_length", "24", "--max_predict_samples", "30",
            "--per_device_eval_batch_size", "8", "--report_to", "none"]


def predict(model, out, *extra):
    run_main(["--do_predict", "--test_file", DEV, "--model_name_or_path", model, "--output_dir", str(out), *SETTINGS,
              *extra])


def outputs(folder):
    with open(os.path.join(folder, "generated_predictions.txt"), encoding="utf-8") as f:
        predictions = [json.loads(l)["predict"] for l in f]
    with open(os.path.join(folder, "scores.json"), encoding="utf-8") as f:
        return predictions, json.load(f)


def test_compare_base_in_one_pass_equals_two_evaluations(tiny_model, tiny_checkpoint, tmp_path):
    predict(tiny_model, tmp_path / "both", "--ptuning_checkpoint", tiny_checkpoint, "--compare_base")
    predict(tiny_model, tmp_path / "tuned", "--ptuning_checkpoint", tiny_checkpoint)
    predict(tiny_model, tmp_path / "base")  # no checkpoint: the base model alone
    assert outputs(tmp_path / "both") == outputs(tmp_path / "tuned")
    assert outputs(tmp_path / "both" / "base") == outputs(tmp_path / "base")
    assert outputs(tmp_path / "base")[0] != outputs(tmp_path / "tuned")[0]
    with open(tmp_path / "both" / "predict_results.json") as f:
        results = json.load(f)
    assert results["predict_slot_use"] > 0 and results["predict_decode_steps"] > 0


def test_every_checkpoint_of_a_run_in_one_pass(tiny_model, tiny_checkpoint, tmp_path):
    """evaluate.sh STEP=all: checkpoint-10 and checkpoint-20 scored in one pass, each into its
    own eval-STEP folder, equal to scoring each alone."""
    run_dir = os.path.dirname(tiny_checkpoint)
    os.makedirs(os.path.join(ROOT, "output"), exist_ok=True)
    env = dict(os.environ, MODEL=tiny_model, STEP="all",
               CHECKPOINT=os.path.relpath(run_dir, os.path.join(ROOT, "output")))
    proc = subprocess.run(["bash", "evaluate.sh", *SETTINGS], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for step in (10, 20):
        predict(tiny_model, tmp_path / f"alone-{step}", "--ptuning_checkpoint", os.path.join(run_dir, f"checkpoint-{step}"))
        assert outputs(os.path.join(run_dir, f"eval-{step}")) == outputs(tmp_path / f"alone-{step}")
    assert outputs(os.path.join(run_dir, "eval-10"))[0] != outputs(os.path.join(run_dir, "eval-20"))[0]


def test_several_checkpoints_need_a_step_in_the_output_dir(tiny_model, tiny_checkpoint, tmp_path):
    run_dir = os.path.dirname(tiny_checkpoint)
    both = f"{run_dir}/checkpoint-10,{run_dir}/checkpoint-20"
    proc = run_main(["--do_predict", "--test_file", DEV, "--model_name_or_path", tiny_model, "--ptuning_checkpoint",
                     both, "--output_dir", str(tmp_path), *SETTINGS], check=False)
    assert proc.returncode == 2
    assert "--output_dir must hold {step}" in proc.stderr.strip().splitlines()[-1]
