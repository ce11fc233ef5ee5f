"""ChatGLM (ChatGLM2, ChatGLM3, GLM-4) with what tunes it: a frozen GlmForCausalLM plus a P-tuning v2 PrefixEncoder, or
PEFT LoRA adapters in its linear layers (chatglm/lora.py), or nothing (full fine-tuning).

Like a PEFT adapter, the prefix is its own module and the only thing trained or saved; the
base model is loaded once and never modified. Positions of real tokens start at 0 whatever
the prefix length, as in the original; every prefix column is visible to every token.
"""
from __future__ import annotations

import json
import os
import shutil

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GlmForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from .checkpoint import iter_checkpoint_tensors, load_glm, read_config, save_chatglm
from .convert import chatglm_to_glm
from .lora import add_lora, is_adapter_dir, load_adapter, read_adapter, save_adapter, set_adapter_weights
from .prefix import (PrefixEncoder, prefix_cache, prefix_shape_from_checkpoint, read_prefix_checkpoint,
                     write_prefix_checkpoint)


def base_dtype(training_args, full_fine_tuning: bool = False, device_type: str | None = None) -> torch.dtype:
    """The dtype of the frozen base: --bf16 / --fp16 on every device, fp16 on CUDA without
    either (as the original), fp32 on a CPU without either. What trains (prefix, LoRA) stays
    fp32 whatever this is; full fine-tuning keeps fp32 master weights and gets half precision
    from the Trainer's autocast instead. (main.py loads with it; the memory check counts with it.)"""
    if full_fine_tuning:
        return torch.float32
    if training_args.bf16:
        return torch.bfloat16
    if training_args.fp16 or (device_type or training_args.device.type) == "cuda":
        return torch.float16
    return torch.float32


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0..n-1 over the real tokens of each row, 0 on (left) padding: what the original
    tokenizer's left padding gives."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class ChatGLM(nn.Module):
    """The model main.py trains and evaluates: `base` (frozen) + optional `prefix_encoder`."""

    main_input_name = "input_ids"
    _no_split_modules = ["GlmDecoderLayer"]  # FSDP's wrap unit under --fsdp "full_shard auto_wrap"

    def __init__(self, base: GlmForCausalLM, prefix_encoder: PrefixEncoder | None, model_dir: str | None = None):
        super().__init__()
        self.base = base
        self.prefix_encoder = prefix_encoder
        self.model_dir = model_dir
        self.config = base.config
        self.lora_config = None  # set by add_lora / load_lora
        if prefix_encoder is not None:
            self.base.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, model_dir: str, pre_seq_len: int | None = None, prefix_projection: bool = False,
                        dtype: torch.dtype = torch.float32, device="cpu", seed: int | None = None,
                        quantization_bit: int | None = None, ptuning_checkpoint: str | None = None) -> "ChatGLM":
        """The base model of `model_dir`, plus what `ptuning_checkpoint` holds: a prefix (ours or
        the original's, whose tensors then fix its shape), a LoRA adapter (ours, PEFT's, or one
        trained on the original code), or a whole fine-tuned model (then loaded instead of
        `model_dir`'s weights). Without a checkpoint, a fresh prefix of `pre_seq_len`."""
        prefix_state = None
        kind = checkpoint_kind(ptuning_checkpoint) if ptuning_checkpoint else None
        if kind == "full":
            model_dir = ptuning_checkpoint
        elif kind == "prefix":
            prefix_state = read_prefix_checkpoint(ptuning_checkpoint)
            saved_len, prefix_projection = prefix_shape_from_checkpoint(prefix_state)
            if pre_seq_len and pre_seq_len != saved_len:
                raise ValueError(f"--pre_seq_len {pre_seq_len} but {ptuning_checkpoint} holds a prefix of "
                                 f"length {saved_len}")
            pre_seq_len = saved_len
        elif kind == "lora" and pre_seq_len:
            raise ValueError(f"--pre_seq_len {pre_seq_len} but {ptuning_checkpoint} holds a LoRA adapter, not a prefix")
        base = load_glm(model_dir, dtype=dtype, device=device, quantization_bit=quantization_bit)
        prefix = None
        if pre_seq_len:
            if seed is not None:
                torch.manual_seed(seed)  # the original's fresh prefix: set_seed(seed) then N(0, 1)
            c = base.config
            prefix = PrefixEncoder(pre_seq_len, c.num_hidden_layers, c.num_key_value_heads, c.head_dim,
                                   c.hidden_size, prefix_projection).to(device)
        if prefix_state is not None:
            prefix.load_original_state_dict(prefix_state, source=ptuning_checkpoint)
        model = cls(base, prefix, model_dir)
        if kind == "lora":
            model.lora_config = load_adapter(base, ptuning_checkpoint)
            base.to(device)
        return model

    def add_lora(self, rank: int, alpha: float, dropout: float, targets: list[str], seed: int | None = None) -> None:
        """Fresh LoRA adapters (fp32) in the given linear layers; only they train."""
        if self.prefix_encoder is not None:
            raise ValueError("--pre_seq_len and --lora_rank are exclusive: P-tuning trains a prefix, LoRA trains "
                             "adapters; pass one of them")
        if seed is not None:
            torch.manual_seed(seed)
        self.lora_config = add_lora(self.base, rank, alpha, dropout, targets)
        self.base.to(self.device)

    @property
    def is_tuned(self) -> bool:
        """A prefix or LoRA adapters: something to compare the base model with."""
        return self.prefix_encoder is not None or self.lora_config is not None

    @property
    def pre_seq_len(self) -> int:
        return self.prefix_encoder.pre_seq_len if self.prefix_encoder is not None else 0

    @property
    def device(self) -> torch.device:
        return self.base.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base.model.embed_tokens.weight.dtype

    def past_for(self, batch_size: int, growing: bool):
        """A cache holding the prefix for a batch (None without a prefix)."""
        if self.prefix_encoder is None:
            return None
        return prefix_cache(self.prefix_encoder.key_values(batch_size, self.dtype), growing=growing)

    def extend_mask(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Put the always-visible prefix columns in front of a 2-D padding mask."""
        if attention_mask is None or self.prefix_encoder is None:
            return attention_mask
        ones = attention_mask.new_ones(attention_mask.shape[0], self.pre_seq_len)
        return torch.cat([ones, attention_mask], dim=-1)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                **kwargs):
        """Training/scoring forward. Rows are right-padded (or unpadded): without a mask the
        original trains causally only, and labels are -100 on padding, so none is needed."""
        if position_ids is None:
            if attention_mask is not None:
                position_ids = positions_from_mask(attention_mask)
            else:
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        inputs = dict(input_ids=input_ids, attention_mask=self.extend_mask(attention_mask), position_ids=position_ids,
                      past_key_values=self.past_for(input_ids.shape[0], False), use_cache=False)
        if labels is None:
            return self.base(**inputs, **kwargs)
        hidden = self.base.model(**inputs).last_hidden_state
        return CausalLMOutputWithPast(loss=self.answer_loss(hidden, labels, kwargs.get("num_items_in_batch")))

    def answer_loss(self, hidden: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        """Shifted cross-entropy in fp32 over the labelled positions only.

        The output layer runs on the answer tokens alone, not on prompt and padding: the same
        loss as transformers' (mean over labelled tokens, or sum / num_items_in_batch under
        gradient accumulation), without a [batch, length, 65024] logits tensor.
        """
        targets = labels[:, 1:]
        keep = targets != -100
        logits = self.base.lm_head(hidden[:, :-1][keep]).float()
        if num_items_in_batch is None:
            return F.cross_entropy(logits, targets[keep])
        return F.cross_entropy(logits, targets[keep], reduction="sum") / num_items_in_batch

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None,
                                        every_n_layers: int = 1, offload: bool = False) -> None:
        """What the Trainer calls for --activation_checkpointing / --gradient_checkpointing."""
        # Non-reentrant checkpointing lets gradients reach the prefix, which enters each
        # layer through the cache rather than as a positional input.
        kwargs = dict(activation_checkpointing_kwargs or {})
        kwargs["use_reentrant"] = False
        self.base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs,
                                                  every_n_layers=every_n_layers, offload=offload)
        for layer in self.base.model.layers:
            layer._can_checkpoint_with_cache = True  # our fixed prefix cache is safe to recompute

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs) -> None:
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, ckpt_dir: str, state_dict: dict | None = None) -> None:
        """The prefix alone; or the LoRA adapter in PEFT's format; without either (full
        fine-tuning) the whole model, original layout. `state_dict` (this module's names) is the
        full model gathered from FSDP or DeepSpeed shards, when the weights here are only a part."""
        if self.lora_config is not None:
            return save_adapter(self.base, self.lora_config, ckpt_dir, self.model_dir)
        if self.prefix_encoder is not None:
            return self.save_prefix(ckpt_dir)
        base_state = None
        if state_dict is not None:
            base_state = {k[len("base."):]: v for k, v in state_dict.items() if k.startswith("base.")}
        hub_name = read_config(self.model_dir).get("_name_or_path") if self.model_dir else None
        save_chatglm(self.base, ckpt_dir, state_dict=base_state, hub_name=hub_name or "THUDM/chatglm2-6b")
        # The tokenizer files, which tell the family (chatglm/family.py) of the folder written.
        for name in ("tokenizer.model", "tokenizer_config.json", "generation_config.json", "tokenization_chatglm.py"):
            if self.model_dir and os.path.exists(os.path.join(self.model_dir, name)):
                shutil.copyfile(os.path.join(self.model_dir, name), os.path.join(ckpt_dir, name))

    def load_checkpoint(self, ckpt_dir: str) -> None:
        if self.lora_config is not None:
            return set_adapter_weights(self.base, read_adapter(ckpt_dir, self.config)[1], ckpt_dir)
        if self.prefix_encoder is not None:
            return self.load_prefix(ckpt_dir)
        state = {}
        for name, tensor in iter_checkpoint_tensors(ckpt_dir):
            state.update(chatglm_to_glm(name, tensor, self.config))
        self.base.load_state_dict(state, strict=False)

    def load_prefix(self, ckpt_dir: str) -> None:
        self.prefix_encoder.load_original_state_dict(read_prefix_checkpoint(ckpt_dir), source=ckpt_dir)

    def save_prefix(self, ckpt_dir: str) -> None:
        """What a checkpoint-N holds: the prefix in the original's format plus its config."""
        write_prefix_checkpoint(self.prefix_encoder, ckpt_dir)
        if self.model_dir is not None:
            cfg = read_config(self.model_dir)
            cfg.update(pre_seq_len=self.pre_seq_len, prefix_projection=self.prefix_encoder.projection)
            with open(os.path.join(ckpt_dir, "config.json"), "w", encoding="utf-8") as f:
                json.dump(cfg, f, indent=2)


@torch.inference_mode()
def checkpoint_prefix_key_values(model: ChatGLM, ckpt_dir: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The per-layer (key, value) prefix [1, kv_groups, P, head_dim] that a P-tuning checkpoint
    holds, in the model's dtype and device: another checkpoint to run beside the loaded one
    (the generation engine takes a prefix per row). Its length and projection are its own."""
    if checkpoint_kind(ckpt_dir) != "prefix":
        raise ValueError(f"{ckpt_dir}: not a P-tuning checkpoint; several checkpoints in one pass are prefixes "
                         "only (one LoRA adapter per process)")
    state = read_prefix_checkpoint(ckpt_dir)
    length, projection = prefix_shape_from_checkpoint(state)
    c = model.config
    encoder = PrefixEncoder(length, c.num_hidden_layers, c.num_key_value_heads, c.head_dim, c.hidden_size, projection)
    encoder.load_original_state_dict(state, source=ckpt_dir)
    encoder.to(model.device).eval()
    return [(k.contiguous(), v.contiguous()) for k, v in encoder.key_values(1, model.dtype)]


class base_only:
    """`with base_only(model):` runs the base model alone: the prefix is set aside (not freed)
    and LoRA adapters are switched off, so a before/after comparison loads the 6B weights once."""

    def __init__(self, model: ChatGLM):
        self.model, self.saved = model, None

    def __enter__(self):
        self.saved, self.model.prefix_encoder = self.model.prefix_encoder, None
        self._lora(False)
        return self.model

    def __exit__(self, *exc):
        self.model.prefix_encoder = self.saved
        self._lora(True)

    def _lora(self, enabled: bool) -> None:
        if self.model.lora_config is None:
            return
        self.model.lora_off = not enabled
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in self.model.base.modules():
            if isinstance(module, BaseTunerLayer):
                module.enable_adapters(enabled)


def checkpoint_kind(path: str) -> str:
    """What a checkpoint folder holds: "lora" (adapter_config.json), "full" (a complete chatglm2
    folder: a config without pre_seq_len), or "prefix" (ours or the original's P-tuning)."""
    if not os.path.isdir(path):
        raise ValueError(f"{path}: no such checkpoint folder")
    if is_adapter_dir(path):
        return "lora"
    if os.path.isfile(os.path.join(path, "config.json")) and not read_config(path).get("pre_seq_len"):
        return "full"
    return "prefix"
