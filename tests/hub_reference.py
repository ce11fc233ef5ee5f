"""The THUDM hub model's forward pass (ChatGLM2, ChatGLM3, GLM-4 share it) restated in plain torch
from its published math, on the original layout's tensors, for parity tests of families the shared
golden outputs do not cover. Written to be obviously that math, not fast: one sequence, the whole
prefix recomputed at every step.

  * RMSNorm (eps = layernorm_epsilon); fused query_key_value with bias; multi-query groups;
  * RoPE on the first half of each head, adjacent pairs rotated, base 10000 x rope_ratio,
    positions 0.. over the real tokens (a P-tuning prefix takes no position);
  * a prefix is per layer keys and values in front of the sequence's, visible to every token:
    the prefix encoder's rows viewed as [tokens, layers x 2, groups, kv_channels];
  * SwiGLU on dense_h_to_4h's two halves; no bias elsewhere; output_layer untied.
"""
import torch
import torch.nn.functional as F


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x, positions, base):
    # x: [T, heads, d]; the first d/2 channels rotate as (even, odd) pairs
    d = x.shape[-1]
    rot = d // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, rot, 2, dtype=torch.float) / rot))
    angles = positions[:, None].float() * inv_freq[None]  # [T, rot/2]
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]
    pairs = x[..., :rot].reshape(*x.shape[:-1], rot // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    turned = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1).flatten(-2)
    return torch.cat([turned, x[..., rot:]], dim=-1)


def hub_logits(state: dict, cfg: dict, ids: list[int], prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [T, vocab] of one sequence; `prefix`: the prefix encoder's embedding rows."""
    heads, d = cfg["num_attention_heads"], cfg["kv_channels"]
    groups, layers, eps = cfg["multi_query_group_num"], cfg["num_layers"], cfg["layernorm_epsilon"]
    base = 10000.0 * cfg.get("rope_ratio", 1)
    t = len(ids)
    pos = torch.arange(t)
    h = state["transformer.embedding.word_embeddings.weight"][torch.tensor(ids)].float()
    past = prefix.float().view(prefix.shape[0], layers * 2, groups, d) if prefix is not None else None
    p = 0 if past is None else past.shape[0]
    mask = torch.ones(t, p + t, dtype=torch.bool)
    mask[:, p:] = torch.tril(torch.ones(t, t, dtype=torch.bool))
    for i in range(layers):
        w = lambda name: state[f"transformer.encoder.layers.{i}.{name}"].float()
        x = _rms(h, w("input_layernorm.weight"), eps)
        qkv = x @ w("self_attention.query_key_value.weight").T + w("self_attention.query_key_value.bias")
        q, k, v = qkv.split([heads * d, groups * d, groups * d], dim=-1)
        q, k, v = q.view(t, heads, d), k.view(t, groups, d), v.view(t, groups, d)
        q, k = _rope(q, pos, base), _rope(k, pos, base)
        if past is not None:
            k, v = torch.cat([past[:, 2 * i], k]), torch.cat([past[:, 2 * i + 1], v])
        k, v = k.repeat_interleave(heads // groups, dim=1), v.repeat_interleave(heads // groups, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / d ** 0.5
        attn = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        out = torch.einsum("hqk,khd->qhd", attn, v).reshape(t, heads * d)
        h = h + out @ w("self_attention.dense.weight").T
        x = _rms(h, w("post_attention_layernorm.weight"), eps)
        gate, up = (x @ w("mlp.dense_h_to_4h.weight").T).chunk(2, dim=-1)
        h = h + (F.silu(gate) * up) @ w("mlp.dense_4h_to_h.weight").T
    h = _rms(h, state["transformer.encoder.final_layernorm.weight"].float(), eps)
    return h @ state["transformer.output_layer.weight"].float().T


def hub_greedy(state, cfg, ids, stops, max_new_tokens, prefix=None) -> list[int]:
    out = []
    for _ in range(max_new_tokens):
        t = int(hub_logits(state, cfg, ids + out, prefix)[-1].argmax())
        if t in stops:
            break
        out.append(t)
    return out
