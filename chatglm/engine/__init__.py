"""The generation engine: continuous batching with a prefix (or LoRA on/off) per row.

    request.py    what to generate (prompt, settings, adapter, grammar) and its progress
    scheduler.py  which request holds which slot: waiting queue, admission, compaction
    runner.py     the model step: prefill newcomers into their slots, one decode step for all
    sampler.py    the next token of every live row (greedy, sampling, grammar masks)
    engine.py     the loop that ties them: admit -> select -> decode, events out

A slot is one row of the batch with its own cache length and positions; when a row ends its
slot takes the next waiting request at once, so a batch stays full while records wait.
"""
from .engine import Engine, EngineEvent
from .request import GenerationSettings, Request

__all__ = ["Engine", "EngineEvent", "GenerationSettings", "Request"]
