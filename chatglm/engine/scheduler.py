"""Which request holds which slot.

Requests wait in arrival order; a free slot takes the next one at once. Live rows are kept in
the lowest slots (`compact`) so that an eager decode step runs on rows [0, n) of the cache
buffers, a view, never a gather: when a row ends and nothing waits, the highest live row moves
into its slot (one row's cache copied once, not the whole batch every step).
"""
from __future__ import annotations

from collections import deque

from .request import Request


class Scheduler:
    """`admit_min`: while requests wait, newcomers are admitted once that many slots are free
    (or all that wait fit, or nothing runs): one prompt pass for several newcomers instead of one
    pass per slot freed. A prompt pass costs a decode step or more of fixed overhead (tiny
    model: 285 passes took half of an evaluation of 480 records, BENCHMARKS.md); a slot
    idles for at most a few steps."""

    def __init__(self, num_slots: int, admit_min: int | None = None):
        if num_slots < 1:
            raise ValueError(f"the engine needs at least one slot, got {num_slots}")
        self.slots: list[Request | None] = [None] * num_slots
        self.waiting: deque[Request] = deque()
        self.admit_min = admit_min or max(1, num_slots // 4)

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    @property
    def live(self) -> list[tuple[int, Request]]:
        return [(s, r) for s, r in enumerate(self.slots) if r is not None]

    @property
    def busy(self) -> bool:
        return bool(self.waiting) or any(r is not None for r in self.slots)

    @property
    def top(self) -> int:
        """One past the highest live slot: the rows an eager decode step runs on."""
        return max((s + 1 for s, r in enumerate(self.slots) if r is not None), default=0)

    def admit(self) -> list[tuple[int, Request]]:
        """Waiting requests into the lowest free slots; (slot, request) of each newcomer."""
        free = sum(r is None for r in self.slots)
        if not self.waiting or (free < min(self.admit_min, len(self.waiting)) and free < len(self.slots)):
            return []
        out = []
        for s in range(len(self.slots)):
            if not self.waiting:
                break
            if self.slots[s] is None:
                self.slots[s] = self.waiting.popleft()
                out.append((s, self.slots[s]))
        return out

    def release(self, slot: int) -> None:
        self.slots[slot] = None

    def compact(self) -> list[tuple[int, int]]:
        """Move the highest live rows into the lowest free slots; the (from, to) moves made."""
        moves = []
        lo, hi = 0, len(self.slots) - 1
        while True:
            while lo < len(self.slots) and self.slots[lo] is not None:
                lo += 1
            while hi >= 0 and self.slots[hi] is None:
                hi -= 1
            if lo >= hi:
                return moves
            self.slots[lo], self.slots[hi] = self.slots[hi], None
            moves.append((hi, lo))
