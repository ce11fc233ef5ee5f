"""--quantization_bit 8|4 on the tiny model (CPU, pure-torch path).

Why the logits bounds hold: per-row absmax quantization moves each weight by at most half a
step, scale/2 = max|w_row| / (2 (2^(b-1) - 1)): 1/254 of the row maximum at 8 bits, 1/14 at
4 bits. For roughly Gaussian rows of 128-688 inputs the maximum is ~3-4 sigma, so the RMS weight
error is ~0.5% (int8) and ~9% (int4) of the weights' RMS; the errors of independent rows add in
quadrature through 2-4 layers, and the logits' relative error lands in the same range. We
assert 3% (int8) and 35% (int4), with margin over what the tiny models show (about 1% / 20%).
"""
import json
import os

import pytest
import torch

from conftest import GOLDEN, ROOT, run_main
from chatglm.checkpoint import save_chatglm
from chatglm.convert import glm_to_chatglm
from chatglm.model import ChatGLM
from chatglm.prefix import CHECKPOINT_PREFIX
from chatglm.quantization import QuantizedLinear, dequantize, quantize

BOUNDS = {8: 0.03, 4: 0.35}


@pytest.mark.parametrize("bits", [8, 4])
def test_round_trip_error_is_at_most_half_a_step(bits):
    w = torch.randn(64, 96) * torch.rand(64, 1)
    q, scale = quantize(w, bits)
    assert q.dtype == torch.int8 and q.shape == (64, 96 if bits == 8 else 48)
    err = (dequantize(q, scale, bits, torch.float32) - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-6).all()


def test_int4_packing_covers_every_value_in_both_nibbles():
    values = torch.arange(-7, 8, dtype=torch.float32)
    w = torch.stack([values, values.flip(0)], dim=1).reshape(1, -1)  # each value at even and odd columns
    q, scale = quantize(w * 2.0, 4)
    assert torch.equal(dequantize(q, scale, 4, torch.float32), w * 2.0)


def logits_error(model_dir, bits, prompts):
    ref = ChatGLM.from_pretrained(model_dir).eval()
    quant = ChatGLM.from_pretrained(model_dir, quantization_bit=bits).eval()
    rel, agree = [], []
    with torch.no_grad():
        for ids in prompts:
            a, b = quant(torch.tensor([ids])).logits[0], ref(torch.tensor([ids])).logits[0]
            rel.append(((a - b).norm() / b.norm()).item())
            agree.append((a.argmax(-1) == b.argmax(-1)).float().mean().item())
    return max(rel), sum(agree) / len(agree)


@pytest.mark.parametrize("bits", [8, 4])
def test_logits_stay_near_fp32(tiny_model, bits):
    from chatglm.tokenizer import ChatGLMTokenizer

    tok = ChatGLMTokenizer.from_pretrained(tiny_model)
    with open(os.path.join(ROOT, "PromptCBLUE", "dev.json"), encoding="utf-8") as f:
        prompts = [tok.encode_prompt(json.loads(l)["input"])[-96:] for l in list(f)[:8]]
    rel, agree = logits_error(tiny_model, bits, prompts)
    assert rel < BOUNDS[bits]
    if bits == 8:
        assert agree > 0.9  # the next-token choice rarely changes at 8 bits


@pytest.mark.skipif(not os.path.isdir(GOLDEN), reason="../shared/golden not present")
@pytest.mark.parametrize("bits", [8, 4])
def test_golden_checkpoint_logits_stay_near_fp32(bits):
    import numpy as np

    d = np.load(os.path.join(GOLDEN, "reference", "dev_base.npz"))
    off = d["prompt_ids_trunc_offsets"]
    prompts = [d["prompt_ids_trunc_flat"][off[i]:off[i + 1]].tolist() for i in range(8)]
    rel, _ = logits_error(os.path.join(GOLDEN, "model"), bits, prompts)
    assert rel < BOUNDS[bits]


def test_quantized_ptuning_learns_and_saves_a_portable_prefix(tiny_model, tmp_path):
    run_main(["--do_train", "--train_file", os.path.join(ROOT, "PromptCBLUE", "train.json"), "--model_name_or_path",
              tiny_model, "--output_dir", str(tmp_path), "--overwrite_output_dir", "--max_train_samples", "4",
              "--max_source_length", "96", "--max_target_length", "48", "--per_device_train_batch_size", "4",
              "--learning_rate", "5e-2", "--pre_seq_len", "8", "--max_steps", "24", "--save_steps", "24",
              "--logging_steps", "1", "--quantization_bit", "4", "--report_to", "none"])
    log = [h["loss"] for h in json.load(open(tmp_path / "trainer_state.json"))["log_history"] if "loss" in h]
    assert sum(log[-3:]) / 3 < sum(log[:3]) / 3 - 0.5
    state = torch.load(tmp_path / "checkpoint-24" / "pytorch_model.bin", weights_only=True)
    assert list(state) == [CHECKPOINT_PREFIX + "embedding.weight"] and state[list(state)[0]].dtype == torch.float32
    fp32 = ChatGLM.from_pretrained(tiny_model, pre_seq_len=8)
    fp32.load_prefix(str(tmp_path / "checkpoint-24"))  # an unquantized model takes it as is
    assert not any(isinstance(m, QuantizedLinear) for m in fp32.modules())


def test_prequantized_int4_folder_loads(tiny_model, tmp_path):
    """A folder in the chatglm2-6b-int4 layout: fused int8-packed weights plus `weight_scale`."""
    fp = ChatGLM.from_pretrained(tiny_model)
    state = glm_to_chatglm({k: v.detach() for k, v in fp.base.state_dict().items()}, fp.config)
    for name in [k for k in state if k.endswith((".query_key_value.weight", ".dense.weight",
                                                    ".dense_h_to_4h.weight", ".dense_4h_to_h.weight"))]:
        state[name], state[name.replace(".weight", ".weight_scale")] = quantize(state[name], 4)
    save_chatglm(fp.base, str(tmp_path))  # config.json (+ float weights, replaced below)
    torch.save(state, tmp_path / "pytorch_model.bin")
    cfg = json.load(open(tmp_path / "config.json"))
    json.dump(dict(cfg, quantization_bit=4), open(tmp_path / "config.json", "w"))
    pre = ChatGLM.from_pretrained(str(tmp_path)).eval()
    on_load = ChatGLM.from_pretrained(tiny_model, quantization_bit=4).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        assert torch.allclose(pre(ids).logits, on_load(ids).logits, atol=1e-5)
    with pytest.raises(ValueError, match="quantized to 4 bits"):
        ChatGLM.from_pretrained(str(tmp_path), quantization_bit=8)
