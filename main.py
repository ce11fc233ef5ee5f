#!/usr/bin/env python
"""P-tuning v2 of ChatGLM2-6B on PromptCBLUE: train, evaluate, predict.

The flow, top to bottom: parse flags -> logging -> seed -> tokenizer -> model (+ prefix) ->
train (transformers' Trainer, prefix-only checkpoints; every --eval_steps the official score on
the validation file, which picks the best checkpoint) -> evaluate / predict (prediction.py:
batched generation, PromptCBLUE post-processing and official scores) -> save metrics.
Flags and outputs are those of THUDM's ChatGLM2-6B ptuning/main.py; see README for what differs.
"""
import gc
import json
import logging
import os
import sys

import torch
import transformers
from transformers import HfArgumentParser, Seq2SeqTrainingArguments, set_seed

from arguments import (DataTrainingArguments, GenerationArguments, LegacyTrainingArguments, ModelArguments,
                       check_training_numbers)
from cblue.records import RecordError
from cblue.dataset import load_records_dataset, records_table, split_tasks, tokenize_for_training
from cblue.outputs import save_json
from chatglm.checkpoint import inference_dtype, last_complete_checkpoint
from chatglm.cli import run_cli
from chatglm.memory import check_before_training, require_fit, zero_stage
from chatglm.model import ChatGLM, base_dtype, checkpoint_prefix_key_values
from chatglm.tokenizer import load_tokenizer
from prediction import AS_LOADED, Predictor, Target, peak_gpu_memory
from trainer_seq2seq import LossCurveCallback, PadCollator, PrefixTrainer, ScoreCurveCallback, ShardingReport

logger = logging.getLogger("main")


def parse_args():
    if not torch.cuda.is_available():
        # Lets torchrun on a CPU-only machine run real DDP (gloo) instead of N independent runs.
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, GenerationArguments,
                               LegacyTrainingArguments, Seq2SeqTrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        return parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    argv = sys.argv[1:]
    if not torch.cuda.is_available() and "--use_cpu" not in argv:
        argv.append("--use_cpu")  # lets --bf16 through on a CPU (transformers asks for a GPU otherwise)
    return parser.parse_args_into_dataclasses(args=argv + evaluation_defaults(argv))


def evaluation_defaults(argv: list[str]) -> list[str]:
    """Flags implied by the evaluation flags given, added before the parse so that transformers'
    own checks (save_steps a multiple of eval_steps, ...) see them:
    - `--eval_steps N` means evaluating every N steps (transformers also wants --eval_strategy steps);
    - evaluating every steps without `--eval_steps`: at every checkpoint (`--save_steps`);
    - evaluating during training: the official score picks the best checkpoint (transformers'
      default would be the loss);
    - `--eval_strategy no` (e.g. passed to train.sh, which asks for the best checkpoint): no best."""
    def last(flag):  # the flag's last value; "" for a bare (boolean) flag; None if absent
        nxt = lambda i: argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
        values = [a.split("=", 1)[1] if "=" in a else nxt(i) for i, a in enumerate(argv)
                  if a == flag or a.startswith(flag + "=")]
        return values[-1] if values else None

    extra = []
    strategy = last("--eval_strategy")
    if strategy is None and last("--eval_steps") is not None:
        extra += ["--eval_strategy", "steps"]
        strategy = "steps"
    if strategy == "steps" and last("--eval_steps") is None and last("--save_steps") is not None:
        extra += ["--eval_steps", last("--save_steps")]
    if strategy not in (None, "no") and last("--metric_for_best_model") is None:
        extra += ["--metric_for_best_model", "score"]
    if strategy in (None, "no") and last("--load_best_model_at_end") in ("", "true", "True"):
        extra += ["--load_best_model_at_end", "false"]  # nothing is evaluated, so there is no best
    return extra


def setup_logging(training_args):
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        datefmt="%m/%d/%Y %H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)])
    level = logging.INFO if training_args.should_log else logging.WARNING
    for name in ("main", "prediction", "cblue", "chatglm", "trainer_seq2seq"):
        logging.getLogger(name).setLevel(level)
    transformers.utils.logging.set_verbosity_warning()


