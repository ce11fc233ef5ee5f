"""A generation request: what to generate from, on which adapter, how; and how far it got."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


@dataclass
class GenerationSettings:
    max_new_tokens: int = 128
    do_sample: bool = False
    top_p: float = 1.0
    top_k: int = 0
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    num_beams: int = 1
    seed: int = 42
    compiled: bool = False  # torch.compile the decode step (CUDA graphs on CUDA); see chatglm/decode.py

    def processors(self) -> LogitsProcessorList:
        procs = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.do_sample:
            if self.temperature != 1.0:
                procs.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k > 0:
                procs.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                procs.append(TopPLogitsWarper(self.top_p))
        return procs


_ids = itertools.count()


@dataclass(eq=False)
class Request:
    """One prompt to answer. `adapter`: the name of a loaded prefix (or "lora"), None for the
    base model. `constraint`: a RowConstraint (chatglm/constraint.py) or None for free text.
    `stops`: the ids that end the answer (the family's stop set). `tag`: the caller's own."""
    prompt: list[int]
    settings: GenerationSettings
    stops: frozenset
    adapter: str | None = None
    constraint: object | None = None
    tag: object = None
    id: int = field(default_factory=lambda: next(_ids))
    # progress, written by the engine
    tokens: list[int] = field(default_factory=list)  # released so far (what the caller sees)
    steps: int = 0  # tokens chosen so far (held-back grammar tokens included)
    last: int = 0  # the token chosen last: what the next decode step feeds
    finish_reason: str | None = None  # "stop", "length" or "cancelled" once done
    cancelled: bool = False  # set by the caller (a client that went away): the slot is freed at the next step

    def __post_init__(self):
        if not self.prompt:
            raise ValueError("a request needs at least one prompt token")
        self.processors = self.settings.processors()
        self.generator = (torch.Generator(device="cpu").manual_seed(self.settings.seed)
                          if self.settings.do_sample else None)
        self.seen = list(self.prompt)  # what the repetition penalty looks at: prompt + chosen tokens

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
