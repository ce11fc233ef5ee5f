"""Half precision on the CPU, as on a GPU: the frozen base in bf16/fp16, the prefix in fp32.

On the golden tiny checkpoint (the original layout): P-tuning with activation checkpointing
learns with finite prefix gradients and writes the original's checkpoint format; prediction
stays finite and agrees with fp32 on most records; quantized weights work in half precision.
"""
import json
import os

import numpy as np
import pytest
import torch

from cblue.features import prompt_ids
from conftest import GOLDEN, ROOT, needs_golden, run_main
from chatglm.generation import GenerationSettings, generate
from chatglm.model import ChatGLM
from chatglm.prefix import CHECKPOINT_PREFIX
from chatglm.tokenizer import ChatGLMTokenizer

pytestmark = needs_golden
MODEL = os.path.join(GOLDEN, "model")
CKPT = os.path.join(GOLDEN, "ptuning-checkpoint-20")
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def golden_prompts(n=32):
    tok = ChatGLMTokenizer.from_pretrained(MODEL)
    with open(os.path.join(GOLDEN, "data", "dev.json"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f][:n]
    return tok, [prompt_ids(tok, r["input"], None, 128, "left")[0] for r in records]


@pytest.mark.parametrize("flag", ["bf16", "fp16"])
def test_ptuning_in_half_precision_with_checkpointing(tmp_path, flag):
    proc = run_main(["--do_train", "--train_file", os.path.join(GOLDEN, "data", "train.json"),
                     "--model_name_or_path", MODEL, "--output_dir", str(tmp_path), "--overwrite_output_dir",
                     "--max_source_length", "64", "--max_target_length", "32", "--per_device_train_batch_size", "4",
                     "--max_train_samples", "4", "--pre_seq_len", "8", "--max_steps", "24", "--save_steps", "24",
                     "--logging_steps", "1", "--learning_rate", "1e-1", "--report_to", "none",
                     "--gradient_checkpointing", f"--{flag}"])
    assert f"Base model: {HALF[flag]} on cpu" in proc.stdout + proc.stderr
    history = [h for h in json.load(open(tmp_path / "trainer_state.json"))["log_history"] if "loss" in h]
    losses = [h["loss"] for h in history]
    assert all(np.isfinite(h["grad_norm"]) and h["grad_norm"] > 0 for h in history)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2, losses
    state = torch.load(tmp_path / "checkpoint-24" / "pytorch_model.bin", weights_only=True)
    assert list(state) == [CHECKPOINT_PREFIX + "embedding.weight"]
    assert state[CHECKPOINT_PREFIX + "embedding.weight"].dtype == torch.float32
    assert torch.isfinite(state[CHECKPOINT_PREFIX + "embedding.weight"]).all()


@pytest.mark.parametrize("flag", ["bf16", "fp16"])
def test_prefix_gradient_in_half_matches_the_original(flag):
    """d(loss)/d(prefix) through a half-precision base with checkpointing: fp32, finite, and
    pointing where the original's fp32 gradient points."""
    ref = np.load(os.path.join(GOLDEN, "reference", "dev_ckpt20.npz"))
    model = ChatGLM.from_pretrained(MODEL, ptuning_checkpoint=CKPT, dtype=HALF[flag])
    model.gradient_checkpointing_enable()
    model.eval()  # the reference gradient was taken without dropout
    ids = torch.from_numpy(ref["train_input_ids"][:4]).long()
    labels = torch.from_numpy(ref["train_labels"][:4]).long()
    model(input_ids=ids, labels=labels).loss.backward()
    grad = model.prefix_encoder.embedding.weight.grad
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
    want = torch.from_numpy(ref["prefix_grad"]).float()
    cosine = torch.nn.functional.cosine_similarity(grad.flatten(), want.flatten(), dim=0)
    assert cosine > 0.99, float(cosine)
    assert abs(grad.norm() / want.norm() - 1) < 0.05


@pytest.mark.parametrize("flag, at_least", [("bf16", 20), ("fp16", 28)])
def test_half_precision_generation_agrees_with_fp32(flag, at_least):
    """Measured: bf16 24/32, fp16 31/32 greedy outputs equal to fp32 on this random-weight
    model, whose nearly flat logits let rounding flip a few close calls."""
    tok, prompts = golden_prompts()
    settings = GenerationSettings(max_new_tokens=32)
    fp32 = generate(ChatGLM.from_pretrained(MODEL, ptuning_checkpoint=CKPT), prompts, settings,
                    tok.eos_token_id, tok.pad_token_id)
    half_model = ChatGLM.from_pretrained(MODEL, ptuning_checkpoint=CKPT, dtype=HALF[flag])
    half = generate(half_model, prompts, settings, tok.eos_token_id, tok.pad_token_id)
    same = sum(a == b for a, b in zip(fp32, half))
    print(f"{flag}: {same}/{len(prompts)} greedy outputs equal to fp32")
    assert same >= at_least


@pytest.mark.parametrize("flag", ["bf16", "fp16"])
def test_long_prompt_logits_stay_finite_in_half(flag):
    """A 700-token prompt (PromptCBLUE's longest) through a half base: no overflow to inf/NaN."""
    tok, prompts = golden_prompts()
    long_prompt = (tok.prefix_ids + sum((p[2:] for p in prompts), []))[:700]
    model = ChatGLM.from_pretrained(MODEL, ptuning_checkpoint=CKPT, dtype=HALF[flag])
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([long_prompt])).logits
    assert logits.dtype == HALF[flag] and torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("flag", ["bf16", "fp16"])
def test_quantized_base_in_half_precision(flag, bits):
    tok, prompts = golden_prompts(8)
    model = ChatGLM.from_pretrained(MODEL, ptuning_checkpoint=CKPT, dtype=HALF[flag], quantization_bit=bits)
    assert model.base.model.layers[0].self_attn.q_proj.weight_scale.dtype == HALF[flag]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompts[0]])).logits
    assert torch.isfinite(logits.float()).all()
    outs = generate(model, prompts, GenerationSettings(max_new_tokens=8), tok.eos_token_id, tok.pad_token_id)
    assert len(outs) == 8 and any(outs)
    # ... and it trains: finite fp32 prefix gradients through the quantized half layers.
    model.gradient_checkpointing_enable()
    model.train()
    ids = torch.tensor([prompts[1]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert torch.isfinite(model.prefix_encoder.embedding.weight.grad).all()


@pytest.mark.parametrize("flag", ["--activation_checkpointing", "--gradient_checkpointing"])
def test_checkpointing_flags_for_full_fine_tuning(tiny_model, tmp_path, flag):
    """Both names of the flag work for the other method too (the whole model trains)."""
    run_main(["--do_train", "--train_file", os.path.join(ROOT, "PromptCBLUE", "train.json"),
              "--model_name_or_path", tiny_model, "--output_dir", str(tmp_path), "--overwrite_output_dir",
              "--max_source_length", "64", "--max_target_length", "32", "--per_device_train_batch_size", "2",
              "--learning_rate", "1e-4", "--max_steps", "1", "--save_steps", "1", "--report_to", "none", flag,
              "--bf16"])
    assert os.path.isfile(tmp_path / "checkpoint-1" / "pytorch_model.bin")
