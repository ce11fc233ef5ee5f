"""P-tuning v2: learned key/value vectors in front of every layer's attention.

Facts kept from the original (THUDM chatglm2 PrefixEncoder / get_prompt):
  * one embedding row per prefix position, of size 2 * layers * kv_groups * kv_channels,
    optionally passed through Linear(kv, hidden) -> Tanh -> Linear(hidden, kv)
    (`--prefix_projection`);
  * the row is viewed as [layers * 2, kv_groups, kv_channels]: even entries are keys, odd
    entries values; no rotary is applied to them; dropout 0.1 while training;
  * a fresh embedding is N(0, 1) (nn.Embedding's init), drawn right after set_seed(seed);
  * checkpoint names are `transformer.prefix_encoder.embedding.weight` and
    `transformer.prefix_encoder.trans.{0,2}.{weight,bias}`.
"""
from __future__ import annotations

import os

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

CHECKPOINT_PREFIX = "transformer.prefix_encoder."
PREFIX_DROPOUT = 0.1


class PrefixEncoder(nn.Module):
    def __init__(self, pre_seq_len: int, num_layers: int, kv_groups: int, head_dim: int,
                 hidden_size: int, projection: bool = False):
        super().__init__()
        self.pre_seq_len, self.num_layers = pre_seq_len, num_layers
        self.kv_groups, self.head_dim = kv_groups, head_dim
        kv_size = num_layers * kv_groups * head_dim * 2
        # Built first so that, seeded like the original, it draws the same N(0, 1) numbers.
        self.embedding = nn.Embedding(pre_seq_len, kv_size)
        self.trans = (nn.Sequential(nn.Linear(kv_size, hidden_size), nn.Tanh(),
                                    nn.Linear(hidden_size, kv_size)) if projection else None)
        self.dropout = nn.Dropout(PREFIX_DROPOUT)

    @property
    def projection(self) -> bool:
        return self.trans is not None

    def key_values(self, batch_size: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (key, value), each [batch, kv_groups, pre_seq_len, head_dim] in `dtype`.

        The encoder runs once, not once per sample: every sample sees the same rows.
        """
        rows = self.embedding.weight
        if self.trans is not None:
            rows = self.trans(rows)
        kv = rows.to(dtype).view(1, self.pre_seq_len, 2 * self.num_layers, self.kv_groups, self.head_dim)
        kv = self.dropout(kv.expand(batch_size, -1, -1, -1, -1))  # per-sample masks, as the original
        kv = kv.permute(2, 0, 3, 1, 4)  # [2 * layers, batch, groups, pre_seq_len, head_dim]
        return [(kv[2 * i], kv[2 * i + 1]) for i in range(self.num_layers)]

    # -- checkpoint format of the original ---------------------------------------------------
    def original_state_dict(self) -> dict[str, torch.Tensor]:
        return {CHECKPOINT_PREFIX + k: v.detach().float().cpu().contiguous()
                for k, v in self.state_dict().items()}

    def load_original_state_dict(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        ours = {k[len(CHECKPOINT_PREFIX):]: v for k, v in state.items() if k.startswith(CHECKPOINT_PREFIX)}
        if not ours:
            raise KeyError(f"{source}: no '{CHECKPOINT_PREFIX}*' tensors; is this a P-tuning v2 checkpoint?")
        want = self.state_dict()
        if set(ours) != set(want):
            raise KeyError(f"{source}: prefix tensors {sorted(ours)} do not match this run's "
                           f"{sorted(want)} (check --prefix_projection)")
        for k, v in ours.items():
            if v.shape != want[k].shape:
                raise ValueError(f"{source}: {CHECKPOINT_PREFIX}{k} has shape {tuple(v.shape)}, expected "
                                 f"{tuple(want[k].shape)} (check --pre_seq_len and the base model)")
        self.load_state_dict(ours)


@torch.no_grad()
def init_from_activations(encoder: PrefixEncoder, base, token_ids: list[int]) -> None:
    """Start the prefix as the keys and values `base` computes for `token_ids` (pre_seq_len of
    them), as if the model had just read that text. A random N(0, 1) prefix (the original's)
    is attention to made-up tokens in every layer: on a small model it buries the prompt, and
    training starts far above the base's loss; read-text keys and values keep the model as it was."""
    if encoder.projection:
        raise ValueError("--prefix_init train_rows sets the prefix rows directly: not with --prefix_projection")
    if len(token_ids) < encoder.pre_seq_len:
        raise ValueError(f"--prefix_init train_rows needs {encoder.pre_seq_len} tokens of training rows, "
                         f"the file has {len(token_ids)}")
    ids = torch.tensor([token_ids[:encoder.pre_seq_len]], device=encoder.embedding.weight.device)
    cache = base(input_ids=ids, use_cache=True).past_key_values
    rows = []
    for layer in cache.layers:  # keys, values: [1, kv_groups, pre_seq_len, head_dim]
        rows += [layer.keys[0], layer.values[0]]
    kv = torch.stack(rows)  # [2 * layers, groups, pre_seq_len, head_dim] -> the embedding's row layout
    encoder.embedding.weight.copy_(kv.permute(2, 0, 1, 3).reshape(encoder.pre_seq_len, -1))


def read_prefix_checkpoint(ckpt_dir: str) -> dict[str, torch.Tensor]:
    """The prefix tensors of a checkpoint folder: ours or the original's P-tuning checkpoint
    (the prefix alone), a whole model folder holding a prefix (ChatGLM3's finetune_hf saves
    the hub model with pre_seq_len set: its prefix tensors are read, the frozen rest is not),
    or PEFT's prefix tuning (GLM-4's finetune scripts): `prompt_embeddings` are the prefix's
    key/value rows in the hub encoder's layout ([tokens, layers x 2 x kv_groups x kv_channels])."""
    from .checkpoint import _shard_files, open_weights
    from .lora import ADAPTER_CONFIG, peft_type

    if os.path.isfile(os.path.join(ckpt_dir, ADAPTER_CONFIG)) and peft_type(ckpt_dir) == "PREFIX_TUNING":
        return _read_peft_prefix(ckpt_dir)
    try:
        shards = _shard_files(ckpt_dir)
    except FileNotFoundError:
        raise FileNotFoundError(f"{ckpt_dir}: no pytorch_model.bin (P-tuning checkpoint) found") from None
    if len(shards) == 1 and not shards[0].endswith(".safetensors"):
        return open_weights(shards[0])
    state = {}
    for path in shards:  # only the prefix tensors of each shard
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                state.update({k: f.get_tensor(k) for k in f.keys() if k.startswith(CHECKPOINT_PREFIX)})
        else:
            state.update({k: v for k, v in open_weights(path, mmap=True).items() if k.startswith(CHECKPOINT_PREFIX)})
    return state


def _read_peft_prefix(ckpt_dir: str) -> dict[str, torch.Tensor]:
    import json

    from .checkpoint import open_weights

    with open(os.path.join(ckpt_dir, "adapter_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if os.path.isfile(os.path.join(ckpt_dir, name)):
            state = open_weights(os.path.join(ckpt_dir, name))
            break
    else:
        raise FileNotFoundError(f"{ckpt_dir}: adapter_config.json (PREFIX_TUNING) but no adapter_model.safetensors")
    rows = next((v for k, v in state.items() if k.endswith("prompt_embeddings")), None)
    if rows is None:
        raise KeyError(f"{ckpt_dir}: no prompt_embeddings tensor; is this PEFT prefix tuning?")
    if cfg.get("num_transformer_submodules", 1) != 1:
        raise ValueError(f"{ckpt_dir}: num_transformer_submodules={cfg['num_transformer_submodules']}; a decoder-only "
                         "prefix has 1")
    return {CHECKPOINT_PREFIX + "embedding.weight": rows[:cfg.get("num_virtual_tokens", rows.shape[0])]}


def prefix_shape_from_checkpoint(state: dict[str, torch.Tensor]) -> tuple[int, bool]:
    """(pre_seq_len, prefix_projection) implied by a checkpoint's tensors."""
    emb = state[CHECKPOINT_PREFIX + "embedding.weight"]
    return emb.shape[0], any(k.startswith(CHECKPOINT_PREFIX + "trans.") for k in state)


def write_prefix_checkpoint(encoder: PrefixEncoder, ckpt_dir: str) -> None:
    """`pytorch_model.bin` with the original's key names, written atomically."""
    os.makedirs(ckpt_dir, exist_ok=True)
    path = os.path.join(ckpt_dir, "pytorch_model.bin")
    torch.save(encoder.original_state_dict(), path + ".tmp")
    os.replace(path + ".tmp", path)


class _FixedLayer(DynamicLayer):
    """A cache layer holding the prefix that never grows.

    Training needs the prefix in front of the keys, but must not store anything: with
    gradient checkpointing each layer runs twice, and a growing cache would double up.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def prefix_cache(key_values: list[tuple[torch.Tensor, torch.Tensor]], growing: bool) -> Cache:
    """A cache pre-filled with the prefix: fixed for training, growing for generation."""
    if growing:
        return DynamicCache(ddp_cache_data=key_values)
    return Cache(layers=[_FixedLayer(k, v) for k, v in key_values])
