"""The Trainer: transformers' own loop, with checkpoints that hold only what trains.

A P-tuning checkpoint-N folder is the original's: `pytorch_model.bin` with the prefix tensors
under their original names (a few MB, not 12 GB) and `config.json`; a LoRA one is PEFT's
(`adapter_config.json`, `adapter_model.safetensors`); both get transformers' optimizer,
scheduler, RNG and `trainer_state.json` for `--resume_from_checkpoint`. trainer_state.json is
written last, so a folder without it is an interrupted save and is never resumed from.

With a `predictor` (prediction.py), every evaluation (--eval_steps) also generates for the
validation records and computes the official PromptCBLUE score: `eval_score` and `eval_<task>`
join the log history and TensorBoard, eval-<step>/ gets the prediction files, scores.json and
error_report.md, and `--metric_for_best_model score` picks the best checkpoint by it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time

import torch
from transformers import Trainer, TrainerCallback

from cblue.features import PadCollator  # noqa: F401  (the collator lives with the rows it pads; main.py imports it here)
from cblue.tasks import TASKS, main_metric

logger = logging.getLogger(__name__)
ALL_TASKS = list(dict.fromkeys(TASKS["v2"] + TASKS["v1"]))

@contextlib.contextmanager
def _training_rng_kept():
    """Evaluation draws from the global random generators (every DataLoader iterator takes a
    seed from torch's), and the next epoch's shuffle would then differ: a run that evaluates
    would train on another order than one that does not. Restored afterwards, it does not."""
    import random

    import numpy as np

    state = (random.getstate(), np.random.get_state(), torch.random.get_rng_state(),
             torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.random.set_rng_state(state[2])
        if state[3] is not None:
            torch.cuda.set_rng_state_all(state[3])


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


class PrefixTrainer(Trainer):
    """Saves and restores only what trains: the prefix encoder, or the LoRA adapter in PEFT's
    format, or (with neither) the whole model in the original layout. `predictor` + `eval_data`:
    evaluations score generations officially; `task_sampler`: the training rows' order."""

    def __init__(self, *args, predictor=None, eval_data=None, task_sampler=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.predictor, self.eval_data, self.task_sampler = predictor, eval_data, task_sampler

    def _get_train_sampler(self, train_dataset=None):
        return self.task_sampler or super()._get_train_sampler(train_dataset)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """The loss on the validation rows, then the official score of what the model generates
        for them, as one set of metrics (logged once)."""
        if self.predictor is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        with _training_rng_kept():
            return self._evaluate_and_score(ignore_keys, metric_key_prefix)

    def _evaluate_and_score(self, ignore_keys, metric_key_prefix: str) -> dict:
        start, step = time.time(), self.state.global_step
        metrics = {}
        if self.eval_dataset is not None:
            output = self.evaluation_loop(self.get_eval_dataloader(), "Evaluation", prediction_loss_only=True,
                                          ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
            metrics.update(output.metrics)
        out_dir = os.path.join(self.args.output_dir, f"eval-{step}")
        self.predictor.run(_unwrap(self.model), self.eval_data, out_dir, metric_key_prefix, resume=False, table=False)
        scores = None
        if self.is_world_process_zero():
            with open(os.path.join(out_dir, "scores.json"), encoding="utf-8") as f:
                scores = json.load(f)
        if self.args.world_size > 1:  # every rank takes part in choosing the best checkpoint
            box = [scores]
            torch.distributed.broadcast_object_list(box, src=0)
            scores = box[0]
        metrics[f"{metric_key_prefix}_score"] = scores["score"]
        for task, m in scores["tasks"].items():
            metrics[f"{metric_key_prefix}_{task}"] = m[main_metric(task)]
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - start, 4)
        if self.is_world_process_zero():
            print(self._evaluation_line(step, metrics, metric_key_prefix, out_dir), flush=True)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _evaluation_line(self, step: int, metrics: dict, prefix: str, out_dir: str) -> str:
        """`eval step 400: score 0.3123 (best 0.3123 at step 400), loss 1.23 | CMeEE-V2 0.41, ...`"""
        score = metrics[f"{prefix}_score"]
        history = [(h[f"{prefix}_score"], -h["step"]) for h in self.state.log_history if f"{prefix}_score" in h]
        best, best_step = max(history + [(score, -step)])
        tasks = ", ".join(f"{t} {metrics[f'{prefix}_{t}']:.3f}" for t in logged_tasks(metrics, prefix))
        loss = f", loss {metrics[f'{prefix}_loss']:.4f}" if f"{prefix}_loss" in metrics else ""
        return (f"{prefix} step {step}: official score {score:.4f} (best {best:.4f} at step {-best_step}){loss} | "
                f"{tasks} | {out_dir}")

    def _load_best_model(self) -> None:
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:  # the engines' own files
            return super()._load_best_model()
        logger.info("Loading the best checkpoint, %s (%s %s)", self.state.best_model_checkpoint,
                    self.args.metric_for_best_model, self.state.best_metric)
        _unwrap(self.model).load_checkpoint(self.state.best_model_checkpoint)

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


def logged_tasks(metrics: dict, prefix: str = "eval") -> list[str]:
    """The PromptCBLUE tasks whose metric an evaluation logged (`eval_<task>`)."""
    return [t for t in ALL_TASKS if f"{prefix}_{t}" in metrics]


class ScoreCurveCallback(TrainerCallback):
    """score_curve.png: the official score and each task's metric against step, the best step
    marked; redrawn after every evaluation's checkpoint, so it is there while training runs."""

    def on_save(self, args, state, control, **kwargs):
        self._draw(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        self._draw(args, state)

    @staticmethod
    def _draw(args, state) -> None:
        evals = [h for h in state.log_history if "eval_score" in h]
        if not state.is_world_process_zero or not evals:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [h["step"] for h in evals]
        tasks = logged_tasks(evals[-1])
        fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
        cmap = plt.get_cmap("tab20")
        for i, k in enumerate(tasks):
            ax.plot(steps, [h.get(f"eval_{k}") for h in evals], color=cmap(i % 20), linewidth=1, alpha=0.75, label=k)
        ax.plot(steps, [h["eval_score"] for h in evals], color="black", linewidth=2.5, marker="o", label="overall score")
        best = state.best_global_step or max(evals, key=lambda h: h["eval_score"])["step"]
        best_score = next((h["eval_score"] for h in evals if h["step"] == best), None)
        if best_score is not None:
            ax.axvline(best, color="tab:red", linestyle="--", alpha=0.6)
            ax.annotate(f"best: step {best}, {best_score:.3f}", (best, best_score), textcoords="offset points",
                        xytext=(6, 8), color="tab:red")
        ax.set_xlabel("step")
        ax.set_ylabel("official PromptCBLUE metric (dev)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax.set_title(f"Official score during training ({os.path.basename(os.path.abspath(args.output_dir))})")
        fig.tight_layout()
        path = os.path.join(args.output_dir, "score_curve.png")
        fig.savefig(path + ".tmp.png")
        os.replace(path + ".tmp.png", path)
        plt.close(fig)


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
