"""The model step of the engine: prompts into their slots (prefill), then one token for every
live row (decode), on cache buffers that every slot keeps for the whole of its answer.

Each slot holds, per layer, its prefix's keys and values (none for the base), then its
prompt's, then its answer's, from column 0: rows of different prefixes and lengths share one
buffer and one step, each with its own length (`lens`, the columns written) and position
(`pos`, the next token's rotary position: prompt positions start at 0 after the prefix, as in
the original). A decode step writes each row's new key at its own column and masks the
columns past each row's length; the products are the model's own modules (chatglm/decode.py),
so quantized and LoRA-wrapped layers work unchanged.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from ..decode import _forward_one, compiled_forward
from ..lora import lora_rows

# Prompt tokens one prefill pass takes at most (rows x padded width): bounds its activations.
PREFILL_TOKENS = 4096
_GROW = 64  # buffers grow in steps of this many columns


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


class SlotCache:
    """What a Glm attention layer calls `update()` on in a decode step: each row's new key and
    value go to that row's own column; the keys and values to attend to come back."""

    def __init__(self):
        self.keys: list[torch.Tensor] = []  # per layer [slots, kv_groups, width, head_dim]
        self.values: list[torch.Tensor] = []
        self.rows = self.columns = None  # LongTensors [n]: the rows stepped and where each writes
        self.visible = None  # int: columns to return (eager), or None: the whole buffer (compiled)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        n = key_states.shape[0]
        k, v = self.keys[layer_idx][:n], self.values[layer_idx][:n]
        k[self.rows, :, self.columns] = key_states[:, :, 0]
        v[self.rows, :, self.columns] = value_states[:, :, 0]
        if self.visible is None:
            return k, v
        return k[:, :, :self.visible], v[:, :, :self.visible]


