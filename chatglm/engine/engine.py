"""The engine loop: admit waiting requests into free slots, choose every live row's next token,
feed the tokens back in one decode step; finished rows free their slots at once.

    engine = Engine(model.base, num_slots=16)
    engine.add_prefix("ckpt-3000", key_values)          # any number of P-tuning prefixes
    engine.add(Request(prompt_ids, settings, stops, adapter="ckpt-3000"))
    for events in engine.run():                         # or engine.step() from a serving loop
        ...                                             # EngineEvent(request, new tokens, finished)
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .request import Request
from .runner import ModelRunner
from .sampler import choose
from .scheduler import Scheduler


@dataclass
class Adapter:
    """What a row runs on besides the base weights: a prefix (per layer (key, value),
    [1, groups, P, dim]) and/or the process's LoRA adapter switched on."""
    prefix: list | None = None
    lora: bool = False

    @property
    def prefix_len(self) -> int:
        return 0 if self.prefix is None else self.prefix[0][0].shape[2]


@dataclass
class EngineEvent:
    request: Request
    tokens: list[int]  # released at this step (a grammar may hold tokens back, then release several)
    finished: bool


@dataclass
class EngineStats:
    decode_steps: int = 0
    row_steps: int = 0  # rows that held a request, summed over decode steps
    prefill_passes: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    slots: int = 0

    @property
    def slot_use(self) -> float:
        """Useful row-steps / (decode steps x slots)."""
        return self.row_steps / (self.decode_steps * self.slots) if self.decode_steps else 0.0


class Engine:
    def __init__(self, base, num_slots: int, compiled: bool = False):
        self.runner = ModelRunner(base, num_slots, compiled)
        self.scheduler = Scheduler(num_slots)
        self.adapters: dict[str | None, Adapter] = {None: Adapter()}
        self.compiled = compiled
        self.logits = None  # [slots, vocab] fp32: each live row's pending next-token logits
        self.stats = EngineStats(slots=num_slots)

    # -- what rows run on -----------------------------------------------------------------
    def add_prefix(self, name: str, key_values: list) -> None:
        self.adapters[name] = Adapter(prefix=[(k.detach(), v.detach()) for k, v in key_values])

    def add_lora(self, name: str) -> None:
        """Rows naming `name` run with the LoRA adapters injected in the base (one per process)."""
        self.adapters[name] = Adapter(lora=True)

    @property
    def has_lora(self) -> bool:
        return any(a.lora for a in self.adapters.values())

    # -- requests -------------------------------------------------------------------------
    def add(self, request: Request) -> Request:
        if request.adapter not in self.adapters:
            known = ", ".join(str(n) for n in self.adapters if n is not None) or "none"
            raise KeyError(f"no adapter named {request.adapter!r} is loaded (loaded: {known})")
        if request.settings.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {request.settings.max_new_tokens}")
        self.runner.reserve(self.adapters[request.adapter].prefix_len + len(request.prompt)
                            + request.settings.max_new_tokens)
        self.scheduler.add(request)
        return request

    @property
    def busy(self) -> bool:
        return self.scheduler.busy

    def run(self):
        """Steps until every request added has finished; yields each step's events."""
        while self.busy:
            yield self.step()

    @torch.inference_mode()
    def step(self) -> list[EngineEvent]:
        """Admit, choose one token for every live row, decode. The events of the rows that
        chose (or finished) this step."""
        events = [EngineEvent(r, [], True) for r in self._drop_cancelled()]
        self._admit()
        if not self.compiled:
            for src, dst in self.scheduler.compact():
                self.runner.move(src, dst)
                self.logits[dst] = self.logits[src]
        live = self.scheduler.live
        if not live:
            return events
        requests = [r for _, r in live]
        slots = [s for s, _ in live]
        dense = slots == list(range(len(slots)))
        scores = self.logits[:len(slots)] if dense else self.logits[torch.tensor(slots, device=self.logits.device)]
        for (slot, request), token in zip(live, choose(requests, scores)):
            events.append(self._advance(slot, request, token))
        self._decode()
        return events

    def _drop_cancelled(self) -> list[Request]:
        """Cancelled requests, live or still waiting, leave now (each reported as finished)."""
        dropped = [r for r in self.scheduler.waiting if r.cancelled]
        if dropped:
            self.scheduler.waiting = type(self.scheduler.waiting)(r for r in self.scheduler.waiting if not r.cancelled)
        for slot, request in self.scheduler.live:
            if request.cancelled:
                self._free(slot)
                dropped.append(request)
        for request in dropped:
            request.finish_reason = "cancelled"
        return dropped

    def _admit(self) -> None:
        admitted = self.scheduler.admit()
        if not admitted:
            return
        if self.logits is None:
            self.logits = torch.empty(self.runner.num_slots, self.runner.base.config.vocab_size,
                                      device=self.runner.device)
        start = time.perf_counter()
        groups: dict = {}
        for slot, request in admitted:
            groups.setdefault(request.adapter, []).append((slot, request))
        for name, group in groups.items():
            adapter = self.adapters[name]
            slots = [s for s, _ in group]
            logits = self.runner.prefill(slots, [r.prompt for _, r in group], adapter.prefix,
                                         adapter.lora if self.has_lora else None)
            self.logits[torch.tensor(slots, device=self.logits.device)] = logits
            self.stats.prefill_passes += 1
        self.stats.prefill_seconds += time.perf_counter() - start

    def _advance(self, slot: int, request: Request, token: int) -> EngineEvent:
        request.steps += 1
        request.last = token
        if request.processors:
            request.seen.append(token)
        c = request.constraint
        if token in request.stops:
            request.finish_reason, released = "stop", []
        else:
            released = [token] if c is None else c.advance(token)
            if request.steps >= request.settings.max_new_tokens:  # cut off by the budget
                request.finish_reason = "length"
                if c is not None:  # the answer ends where its grammar accepted last
                    released += c.finish()
        request.tokens += released
        if request.finished:
            self._free(slot)
        return EngineEvent(request, released, request.finished)

    def _free(self, slot: int) -> None:
        self.scheduler.release(slot)
        self.runner.free(slot)

    def _decode(self) -> None:
        top = self.runner.num_slots if self.compiled else self.scheduler.top
        if top == 0:
            return
        start = time.perf_counter()
        slots = self.scheduler.slots[:top]
        alive = [r is not None for r in slots]
        tokens = torch.tensor([r.last if r is not None else 0 for r in slots], device=self.runner.device)
        lora_on = None
        if self.has_lora:
            on = [bool(r is not None and self.adapters[r.adapter].lora) for r in slots]
            if not all(on):
                lora_on = torch.tensor(on, dtype=torch.float32, device=self.runner.device)
        self.logits[:top] = self.runner.decode(tokens, alive, lora_on)
        self.stats.decode_steps += 1
        self.stats.row_steps += sum(alive)
        self.stats.decode_seconds += time.perf_counter() - start
