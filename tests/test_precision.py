"""Every entry point loads a folder in its own precision (an fp16 folder stays fp16 through
export and loading, never fp32 first), a LoRA merge is exact within the output dtype's
rounding, and a model that cannot fit is refused in one line before any weight is read."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run_main

sys.path.insert(0, os.path.join(ROOT, "bench"))
DEV = os.path.join(ROOT, "PromptCBLUE", "dev.json")


@pytest.fixture(scope="module")
def fp16_folder(tmp_path_factory):
    """A tiny ChatGLM2 in THUDM's layout with torch_dtype float16, as chatglm2-6b ships."""
    from make_random_chatglm2 import write

    return write(str(tmp_path_factory.mktemp("fp16") / "chatglm2-tiny-fp16"), "tiny")


def expected_cpu_dtype():
    from chatglm.checkpoint import cpu_has_bf16

    return torch.bfloat16 if cpu_has_bf16() else torch.float16


def test_the_folder_dtype_is_read_and_kept_by_inference_loading(fp16_folder, tiny_model):
    from chatglm.checkpoint import folder_dtype
    from chatglm.tuned import load_for_inference

    assert folder_dtype(fp16_folder) == torch.float16 and folder_dtype(tiny_model) == torch.float32
    model = load_for_inference(fp16_folder)
    assert model.dtype == expected_cpu_dtype()
    assert {p.dtype for p in model.base.parameters()} == {expected_cpu_dtype()}
    assert load_for_inference(tiny_model).dtype == torch.float32  # an fp32 folder stays fp32


def test_export_writes_the_folders_dtype_and_transformers_loads_it(fp16_folder, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    out = tmp_path / "hf"
    proc = subprocess.run([sys.executable, "-m", "chatglm.export", "--model_name_or_path", fp16_folder,
                           "--output_dir", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.load(open(out / "config.json"))["dtype"] == "float16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    hf = AutoModelForCausalLM.from_pretrained(str(out))  # a fresh load follows the folder's dtype
    assert hf.dtype == torch.float16


def test_lora_merge_is_exact_within_the_output_rounding(fp16_folder, tmp_path):
    """An adapter merged into an fp16 base: W + s B A computed in fp32 and rounded once, which
    is what an fp32 merge of the same weights rounded to fp16 gives, bit for bit."""
    from safetensors import safe_open

    from chatglm.export import export
    from chatglm.model import ChatGLM

    model = ChatGLM.from_pretrained(fp16_folder, dtype=torch.float16)
    model.add_lora(4, 8.0, 0.0, ["q_proj", "gate_up_proj"], seed=1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    ckpt = tmp_path / "adapter"
    model.save_checkpoint(str(ckpt))
    export(fp16_folder, str(tmp_path / "merged"), str(ckpt))
    reference = ChatGLM.from_pretrained(fp16_folder, dtype=torch.float32, ptuning_checkpoint=str(ckpt))
    from chatglm.lora import merge_lora

    merge_lora(reference.base)  # everything in fp32
    with safe_open(str(tmp_path / "merged" / "model.safetensors"), "pt") as f:
        for name, want in reference.base.state_dict().items():
            if name in f.keys():
                got = f.get_tensor(name)
                assert got.dtype == torch.float16
                assert torch.equal(got, want.to(torch.float16)), name
    q = reference.base.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(q.half(), ChatGLM.from_pretrained(fp16_folder).base.model.layers[0].self_attn.q_proj.weight.half())


def test_prediction_runs_in_the_folders_dtype(fp16_folder, tmp_path):
    run_main(["--do_predict", "--test_file", DEV, "--model_name_or_path", fp16_folder, "--output_dir",
              str(tmp_path), "--max_source_length", "64", "--max_target_length", "8", "--max_predict_samples", "4",
              "--report_to", "none"])
    log = open(tmp_path / "generated_predictions.txt", encoding="utf-8").read()
    assert log.count("\n") == 4


@pytest.mark.parametrize("tool", [["-m", "chatglm.export", "--output_dir", "OUT"], ["-m", "chatglm.serve"], ["main.py"]])
def test_a_model_that_cannot_fit_is_one_line_before_loading(fp16_folder, tmp_path, tool):
    args = [a.replace("OUT", str(tmp_path / "x")) for a in tool]
    if tool == ["main.py"]:
        args += ["--do_predict", "--test_file", DEV, "--output_dir", str(tmp_path / "p"), "--report_to", "none"]
    proc = subprocess.run([sys.executable, *args, "--model_name_or_path", fp16_folder], cwd=ROOT,
                          capture_output=True, text=True, input="", env=dict(os.environ, GLM2_MAX_MEMORY_GB="0.001"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "needs about" in last and "GB is free: not loading it" in last and "--quantization_bit" in last
    assert "Traceback" not in proc.stderr
