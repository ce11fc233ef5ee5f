"""chatglm.memory: the estimate made from a run's flags, before it starts, against the live tensor
bytes of a real step (torch's MemTracker), and the checks built on it."""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from chatglm.cuda_allocator import replay
from chatglm.memory import RunSettings, estimate, memory_tracker, peak_by_kind

SHAPE = dict(model_type="chatglm", num_layers=2, hidden_size=128, num_attention_heads=4, kv_channels=32,
             multi_query_attention=True, multi_query_group_num=2, ffn_hidden_size=352, padded_vocab_size=1024,
             layernorm_epsilon=1e-5, seq_length=32768, eos_token_id=2, pad_token_id=0)
MIB = 2 ** 20


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("memory") / "config.json"
    path.write_text(json.dumps(SHAPE))
    return str(path)


def real_model(s: RunSettings):
    """A random model at SHAPE, built as main.load_model builds the run's (real tensors)."""
    from chatglm.checkpoint import random_glm
    from chatglm.convert import glm_config_from_chatglm
    from chatglm.model import ChatGLM
    from chatglm.prefix import PrefixEncoder

    base = random_glm(glm_config_from_chatglm(SHAPE), s.torch_dtype, quantization_bit=s.quantization_bit)
    c = base.config
    prefix = PrefixEncoder(s.pre_seq_len, c.num_hidden_layers, c.num_key_value_heads, c.head_dim,
                           c.hidden_size) if s.method == "ptuning" else None
    model = ChatGLM(base, prefix)
    if s.method == "lora":
        model.add_lora(s.lora_rank, 2.0 * s.lora_rank, s.lora_dropout, s.lora_targets, seed=0)
    return model


def measured_step(s: RunSettings) -> dict:
    """One real training step (our answer-only loss on the mask, fused AdamW) under MemTracker."""
    model = real_model(s)
    if s.checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, fused=True)
    ids = torch.randint(5, SHAPE["padded_vocab_size"] - 1, (s.batch, s.row_length))
    labels = ids.clone()
    labels[:, :s.source] = -100
    tracker = memory_tracker(model, opt)
    with tracker:
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return peak_by_kind(tracker)


@pytest.mark.parametrize("settings", [
    RunSettings(method="ptuning", batch=4, source=24, target=16, pre_seq_len=8, dtype="float32", checkpointing=True),
    RunSettings(method="ptuning", batch=2, source=24, target=16, pre_seq_len=8, dtype="bfloat16",
                checkpointing=False),
    RunSettings(method="lora", batch=4, source=24, target=16, dtype="float32", checkpointing=True, lora_rank=4),
    RunSettings(method="ptuning", batch=4, source=24, target=16, pre_seq_len=8, dtype="float32", checkpointing=True,
                quantization_bit=4),
], ids=["ptuning-fp32-checkpointing", "ptuning-bf16", "lora-fp32-checkpointing", "ptuning-int4"])
def test_estimate_agrees_with_the_tracked_bytes_of_a_real_step(config_file, settings):
    measured = measured_step(settings)["Total"]
    e = estimate(config_file, settings, device="cpu", both_checkpointing=False)
    assert abs(e.training_peak / measured - 1) < 0.10, (e.training_peak, measured)
    assert e.weights > 0 and e.activations + e.workspace > 0 and e.reserved >= e.tensor_peak


def test_estimate_moves_with_the_settings(config_file):
    base = RunSettings(method="ptuning", batch=2, source=24, target=16, pre_seq_len=8, dtype="float32")
    small, big = (estimate(config_file, RunSettings(**{**base.__dict__, "batch": b}), device="cpu") for b in (2, 8))
    assert big.activations + big.workspace > 3 * (small.activations + small.workspace)
    assert big.weights == small.weights
    assert small.activations_without_checkpointing > small.activations_with_checkpointing
    int8 = estimate(config_file, RunSettings(**{**base.__dict__, "quantization_bit": 8}), device="cpu")
    assert int8.weights < small.weights
    cuda = estimate(config_file, base, device="cuda", both_checkpointing=False)
    assert cuda.total == cuda.reserved + cuda.context and cuda.context > 0


def test_the_caching_allocator_keeps_what_it_freed():
    """Two freed 12 MiB blocks cannot hold a 24 MiB tensor: nvidia-smi shows all three."""
    events = [("alloc", "a", 12 * MIB), ("alloc", "b", 12 * MIB), ("free", "a", 0), ("free", "b", 0),
              ("alloc", "c", 24 * MIB)]
    assert replay(events).reserved == 48 * MIB
    # a smaller request reuses a cached block (split), and small tensors share a 2 MiB segment
    events += [("alloc", "d", 6 * MIB), ("alloc", "e", 1000), ("alloc", "f", 3000)]
    allocator = replay(events)
    assert allocator.reserved == 48 * MIB + 2 * MIB
    assert allocator.allocated == 24 * MIB + 6 * MIB + 1024 + 3072


def test_cli_prints_every_part_and_json(config_file):
    flags = ["--model_name_or_path", config_file, "--pre_seq_len", "8", "--per_device_train_batch_size", "4",
             "--max_source_length", "24", "--max_target_length", "16", "--fp16"]
    out = subprocess.run([sys.executable, "-m", "chatglm.memory", *flags], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    for part in ("weights", "trainable params + gradients + optimizer", "activations (saved for backward)",
                 "workspace", "logits", "checkpointing off", "generation cache", "CUDA context",
                 "total, as nvidia-smi shows it"):
        assert part in out.stdout, part
    assert "batch 4 x 41 tokens, float16" in out.stdout
    js = subprocess.run([sys.executable, "-m", "chatglm.memory", *flags, "--json", "--num_gpus", "2"], cwd=ROOT,
                        capture_output=True, text=True)
    figures = json.loads(js.stdout)
    assert figures["settings"]["num_gpus"] == 2 and "DDP" in figures["sharding_note"]
    assert figures["total"] == figures["reserved"] + figures["context"]


@pytest.mark.parametrize("flags,message", [
    (["--model_name_or_path", "/no/such/folder"], "/no/such/folder"),
    (["--model_name_or_path", "chatglm2-6b", "--per_device_train_batch_size", "0"], "per_device_train_batch_size"),
])
def test_cli_bad_input_is_one_line(flags, message):
    out = subprocess.run([sys.executable, "-m", "chatglm.memory", *flags], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_training_stops_when_the_estimate_exceeds_the_free_gpu_memory(config_file, monkeypatch):
    from chatglm.memory import _parser, check_before_training

    model_args, data_args, training_args = _parser().parse_args_into_dataclasses(args=[
        "--model_name_or_path", config_file, "--train_file", "x.json", "--output_dir", "/tmp/unused",
        "--pre_seq_len", "8", "--max_source_length", "24", "--max_target_length", "16"])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (1 * MIB, 32 * 2 ** 30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-32GB")
    logged = []
    with pytest.raises(ValueError, match="needs about .* GiB per GPU and Tesla V100-SXM2-32GB has 0.0 of 32.0"):
        check_before_training(model_args, data_args, training_args, logged.append, device="cuda")
    assert "memory estimate per device" in logged[0]
    model_args.skip_memory_check = True
    assert check_before_training(model_args, data_args, training_args, logged.append, device="cuda") is not None
