"""Token ids for training and generation, with truncation that keeps the question.

PromptCBLUE prompts put the question and its options at the END (`...选项：…\n答：`). The
original right-truncates at `max_source_length` and so trains and predicts on prompts whose
question is cut off. `left` (our default) keeps the `[gMASK] sop` prefix and the last tokens
of the prompt; `right` is the original behaviour.

The tokenizer is duck-typed (`encode_prompt`, `encode_answer`, `encode_text`, `prefix_ids`,
`suffix_ids`, `eos_token_id`) so this module stays free of model code. Both sides keep the
prompt's fixed ends: the prefix, and the open turn's role token (ChatGLM3, GLM-4).
"""
from __future__ import annotations

TRUNCATION_SIDES = ("left", "right")


def truncate_prompt(ids: list[int], max_len: int, n_special: int, side: str, n_suffix: int = 0) -> list[int]:
    if len(ids) <= max_len:
        return ids
    suffix = ids[len(ids) - n_suffix:]
    if side == "right":
        return ids[:max(max_len - n_suffix, 0)] + suffix
    if side == "left":
        keep = max_len - n_special
        return ids[:n_special] + (ids[-keep:] if keep > 0 else [])
    raise ValueError(f"truncation side {side!r}; choose one of {TRUNCATION_SIDES}")


def prompt_ids(tokenizer, query: str, history, max_source_length: int, side: str) -> tuple[list[int], bool]:
    """(ids, was_truncated) of one prompt."""
    ids = tokenizer.encode_prompt(query, history)
    out = truncate_prompt(ids, max_source_length, len(tokenizer.prefix_ids), side, len(tokenizer.suffix_ids))
    return out, len(out) < len(ids)


def train_features(batch: dict, tokenizer, prompt_column: str, response_column: str,
                   history_column: str | None, max_source_length: int, max_target_length: int,
                   side: str, source_prefix: str = "") -> dict:
    """`datasets.map(batched=True)` function: prompt + answer + eos, labels -100 on the prompt.

    Records with an empty answer become no row (the caller counts them); rows are not padded
    here: the collator pads each batch to its own longest row.
    """
    out = {"input_ids": [], "labels": [], "truncated": [], "target_cut": [], "task": []}
    tasks = batch.get("task_dataset") or [""] * len(batch[prompt_column])
    for i in range(len(batch[prompt_column])):
        query, answer = batch[prompt_column][i], batch[response_column][i]
        if not query or not answer:
            continue
        history = batch[history_column][i] if history_column else None
        a, cut = prompt_ids(tokenizer, source_prefix + query, history, max_source_length, side)
        b = tokenizer.encode_answer(answer)
        out["target_cut"].append(len(b) > max_target_length)
        b = b[:max_target_length]
        out["input_ids"].append(a + b + [tokenizer.eos_token_id])
        out["labels"].append([-100] * len(a) + b + [tokenizer.eos_token_id])
        out["truncated"].append(cut)
        out["task"].append(tasks[i])  # what --task_sampling groups rows by
    return out


def generation_features(batch: dict, tokenizer, prompt_column: str, response_column: str | None,
                        history_column: str | None, max_source_length: int, max_target_length: int,
                        side: str, source_prefix: str = "") -> dict:
    """Prompt ids for every record (empty targets included: test sets have none)."""
    out = {"input_ids": [], "label_ids": [], "truncated": []}
    n = len(batch[prompt_column])
    for i in range(n):
        history = batch[history_column][i] if history_column else None
        a, cut = prompt_ids(tokenizer, source_prefix + (batch[prompt_column][i] or ""), history,
                            max_source_length, side)
        target = (batch[response_column][i] if response_column and response_column in batch else None) or ""
        out["input_ids"].append(a)
        out["label_ids"].append(tokenizer.encode_text(target)[:max_target_length])
        out["truncated"].append(cut)
    return out


class PadCollator:
    """Pads each batch to its own longest row (the original pads every row to the maximum)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        for i, f in enumerate(features):
            ids[i, :len(f["input_ids"])] = torch.tensor(f["input_ids"])
            labels[i, :len(f["labels"])] = torch.tensor(f["labels"])
        return {"input_ids": ids, "labels": labels}