def load_model(model_args, training_args, for_training: bool) -> ChatGLM:
    lora = for_training and model_args.lora_rank
    if lora and model_args.pre_seq_len:
        raise ValueError("--pre_seq_len and --lora_rank are exclusive: P-tuning trains a prefix, LoRA trains "
                         "adapters; pass one of them")
    # Nothing that tunes (no prefix, adapter or checkpoint of either): the whole model trains.
    full_fine_tuning = for_training and not (model_args.pre_seq_len or lora or model_args.ptuning_checkpoint)
    if full_fine_tuning and model_args.quantization_bit:
        raise ValueError("--quantization_bit needs --pre_seq_len or --lora_rank: quantized weights cannot be "
                         "fine-tuned")
    dtype = base_dtype(training_args, full_fine_tuning)
    if not for_training and not (training_args.bf16 or training_args.fp16):
        # Prediction: the folder's own precision (fp16 for THUDM's folders; bf16 on a CPU with bf16 units)
        dtype = inference_dtype(model_args.model_name_or_path, training_args.device)
    require_fit(model_args.model_name_or_path, dtype, training_args.device, model_args.quantization_bit,
                flags="--bf16 / --fp16")
    model = ChatGLM.from_pretrained(model_args.model_name_or_path, pre_seq_len=model_args.pre_seq_len,
                                     prefix_projection=model_args.prefix_projection,
                                     dtype=dtype, device=training_args.device,
                                     seed=training_args.seed, quantization_bit=model_args.quantization_bit,
                                     ptuning_checkpoint=model_args.ptuning_checkpoint)
    if lora and model.lora_config is None:  # (an adapter given by --ptuning_checkpoint trains on)
        from chatglm.lora import target_modules

        model.add_lora(model_args.lora_rank, model_args.lora_alpha or 2.0 * model_args.lora_rank,
                       model_args.lora_dropout, target_modules(model_args.lora_target), seed=training_args.seed)
    if model.lora_config is not None:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info("LoRA rank %d on %s: %d trainable parameters", model.lora_config.r,
                    ",".join(sorted(model.lora_config.target_modules)), trainable)
    logger.info("Base model: %s on %s", model.dtype, training_args.device)
    if for_training and not model.is_tuned:
        model.base.requires_grad_(True)  # no prefix, no adapters: full fine-tuning, as the original
    return model


