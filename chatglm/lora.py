"""LoRA adapters through PEFT, saved in PEFT's own format.

The adapters are PEFT's LoRA layers injected into the model in place (the model stays a
transformers GlmForCausalLM, so generation, checkpointing and quantization code see the same
modules). A checkpoint is what `PeftModel.save_pretrained` writes for a GlmForCausalLM:
`adapter_config.json` + `adapter_model.safetensors` with `base_model.model.`-prefixed keys, so
`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(exported), ckpt)` loads it.

Adapters trained elsewhere on the original chatglm2 code target its fused modules
(`query_key_value`, `dense`, `dense_h_to_4h`, `dense_4h_to_h`, under `transformer.encoder.`).
They import exactly: a fused LoRA B splits by rows into the q/k/v parts, which share its A
(B_q A, B_k A, B_v A are the q/k/v rows of B A); the other three map one to one.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
import re
import warnings

import torch
from safetensors.torch import load_file, save_file

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
OUR_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")
ORIGINAL_TARGETS = {"query_key_value": ("q_proj", "k_proj", "v_proj"), "dense": ("o_proj",),
                    "dense_h_to_4h": ("gate_up_proj",), "dense_4h_to_h": ("down_proj",)}
_ORIGINAL_MODULE = {"self_attention.query_key_value": "self_attn.qkv", "self_attention.dense": "self_attn.o_proj",
                    "mlp.dense_h_to_4h": "mlp.gate_up_proj", "mlp.dense_4h_to_h": "mlp.down_proj"}
_ORIGINAL_KEY = re.compile(r"^(?:transformer\.)?encoder\.layers\.(\d+)\.(.+)\.(lora_[AB])\.weight$")


def is_adapter_dir(path: str) -> bool:
    """A PEFT LoRA adapter (PEFT's prefix tuning, GLM-4's P-tuning v2, is a prefix: chatglm/prefix.py)."""
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG)) and peft_type(path) != "PREFIX_TUNING"


def peft_type(path: str) -> str | None:
    """adapter_config.json's peft_type, upper-cased (None if unreadable: read_adapter says why)."""
    try:
        with open(os.path.join(path, ADAPTER_CONFIG), encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    return str(cfg.get("peft_type", "LORA")).upper() if isinstance(cfg, dict) else None


def target_modules(spec: str | None) -> list[str]:
    """--lora_target: our module names or the original's, comma-separated; default every linear
    layer of attention and MLP."""
    if not spec or spec.strip() in ("all", "all-linear"):
        return list(OUR_TARGETS)
    out: list[str] = []
    for name in (n.strip() for n in spec.split(",") if n.strip()):
        mapped = ORIGINAL_TARGETS.get(name) or ((name,) if name in OUR_TARGETS else None)
        if mapped is None:
            raise ValueError(f"--lora_target {name!r} is not a linear layer of ChatGLM; use any of "
                             f"{', '.join(OUR_TARGETS)} or the original's {', '.join(ORIGINAL_TARGETS)}")
        out.extend(m for m in mapped if m not in out)
    return out


def _lora_params(base):
    return [(n, p) for n, p in base.named_parameters() if ".lora_" in n]


_ROWS: contextvars.ContextVar = contextvars.ContextVar("lora_rows", default=None)


@contextlib.contextmanager
def lora_rows(on: torch.Tensor | None):
    """Within it, the LoRA adapters act only on the batch rows where `on` ([batch], 1 or 0) is
    1; the others get the base layer's output exactly (the adapter's product times 0 added).
    This is how one batch holds tuned and base rows: the rank-r product is computed for every
    row (a few percent of the layer), which is cheaper than a second pass over the weights.
    None: every row, as without this."""
    token = _ROWS.set(on)
    try:
        yield
    finally:
        _ROWS.reset(token)


@functools.cache
def _lora_linear_class():
    """PEFT's LoRA Linear with the adapter's product in the activations' dtype, added to the
    base layer's output by one addmm. PEFT casts a bf16/fp16 input up to the fp32 adapter and
    adds the fp32 product to the half-precision output (a mixed-dtype add, then a cast back):
    three extra passes over every adapted layer's output, in fp32; at 6B on the CPU that made a
    LoRA step 1.9x a P-tuning step (BENCHMARKS.md). The fp32 weights still train: the casts
    carry their gradients back in fp32, as autocast would. Merged or disabled adapters and other
    variants (DoRA...) take PEFT's own path."""
    from peft.tuners.lora.layer import Linear

    class LoraLinear(Linear):
        def forward(self, x, *args, **kwargs):
            if self.disable_adapters or self.merged or self.lora_variant or kwargs.get("adapter_names") is not None:
                return super().forward(x, *args, **kwargs)
            result = self.base_layer(x, *args, **kwargs)
            rows = _ROWS.get()
            for name in self.active_adapters:
                if name not in self.lora_A:
                    continue
                a = self.lora_A[name].weight.to(result.dtype)
                b = self.lora_B[name].weight.to(result.dtype)
                down = self.lora_dropout[name](x.to(result.dtype)).reshape(-1, x.shape[-1]) @ a.t()
                if rows is not None:  # the adapter's product zeroed on the rows that run the base alone
                    down = (down.view(x.shape[0], -1, down.shape[-1]) * rows.view(-1, 1, 1).to(down.dtype)).view(
                        down.shape)
                result = torch.addmm(result.reshape(-1, result.shape[-1]), down, b.t(),
                                     alpha=self.scaling[name]).view(result.shape)
            return result

    return LoraLinear


def add_lora(base, rank: int, alpha: float, dropout: float, targets: list[str]):
    """Inject fresh adapters (A random, B zero: the model is unchanged until it trains). The
    adapters are fp32 whatever the base's dtype; only they train."""
    from peft import LoraConfig, inject_adapter_in_model  # imported here: peft takes seconds to import

    from .quantization import QuantizedLinear

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                        task_type="CAUSAL_LM")
    # PEFT's Linear adapter only needs its base layer's forward and in/out features, which the
    # quantized layer has: LoRA on an int8/int4 frozen base (QLoRA-style) is the same adapter.
    lora_linear = _lora_linear_class()
    config._register_custom_module({torch.nn.Linear: lora_linear, QuantizedLinear: lora_linear})
    with warnings.catch_warnings():  # PEFT warns about the custom layer it was just told about
        warnings.filterwarnings("ignore", message="Unsupported layer type")
        inject_adapter_in_model(config, base)
    base.requires_grad_(False)
    for _, p in _lora_params(base):
        p.data = p.data.float()
        p.requires_grad_(True)
    return config


