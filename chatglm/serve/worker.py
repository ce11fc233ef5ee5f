"""The engine on a thread of its own, fed by the server's requests.

The HTTP side runs on asyncio; the engine's steps are long, blocking tensor work. So the engine
runs here, on one thread: it takes every request that arrived since its last step into its
batch (the continuous engine admits them into free slots at once), steps, and hands each
request's new tokens back to the asyncio loop that waits for them. A request whose client went
away is marked cancelled and leaves its slot at the next step.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
from dataclasses import dataclass

from ..engine import Engine, Request

logger = logging.getLogger(__name__)


@dataclass
class Update:
    tokens: list[int]
    finished: bool
    finish_reason: str | None = None
    error: str | None = None


class EngineWorker:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.inbox: queue.Queue = queue.Queue()
        self.sinks: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self.in_flight = 0  # requests submitted and not finished (read by the server's shutdown)
        self.finished = collections.Counter()  # requests ended, by finish reason (stop, length, cancelled, ...)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.inbox.put(None)
        self.thread.join(timeout=30)

    def submit(self, request: Request) -> asyncio.Queue:
        """Queue a request; its Updates arrive on the returned asyncio queue."""
        loop = asyncio.get_running_loop()
        sink: asyncio.Queue = asyncio.Queue()
        with self._lock:
            self.in_flight += 1
        self.inbox.put((request, loop, sink))
        return sink

    @property
    def idle(self) -> bool:
        return self.in_flight == 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self._take(block=not self.engine.busy)
            if not self.engine.busy:
                continue
            try:
                events = self.engine.step()
            except Exception as e:  # a failed step fails the requests in it, not the server
                logger.exception("engine step failed")
                self._fail_all(f"generation failed: {type(e).__name__}: {e}")
                continue
            for e in events:
                self._send(e.request, Update(list(e.tokens), e.finished, e.request.finish_reason))

    def _take(self, block: bool) -> None:
        try:
            item = self.inbox.get(timeout=0.5) if block else self.inbox.get_nowait()
        except queue.Empty:
            return
        while item is not None:
            request, loop, sink = item
            self.sinks[request.id] = (loop, sink)
            try:
                self.engine.add(request)
            except (KeyError, ValueError) as e:
                self._send(request, Update([], True, None, str(e)))
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _send(self, request: Request, update: Update) -> None:
        loop, sink = self.sinks.get(request.id, (None, None))
        if sink is None:
            return
        if update.finished:
            del self.sinks[request.id]
            with self._lock:
                self.in_flight -= 1
                self.finished[update.finish_reason or "refused"] += 1
        try:
            loop.call_soon_threadsafe(sink.put_nowait, update)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _fail_all(self, message: str) -> None:
        s = self.engine.scheduler
        stuck = [r for r in s.slots if r is not None] + list(s.waiting)
        s.waiting.clear()
        for slot, r in enumerate(s.slots):
            if r is not None:
                s.release(slot)
                self.engine.runner.free(slot)
        for r in stuck:
            r.finish_reason = "error"
            self._send(r, Update([], True, "error", message))
