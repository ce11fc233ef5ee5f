"""python -m chatglm.export: a transformers-native folder that loads in a fresh process with only
transformers (AutoTokenizer, AutoModelForCausalLM) and gives our ids, logits and greedy outputs;
LoRA merged equals unmerged; a prefix is refused in one line."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import GOLDEN, ROOT, needs_golden, run_main

DEV = os.path.join(ROOT, "PromptCBLUE", "dev.json")

# Runs in a fresh interpreter, outside the repository: nothing of ours is importable there.
FRESH = r'''
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, prompts, adapter = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
if adapter:
    from peft import PeftModel
    model = PeftModel.from_pretrained(model, adapter).eval()
out = {"ids": [], "logits": [], "greedy": [], "texts": []}
for p in prompts:
    ids = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=True, add_generation_prompt=True,
                                  return_dict=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
        gen = model.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1]:].tolist()
    out["ids"].append(ids[0].tolist())
    out["logits"].append(logits.tolist())
    stops = model.generation_config.eos_token_id
    stops = stops if isinstance(stops, list) else [stops]
    out["greedy"].append(gen[:-1] if gen and gen[-1] in stops else gen)
    out["texts"].append(tok.decode(gen, skip_special_tokens=True).strip())
print(json.dumps(out))
'''


def fresh_process(folder, prompts, adapter=""):
    proc = subprocess.run([sys.executable, "-c", FRESH, str(folder), json.dumps(prompts), str(adapter)],
                          cwd="/", capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH="", HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ours(model_dir, checkpoint, prompts):
    from chatglm.generation import GenerationSettings, generate
    from chatglm.model import ChatGLM
    from chatglm.tokenizer import ChatGLMTokenizer

    model = ChatGLM.from_pretrained(model_dir, ptuning_checkpoint=checkpoint).eval()
    tok = ChatGLMTokenizer.from_pretrained(model_dir)
    out = {"ids": [], "logits": [], "greedy": [], "texts": []}
    for p in prompts:
        ids = tok.encode_prompt(p)
        with torch.no_grad():
            out["logits"].append(model(input_ids=torch.tensor([ids])).logits[0, -1])
        gen = generate(model, [ids], GenerationSettings(max_new_tokens=24), tok.stop_ids, tok.pad_token_id)[0]
        out["ids"].append(ids)
        out["greedy"].append(gen)
        out["texts"].append(tok.decode(gen).strip())
    return out


def export(*args):
    proc = subprocess.run([sys.executable, "-m", "chatglm.export", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _prompts(n=4):
    with open(DEV, encoding="utf-8") as f:
        return [json.loads(line)["input"] for line in f][:n]


def _assert_same(a, b):
    assert a["ids"] == b["ids"]
    for x, y in zip(a["logits"], b["logits"]):
        assert torch.allclose(torch.as_tensor(x), torch.as_tensor(y), atol=1e-5)
    assert a["greedy"] == b["greedy"]
    assert a["texts"] == b["texts"]


def test_exported_base_loads_with_transformers_alone_and_matches(tiny_model, tmp_path):
    export("--model_name_or_path", tiny_model, "--output_dir", tmp_path / "hf", "--max_shard_size", "2MB")
    files = os.listdir(tmp_path / "hf")
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    assert sum(f.endswith(".safetensors") for f in files) > 1 and "model.safetensors.index.json" in files  # sharded
    assert json.load(open(tmp_path / "hf" / "config.json"))["model_type"] == "glm"
    assert "chat_template" in json.load(open(tmp_path / "hf" / "tokenizer_config.json"))
    prompts = _prompts()
    _assert_same(fresh_process(tmp_path / "hf", prompts), ours(tiny_model, None, prompts))


@needs_golden
def test_the_golden_original_folder_exports_too(tmp_path):
    model_dir = os.path.join(GOLDEN, "model")
    export("--model_name_or_path", model_dir, "--output_dir", tmp_path / "hf")
    prompts = _prompts(3)
    _assert_same(fresh_process(tmp_path / "hf", prompts), ours(model_dir, None, prompts))


@pytest.fixture(scope="module")
def lora_checkpoint(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    run_main(["--do_train", "--train_file", os.path.join(ROOT, "PromptCBLUE", "train.json"), "--model_name_or_path",
              tiny_model, "--output_dir", str(out), "--overwrite_output_dir", "--max_source_length", "96",
              "--max_target_length", "48", "--per_device_train_batch_size", "4", "--learning_rate", "1e-2",
              "--lora_rank", "4", "--max_steps", "8", "--save_steps", "8", "--report_to", "none"])
    return str(out / "checkpoint-8")


def test_merged_lora_equals_unmerged_and_ours(tiny_model, lora_checkpoint, tmp_path):
    export("--model_name_or_path", tiny_model, "--checkpoint", lora_checkpoint, "--output_dir", tmp_path / "merged")
    export("--model_name_or_path", tiny_model, "--checkpoint", lora_checkpoint, "--output_dir", tmp_path / "apart",
           "--no_merge")
    assert os.path.isfile(tmp_path / "apart" / "adapter" / "adapter_model.safetensors")
    prompts = _prompts(3)
    merged = fresh_process(tmp_path / "merged", prompts)
    unmerged = fresh_process(tmp_path / "apart", prompts, adapter=tmp_path / "apart" / "adapter")
    _assert_same(merged, unmerged)
    _assert_same(merged, ours(tiny_model, lora_checkpoint, prompts))


def test_a_prefix_is_refused_in_one_line_and_the_base_written(tiny_model, tiny_checkpoint, tmp_path):
    proc = export("--model_name_or_path", tiny_model, "--checkpoint", tiny_checkpoint, "--output_dir", tmp_path / "hf")
    lines = [l for l in proc.stderr.splitlines() if "cannot be merged" in l]
    assert len(lines) == 1 and "writing the base model only" in lines[0]
    assert os.path.isfile(tmp_path / "hf" / "config.json")
