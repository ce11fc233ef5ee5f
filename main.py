#!/usr/bin/env python
"""P-tuning v2 of ChatGLM2-6B on PromptCBLUE: train, evaluate, predict.

The flow, top to bottom: parse flags -> logging -> seed -> tokenizer -> model (+ prefix) ->
train (transformers' Trainer, prefix-only checkpoints) -> evaluate / predict (batched greedy
generation, PromptCBLUE post-processing and official scores) -> save metrics.
Flags and outputs are those of THUDM's ChatGLM2-6B ptuning/main.py; see README for what differs.
"""
import json
import logging
import os
import sys
import time

import torch
import transformers
from transformers import HfArgumentParser, Seq2SeqTrainingArguments, set_seed

from arguments import DataTrainingArguments, GenerationArguments, LegacyTrainingArguments, ModelArguments
from cblue.records import RecordError
from cblue.dataset import load_records_dataset, tokenize_for_generation, tokenize_for_training
from cblue.outputs import PredictionLog, merge_logs, save_json, write_prediction_files
from glm2.checkpoint import last_complete_checkpoint
from glm2.cli import run_cli
from glm2.decode import compile_by_default
from glm2.generation import GenerationSettings, constraint_for, generate
from glm2.model import ChatGLM2, base_only
from glm2.progress import Progress
from glm2.tokenizer import ChatGLM2Tokenizer
from trainer_seq2seq import LossCurveCallback, PadCollator, PrefixTrainer, ShardingReport

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
    return parser.parse_args_into_dataclasses(args=argv)


def setup_logging(training_args):
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        datefmt="%m/%d/%Y %H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)])
    level = logging.INFO if training_args.should_log else logging.WARNING
    for name in ("main", "cblue", "glm2", "trainer_seq2seq"):
        logging.getLogger(name).setLevel(level)
    transformers.utils.logging.set_verbosity_warning()


def model_dtype(training_args, full_fine_tuning: bool = False) -> torch.dtype:
    """The dtype of the frozen base: --bf16 / --fp16 on every device, fp16 on CUDA without
    either (as the original), fp32 on a CPU without either. What trains (prefix, LoRA) stays
    fp32 whatever this is; full fine-tuning keeps fp32 master weights and gets half precision
    from the Trainer's autocast instead."""
    if full_fine_tuning:
        return torch.float32
    if training_args.bf16:
        return torch.bfloat16
    if training_args.fp16 or training_args.device.type == "cuda":
        return torch.float16
    return torch.float32


def load_model(model_args, training_args, for_training: bool) -> ChatGLM2:
    lora = for_training and model_args.lora_rank
    if lora and model_args.pre_seq_len:
        raise ValueError("--pre_seq_len and --lora_rank are exclusive: P-tuning trains a prefix, LoRA trains "
                         "adapters; pass one of them")
    # Nothing that tunes (no prefix, adapter or checkpoint of either): the whole model trains.
    full_fine_tuning = for_training and not (model_args.pre_seq_len or lora or model_args.ptuning_checkpoint)
    if full_fine_tuning and model_args.quantization_bit:
        raise ValueError("--quantization_bit needs --pre_seq_len or --lora_rank: quantized weights cannot be "
                         "fine-tuned")
    model = ChatGLM2.from_pretrained(model_args.model_name_or_path, pre_seq_len=model_args.pre_seq_len,
                                     prefix_projection=model_args.prefix_projection,
                                     dtype=model_dtype(training_args, full_fine_tuning), device=training_args.device,
                                     seed=training_args.seed, quantization_bit=model_args.quantization_bit,
                                     ptuning_checkpoint=model_args.ptuning_checkpoint)
    if lora and model.lora_config is None:  # (an adapter given by --ptuning_checkpoint trains on)
        from glm2.lora import target_modules

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


def train(model, tokenizer, model_args, data_args, legacy_args, training_args):
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

    callbacks = [LossCurveCallback()] + ([ShardingReport()] if training_args.fsdp else [])
    trainer = PrefixTrainer(model=model, args=training_args, train_dataset=train_ds,
                            data_collator=PadCollator(tokenizer.pad_token_id), callbacks=callbacks)
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


