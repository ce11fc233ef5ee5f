"""The decode step of batched generation: a static KV cache and a lean forward.

transformers' generic forward spends most of a small model's decode step on overhead: a
growing cache that concatenates every layer's keys at every token, attention masks rebuilt
from scratch, output objects. Here the prompt is run once through the model (prefix
included), its keys and values are copied into buffers allocated once for the whole answer,
and each new token goes through the model's own modules (norms, projections, MLP: quantized
or LoRA-wrapped ones work unchanged) with attention written out for one query and the cache
written in place. Eager, attention reads only the columns written so far; compiled
(`compiled=True`), every step has the same shapes (the whole buffer, unwritten columns
masked), which is what torch.compile and CUDA graphs need.
"""
from __future__ import annotations

import torch
from torch import nn


class _StaticCache:
    """What a Glm attention layer calls `update()` on: writes the new key/value at the
    current column, returns the keys/values to attend to."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]):
        self.keys, self.values = keys, values
        self.column = None  # LongTensor [1]: where this step's token goes (the decoder's, advanced in place)
        self.visible = None  # int: columns to return (eager), or None: the whole buffer

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k, v = self.keys[layer_idx], self.values[layer_idx]
        k.index_copy_(2, self.column, key_states)
        v.index_copy_(2, self.column, value_states)
        if self.visible is None:
            return k, v
        return k[:, :, :self.visible], v[:, :, :self.visible]


class StaticDecoder:
    """Holds one batch's cache and steps it one token at a time."""

    def __init__(self, base, prefilled_cache, mask: torch.Tensor, next_pos: torch.Tensor, max_new_tokens: int,
                 compiled: bool = False):
        self.base, self.compiled = base, compiled
        self.next_column = mask.shape[1]  # prefix + prompt columns are written
        total = self.next_column + max_new_tokens
        keys, values = [], []
        for layer in prefilled_cache.layers:
            for src, dst in ((layer.keys, keys), (layer.values, values)):
                buf = src.new_zeros(src.shape[0], src.shape[1], total, src.shape[3])
                buf[:, :, :self.next_column] = src
                dst.append(buf)
        self.cache = _StaticCache(keys, values)
        self.mask = torch.zeros(mask.shape[0], total, dtype=torch.bool, device=mask.device)
        self.mask[:, :self.next_column] = mask.bool()
        self.pos = next_pos.clone()  # [batch, 1]
        self.column = torch.tensor([self.next_column], device=mask.device)  # next_column, on the device
        self.cache.column = self.column
        self._forward = compiled_forward() if compiled else _forward_one
        self._mark_static()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; return fp32 logits [batch, vocab] for the next one."""
        self.mask.index_fill_(1, self.column, True)
        if self.compiled:  # fixed shapes: the whole buffer, unwritten columns masked
            self.cache.visible, mask = None, self.mask
        else:  # only the columns written so far
            self.cache.visible = self.next_column + 1
            mask = self.mask[:, :self.next_column + 1]
        logits = self._forward(self.base, tokens, self.pos, mask, self.cache)
        if self.compiled:
            logits = logits.clone()  # a CUDA graph reuses its output buffer at the next step
        self.column += 1
        self.pos += 1
        self.next_column += 1
        return logits

    def reorder(self, index: torch.Tensor) -> None:
        """Keep only the rows in `index` (finished rows leave the batch)."""
        self.cache.keys = [k.index_select(0, index) for k in self.cache.keys]
        self.cache.values = [v.index_select(0, index) for v in self.cache.values]
        self.mask, self.pos = self.mask[index], self.pos[index]
        self._mark_static()

    def _mark_static(self) -> None:
        # Buffers written in place inside a CUDA graph must keep their addresses between replays.
        if self.compiled and self.mask.is_cuda:
            for t in (*self.cache.keys, *self.cache.values, self.mask, self.pos, self.column):
                torch._dynamo.mark_static_address(t)


_COMPILED = None


def compiled_forward():
    """`_forward_one` through torch.compile, built once per process. Dynamic shapes, so rows
    leaving the batch do not recompile; on CUDA, CUDA graphs remove the launch overhead."""
    global _COMPILED
    if _COMPILED is None:
        mode = "reduce-overhead" if torch.cuda.is_available() else "default"
        _COMPILED = torch.compile(_forward_one, dynamic=True, mode=mode)
    return _COMPILED


def compile_by_default(device: torch.device) -> bool:
    """Eager everywhere: the decode path the CPU tests run is the one a user's first GPU run
    takes. `--compile_generation` turns the compiled step on (CUDA graphs on CUDA: less launch
    overhead, but not yet measured with the continuous engine on a GPU; bench/gpu_check.sh runs
    both). On a CPU the ~25 s of compilation outweigh what an evaluation saves (BENCHMARKS.md)."""
    return False


def _forward_one(base, tokens: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, cache: _StaticCache):
    """One token per row through the model's own modules (so quantized or LoRA-wrapped
    linears work unchanged), with attention written out for a single query."""
    model = base.model
    hidden = model.embed_tokens(tokens[:, None])
    cos, sin = model.rotary_emb(hidden, pos)  # [batch, 1, rotary_dim], the half-split form
    half = cos.shape[-1] // 2
    cos = cos[..., :half].repeat_interleave(2, dim=-1)[:, :, None]  # GLM rotates interleaved pairs
    sin = sin[..., :half].repeat_interleave(2, dim=-1)[:, :, None]
    keep = mask[:, None, None, :]
    for i, layer in enumerate(model.layers):
        attn = layer.self_attn
        residual = hidden
        x = layer.input_layernorm(hidden)
        q, k, v = _qkv(attn, x)
        qk = _rotate(torch.cat([q, k], dim=2), cos, sin)  # [batch, 1, heads + groups, dim]
        q, k = qk[:, :, :q.shape[2]], qk[:, :, q.shape[2]:]
        keys, values = cache.update(k.transpose(1, 2), v.transpose(1, 2), i)  # [batch, groups, T, dim]
        groups = keys.shape[1]
        q = q.reshape(q.shape[0], groups, -1, attn.head_dim)  # head h sits in group h // (heads / groups)
        # keys @ q^T, read transposed: the cache is never copied (q^T, [dim, heads per group], is)
        scores = torch.matmul(keys, q.transpose(-1, -2)).transpose(-1, -2).float() * attn.scaling
        probs = scores.masked_fill(~keep, float("-inf")).softmax(dim=-1).to(values.dtype)
        out = torch.matmul(probs, values).reshape(x.shape[0], 1, -1)
        hidden = residual + project(attn.o_proj, out)
        hidden = hidden + _mlp(layer.mlp, layer.post_attention_layernorm(hidden))
    return project(base.lm_head, model.norm(hidden)[:, -1]).float().contiguous()


# Up to this many rows a decode step's products are bound by reading the weights, not by arithmetic.
FEW_ROWS = 32


def project(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`linear(x)` for the few rows of a decode step, written so the weights stream once at the
    memory's rate. One row: a matrix-vector product. 2-32 rows: `W @ x^T`, transposed back.
    torch's CPU `linear` runs both through its general product, which reads a 6B layer's bf16
    weights at 17-23 GB/s, where `mv` and `W @ x^T` read at 24-29 (bench/cpu_6b.py,
    BENCHMARKS.md: at 6B the batch-1 step 0.71 -> 0.49 s, batch 8 0.57 -> 0.49, batch 16
    0.63 -> 0.53). On CUDA each form is the same cuBLAS call with its operands swapped (torch
    hands row-major products to cuBLAS transposed). Wrapped (LoRA), quantized or hooked layers
    keep their own forward."""
    rows = x.numel() // x.shape[-1]
    if rows > FEW_ROWS or type(linear) is not nn.Linear or _hooked(linear):
        return linear(x)
    w, b = linear.weight, linear.bias
    if rows == 1:
        flat = x.reshape(-1)
        y = torch.mv(w, flat) if b is None else torch.addmv(b, w, flat)
    else:
        xt = x.reshape(rows, -1).t()
        y = (torch.mm(w, xt) if b is None else torch.addmm(b[:, None], w, xt)).t()  # a view: callers copy if they must
    return y.view(*x.shape[:-1], -1)


def _hooked(module: nn.Module) -> bool:
    # accelerate's offloading replaces `forward` on the instance; torch hooks run only through __call__
    return bool(module._forward_hooks or module._forward_pre_hooks or "forward" in module.__dict__)


def _mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Glm's MLP (gate and up in one product, SwiGLU, down), its products through `project`."""
    if _hooked(mlp) or not hasattr(mlp, "gate_up_proj"):
        return mlp(x)
    gate, up = project(mlp.gate_up_proj, x).chunk(2, dim=-1)
    return project(mlp.down_proj, up * mlp.activation_fn(gate))


def _qkv(attn, x: torch.Tensor):
    """q, k, v [batch, 1, heads or groups, dim] through the layer's own (maybe quantized or
    LoRA-wrapped) projections."""
    b, d = x.shape[0], attn.head_dim
    return tuple(project(p, x).reshape(b, 1, -1, d) for p in (attn.q_proj, attn.k_proj, attn.v_proj))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """GLM's rotary on the first half of each head, pairs (2i, 2i+1) interleaved; x [batch, 1, heads, dim]."""
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    pairs = x_rot.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return torch.cat([x_rot * cos + rotated * sin, x_pass], dim=-1)