class ModelRunner:
    def __init__(self, base, num_slots: int, compiled: bool = False):
        self.base, self.num_slots, self.compiled = base, num_slots, compiled
        c = base.config
        self.shape = (c.num_key_value_heads, c.head_dim)
        self.layers = c.num_hidden_layers
        self.device = base.lm_head.weight.device
        self.dtype = base.model.embed_tokens.weight.dtype
        self.width = 0
        self.cache = SlotCache()
        self.lens = torch.zeros(num_slots, dtype=torch.long, device=self.device)
        self.pos = torch.zeros(num_slots, dtype=torch.long, device=self.device)
        self.host_lens = [0] * num_slots  # the same, on the host: no device sync to size a step
        self._forward = compiled_forward() if compiled else _forward_one

    @property
    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.cache.keys + self.cache.values)

    def reserve(self, width: int) -> None:
        """Buffers at least `width` columns wide (a slot's prefix + prompt + answer budget)."""
        if width <= self.width:
            return
        width = -(-width // _GROW) * _GROW
        for store in (self.cache.keys, self.cache.values):
            for i in range(self.layers):
                buf = torch.zeros(self.num_slots, self.shape[0], width, self.shape[1], dtype=self.dtype,
                                  device=self.device)
                if store and self.width:
                    buf[:, :, :self.width] = store[i]
                if len(store) < self.layers:
                    store.append(buf)
                else:
                    store[i] = buf
        self.width = width
        self._mark_static()

    @torch.inference_mode()
    def prefill(self, slots: list[int], prompts: list[list[int]], prefix, lora_on: bool | None) -> torch.Tensor:
        """Run `prompts` (one adapter: `prefix` = per-layer (key, value) [1, groups, P, dim] or
        None; `lora_on`: the adapter on/off, None without LoRA) and write each into its slot;
        fp32 logits [len(prompts), vocab] of each prompt's next token."""
        out = []
        width = max(len(p) for p in prompts)
        step = max(1, PREFILL_TOKENS // width)
        for b in range(0, len(prompts), step):
            out.append(self._prefill(slots[b:b + step], prompts[b:b + step], prefix, lora_on))
        return torch.cat(out)

    def _prefill(self, slots, prompts, prefix, lora_on):
        # Right-padded: each row's prefix and prompt sit at columns [0, P + len) of the pass's
        # cache, as in its slot, so one copy per layer moves the whole group. Real tokens never
        # see the padding after them (causal), so a row's numbers do not depend on its neighbours.
        g, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.zeros(g, width, dtype=torch.long)
        mask = torch.zeros(g, width, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, :len(p)], mask[i, :len(p)] = torch.tensor(p), 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        past, p_len = None, 0
        if prefix is not None:
            p_len = prefix[0][0].shape[2]
            past = DynamicCache(ddp_cache_data=[(k.expand(g, -1, -1, -1), v.expand(g, -1, -1, -1)) for k, v in prefix])
            mask = torch.cat([mask.new_ones(g, p_len), mask], dim=1)
        positions = torch.arange(width, device=self.device).expand(g, -1)
        on = None if lora_on is None else torch.full((g,), float(lora_on), device=self.device)
        with lora_rows(on):
            hidden = self.base.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                                     use_cache=True)
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        last = hidden.last_hidden_state[torch.arange(g, device=self.device), lengths - 1]
        with lora_rows(on):
            logits = self.base.lm_head(last).float()
        index = torch.tensor(slots, device=self.device)
        cols = p_len + width
        for i, layer in enumerate(hidden.past_key_values.layers):
            self.cache.keys[i][:, :, :cols].index_copy_(0, index, layer.keys)
            self.cache.values[i][:, :, :cols].index_copy_(0, index, layer.values)
        for s, p in zip(slots, prompts):
            self._set(s, p_len + len(p), len(p))
        return logits

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, alive: list[bool], lora_on: torch.Tensor | None = None) -> torch.Tensor:
        """Feed one token to rows [0, len(tokens)) (all slots when compiled); fp32 logits
        [rows, vocab]. `alive`: which of those rows hold a request (the others are stepped
        for the fixed shape only and stay empty). `lora_on`: [rows] 1 where the LoRA adapter
        acts, 0 where not."""
        n = tokens.shape[0]
        cache = self.cache
        cache.rows = torch.arange(n, device=self.device)
        cache.columns = self.lens[:n]
        if self.compiled:  # fixed shapes: the whole buffer, unwritten columns masked
            cache.visible = None
            mask = torch.arange(self.width, device=self.device)[None] <= self.lens[:n, None]
        else:  # only the columns some row has written
            cache.visible = max(self.host_lens[:n]) + 1
            mask = torch.arange(cache.visible, device=self.device)[None] <= self.lens[:n, None]
        with lora_rows(lora_on):
            logits = self._forward(self.base, tokens, self.pos[:n, None], mask, cache)
        if self.compiled:
            logits = logits.clone()  # a CUDA graph reuses its output buffer at the next step
        if all(alive):
            self.lens[:n] += 1
            self.pos[:n] += 1
        else:
            step = torch.tensor(alive, dtype=torch.long).to(self.device, non_blocking=True)
            self.lens[:n] += step
            self.pos[:n] += step
        for s in range(n):
            self.host_lens[s] += alive[s]
        return logits

    def move(self, src: int, dst: int) -> None:
        """Slot `src`'s row into slot `dst` (compaction)."""
        cols = self.host_lens[src]
        for store in (self.cache.keys, self.cache.values):
            for buf in store:
                buf[dst, :, :cols] = buf[src, :, :cols]
        self._set(dst, cols, int(self.pos[src]))
        self.free(src)

    def free(self, slot: int) -> None:
        self._set(slot, 0, 0)

    def _set(self, slot: int, length: int, position: int) -> None:
        self.lens[slot], self.pos[slot], self.host_lens[slot] = length, position, length

    def _mark_static(self) -> None:
        # Buffers written in place inside a CUDA graph must keep their addresses between replays.
        if self.compiled and self.device.type == "cuda":
            for t in (*self.cache.keys, *self.cache.values, self.lens, self.pos):
                torch._dynamo.mark_static_address(t)