def predict(model, tokenizer, data_file, split, model_args, data_args, gen_args, training_args,
            max_samples=None, prefix="predict", out_dir=None):
    """Generate for every record of data_file; write the prediction files; return metrics."""
    out_dir = out_dir or training_args.output_dir
    os.makedirs(out_dir, exist_ok=True)
    ds, records = load_records_dataset(data_file, data_args.prompt_column, data_args.response_column,
                                       data_args.history_column, False, max_samples)
    feats, stats = tokenize_for_generation(ds, tokenizer, data_args, data_args.preprocessing_num_workers,
                                           data_args.overwrite_cache)
    prompts, label_ids = feats["input_ids"], feats["label_ids"]
    logger.info("%s %s: %d records, %d prompts truncated", split, data_file, len(prompts), stats["truncated_prompts"])
    settings = GenerationSettings(
        max_new_tokens=gen_args.max_new_tokens or data_args.val_max_target_length,
        do_sample=gen_args.do_sample, top_p=gen_args.top_p, top_k=gen_args.top_k,
        temperature=gen_args.temperature, repetition_penalty=gen_args.repetition_penalty,
        num_beams=data_args.num_beams or 1, seed=training_args.seed,
        compiled=compile_by_default(model.device) if gen_args.compile_generation is None else gen_args.compile_generation)

    grammars = answer_grammars(records, data_args, gen_args, tokenizer, data_file)

    rank, world = training_args.process_index, training_args.world_size
    fingerprint = json.dumps([gen_args.constrained_decoding, os.path.abspath(model_args.model_name_or_path),
                              model_args.ptuning_checkpoint,
                              model.pre_seq_len, model_args.quantization_bit, os.path.abspath(data_file),
                              os.path.getmtime(data_file), max_samples, vars(settings), world,
                              data_args.max_source_length, data_args.source_truncation_side])
    log = PredictionLog(os.path.join(out_dir, f".{prefix}_progress.rank{rank}.jsonl"), fingerprint)
    mine = [i for i in range(len(prompts)) if i % world == rank and i not in log.done]
    mine.sort(key=lambda i: len(prompts[i]))  # similar lengths together: little padding
    batch_size = training_args.per_device_eval_batch_size
    start = time.time()
    shown = f"{prefix} {split}" + (f" (rank 0, 1/{world} of the records)" if world > 1 else "")
    with Progress(len(mine), shown, enabled=rank == 0) as progress:
        for b in range(0, len(mine), batch_size):
            idx = mine[b:b + batch_size]
            constraint = constraint_for(model, tokenizer, [grammars[i] for i in idx]) if grammars else None
            for i, ids in zip(idx, generate(model, [prompts[i] for i in idx], settings, tokenizer.eos_token_id,
                                            tokenizer.pad_token_id, constraint)):
                log.add(i, tokenizer.decode(ids).strip())
            log.flush()
            progress.update(len(idx))
    runtime = time.time() - start
    log.close()
    if world > 1:
        torch.distributed.barrier()
    decoding = "constrained" if gen_args.constrained_decoding else "free"
    metrics = {f"{prefix}_decoding": decoding,
               f"{prefix}_runtime": round(runtime, 4), f"{prefix}_samples": len(prompts),
               f"{prefix}_samples_per_second": round(len(mine) / runtime, 3) if runtime > 0 else None,
               **peak_gpu_memory(prefix)}
    if rank != 0:
        return metrics
    done = merge_logs([os.path.join(out_dir, f".{prefix}_progress.rank{r}.jsonl") for r in range(world)], fingerprint)
    predictions = [done[i] for i in range(len(prompts))]
    labels = [tokenizer.decode(ids).strip() for ids in label_ids]
    write_prediction_files(out_dir, records, predictions, labels, data_args.response_column)
    from cblue.evaluate import evaluate_predictions

    metrics.update(evaluate_predictions(out_dir, records, predictions, labels, data_args, gen_args.version, prefix,
                                        decoding))
    for r in range(world):
        os.remove(os.path.join(out_dir, f".{prefix}_progress.rank{r}.jsonl"))
    return metrics