def train(model, tokenizer, model_args, data_args, gen_args, legacy_args, training_args) -> PrefixTrainer:
    train_ds, records = load_records_dataset(data_args.train_file, data_args.prompt_column,
                                             data_args.response_column, data_args.history_column, True,
                                             data_args.max_train_samples)
    if not any(r[data_args.response_column] for r in records):
        raise RecordError(f"{data_args.train_file}: every record's {data_args.response_column!r} is empty: "
                          "nothing to train on (--response_column names the answer field)")
    with training_args.main_process_first(desc="tokenizing"):
        train_ds, stats = tokenize_for_training(train_ds, tokenizer, data_args, data_args.preprocessing_num_workers,
                                                data_args.overwrite_cache)
    logger.info("Training data %s: %d records, %d skipped (empty target), %d prompts truncated to %d tokens "
                "(side: %s)", data_args.train_file, stats["records"], stats["skipped_empty_target"],
                stats["truncated_prompts"], data_args.max_source_length, data_args.source_truncation_side)
    if stats["truncated_targets"]:
        # A cut target ends in eos mid-answer: the model learns to stop there (half a Text2DT node,
        # an unfinished line), and constrained decoding then has to finish what it never saw.
        logger.warning("%d of %d targets are longer than --max_target_length %d and are cut: raise it to cover "
                       "the answers", stats["truncated_targets"], stats["records"], data_args.max_target_length)
    if model_args.prefix_init == "train_rows" and model.prefix_encoder is not None and not model_args.ptuning_checkpoint:
        from chatglm.prefix import init_from_activations

        rows = [t for row in train_ds.select(range(min(64, len(train_ds))))["input_ids"] for t in row]
        init_from_activations(model.prefix_encoder, model.base, rows)
    train_ds, tasks = split_tasks(train_ds)
    task_sampler = None
    if data_args.task_sampling:
        if legacy_args.group_by_length or training_args.train_sampling_strategy != "random":
            raise ValueError("--task_sampling and --group_by_length / --train_sampling_strategy both choose the "
                             "order of the training rows: pass one of them")
        from cblue.task_sampling import TaskSampler

        task_sampler = TaskSampler(tasks, data_args.task_sampling, training_args.data_seed or training_args.seed)
        logger.info("%s", task_sampler.describe())
    predictor, eval_data, eval_ds = evaluation_during_training(tokenizer, model_args, data_args, gen_args,
                                                               training_args)

    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None and not legacy_args.overwrite_output_dir:
        checkpoint = last_complete_checkpoint(training_args.output_dir)
        if checkpoint:
            logger.info("Resuming from %s (pass --overwrite_output_dir to start afresh)", checkpoint)
    if training_args.fsdp_plugin_args is not None:
        # Checkpoints are the engine's sharded files (each rank writes its part: no full optimizer
        # state gathered on one process) plus the model gathered beside them (PrefixTrainer.save_model),
        # which is what FULL_STATE_DICT would have given.
        if training_args.fsdp_plugin_args.get("state_dict_type") == "FULL_STATE_DICT" and \
                "state_dict_type" in (training_args.fsdp_config or {}):
            logger.warning("fsdp_config state_dict_type FULL_STATE_DICT: checkpoints are sharded instead, with the "
                           "whole model gathered beside them")
        training_args.fsdp_plugin_args["state_dict_type"] = "SHARDED_STATE_DICT"
    fsdp_checkpoints = bool((training_args.fsdp_config or {}).get("activation_checkpointing"))
    if training_args.device.type == "cuda" and not fsdp_checkpoints:
        # The original always checkpoints on a GPU; it is what fits 6B on 32 GB. The Trainer then
        # calls model.activation_checkpointing_enable() (--gradient_checkpointing is its old name).
        training_args.activation_checkpointing = training_args.gradient_checkpointing = True
    if legacy_args.group_by_length:
        training_args.train_sampling_strategy = "group_by_length"
    if training_args.ddp_find_unused_parameters is None:
        training_args.ddp_find_unused_parameters = False  # every prefix parameter is used every step
    if training_args.device.type == "cpu":
        training_args.dataloader_pin_memory = False

    callbacks = [LossCurveCallback(), ScoreCurveCallback()] + ([ShardingReport()] if training_args.fsdp else [])
    trainer = PrefixTrainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
                            data_collator=PadCollator(tokenizer.pad_token_id), callbacks=callbacks,
                            predictor=predictor, eval_data=eval_data, task_sampler=task_sampler)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = dict(result.metrics, train_samples=len(train_ds), **{f"train_{k}": v for k, v in stats.items()},
                   **peak_gpu_memory("train"))
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        what = ("LoRA adapter, PEFT format" if model.lora_config is not None else
                "prefix only" if model.prefix_encoder is not None else "whole model, original layout")
        logger.info("Checkpoints (%s) are in %s", what, training_args.output_dir)
        if trainer.state.best_model_checkpoint:
            logger.info("Best checkpoint: %s (%s %.4f); evaluate.sh, chat.py, the web demo and export take it",
                        trainer.state.best_model_checkpoint, training_args.metric_for_best_model,
                        trainer.state.best_metric)
    return trainer


def evaluation_during_training(tokenizer, model_args, data_args, gen_args, training_args):
    """(predictor, the validation records to generate for, their rows for the loss) when the
    Trainer evaluates every --eval_steps; (None, None, None) otherwise."""
    if training_args.eval_strategy == "no":
        return None, None, None
    if data_args.validation_file is None:
        raise ValueError("--eval_steps / --eval_strategy need a --validation_file (with targets) to score")
    if training_args.fsdp or zero_stage(training_args.deepspeed) == 3:
        # Generation on sharded weights needs every rank in every forward step, which answers of
        # different lengths do not give; the loss alone could be, but not the best checkpoint by score.
        raise ValueError("the official score during training needs whole weights on every process (one process, "
                         "DDP or ZeRO-2): with FSDP or ZeRO-3 evaluate the checkpoints with evaluate.sh instead "
                         "(--eval_strategy no)")
    predictor = Predictor(tokenizer, model_args, data_args, gen_args, training_args)
    eval_data = predictor.load(data_args.validation_file, "validation", data_args.max_eval_samples, stratified=True)
    if not any(r.get(data_args.response_column) for r in eval_data.records):
        raise ValueError(f"{data_args.validation_file}: no record has a {data_args.response_column!r}: nothing to "
                         "score during training")
    ds = records_table(eval_data.records, data_args.prompt_column, data_args.response_column, data_args.history_column)
    ds, _ = tokenize_for_training(ds, tokenizer, data_args, data_args.preprocessing_num_workers,
                                  data_args.overwrite_cache)
    eval_ds, _ = split_tasks(ds)
    logger.info("Every %s steps: the official score on %d validation records (%s) and the loss on them; the best "
                "checkpoint by %s", training_args.eval_steps, len(eval_data.records), data_args.validation_file,
                training_args.metric_for_best_model)
    return predictor, eval_data, eval_ds


