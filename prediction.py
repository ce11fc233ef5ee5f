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
from chatglm.constraint import engine_for as grammar_engine_for
from chatglm.decode import compile_by_default
from chatglm.engine import Request
from chatglm.generation import GenerationSettings, engine_for, model_adapter
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


AS_LOADED = "<the model as loaded>"  # a Target's adapter: whatever the model holds (its prefix, LoRA, or none)


@dataclass
class Target:
    """One set of predictions of a pass: the rows that run on `adapter` (AS_LOADED, None for
    the base, or the name of a prefix given to `run_many`), written into `out_dir`.
    `checkpoint` is what its progress log's fingerprint names."""
    out_dir: str
    adapter: str | None = AS_LOADED
    checkpoint: str | None = None


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
        target = Target(out_dir, AS_LOADED, self.model_args.ptuning_checkpoint)
        return self.run_many(model, data, [target], prefix, resume, table)[0]

    def run_many(self, model, data: PredictionData, targets: list[Target], prefix: str = "predict",
                 resume: bool = True, table: bool = True, prefixes: dict | None = None) -> list[dict]:
        """`run` for several targets in one pass of the engine: every record once per target,
        rows of all targets in one batch (--compare_base: the base and the tuned model;
        several checkpoints of a run: one prefix each, given in `prefixes`, name -> per-layer
        key/values). The engine has --per_device_eval_batch_size slots per target, and each
        target's files and scores are what its own run would give."""
        settings = self.settings(model)
        rank, world = self.training_args.process_index, self.training_args.world_size
        batch_size = self.training_args.per_device_eval_batch_size
        engine = engine_for(model, batch_size * len(targets), settings.compiled)
        for name, key_values in (prefixes or {}).items():
            engine.add_prefix(name, key_values)
        adapters = [model_adapter(engine) if t.adapter == AS_LOADED else t.adapter for t in targets]
        logs = []
        for t, adapter in zip(targets, adapters):
            os.makedirs(t.out_dir, exist_ok=True)
            prefix_len = engine.adapters[adapter].prefix_len if adapter in engine.adapters else 0
            paths = [os.path.join(t.out_dir, f".{prefix}_progress.rank{r}.jsonl") for r in range(world)]
            if not resume and os.path.exists(paths[rank]):
                os.remove(paths[rank])
            logs.append((paths, PredictionLog(paths[rank], self._fingerprint(data, settings, t.checkpoint,
                                                                              prefix_len, world))))
        mine = [i for i in range(len(data.prompts)) if i % world == rank]
        # Shortest prompts first, similar lengths admitted together: little padding. (Longest
        # first, which starts the long-answer dialogue tasks early, measured slower here: more
        # prompt passes and more decode steps on 96 real dev records; BENCHMARKS.md.)
        mine.sort(key=lambda i: len(data.prompts[i]))
        work = [(k, i) for i in mine for k, (_, log) in enumerate(logs) if i not in log.done]
        tok = self.tokenizer
        grammars = grammar_engine_for(tok, model.base.config.vocab_size) if data.grammars else None
        start = time.time()
        shown = f"{prefix} {data.split}" + (f" (rank 0, 1/{world} of the records)" if world > 1 else "")
        if len(targets) > 1:
            shown += f", {len(targets)} models"
        was_training = model.training
        model.eval()
        with Progress(len(work), shown, enabled=rank == 0) as progress:
            queue, done = iter(work), 0
            while True:
                while len(engine.scheduler.waiting) < engine.runner.num_slots:  # a few ahead: grammars built late
                    item = next(queue, None)
                    if item is None:
                        break
                    k, i = item
                    constraint = grammars.row(data.grammars[i]) if grammars is not None else None
                    engine.add(Request(data.prompts[i], settings, frozenset(tok.stop_ids), adapters[k], constraint,
                                       tag=item))
                if not engine.busy:
                    break
                for event in engine.step():
                    if event.finished:
                        k, i = event.request.tag
                        logs[k][1].add(i, tok.decode(event.request.tokens).strip())
                        done += 1
                        progress.update(1)
                        if done % batch_size == 0:
                            for _, log in logs:
                                log.flush()
        model.train(was_training)
        runtime = time.time() - start
        for _, log in logs:
            log.flush()
            log.close()
        if world > 1:
            torch.distributed.barrier()
        decoding = "constrained" if self.gen_args.constrained_decoding else "free"
        stats = engine.stats
        timing = {f"{prefix}_decoding": decoding, f"{prefix}_runtime": round(runtime, 4),
                  f"{prefix}_samples": len(data.prompts),
                  f"{prefix}_samples_per_second": round(len(mine) / runtime, 3) if runtime > 0 else None,
                  f"{prefix}_decode_steps": stats.decode_steps, f"{prefix}_slot_use": round(stats.slot_use, 4),
                  **peak_gpu_memory(prefix)}
        if rank != 0:
            return [dict(timing) for _ in targets]
        from cblue.evaluate import evaluate_predictions

        results = []
        for t, (paths, log) in zip(targets, logs):
            metrics = dict(timing)
            done_all = merge_logs(paths, log.fingerprint)
            predictions = [done_all[i] for i in range(len(data.prompts))]
            write_prediction_files(t.out_dir, data.records, predictions, data.labels, self.data_args.response_column)
            metrics.update(evaluate_predictions(t.out_dir, data.records, predictions, data.labels, self.data_args,
                                                self.gen_args.version, prefix, decoding, table))
            for path in paths:
                os.remove(path)
            results.append(metrics)
        return results

    def _fingerprint(self, data: PredictionData, settings: GenerationSettings, checkpoint: str | None,
                     prefix_len: int, world: int) -> str:
        """What a progress log belongs to: a log of other settings is started afresh."""
        m, d = self.model_args, self.data_args
        return json.dumps([self.gen_args.constrained_decoding, os.path.abspath(m.model_name_or_path), checkpoint,
                           prefix_len, m.quantization_bit, os.path.abspath(data.path), os.path.getmtime(data.path),
                           data.max_samples, vars(settings), world, d.max_source_length, d.source_truncation_side])


def peak_gpu_memory(prefix: str) -> dict:
    """Peak GPU memory of this process so far (what users size their card by); none on a CPU."""
    if not torch.cuda.is_available():
        return {}
    return {f"{prefix}_peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)}
