"""Load an original THUDM chatglm2 folder into transformers' GlmForCausalLM, shard by shard.

The folder's `.py` files are never imported (no trust_remote_code). The model is built on the
meta device, so no memory is spent on random weights; each shard is opened lazily
(safetensors, or `torch.load(mmap=True, weights_only=True)` for `.bin`), converted, cast and
assigned before the next one is opened. Peak host memory is therefore the model at its final
dtype plus one tensor, not twice the model.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator

import torch
from transformers import GlmForCausalLM
from transformers.models.glm.modeling_glm import GlmRotaryEmbedding

from .convert import chatglm_config_from_glm, chatglm_to_glm, glm_config_from_chatglm, glm_to_chatglm

logger = logging.getLogger(__name__)


def read_config(model_dir: str) -> dict:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found; --model_name_or_path must be a chatglm2 folder")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None


def _shard_files(model_dir: str) -> list[str]:
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = os.path.join(model_dir, index_name)
        if os.path.isfile(index):
            try:
                with open(index, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"{index}: not a weights index ({e})") from None
            return [os.path.join(model_dir, s) for s in sorted(set(weight_map.values()))]
        if os.path.isfile(os.path.join(model_dir, single)):
            return [os.path.join(model_dir, single)]
    raise FileNotFoundError(f"{model_dir}: no model.safetensors(.index.json) or pytorch_model*.bin(.index.json)")


class CheckpointError(ValueError):
    """A weights file that cannot be read; the message names it."""


def _damaged(path: str, e: Exception) -> CheckpointError:
    detail = str(e).split(". ")[0][:120] or "no detail"
    return CheckpointError(f"{path}: cannot be read as weights ({os.path.getsize(path)} bytes; {type(e).__name__}: "
                           f"{detail}). The file is damaged or incomplete: copy it again, or use another checkpoint")


def open_weights(path: str, mmap: bool = False) -> dict[str, torch.Tensor]:
    """A .bin (without pickle's code execution) or .safetensors file as a dict of tensors;
    a missing, truncated or foreign file is one clear error naming it."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not found")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except Exception as e:  # torch and safetensors raise RuntimeError, UnpicklingError, EOFError, ...
        raise _damaged(path, e) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a dict of tensors")
    return state


