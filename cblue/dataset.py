"""PromptCBLUE files as tokenized `datasets` splits for training and generation."""
from __future__ import annotations

import logging
from functools import partial

from .features import generation_features, train_features
from .records import read_records

logger = logging.getLogger(__name__)


def stratified_sample(records: list[dict], n: int) -> list[dict]:
    """n records taken evenly over the tasks (`task_dataset`; records without one are one
    group): a task at a time in turn, each task's records in file order, until n are taken or
    a task runs out; returned in file order. The overall score is a mean over tasks, so a
    sample of the first n records (one or two tasks) says little about it."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(str(r.get("task_dataset") or ""), []).append(i)
    queues, taken = [list(reversed(g)) for g in groups.values()], []
    while len(taken) < n and any(queues):
        for q in queues:
            if q and len(taken) < n:
                taken.append(q.pop())
    return [records[i] for i in sorted(taken)]


def load_records_dataset(path: str, prompt_column: str, response_column: str | None,
                         history_column: str | None, require_response: bool, max_samples: int | None = None,
                         stratified: bool = False):
    """Validate `path` line by line; return (a `datasets` table of the columns that are
    tokenized, the records). The table is built from the validated records, so whatever
    other fields a record carries (of any type) never reach pyarrow. `max_samples`: the first
    N records, or with `stratified` N taken evenly over the tasks."""
    records = read_records(path, prompt_column, response_column, history_column, require_response)
    if max_samples is not None:
        records = stratified_sample(records, max_samples) if stratified else records[:max_samples]
    return records_table(records, prompt_column, response_column, history_column), records


def records_table(records: list[dict], prompt_column: str, response_column: str | None, history_column: str | None):
    """The `datasets` table of validated records' tokenized columns (and their task)."""
    import datasets

    columns = {prompt_column: [r[prompt_column] for r in records],
               "task_dataset": [str(r.get("task_dataset") or "") for r in records]}
    if response_column:
        columns[response_column] = [r.get(response_column) or "" for r in records]
    if history_column:
        columns[history_column] = [[list(t) for t in r.get(history_column) or []] for r in records]
    return datasets.Dataset.from_dict(columns)


def tokenize_for_training(ds, tokenizer, data_args, num_proc=None, overwrite_cache=False):
    """Rows of prompt + answer + eos; returns (dataset, stats)."""
    fn = partial(train_features, tokenizer=tokenizer, prompt_column=data_args.prompt_column,
                 response_column=data_args.response_column, history_column=data_args.history_column,
                 max_source_length=data_args.max_source_length, max_target_length=data_args.max_target_length,
                 side=data_args.source_truncation_side, source_prefix=data_args.source_prefix or "")
    out = ds.map(fn, batched=True, num_proc=num_proc, remove_columns=ds.column_names,
                 load_from_cache_file=not overwrite_cache, desc="Tokenizing training data")
    stats = {"records": len(ds), "skipped_empty_target": len(ds) - len(out),
             "truncated_prompts": int(sum(out["truncated"])), "truncated_targets": int(sum(out["target_cut"]))}
    return out.remove_columns(["truncated", "target_cut"]), stats


def split_tasks(ds):
    """(rows without their `task` column, the task of each row): the task sampler's groups."""
    if "task" not in ds.column_names:
        return ds, [""] * len(ds)
    return ds.remove_columns(["task"]), list(ds["task"])


def tokenize_for_generation(ds, tokenizer, data_args, num_proc=None, overwrite_cache=False):
    fn = partial(generation_features, tokenizer=tokenizer, prompt_column=data_args.prompt_column,
                 response_column=data_args.response_column, history_column=data_args.history_column,
                 max_source_length=data_args.max_source_length,
                 max_target_length=data_args.val_max_target_length,
                 side=data_args.source_truncation_side, source_prefix=data_args.source_prefix or "")
    out = ds.map(fn, batched=True, num_proc=num_proc, remove_columns=ds.column_names,
                 load_from_cache_file=not overwrite_cache, desc="Tokenizing prompts")
    stats = {"records": len(ds), "truncated_prompts": int(sum(out["truncated"]))}
    return out, stats
