"""LoRA through PEFT: training, PEFT-format checkpoints, exact resume, DDP, QLoRA, loading
adapters trained on the original chatglm2 code (fused query_key_value)."""
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ROOT, logged_losses as losses, run_main, tiny_train_args
from chatglm.checkpoint import load_glm, read_config
from chatglm.convert import glm_to_chatglm
from chatglm.model import ChatGLM, base_only

DEV = os.path.join(ROOT, "PromptCBLUE", "dev.json")


def lora_args(model, out, *extra):
    return tiny_train_args(model, out, "--learning_rate", "5e-3", "--lora_rank", "4", *extra)


def test_lora_learns_and_saves_a_peft_adapter(tiny_model, tmp_path):
    run_main(lora_args(tiny_model, tmp_path, "--max_train_samples", "4", "--max_steps", "30", "--save_steps", "30",
                       "--overwrite_output_dir"))
    curve = losses(tmp_path)
    assert sum(curve[s] for s in (28, 29, 30)) / 3 < sum(curve[s] for s in (1, 2, 3)) / 3 - 0.5, curve
    ckpt = tmp_path / "checkpoint-30"
    assert {"adapter_config.json", "adapter_model.safetensors", "trainer_state.json"} <= set(os.listdir(ckpt))
    assert "pytorch_model.bin" not in os.listdir(ckpt)
    cfg = json.load(open(ckpt / "adapter_config.json"))
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert sorted(cfg["target_modules"]) == ["down_proj", "gate_up_proj", "k_proj", "o_proj", "q_proj", "v_proj"]
    state = load_file(ckpt / "adapter_model.safetensors")
    layers = read_config(tiny_model)["num_layers"]
    assert len(state) == layers * 6 * 2
    assert all(k.startswith("base_model.model.model.layers.") and k.endswith((".lora_A.weight", ".lora_B.weight"))
               for k in state)
    assert all(t.dtype == torch.float32 for t in state.values())
    assert os.path.getsize(ckpt / "adapter_model.safetensors") < 1_000_000  # a few hundred KB, not the model


def test_peft_loads_our_adapter_and_gives_the_same_logits(tiny_model, tmp_path):
    from peft import PeftModel

    run_main(lora_args(tiny_model, tmp_path, "--max_steps", "3", "--save_steps", "3", "--overwrite_output_dir"))
    ckpt = str(tmp_path / "checkpoint-3")
    ours = ChatGLM.from_pretrained(tiny_model, ptuning_checkpoint=ckpt).eval()
    theirs = PeftModel.from_pretrained(load_glm(tiny_model), ckpt).eval()
    ids = torch.randint(5, 500, (2, 24))
    positions = torch.arange(24).expand(2, 24)
    with torch.no_grad():
        a = ours(input_ids=ids).logits
        b = theirs(input_ids=ids, position_ids=positions).logits
        with base_only(ours):
            base = ours(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-6)
    assert (a - base).abs().max() > 1e-3  # the adapter changes the model, and base_only switches it off


def test_lora_resume_continues_exactly(tiny_model, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_main(lora_args(tiny_model, full, "--max_steps", "6", "--save_steps", "3", "--overwrite_output_dir"))
    os.makedirs(resumed)
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")
    proc = run_main(lora_args(tiny_model, resumed, "--max_steps", "6", "--save_steps", "3"))
    assert "Resuming from" in proc.stdout + proc.stderr
    a, b = losses(full), losses(resumed)
    for step in (4, 5, 6):
        assert b[step] == pytest.approx(a[step], abs=1e-5)
    end_a = load_file(full / "checkpoint-6" / "adapter_model.safetensors")
    end_b = load_file(resumed / "checkpoint-6" / "adapter_model.safetensors")
    assert all(torch.equal(end_a[k], end_b[k]) for k in end_a)


def test_lora_and_prefix_are_exclusive(tiny_model, tmp_path):
    proc = run_main(lora_args(tiny_model, tmp_path, "--pre_seq_len", "8", "--max_steps", "1"), check=False)
    assert proc.returncode == 2
    assert "--pre_seq_len and --lora_rank are exclusive" in proc.stderr and "Traceback" not in proc.stderr


def test_original_target_names_and_a_subset(tiny_model, tmp_path):
    run_main(lora_args(tiny_model, tmp_path, "--lora_target", "query_key_value,dense_4h_to_h", "--max_steps", "1",
                       "--save_steps", "1", "--overwrite_output_dir"))
    cfg = json.load(open(tmp_path / "checkpoint-1" / "adapter_config.json"))
    assert sorted(cfg["target_modules"]) == ["down_proj", "k_proj", "q_proj", "v_proj"]
    bad = run_main(lora_args(tiny_model, tmp_path / "bad", "--lora_target", "attention", "--max_steps", "1"),
                   check=False)
    assert bad.returncode == 2 and "--lora_target 'attention'" in bad.stderr


def test_qlora_trains_adapters_on_an_int4_base(tiny_model, tmp_path):
    run_main(lora_args(tiny_model, tmp_path, "--quantization_bit", "4", "--max_train_samples", "4",
                       "--max_steps", "8", "--save_steps", "8", "--overwrite_output_dir"))
    curve = losses(tmp_path)
    assert all(torch.isfinite(torch.tensor(v)) for v in curve.values())
    assert curve[8] < curve[1]
    ckpt = str(tmp_path / "checkpoint-8")
    model = ChatGLM.from_pretrained(tiny_model, ptuning_checkpoint=ckpt, quantization_bit=4)
    from chatglm.quantization import QuantizedLinear

    q_proj = model.base.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.get_base_layer(), QuantizedLinear)  # adapter on the int4 layer