def main():
    model_args, data_args, gen_args, legacy_args, training_args = parse_args()
    check_training_numbers(training_args)
    setup_logging(training_args)
    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required (a chatglm2-6b folder)")
    set_seed(training_args.seed)
    if legacy_args.logging_dir:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", legacy_args.logging_dir)
    if not any(a.startswith("--report_to") for a in sys.argv) and _tensorboard_installed():
        training_args.report_to = ["tensorboard"]  # transformers 5 reports nowhere by default
    tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path, model_args.prompt_format,
                               model_args.model_family)
    logger.info("%s", tokenizer.describe())

    first_checkpoint, extra_checkpoints = split_checkpoints(model_args, training_args, gen_args)
    model_args.ptuning_checkpoint = first_checkpoint
    trainer = None
    if training_args.do_train:
        # The peak per device from the flags and the model's config, before the weights are read
        # (a few seconds of simulation: on a CPU, where nothing is at stake, when asked).
        if training_args.device.type == "cuda" or model_args.print_memory_estimate:
            check_before_training(model_args, data_args, training_args, logger.info)
        model = load_model(model_args, training_args, for_training=True)
        trainer = train(model, tokenizer, model_args, data_args, gen_args, legacy_args, training_args)
    else:
        model = None

    predictor = Predictor(tokenizer, model_args, data_args, gen_args, training_args)
    for enabled, split, data_file, max_samples, prefix in (
            (training_args.do_eval, "validation", data_args.validation_file, data_args.max_eval_samples, "eval"),
            (training_args.do_predict, "test", data_args.test_file, data_args.max_predict_samples, "predict")):
        if not enabled:
            continue
        if data_file is None:
            raise ValueError(f"--do_{'eval' if prefix == 'eval' else 'predict'} needs a {split} file")
        if prefix == "eval" and trainer is not None and _already_evaluated(trainer, training_args):
            continue
        if model is None:
            model = load_model(model_args, training_args, for_training=False)
        data = predictor.load(data_file, split, max_samples, stratified=prefix == "eval")
        if extra_checkpoints:
            # Several checkpoints of a run in one pass: the first loaded as usual, the others'
            # prefixes beside it; each checkpoint's rows share the batch, its files go to its own folder.
            targets = [Target(step_dir(training_args.output_dir, first_checkpoint), AS_LOADED, first_checkpoint)]
            prefixes = {}
            for ckpt in extra_checkpoints:
                prefixes[ckpt] = checkpoint_prefix_key_values(model, ckpt)
                targets.append(Target(step_dir(training_args.output_dir, ckpt), ckpt, ckpt))
            for t, metrics in zip(targets, predictor.run_many(model, data, targets, prefix, prefixes=prefixes)):
                if training_args.process_index == 0:
                    save_json(os.path.join(t.out_dir, f"{prefix}_results.json"), metrics)
                    _update_all_results(t.out_dir, metrics)
                    logger.info("%s %s: score %s", t.checkpoint, prefix, metrics.get(f"{prefix}_score"))
            continue
        if gen_args.compare_base:
            if not model.is_tuned:
                raise ValueError("--compare_base needs a tuned checkpoint (prefix or LoRA): pass --ptuning_checkpoint")
            # One pass: each record's base row (the same loaded weights, no prefix, adapter off)
            # beside its tuned row, in the same batch.
            targets = [Target(os.path.join(training_args.output_dir, "base"), None, None),
                       Target(training_args.output_dir, AS_LOADED, model_args.ptuning_checkpoint)]
            metrics = predictor.run_many(model, data, targets, prefix)[1]
        else:
            metrics = predictor.run(model, data, training_args.output_dir, prefix)
        if gen_args.compare_base and training_args.process_index == 0:
            compare(training_args.output_dir, data.records, metrics, data_args.response_column)
        if training_args.process_index == 0:
            save_json(os.path.join(training_args.output_dir, f"{prefix}_results.json"), metrics)
            _update_all_results(training_args.output_dir, metrics)
            logger.info("%s metrics: %s", prefix, {k: v for k, v in metrics.items() if not isinstance(v, dict)})
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # All ranks leave together, with no collective in flight: a gloo work still finishing on
        # the group's threads when the group is torn down needs the GIL the tearing thread holds
        # (a deadlock seen at exit of a rank whose peer had left first). Then the group is
        # destroyed; without that, gloo's threads can outlive the interpreter and abort the
        # process at exit ("terminate called without an active exception", SIGABRT).
        torch.distributed.barrier()
        trainer = model = None
        gc.collect()  # DDP's reducer and its group reference go now, on this thread, groups idle
        torch.distributed.destroy_process_group()