def iter_checkpoint_tensors(model_dir: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of every shard, one shard open at a time."""
    for path in _shard_files(model_dir):
        if path.endswith(".safetensors"):  # lazily, one tensor at a time
            from safetensors import safe_open

            try:
                f = safe_open(path, framework="pt")
            except Exception as e:
                raise _damaged(path, e) from None
            for name in f.keys():
                yield name, f.get_tensor(name)
            continue
        state = open_weights(path, mmap=True)
        for name in list(state):
            yield name, state.pop(name)
        del state


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "half": torch.float16,
           "float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def folder_dtype(model_dir: str) -> torch.dtype:
    """The dtype a folder's weights are stored in, as its config.json says (`torch_dtype`, or
    transformers 5's `dtype`): float16 for THUDM's folders; fp32 when it says nothing."""
    cfg = read_config(model_dir)
    name = str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32").replace("torch.", "")
    return _DTYPES.get(name, torch.float32)


def cpu_has_bf16() -> bool:
    """bf16 arithmetic in hardware (AVX512-BF16 / AMX): where oneDNN runs bf16 products fast."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def inference_dtype(model_dir: str, device) -> torch.dtype:
    """What an inference entry point loads a folder in when no flag says: the folder's own dtype
    (fp32 stays fp32: the tiny models); an fp16 folder on a CPU with bf16 units is loaded in
    bf16, where fp16 products have no fast kernel (BENCHMARKS.md, "Loading precision")."""
    dtype = folder_dtype(model_dir)
    if torch.device(device).type == "cpu" and dtype == torch.float16 and cpu_has_bf16():
        return torch.bfloat16
    return dtype


def load_glm(model_dir: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
             quantization_bit: int | None = None, attn_implementation: str = "sdpa") -> GlmForCausalLM:
    """Build GlmForCausalLM from an original chatglm2 folder.

    With `quantization_bit`, the layers' linear weights are quantized as each arrives, so the
    float copy of a weight lives only until its int8 form exists. A pre-quantized folder
    (config.json `quantization_bit`, as THUDM/chatglm2-6b-int4) loads its int8 weights as is.
    """
    raw_config = read_config(model_dir)
    config = glm_config_from_chatglm(raw_config)
    prequantized = raw_config.get("quantization_bit")
    if prequantized and quantization_bit and prequantized != quantization_bit:
        raise ValueError(f"{model_dir} is quantized to {prequantized} bits; --quantization_bit {quantization_bit} "
                         "cannot change that")
    bits = prequantized or quantization_bit
    with torch.device("meta"):
        model = GlmForCausalLM._from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    if bits:
        from .quantization import QuantizedLinear, replace_linears

        replace_linears(model, bits, dtype)
    expected = set(model.state_dict())
    seen = set()
    for name, tensor in iter_checkpoint_tensors(model_dir):
        for glm_name, t in chatglm_to_glm(name, tensor, config).items():
            if glm_name not in expected:
                raise KeyError(f"{model_dir}: {name} maps to {glm_name}, which the model does not have")
            t = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
            module_name, _, attr = glm_name.rpartition(".")
            module = model.get_submodule(module_name)
            if bits and isinstance(module, QuantizedLinear) and attr == "weight" and t.is_floating_point():
                module.set_float_weight(t)
                seen.add(module_name + ".weight_scale")
            else:
                _assign(model, glm_name, t)
            seen.add(glm_name)
            del t
    missing = expected - seen
    if missing:
        raise KeyError(f"{model_dir}: checkpoint lacks {sorted(missing)[:5]}{' ...' if len(missing) > 5 else ''}")
    # Non-persistent buffers (rotary inv_freq) were created on meta; rebuild them for real.
    model.model.rotary_emb = GlmRotaryEmbedding(config).to(device)
    model.eval()
    return model


def random_glm(config, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               quantization_bit: int | None = None, seed: int = 0) -> GlmForCausalLM:
    """A model at `config`'s shape with random weights, for benchmarks and memory tests: built on
    meta and filled in place (no init cost, no second copy). Matrices N(0, 0.02), vectors 1,
    quantized layers random int weights with a scale that keeps activations of the same size."""
    from .quantization import QuantizedLinear, replace_linears

    with torch.device("meta"):
        model = GlmForCausalLM._from_config(config, attn_implementation="sdpa", dtype=dtype)
        if quantization_bit:
            replace_linears(model, quantization_bit, dtype)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=gen) if p.dim() > 1 else p.fill_(1.0)
        for m in model.modules():
            if isinstance(m, QuantizedLinear):
                lim = 2 ** (m.bits - 1) - 1
                m.weight.copy_(torch.randint(-lim, lim + 1, m.weight.shape, device=device, generator=gen)
                               if m.bits == 8 else torch.randint(-128, 128, m.weight.shape, device=device, generator=gen))
                m.weight_scale.fill_(0.02 / lim)
                if m.bias is not None:
                    m.bias.zero_()
    model.model.rotary_emb = GlmRotaryEmbedding(config).to(device)  # a buffer to_empty left unset
    return model.eval()


