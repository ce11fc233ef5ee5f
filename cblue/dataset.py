"""PromptCBLUE files as tokenized `datasets` splits for training and generation."""
from __future__ import annotations

import logging
from functools import partial

from .features import generation_features, train_features
from .records import read_records

logger = logging.getLogger(__name__)


def load_records_dataset(path: str, prompt_column: str, response_column: str | None,
                         history_column: str | None, require_response: bool, max_samples: int | None = None):
    """Validate `path` line by line; return (a `datasets` table of the columns that are
    tokenized, the records). The table is built from the validated records, so whatever
    other fields a record carries (of any type) never reach pyarrow."""
    import datasets

    records = read_records(path, prompt_column, response_column, history_column, require_response)
    if max_samples is not None:
        records = records[:max_samples]
    columns = {prompt_column: [r[prompt_column] for r in records]}
    if response_column:
        columns[response_column] = [r.get(response_column) or "" for r in records]
    if history_column:
        columns[history_column] = [[list(t) for t in r.get(history_column) or []] for r in records]
    return datasets.Dataset.from_dict(columns), records


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
