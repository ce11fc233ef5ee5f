"""The next token of every live row: each request's own logits processors, sampling with its
own seeded generator, greedy argmax otherwise, and its grammar's mask where it has one."""
from __future__ import annotations

import torch

from ..constraint import mask_, refused
from .request import Request


def choose(requests: list[Request], scores: torch.Tensor) -> list[int]:
    """One token id per request; scores[j] (fp32 logits, changed in place) is requests[j]'s.

    A sampled row draws from its own generator, seeded by its settings: its answer depends on
    its prompt, adapter and seed, not on which rows share its batch or when it was admitted
    (up to float rounding of the logits)."""
    for j, r in enumerate(requests):
        if r.processors:
            seen = torch.tensor([r.seen], device=scores.device)
            scores[j:j + 1] = r.processors(seen, scores[j:j + 1])
    rows = [r.constraint for r in requests]
    grammar = next((c.engine for c in rows if c is not None), None)
    sampled = [j for j, r in enumerate(requests) if r.settings.do_sample]
    greedy = [j for j, r in enumerate(requests) if not r.settings.do_sample]
    chosen = [0] * len(requests)
    if greedy:  # the usual evaluation: one argmax for the batch
        sub = scores if not sampled else scores[greedy]
        for j, t in zip(greedy, _argmax(sub, [rows[j] for j in greedy], grammar)):
            chosen[j] = t
    if sampled:
        sub = scores[sampled]
        if grammar is not None:
            mask_(grammar, sub, [rows[j] for j in sampled])
        probs = torch.softmax(sub, dim=-1).cpu()
        for k, j in enumerate(sampled):
            chosen[j] = int(torch.multinomial(probs[k], 1, generator=requests[j].generator))
    return chosen


def _argmax(scores: torch.Tensor, rows: list, grammar) -> list[int]:
    chosen = scores.argmax(dim=-1).tolist()  # the step's one device-to-host copy
    if grammar is not None:
        redo = refused(grammar, rows, chosen)  # a mask only where the argmax is not allowed
        if redo:
            fixed = mask_(grammar, scores, rows, only=redo).argmax(dim=-1)
            for j in redo:
                chosen[j] = int(fixed[j])
    return chosen
