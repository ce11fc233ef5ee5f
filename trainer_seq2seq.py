"""The Trainer: transformers' own loop, with checkpoints that hold only what trains.

A P-tuning checkpoint-N folder is the original's: `pytorch_model.bin` with the prefix tensors
under their original names (a few MB, not 12 GB) and `config.json`; a LoRA one is PEFT's
(`adapter_config.json`, `adapter_model.safetensors`); both get transformers' optimizer,
scheduler, RNG and `trainer_state.json` for `--resume_from_checkpoint`. trainer_state.json is
written last, so a folder without it is an interrupted save and is never resumed from.
"""
from __future__ import annotations

import logging
import os

import torch
from transformers import Trainer, TrainerCallback

logger = logging.getLogger(__name__)

def _unwrap(model):
    return model.module if hasattr(model, "module") else model


class PrefixTrainer(Trainer):
    """Saves and restores only what trains: the prefix encoder, or the LoRA adapter in PEFT's
    format, or (with neither) the whole model in the original layout."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        model = _unwrap(self.model)
        model.save_checkpoint(output_dir, state_dict=None if model.is_tuned else state_dict)
        what = ("the LoRA adapter" if model.lora_config is not None else
                "the prefix" if model.prefix_encoder is not None else "the model")
        logger.info("Saved %s to %s", what, output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if self.is_fsdp_enabled:  # the engine's own sharded files, read by every rank
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        _unwrap(model or self.model).load_checkpoint(resume_from_checkpoint)

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if self.args.fsdp_plugin_args is not None and not self.is_fsdp_enabled and self.args.world_size > 1:
            enable_fsdp_on_cpu(self)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self.is_fsdp_enabled and "FULL_STATE_DICT" not in str(self.accelerator.state.fsdp_plugin.state_dict_type):
            # The engine wrote its shards (resume reads them); next to them, the whole model
            # gathered from the shards as a chatglm2 folder that every tool loads.
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if self.args.should_save:
                _unwrap(self.model).save_checkpoint(output_dir or self.args.output_dir, state_dict=state)


def enable_fsdp_on_cpu(trainer) -> None:
    """accelerate applies FSDP only on accelerators: on CPU processes (gloo) it silently falls
    back to plain DDP, every process holding everything. FSDP2 itself runs on CPU, so set the
    accelerator state to FSDP as accelerate does on GPUs; then the same code path that shards
    a 6B model over GPUs is what CPU tests and CI run."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    if plugin.fsdp_version != 2:
        raise ValueError("FSDP on CPU processes needs FSDP2: add \"version\": 2 to --fsdp_config "
                         "(FSDP1 only runs on GPUs)")
    state = trainer.accelerator.state
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    trainer.is_fsdp_enabled = True


class LossCurveCallback(TrainerCallback):
    """Writes loss_curve.png (loss and learning rate against step) when training ends."""

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        points = [(h["step"], h["loss"], h.get("learning_rate")) for h in state.log_history if "loss" in h]
        if not points:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps, losses, lrs = zip(*points)
        fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
        ax.plot(steps, losses, marker="o", markersize=3, color="tab:blue", label="training loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss", color="tab:blue")
        ax.grid(alpha=0.3)
        if all(lr is not None for lr in lrs):
            ax2 = ax.twinx()
            ax2.plot(steps, lrs, color="tab:orange", alpha=0.7, label="learning rate")
            ax2.set_ylabel("learning rate", color="tab:orange")
        ax.set_title(f"P-tuning loss ({os.path.basename(os.path.abspath(args.output_dir))})")
        fig.tight_layout()
        path = os.path.join(args.output_dir, "loss_curve.png")
        fig.savefig(path)
        plt.close(fig)
        logger.info("Loss curve: %s", path)


class PadCollator:
    """Pads each batch to its own longest row (the original pads every row to the maximum)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        for i, f in enumerate(features):
            ids[i, :len(f["input_ids"])] = torch.tensor(f["input_ids"])
            labels[i, :len(f["labels"])] = torch.tensor(f["labels"])
        return {"input_ids": ids, "labels": labels}



class ShardingReport(TrainerCallback):
    """Says, once the first optimizer step has made the optimizer state, how much of the model
    and of that state each process holds: the evidence that sharding happens (with plain DDP
    every process would hold 100%)."""

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step != 1 or model is None:
            return
        local = lambda t: t.to_local() if hasattr(t, "to_local") else t
        full = sum(p.numel() for p in model.parameters())
        held = sum(local(p).numel() for p in model.parameters())
        opt = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
        opt_held = sum(local(v).numel() for s in (opt.state.values() if opt else []) for v in s.values()
                       if torch.is_tensor(v) and v.dim() > 0)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        print(f"sharding: rank {rank} holds {held / 1e6:.2f}M of {full / 1e6:.2f}M parameters "
              f"({100 * held / full:.0f}%) and {opt_held / 1e6:.2f}M optimizer-state values", flush=True)
