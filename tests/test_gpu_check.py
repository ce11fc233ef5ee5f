"""bench/gpu_check.sh --dry-run: every step of the GPU check on the tiny shape on the CPU, so
the script a reviewer runs on a GPU cannot rot."""
import json
import os
import subprocess

from conftest import ROOT


def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path))
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    figures = {name: json.load(open(tmp_path / name)) for name in
               ("environment.json", "train_results.json", "predict_results.json", "gpu_bench.json",
                "memory_estimate.json", "memory_estimate_lora_4.json")}
    assert figures["train_results.json"]["train_samples_per_second"] > 0
    assert figures["predict_results.json"]["predict_samples"] == 16
    engines = json.load(open(tmp_path / "continuous_batching.json"))  # static batch vs continuous, same answers
    assert engines["base_slots_16"]["identical_answers"] and engines["prefix_slots_16"]["identical_answers"]
    estimate = figures["memory_estimate.json"]  # the memory check's figure beside the measured peak
    assert estimate["settings"]["batch"] == 32 and estimate["training_peak"] > estimate["weights"] > 0
    assert figures["memory_estimate_lora_4.json"]["settings"]["quantization_bit"] == 4
    bench = figures["gpu_bench.json"]
    assert bench["shape"] == "tiny" and bench["eval_16bit"]["batch_64_decode_step_ms"] > 0
    tests = open(tmp_path / "cuda_tests.xml").read()
    # (the dry run leaves out the two half-precision P-tuning steps, run by test_half_precision.py)
    assert 'failures="0"' in tests and 'errors="0"' in tests and 'tests="4"' in tests
