"""Name and shape mapping between an original THUDM ChatGLM checkpoint (chatglm2-6b,
chatglm3-6b, glm-4-9b: one layout) and transformers' Glm.

ChatGLM2, ChatGLM3 and GLM-4 share one architecture (RMSNorm, grouped KV heads, interleaved rotary on
half of each head, SwiGLU with a fused gate/up matrix, bias on qkv only), so the original
weights run on `GlmForCausalLM` after two changes: names, and the fused `query_key_value`
matrix split into q/k/v. Both directions live here, as data, so the loader and the writer
of the embedded tiny model cannot drift apart.
"""
from __future__ import annotations

import re

import torch
from transformers import GlmConfig

# original name pattern -> Glm name pattern ({i} is the layer index)
_LAYER_MAP = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
    # pre-quantized folders (THUDM/chatglm2-6b-int4) store a per-row scale next to each weight
    "self_attention.dense.weight_scale": "self_attn.o_proj.weight_scale",
    "mlp.dense_h_to_4h.weight_scale": "mlp.gate_up_proj.weight_scale",
    "mlp.dense_4h_to_h.weight_scale": "mlp.down_proj.weight_scale",
}
_GLOBAL_MAP = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
# Buffers the original stores that Glm recomputes itself.
_DROPPED = {"transformer.rotary_pos_emb.inv_freq"}
_LAYER_RE = re.compile(r"^transformer\.encoder\.layers\.(\d+)\.(.+)$")
_QKV = "self_attention.query_key_value."


def glm_config_from_chatglm(cfg: dict) -> GlmConfig:
    """A GlmConfig equal in behaviour to an original chatglm2 config.json."""
    if cfg.get("model_type") != "chatglm":
        hint = " (a transformers-native folder: use THUDM's original one)" if cfg.get("model_type") == "glm" else ""
        raise ValueError(f"model_type is {cfg.get('model_type')!r}, expected 'chatglm': a THUDM chatglm2-6b, "
                         f"chatglm3-6b or glm-4-9b folder in its original layout{hint}")
    for flag, want in (("rmsnorm", True), ("add_bias_linear", False), ("add_qkv_bias", True),
                       ("apply_residual_connection_post_layernorm", False), ("post_layer_norm", True)):
        if cfg.get(flag, want) != want:
            raise ValueError(f"config.json: {flag}={cfg.get(flag)!r} is not a ChatGLM architecture")
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("kv_channels") or cfg["hidden_size"] // heads
    groups = cfg["multi_query_group_num"] if cfg.get("multi_query_attention", False) else heads
    # chatglm2-6b has no rope_ratio; the 32k variant scales the base by it.
    theta = 10000.0 * cfg.get("rope_ratio", 1.0)
    return GlmConfig(
        vocab_size=cfg["padded_vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["ffn_hidden_size"],
        num_hidden_layers=cfg["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=groups,
        head_dim=head_dim,
        max_position_embeddings=cfg.get("seq_length", 32768),
        rms_norm_eps=cfg.get("layernorm_epsilon", 1e-5),
        rope_parameters={"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": 0.5},
        attention_bias=True,
        attention_dropout=cfg.get("attention_dropout", 0.0),
        tie_word_embeddings=False,
        pad_token_id=cfg.get("pad_token_id", 0),
        eos_token_id=cfg.get("eos_token_id", 2),
        bos_token_id=None,
        use_cache=True,
    )


def chatglm_to_glm(name: str, tensor: torch.Tensor, config: GlmConfig) -> dict[str, torch.Tensor]:
    """One original tensor -> the Glm tensors it becomes (none for dropped buffers)."""
    if name in _DROPPED:
        return {}
    if name in _GLOBAL_MAP:
        return {_GLOBAL_MAP[name]: tensor}
    m = _LAYER_RE.match(name)
    if m:
        i, rest = m.groups()
        prefix = f"model.layers.{i}."
        if rest in _LAYER_MAP:
            return {prefix + _LAYER_MAP[rest]: tensor}
        if rest.startswith(_QKV):
            kind = rest[len(_QKV):]  # weight | bias | weight_scale (rows split alike)
            q_size = config.num_attention_heads * config.head_dim
            kv_size = config.num_key_value_heads * config.head_dim
            q, k, v = torch.split(tensor, [q_size, kv_size, kv_size], dim=0)
            return {prefix + f"self_attn.q_proj.{kind}": q, prefix + f"self_attn.k_proj.{kind}": k,
                    prefix + f"self_attn.v_proj.{kind}": v}
    raise KeyError(f"unexpected tensor {name!r} in a chatglm2 checkpoint")


def glm_to_chatglm(state: dict[str, torch.Tensor], config: GlmConfig) -> dict[str, torch.Tensor]:
    """A whole Glm state dict -> original names (q/k/v fused back), for writing checkpoints."""
    inverse_global = {v: k for k, v in _GLOBAL_MAP.items()}
    inverse_layer = {v: k for k, v in _LAYER_MAP.items()}
    out = {}
    for name, tensor in state.items():
        if name in inverse_global:
            out[inverse_global[name]] = tensor
            continue
        m = re.match(r"^model\.layers\.(\d+)\.(.+)$", name)
        if not m:
            raise KeyError(f"unexpected Glm tensor {name!r}")
        i, rest = m.groups()
        prefix = f"transformer.encoder.layers.{i}."
        if rest in inverse_layer:
            out[prefix + inverse_layer[rest]] = tensor
        elif rest.startswith("self_attn.q_proj."):
            kind = rest.rsplit(".", 1)[1]
            parts = [state[f"model.layers.{i}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[prefix + _QKV + kind] = torch.cat(parts, dim=0)
        elif not rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
            raise KeyError(f"unexpected Glm tensor {name!r}")
    head_dim = config.head_dim
    rot = head_dim // 2  # the original's RotaryEmbedding(kv_channels // 2)
    out["transformer.rotary_pos_emb.inv_freq"] = 1.0 / (
        config.rope_parameters["rope_theta"] ** (torch.arange(0, rot, 2, dtype=torch.float) / rot))
    return out


def chatglm_config_from_glm(config: GlmConfig, torch_dtype: str = "float32",
                            hub_name: str = "THUDM/chatglm2-6b") -> dict:
    """The original config.json for a Glm config (used to write the embedded tiny model and
    full fine-tunes). A RoPE base other than 10000 is ChatGLM3-32k's and GLM-4's `rope_ratio`."""
    ratio = config.rope_parameters["rope_theta"] / 10000.0
    return {
        "_name_or_path": hub_name,
        **({"rope_ratio": ratio} if ratio != 1.0 else {}),
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "auto_map": {
            "AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        },
        "add_bias_linear": False, "add_qkv_bias": True, "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True, "bias_dropout_fusion": True,
        "ffn_hidden_size": config.intermediate_size, "fp32_residual_connection": False,
        "hidden_dropout": 0.0, "hidden_size": config.hidden_size, "kv_channels": config.head_dim,
        "layernorm_epsilon": config.rms_norm_eps, "multi_query_attention": True,
        "multi_query_group_num": config.num_key_value_heads,
        "num_attention_heads": config.num_attention_heads, "num_layers": config.num_hidden_layers,
        "original_rope": True, "padded_vocab_size": config.vocab_size, "post_layer_norm": True,
        "rmsnorm": True, "seq_length": config.max_position_embeddings, "use_cache": True,
        "torch_dtype": torch_dtype, "transformers_version": "4.27.1", "tie_word_embeddings": False,
        "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id,
    }