def _assign(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Put a loaded tensor in place of the meta one: parameters stay parameters, buffers buffers."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if isinstance(getattr(module, attr), torch.nn.Parameter):
        tensor = torch.nn.Parameter(tensor, requires_grad=tensor.is_floating_point())
    setattr(module, attr, tensor)


def save_chatglm(model: GlmForCausalLM, out_dir: str, safetensors: bool = False, state_dict: dict | None = None,
                 hub_name: str = "THUDM/chatglm2-6b") -> None:
    """Write a Glm model as an original chatglm folder (config.json + weights). `state_dict`
    (Glm names) replaces the model's own, e.g. one gathered from FSDP or DeepSpeed shards."""
    os.makedirs(out_dir, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in (state_dict or model.state_dict()).items()}
    original = glm_to_chatglm(state, model.config)
    dtype = str(next(iter(state.values())).dtype).replace("torch.", "")
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(chatglm_config_from_glm(model.config, dtype, hub_name), f, indent=2)
    if safetensors:
        from safetensors.torch import save_file

        save_file(original, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    else:
        tmp = os.path.join(out_dir, "pytorch_model.bin.tmp")
        torch.save(original, tmp)
        os.replace(tmp, os.path.join(out_dir, "pytorch_model.bin"))


# -- training checkpoints: the checkpoint-N folders a run writes -----------------------------
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def is_complete_checkpoint(path: str) -> bool:
    """Weights (prefix or full model, or a LoRA adapter) and trainer_state.json, written last."""
    weights = ("pytorch_model.bin", "adapter_model.safetensors")
    return (any(os.path.isfile(os.path.join(path, f)) for f in weights)
            and os.path.isfile(os.path.join(path, "trainer_state.json")))


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest checkpoint-N in output_dir that finished saving."""
    if not os.path.isdir(output_dir):
        return None
    steps = sorted((int(m.group(1)), name) for name in os.listdir(output_dir)
                   if (m := CHECKPOINT_RE.match(name)) and os.path.isdir(os.path.join(output_dir, name)))
    for _, name in reversed(steps):
        path = os.path.join(output_dir, name)
        if is_complete_checkpoint(path):
            return path
        logger.warning("%s was not finished (no trainer_state.json); skipping it", path)
    return None


def complete_checkpoints(output_dir: str) -> list[str]:
    """Every checkpoint-N in output_dir that finished saving, by step."""
    if not os.path.isdir(output_dir):
        return []
    steps = sorted((int(m.group(1)), name) for name in os.listdir(output_dir) if (m := CHECKPOINT_RE.match(name)))
    return [p for _, name in steps if is_complete_checkpoint(p := os.path.join(output_dir, name))]


def best_checkpoint(run_dir: str) -> str | None:
    """The best checkpoint a run recorded (trainer_state.json's `best_model_checkpoint`, chosen
    by --metric_for_best_model: the official score when it evaluated during training), if that
    folder is still complete. The newest checkpoint's state is read first (a run in progress or
    interrupted), then the one the finished run wrote beside its checkpoints."""
    last = last_complete_checkpoint(run_dir)
    for state_dir in ([last] if last else []) + [run_dir]:
        path = os.path.join(state_dir, "trainer_state.json")
        try:
            with open(path, encoding="utf-8") as f:
                best = json.load(f).get("best_model_checkpoint")
        except (OSError, ValueError):
            continue
        if best:  # recorded as the run saw it (relative to where it ran): the name is what counts
            path = os.path.join(run_dir, os.path.basename(os.path.normpath(best)))
            if is_complete_checkpoint(path):
                return path
    return None


def run_checkpoint(path: str) -> str | None:
    """What a tool takes from a run folder: its best checkpoint when one is recorded, else its
    newest complete one; a checkpoint folder is itself. None if there is none."""
    if is_complete_checkpoint(path):
        return path
    return best_checkpoint(path) or last_complete_checkpoint(path)


if __name__ == "__main__":  # evaluate.sh: `python -m chatglm.checkpoint output/RUN [--all]` -> the checkpoint(s) it takes
    import sys

    if len(sys.argv) == 3 and sys.argv[2] == "--all":
        found = ",".join(complete_checkpoints(sys.argv[1])) or None
    else:
        found = run_checkpoint(sys.argv[1]) if len(sys.argv) == 2 else None
    if not found:
        print(f"no complete checkpoint in {sys.argv[1:]}; train first or set CHECKPOINT/STEP", file=sys.stderr)
        sys.exit(1)
    print(found)