def test_bf16_lora_keeps_fp32_adapters(tiny_model, tmp_path):
    run_main(lora_args(tiny_model, tmp_path, "--bf16", "--gradient_checkpointing", "--max_steps", "3",
                       "--save_steps", "3", "--overwrite_output_dir"))
    curve = losses(tmp_path)
    assert all(torch.isfinite(torch.tensor(v)) for v in curve.values())
    state = load_file(tmp_path / "checkpoint-3" / "adapter_model.safetensors")
    assert all(t.dtype == torch.float32 for t in state.values())


def test_two_process_lora(tiny_model, tmp_path):
    proc = run_main(lora_args(tiny_model, tmp_path, "--max_steps", "3", "--save_steps", "3",
                              "--overwrite_output_dir"), torchrun=2)
    assert json.load(open(tmp_path / "trainer_state.json"))["global_step"] == 3
    assert proc.stdout.count("Checkpoints (LoRA adapter, PEFT format) are in") == 1
    state = load_file(tmp_path / "checkpoint-3" / "adapter_model.safetensors")
    assert all(torch.isfinite(t).all() for t in state.values())


def test_predict_and_compare_with_an_adapter(tiny_model, tmp_path):
    run_main(lora_args(tiny_model, tmp_path / "run", "--max_steps", "3", "--save_steps", "3",
                       "--overwrite_output_dir"))
    run_main(["--do_predict", "--test_file", DEV, "--model_name_or_path", tiny_model, "--ptuning_checkpoint",
              str(tmp_path / "run" / "checkpoint-3"), "--output_dir", str(tmp_path / "eval"), "--max_source_length",
              "96", "--max_target_length", "16", "--max_predict_samples", "18", "--compare_base", "--report_to", "none"])
    assert os.path.isfile(tmp_path / "eval" / "comparison.md")
    assert os.path.isfile(tmp_path / "eval" / "base" / "generated_predictions.txt")


def _fused_adapter(model_dir, out, rank=4, alpha=8.0, seed=0):
    """An adapter as PEFT saves it for the original chatglm2 hub code: fused query_key_value etc."""
    cfg = read_config(model_dir)
    hidden, ffn = cfg["hidden_size"], cfg["ffn_hidden_size"]
    qkv = hidden + 2 * cfg["multi_query_group_num"] * cfg["kv_channels"]
    shapes = {"self_attention.query_key_value": (qkv, hidden), "self_attention.dense": (hidden, hidden),
              "mlp.dense_h_to_4h": (2 * ffn, hidden), "mlp.dense_4h_to_h": (hidden, ffn)}
    g = torch.Generator().manual_seed(seed)
    state = {}
    for layer in range(cfg["num_layers"]):
        for module, (n_out, n_in) in shapes.items():
            key = f"base_model.model.transformer.encoder.layers.{layer}.{module}"
            state[f"{key}.lora_A.weight"] = torch.randn(rank, n_in, generator=g) * 0.05
            state[f"{key}.lora_B.weight"] = torch.randn(n_out, rank, generator=g) * 0.05
    os.makedirs(out)
    save_file(state, os.path.join(out, "adapter_model.safetensors"))
    json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.1,
               "target_modules": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"], "bias": "none",
               "fan_in_fan_out": False, "base_model_name_or_path": "THUDM/chatglm2-6b"},
              open(os.path.join(out, "adapter_config.json"), "w"))
    return state, alpha / rank


