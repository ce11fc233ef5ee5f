"""The prediction loop that main.py (--do_eval / --do_predict) and the Trainer (the official
score every --eval_steps) share: a data file -> batched generation, sharded over the ranks of
a distributed run, with a resumable progress log -> prediction files -> official scores.

    predictor = Predictor(tokenizer, model_args, data_args, gen_args, training_args)
    data = predictor.load(data_file, "validation", max_samples)     # records, prompt ids, grammars
    metrics = predictor.run(model, data, out_dir, "eval")           # every process calls it

Rank 0 merges the ranks' logs and scores; the other ranks return timing metrics only.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

import torch

from cblue.dataset import load_records_dataset, tokenize_for_generation
from cblue.outputs import PredictionLog, merge_logs, write_prediction_files
from chatglm.decode import compile_by_default
from chatglm.generation import GenerationSettings, constraint_for, generate
from chatglm.progress import Progress

logger = logging.getLogger("prediction")


@dataclass
class PredictionData:
    """One data file, ready to generate for: its records, prompt ids, target texts and the
    answer grammar of each record (None when decoding is free)."""
    path: str
    split: str
    max_samples: int | None
    records: list[dict]
    prompts: list[list[int]]
    labels: list[str]
    grammars: list | None


class Predictor:
    def __init__(self, tokenizer, model_args, data_args, gen_args, training_args):
        self.tokenizer, self.model_args, self.data_args = tokenizer, model_args, data_args
        self.gen_args, self.training_args = gen_args, training_args

    def settings(self, model) -> GenerationSettings:
        g, args = self.gen_args, self.training_args
        return GenerationSettings(
            max_new_tokens=g.max_new_tokens or self.data_args.val_max_target_length,
            do_sample=g.do_sample, top_p=g.top_p, top_k=g.top_k, temperature=g.temperature,
            repetition_penalty=g.repetition_penalty, num_beams=self.data_args.num_beams or 1, seed=args.seed,
            compiled=compile_by_default(model.device) if g.compile_generation is None else g.compile_generation)

    def load(self, data_file: str, split: str, max_samples: int | None = None,
             stratified: bool = False) -> PredictionData:
        """`stratified`: `max_samples` taken evenly over the tasks (what evaluation uses), not
        the first N records."""
        d = self.data_args
        ds, records = load_records_dataset(data_file, d.prompt_column, d.response_column, d.history_column, False,
                                           max_samples, stratified)
        feats, stats = tokenize_for_generation(ds, self.tokenizer, d, d.preprocessing_num_workers, d.overwrite_cache)
        logger.info("%s %s: %d records, %d prompts truncated", split, data_file, len(records),
                    stats["truncated_prompts"])
        labels = [self.tokenizer.decode(ids).strip() for ids in feats["label_ids"]]
        return PredictionData(data_file, split, max_samples, records, feats["input_ids"], labels,
                              self.answer_grammars(records, data_file))

    def answer_grammars(self, records: list[dict], data_file: str) -> list | None:
        """The decoding constraint of every record (cblue/answer_grammar.py), or None when off."""
        if not self.gen_args.constrained_decoding:
            return None
        from cblue.answer_grammar import grammars_for_records
        from cblue.tasks import detect_version

        try:
            version = self.gen_args.version or detect_version(r.get("task_dataset") for r in records)
        except ValueError:
            version = "v2"  # mixed names: scoring says so; the constraint takes each task by its name
        grammars = grammars_for_records(records, version, self.data_args.prompt_column, self.tokenizer.can_spell,
                                        data_file)
        logger.info("Constrained decoding: %d of %d records have an answer grammar (--constrained_decoding false "
                    "for free text)", sum(g is not None for g in grammars), len(records))
        return grammars

    def run(self, model, data: PredictionData, out_dir: str, prefix: str = "predict", resume: bool = True,
            table: bool = True) -> dict:
        """Generate for every record of `data`, write the prediction files and scores into
        out_dir; return metrics (`{prefix}_score`, each task's metric, ...) on rank 0.
        `resume`: keep what an interrupted run of the same settings already generated."""
        os.makedirs(out_dir, exist_ok=True)
        settings = self.settings(model)
        rank, world = self.training_args.process_index, self.training_args.world_size
        m, d = self.model_args, self.data_args
        fingerprint = json.dumps([self.gen_args.constrained_decoding, os.path.abspath(m.model_name_or_path),
                                  m.ptuning_checkpoint, model.pre_seq_len, m.quantization_bit,
                                  os.path.abspath(data.path), os.path.getmtime(data.path), data.max_samples,
                                  vars(settings), world, d.max_source_length, d.source_truncation_side])
        logs = [os.path.join(out_dir, f".{prefix}_progress.rank{r}.jsonl") for r in range(world)]
        if not resume and os.path.exists(logs[rank]):
            os.remove(logs[rank])
        log = PredictionLog(logs[rank], fingerprint)
        mine = [i for i in range(len(data.prompts)) if i % world == rank and i not in log.done]
        mine.sort(key=lambda i: len(data.prompts[i]))  # similar lengths together: little padding
        batch_size = self.training_args.per_device_eval_batch_size
        tok = self.tokenizer
        start = time.time()
        shown = f"{prefix} {data.split}" + (f" (rank 0, 1/{world} of the records)" if world > 1 else "")
        with Progress(len(mine), shown, enabled=rank == 0) as progress:
            for b in range(0, len(mine), batch_size):
                idx = mine[b:b + batch_size]
                constraint = constraint_for(model, tok, [data.grammars[i] for i in idx]) if data.grammars else None
                for i, ids in zip(idx, generate(model, [data.prompts[i] for i in idx], settings, tok.stop_ids,
                                                tok.pad_token_id, constraint)):
                    log.add(i, tok.decode(ids).strip())
                log.flush()
                progress.update(len(idx))
        runtime = time.time() - start
        log.close()
        if world > 1:
            torch.distributed.barrier()
        decoding = "constrained" if self.gen_args.constrained_decoding else "free"
        metrics = {f"{prefix}_decoding": decoding, f"{prefix}_runtime": round(runtime, 4),
                   f"{prefix}_samples": len(data.prompts),
                   f"{prefix}_samples_per_second": round(len(mine) / runtime, 3) if runtime > 0 else None,
                   **peak_gpu_memory(prefix)}
        if rank != 0:
            return metrics
        done = merge_logs(logs, fingerprint)
        predictions = [done[i] for i in range(len(data.prompts))]
        write_prediction_files(out_dir, data.records, predictions, data.labels, d.response_column)
        from cblue.evaluate import evaluate_predictions

        metrics.update(evaluate_predictions(out_dir, data.records, predictions, data.labels, d, self.gen_args.version,
                                            prefix, decoding, table))
        for path in logs:
            os.remove(path)
        return metrics


def peak_gpu_memory(prefix: str) -> dict:
    """Peak GPU memory of this process so far (what users size their card by); none on a CPU."""
    if not torch.cuda.is_available():
        return {}
    return {f"{prefix}_peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)}