def split_checkpoints(model_args, training_args, gen_args) -> tuple[str | None, list[str]]:
    """--ptuning_checkpoint A,B,...: several P-tuning checkpoints scored in one pass (the first
    loaded, the others' prefixes beside it); --output_dir then names each one's folder with
    {step}, the number ending the checkpoint's folder name (evaluate.sh STEP=all)."""
    spec = model_args.ptuning_checkpoint
    if not spec or "," not in spec:
        return spec, []
    checkpoints = [c for c in spec.split(",") if c]
    if training_args.do_train:
        raise ValueError("--ptuning_checkpoint with several folders is for --do_eval / --do_predict, not training")
    if gen_args.compare_base:
        raise ValueError("--compare_base takes one --ptuning_checkpoint; score several checkpoints without it")
    if "{step}" not in training_args.output_dir:
        raise ValueError(f"--ptuning_checkpoint names {len(checkpoints)} checkpoints: --output_dir must hold {{step}} "
                         f"(each checkpoint's folder), got {training_args.output_dir}")
    return checkpoints[0], checkpoints[1:]


def step_dir(template: str, checkpoint: str) -> str:
    """--output_dir with {step} replaced by the number ending the checkpoint folder's name."""
    name = os.path.basename(os.path.normpath(checkpoint))
    return template.replace("{step}", name.rsplit("-", 1)[-1])


def _already_evaluated(trainer, training_args) -> bool:
    """After training that evaluated every --eval_steps: the final model (the best checkpoint
    with --load_best_model_at_end, else the last step) was scored already if its step was;
    eval_results.json then holds that evaluation instead of a second identical one."""
    state = trainer.state
    step = state.best_global_step if training_args.load_best_model_at_end and state.best_model_checkpoint \
        else state.global_step
    done = [h for h in state.log_history if h.get("step") == step and "eval_score" in h]
    if not done:
        return False
    if training_args.process_index == 0:
        metrics = dict(done[-1], eval_step=step, eval_dir=os.path.join(training_args.output_dir, f"eval-{step}"))
        save_json(os.path.join(training_args.output_dir, "eval_results.json"), metrics)
        _update_all_results(training_args.output_dir, metrics)
        logger.info("eval: the final model is step %d's, scored during training (%.4f): %s", step,
                    metrics["eval_score"], metrics["eval_dir"])
    return True


def compare(output_dir, records, metrics, response_column):
    """comparison.md / comparison.png from the base/ and the tuned predictions."""
    from cblue.compare import write_comparison

    if not os.path.exists(os.path.join(output_dir, "scores.json")):
        logger.warning("No targets: nothing to compare scores on")
        return
    result = write_comparison(output_dir, records, os.path.join(output_dir, "base"), output_dir,
                              response_column=response_column)
    metrics.update({f"compare_{k}": v for k, v in result.items()})
    logger.info("Base %.4f -> tuned %.4f: %s", result["base_score"], result["tuned_score"],
                os.path.join(output_dir, "comparison.md"))


def _tensorboard_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _update_all_results(output_dir, metrics):
    path = os.path.join(output_dir, "all_results.json")
    combined = json.load(open(path, encoding="utf-8")) if os.path.exists(path) else {}
    combined.update(metrics)
    save_json(path, combined)


if __name__ == "__main__":
    run_cli(main, "main.py")
