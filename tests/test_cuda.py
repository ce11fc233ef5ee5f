"""What only a GPU can show: half-precision training steps, memory that does not grow,
quantized layers and compiled generation on the device. `pytest -m cuda` (bench/gpu_check.sh)
runs them on cuda:0; with GPU_CHECK_DEVICE=cpu they run on the CPU (gpu_check.sh --dry-run), so
they cannot rot. Without a GPU and without that variable they are skipped."""
import os

import pytest
import torch

from chatglm.generation import GenerationSettings, generate
from chatglm.model import ChatGLM
from chatglm.tokenizer import ChatGLMTokenizer

DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no GPU")]


def _rows(tok, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [tok.prefix_ids + torch.randint(10, tok.n_words, (int(l),), generator=g).tolist()
               for l in torch.randint(20, 60, (n,), generator=g)]
    return prompts


def _tuning(tiny_model, dtype=torch.float16, **kwargs):
    """A P-tuning model on the device with checkpointing, in training mode."""
    model = ChatGLM.from_pretrained(tiny_model, pre_seq_len=16, dtype=dtype, device=DEVICE, seed=0, **kwargs)
    model.gradient_checkpointing_enable()
    model.train()
    return model


def _step_batch(tok, device):
    prompts = _rows(tok)
    width = max(map(len, prompts)) + 16
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i, p in enumerate(prompts):
        answer = p[2:18]
        ids[i, :len(p) + 16] = torch.tensor(p + answer)
        labels[i, len(p):len(p) + 16] = torch.tensor(answer)
    return ids.to(device), labels.to(device)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ptuning_steps_in_half_with_checkpointing(tiny_model, dtype):
    tok = ChatGLMTokenizer.from_pretrained(tiny_model)
    model = _tuning(tiny_model, dtype)
    opt = torch.optim.AdamW(model.prefix_encoder.parameters(), lr=5e-2)
    ids, labels = _step_batch(tok, DEVICE)
    losses = []
    for _ in range(8):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        grad = model.prefix_encoder.embedding.weight.grad
        assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(map(lambda x: x == x and abs(x) != float("inf"), losses))
    assert losses[-1] < losses[0], losses
    assert model.base.model.embed_tokens.weight.dtype == dtype


def test_memory_does_not_grow_from_step_to_step(tiny_model):
    if DEVICE == "cpu":
        pytest.skip("device memory is a GPU measure")
    tok = ChatGLMTokenizer.from_pretrained(tiny_model)
    model = _tuning(tiny_model)
    opt = torch.optim.AdamW(model.prefix_encoder.parameters(), lr=1e-2)
    ids, labels = _step_batch(tok, DEVICE)
    after = []
    for _ in range(6):
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        after.append(torch.cuda.memory_allocated())
    assert after[2:] == [after[2]] * 4, after  # steady from the third step (optimizer state exists)


def test_generation_is_equal_across_batch_sizes_and_compiled(tiny_model):
    tok = ChatGLMTokenizer.from_pretrained(tiny_model)
    model = ChatGLM.from_pretrained(tiny_model, pre_seq_len=16, device=DEVICE, seed=0)
    prompts = _rows(tok, 12, seed=1)
    settings = GenerationSettings(max_new_tokens=24)
    one = [generate(model, [p], settings, tok.eos_token_id, tok.pad_token_id)[0] for p in prompts]
    batched = generate(model, prompts, settings, tok.eos_token_id, tok.pad_token_id)
    assert batched == one
    compiled = generate(model, prompts, GenerationSettings(max_new_tokens=24, compiled=True), tok.eos_token_id,
                        tok.pad_token_id)
    assert compiled == batched


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_layers_on_the_device(tiny_model, bits):
    tok = ChatGLMTokenizer.from_pretrained(tiny_model)
    model = _tuning(tiny_model, quantization_bit=bits)
    model.eval()
    layer = model.base.model.layers[0].mlp.down_proj
    assert layer.weight.device.type == torch.device(DEVICE).type and layer.weight.dtype == torch.int8
    prompts = _rows(tok, 4)
    outs = generate(model, prompts, GenerationSettings(max_new_tokens=8), tok.eos_token_id, tok.pad_token_id)
    assert len(outs) == 4
    model.train()
    ids, labels = _step_batch(tok, DEVICE)
    model(input_ids=ids, labels=labels).loss.backward()
    assert torch.isfinite(model.prefix_encoder.embedding.weight.grad).all()
