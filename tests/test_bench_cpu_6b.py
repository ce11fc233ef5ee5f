"""bench/cpu_6b.py end to end on the golden tiny checkpoint (the same code the 6B run takes,
each phase in its own process), so the benchmark that guards issue 20's figures cannot rot.
What it measures is checked by running it, not here; this checks that it runs and reports."""
import json
import os
import subprocess
import sys

from conftest import GOLDEN, ROOT, needs_golden


@needs_golden
def test_cpu_6b_bench_runs_every_phase_on_the_tiny_model(tmp_path):
    proc = subprocess.run([sys.executable, "bench/cpu_6b.py", "--model", os.path.join(GOLDEN, "model"), "--out_dir", str(tmp_path),
                           "--phases", "load", "ptuning", "lora", "predict", "--batches", "1", "--lora_batch", "1",
                           "--steps", "1", "--new_tokens", "3", "--prompt_tokens", "16", "--no-profile"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index('{\n  "bench"'):])
    assert set(report["targets"]) == {"load_peak_over_weights", "ptuning_fraction_of_gemm", "lora_fraction_of_gemm",
                                      "decode_batch_1_over_weight_read", "decode_batch_8_over_weight_read",
                                      "memory_estimate_error"}
    predict = json.load(open(tmp_path / "cpu_6b-predict.json"))
    for batch in ("batch_1", "batch_8"):
        row = predict[batch]
        assert 0 < row["decode_step_fastest_seconds"] <= row["decode_step_seconds"]
        assert row["read_gb_per_second"]["best"] == max(row["read_gb_per_second"]["sum"], row["read_gb_per_second"]["mv"])
    # the memory check against the live tensor bytes of a real tiny step, through the bench's own path
    assert abs(report["targets"]["memory_estimate_error"]["value"]) <= 0.10


def test_cpu_6b_bench_refuses_a_folder_without_a_model(tmp_path):
    """Only its own default folder is ever written: a --model without config.json is an error."""
    proc = subprocess.run([sys.executable, "bench/cpu_6b.py", "--model", str(tmp_path), "--phases", "load"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no config.json" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