def answer_grammars(records, data_args, gen_args, tokenizer, data_file):
    """The decoding constraint of every record (cblue/answer_grammar.py), or None when off."""
    if not gen_args.constrained_decoding:
        return None
    from cblue.answer_grammar import grammars_for_records
    from cblue.tasks import detect_version

    try:
        version = gen_args.version or detect_version(r.get("task_dataset") for r in records)
    except ValueError:
        version = "v2"  # mixed names: scoring says so; the constraint takes each task by its name
    grammars = grammars_for_records(records, version, data_args.prompt_column, tokenizer.can_spell, data_file)
    logger.info("Constrained decoding: %d of %d records have an answer grammar (--constrained_decoding false "
                "for free text)", sum(g is not None for g in grammars), len(records))
    return grammars


def main():
    model_args, data_args, gen_args, legacy_args, training_args = parse_args()
    setup_logging(training_args)
    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required (a chatglm2-6b folder)")
    set_seed(training_args.seed)
    if legacy_args.logging_dir:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", legacy_args.logging_dir)
    if not any(a.startswith("--report_to") for a in sys.argv) and _tensorboard_installed():
        training_args.report_to = ["tensorboard"]  # transformers 5 reports nowhere by default
    tokenizer = ChatGLM2Tokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)

    if training_args.do_train:
        model = load_model(model_args, training_args, for_training=True)
        train(model, tokenizer, model_args, data_args, legacy_args, training_args)
    else:
        model = None

    for enabled, split, data_file, max_samples, prefix in (
            (training_args.do_eval, "validation", data_args.validation_file, data_args.max_eval_samples, "eval"),
            (training_args.do_predict, "test", data_args.test_file, data_args.max_predict_samples, "predict")):
        if not enabled:
            continue
        if data_file is None:
            raise ValueError(f"--do_{'eval' if prefix == 'eval' else 'predict'} needs a {split} file")
        if model is None:
            model = load_model(model_args, training_args, for_training=False)
        if gen_args.compare_base:
            if not model.is_tuned:
                raise ValueError("--compare_base needs a tuned checkpoint (prefix or LoRA): pass --ptuning_checkpoint")
            with base_only(model):  # the same loaded weights, no prefix, adapters off
                predict(model, tokenizer, data_file, split, model_args, data_args, gen_args, training_args,
                        max_samples, prefix, out_dir=os.path.join(training_args.output_dir, "base"))
        metrics = predict(model, tokenizer, data_file, split, model_args, data_args, gen_args, training_args,
                          max_samples, prefix)
        if gen_args.compare_base and training_args.process_index == 0:
            compare(training_args.output_dir, data_file, data_args, max_samples, metrics)
        if training_args.process_index == 0:
            save_json(os.path.join(training_args.output_dir, f"{prefix}_results.json"), metrics)
            _update_all_results(training_args.output_dir, metrics)
            logger.info("%s metrics: %s", prefix, {k: v for k, v in metrics.items() if not isinstance(v, dict)})
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Without this, gloo's worker threads can outlive the interpreter and abort the process at
        # exit ("terminate called without an active exception", SIGABRT), failing a finished run.
        torch.distributed.destroy_process_group()


def compare(output_dir, data_file, data_args, max_samples, metrics):
    """comparison.md / comparison.png from the base/ and the tuned predictions."""
    from cblue.compare import write_comparison
    from cblue.records import read_records

    records = read_records(data_file, data_args.prompt_column, data_args.response_column, data_args.history_column,
                           require_response=False)[:max_samples]
    if not os.path.exists(os.path.join(output_dir, "scores.json")):
        logger.warning("No targets in %s: nothing to compare scores on", data_file)
        return
    result = write_comparison(output_dir, records, os.path.join(output_dir, "base"), output_dir,
                              response_column=data_args.response_column)
    metrics.update({f"compare_{k}": v for k, v in result.items()})
    logger.info("Base %.4f -> tuned %.4f: %s", result["base_score"], result["tuned_score"],
                os.path.join(output_dir, "comparison.md"))


def peak_gpu_memory(prefix: str) -> dict:
    """Peak GPU memory of this process so far (what users size their card by); none on a CPU."""
    if not torch.cuda.is_available():
        return {}
    return {f"{prefix}_peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)}


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