def test_an_adapter_trained_on_the_original_code_imports_exactly(tiny_model, tmp_path):
    """The original's math: each fused weight W becomes W + scale * B @ A in the original layout.
    Merging that way into a chatglm2 folder and loading it plainly must give the same logits as
    loading the fused adapter on top of the base (split into q/k/v)."""
    adapter = str(tmp_path / "adapter")
    state, scale = _fused_adapter(tiny_model, adapter)
    base = load_glm(tiny_model)
    original = glm_to_chatglm({k: v.detach().clone() for k, v in base.state_dict().items()}, base.config)
    for key in list(original):
        stem = key[:-len(".weight")]
        a = state.get(f"base_model.model.{stem}.lora_A.weight")
        if a is not None:
            original[key] = original[key] + scale * state[f"base_model.model.{stem}.lora_B.weight"] @ a
    merged_dir = tmp_path / "merged"
    os.makedirs(merged_dir)
    torch.save(original, merged_dir / "pytorch_model.bin")
    for name in ("config.json", "tokenizer.model", "tokenizer_config.json"):
        shutil.copy(os.path.join(tiny_model, name), merged_dir / name)
    expected_model = load_glm(str(merged_dir)).eval()
    imported = ChatGLM.from_pretrained(tiny_model, ptuning_checkpoint=adapter).eval()
    assert sorted(imported.lora_config.target_modules) == ["down_proj", "gate_up_proj", "k_proj", "o_proj",
                                                           "q_proj", "v_proj"]
    ids = torch.randint(5, 500, (3, 20))
    with torch.no_grad():
        want = expected_model(input_ids=ids).logits
        got = imported(input_ids=ids).logits
    assert (got - want).abs().max() < 1e-4
    assert (want - base.eval()(input_ids=ids).logits).abs().max() > 1e-2  # the adapter matters


@pytest.mark.parametrize("damage", ["config_json", "config_no_rank", "weights_truncated", "weights_missing"])
def test_a_damaged_adapter_is_named_in_one_line(tiny_model, tmp_path, damage):
    ckpt = tmp_path / "adapter"
    _fused_adapter(tiny_model, str(ckpt))
    if damage == "config_json":
        (ckpt / "adapter_config.json").write_text('{"r": 4, "lora_alpha"')
    elif damage == "config_no_rank":
        (ckpt / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    elif damage == "weights_truncated":
        data = (ckpt / "adapter_model.safetensors").read_bytes()
        (ckpt / "adapter_model.safetensors").write_bytes(data[:len(data) // 2])
    else:
        os.remove(ckpt / "adapter_model.safetensors")
    proc = run_main(["--do_predict", "--test_file", DEV, "--model_name_or_path", tiny_model, "--ptuning_checkpoint",
                     str(ckpt), "--output_dir", str(tmp_path / "out"), "--report_to", "none"], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith("main.py: error:")]
    assert len(lines) == 1 and str(ckpt) in lines[0] and "Traceback" not in proc.stderr


def test_a_half_precision_base_adds_the_adapter_in_its_own_dtype(tiny_model):
    """Our LoRA layer gives PEFT's result (W x + s B A x) on a bf16 base without PEFT's fp32
    detour (an fp32 copy of every adapted layer's output), and its fp32 weights still get
    gradients."""
    from chatglm.lora import add_lora

    torch.manual_seed(0)
    base = load_glm(tiny_model, dtype=torch.bfloat16)
    add_lora(base, 4, 8.0, 0.0, ["gate_up_proj"])
    layer = base.model.layers[0].mlp.gate_up_proj
    torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.5)  # B starts at zero: give it a product
    x = torch.randn(3, 5, layer.in_features, dtype=torch.bfloat16)
    ours = layer(x)
    peft = type(layer).__mro__[1].forward(layer, x)  # PEFT's own Linear.forward
    assert ours.dtype == torch.bfloat16 and ours.shape == peft.shape
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    exact = x.float() @ layer.base_layer.weight.float().t() + 2.0 * (x.float() @ a.t() @ b.t())
    assert (ours.float() - exact).abs().max() <= (peft.float() - exact).abs().max() * 1.5 + 0.05
    assert not torch.equal(ours, layer.base_layer(x))  # the adapter did add something
    ours.float().square().sum().backward()
    assert a.grad is not None and a.grad.dtype == torch.float32 and a.grad.abs().sum() > 0
    assert b.grad is not None and b.grad.dtype == torch.float32