def save_adapter(base, config, out_dir: str, base_model_name_or_path: str | None = None) -> None:
    """adapter_config.json + adapter_model.safetensors, as PeftModel.save_pretrained writes them."""
    os.makedirs(out_dir, exist_ok=True)
    state = {PEFT_PREFIX + n.replace(".default.", "."): p.detach().float().cpu().contiguous()
             for n, p in _lora_params(base)}
    save_file(state, os.path.join(out_dir, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    saved = {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
    saved.update(base_model_name_or_path=base_model_name_or_path, target_modules=sorted(config.target_modules),
                 peft_type="LORA", task_type="CAUSAL_LM")
    with open(os.path.join(out_dir, ADAPTER_CONFIG), "w", encoding="utf-8") as f:
        json.dump(saved, f, indent=2, default=list)


def read_adapter(ckpt_dir: str, glm_config) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter config, tensors under our module names without the PEFT prefix), whichever
    naming the adapter was trained with."""
    config_path = os.path.join(ckpt_dir, ADAPTER_CONFIG)
    try:
        with open(config_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_path}: not a valid adapter config ({e}); a damaged or half-written file?")
    if not isinstance(cfg, dict) or "r" not in cfg:
        raise ValueError(f"{config_path}: no LoRA rank 'r' in it; not a PEFT LoRA adapter config")
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise ValueError(f"{ckpt_dir}: a {cfg.get('peft_type')} adapter; only LoRA adapters load here")
    path = os.path.join(ckpt_dir, ADAPTER_WEIGHTS)
    if not os.path.isfile(path):
        path = os.path.join(ckpt_dir, "adapter_model.bin")  # what older PEFT versions wrote
        if not os.path.isfile(path):
            raise ValueError(f"{ckpt_dir}: {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS} (an interrupted save?)")
    try:
        raw = load_file(path) if path.endswith(".safetensors") else \
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch raise their own types for a damaged file
        raise ValueError(f"{path}: damaged adapter weights, cannot be read ({type(e).__name__}: {e})")
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        m = _ORIGINAL_KEY.match(name)
        if not m:
            tensors[name.replace(".default.", ".")] = tensor
            continue
        layer, module, ab = m.groups()
        ours = _ORIGINAL_MODULE.get(module)
        if ours is None:
            raise ValueError(f"{ckpt_dir}: adapter tensor {key!r} targets {module!r}, not a linear layer of ChatGLM")
        prefix = f"model.layers.{layer}."
        if ours != "self_attn.qkv":
            tensors[f"{prefix}{ours}.{ab}.weight"] = tensor
            continue
        for part, piece in zip(("q_proj", "k_proj", "v_proj"), _split_qkv(tensor, ab, glm_config)):
            tensors[f"{prefix}self_attn.{part}.{ab}.weight"] = piece
    # The layers the tensors adapt, whatever the config says (a list, a regex, or original names).
    cfg["target_modules"] = sorted({k.split(".lora_")[0].rsplit(".", 1)[-1] for k in tensors})
    return cfg, tensors


def _split_qkv(tensor: torch.Tensor, ab: str, glm_config) -> list[torch.Tensor]:
    if ab == "lora_A":  # shared: every part sees the same down-projection
        return [tensor.clone(), tensor.clone(), tensor.clone()]
    q = glm_config.num_attention_heads * glm_config.head_dim
    kv = glm_config.num_key_value_heads * glm_config.head_dim
    return [t.contiguous() for t in torch.split(tensor, [q, kv, kv], dim=0)]


def load_adapter(base, ckpt_dir: str):
    """Inject the adapter of `ckpt_dir` (ours, PEFT's, or the original code's) and load it."""
    cfg, tensors = read_adapter(ckpt_dir, base.config)
    config = add_lora(base, int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"])), float(cfg.get("lora_dropout", 0.0)),
                      cfg["target_modules"])
    if cfg.get("use_rslora"):
        raise ValueError(f"{ckpt_dir}: rank-stabilised LoRA (use_rslora) is not supported")
    set_adapter_weights(base, tensors, ckpt_dir)
    return config


def set_adapter_weights(base, tensors: dict[str, torch.Tensor], source: str) -> None:
    params = dict(_lora_params(base))
    expected = {n.replace(".default.", "."): n for n in params}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: the adapter does not fit the model: "
                         f"{len(missing)} tensors missing (e.g. {missing[:1]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:1]})")
    with torch.no_grad():
        for short, full in expected.items():
            p = params[full]
            if tuple(tensors[short].shape) != tuple(p.shape):
                raise ValueError(f"{source}: adapter tensor {short} has shape {tuple(tensors[short].shape)}, "
                                 f"the model needs {tuple(p.shape)} (another model size or rank?)")
            p.copy_(tensors[short].to(p.dtype))


def merge_lora(base) -> None:
    """Fold every adapter into its base weight (W + B A * scaling) and remove the adapter
    layers: what export writes. Each layer is merged in fp32 and rounded once to the weight's
    own dtype, one layer at a time and written back in place: a half-precision base stays half,
    with one fp32 copy of a single weight alive at a time. A quantized base cannot take a merge."""
    from peft.tuners.lora.layer import LoraLayer

    for name, module in list(base.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        layer = module.get_base_layer()
        if not isinstance(layer, torch.nn.Linear):
            raise ValueError("a LoRA adapter on a quantized model cannot be merged; export from the unquantized model")
        if getattr(module, "lora_variant", None) or getattr(module, "fan_in_fan_out", False):
            raise ValueError(f"{name}: only plain LoRA adapters can be merged here (not DoRA or fan-in-fan-out)")
        with torch.no_grad():
            merged = layer.weight.detach().float()
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    a = module.lora_A[adapter].weight.detach().float()
                    b = module.lora_B[adapter].weight.detach().float()
                    merged.addmm_(b, a, alpha=module.scaling[adapter])
            # In place: a weight read from a memory-mapped shard turns into private pages one for
            # one, instead of a second copy of every merged weight beside the mapped file's.
            layer.weight.copy_(merged)
            del merged
        parent_name, _, child = name.rpartition(".")
        setattr(base.get_submodule(parent_name), child, layer)
