"""Progress of a long loop (prediction over 10k prompts, the tiny model's build): done/total,
rate and time left.

On a terminal it is a tqdm bar. When the output goes to a file or a CI log, a bar's carriage
returns make an unreadable mess, so it is a plain log line instead, every `GLM2_PROGRESS_SECONDS`
(default 30) seconds and at the end. Only one process of a distributed run shows it.
"""
from __future__ import annotations

import logging
import os
import sys
import time

from tqdm.auto import tqdm

logger = logging.getLogger("chatglm.progress")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "samples", enabled: bool = True, stream=None,
                 every_s: float | None = None):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled and total > 0
        self.done, self.start, self.postfix = 0, time.time(), ""
        stream = stream or sys.stderr
        self.every_s = float(os.environ.get("GLM2_PROGRESS_SECONDS", 30)) if every_s is None else every_s
        self.last_log = self.start
        self.bar = None
        if self.enabled and stream.isatty():
            self.bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=stream, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix) -> None:
        if not self.enabled:
            return
        self.done += n
        self.postfix = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in postfix.items())
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix_str(self.postfix, refresh=False)
        elif time.time() - self.last_log >= self.every_s and self.done < self.total:
            self._log()

    def line(self) -> str:
        """`predict: 512/10320 samples (5%), 12.3 samples/s, 13m20s left`"""
        elapsed = max(time.time() - self.start, 1e-9)
        rate = self.done / elapsed
        text = f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done // self.total}%), " \
               f"{rate:.1f} {self.unit}/s"
        if self.done < self.total:
            text += f", {_duration((self.total - self.done) / rate) if rate > 0 else '?'} left"
        else:
            text += f", took {_duration(elapsed)}"
        return text + (f", {self.postfix}" if self.postfix else "")

    def _log(self) -> None:
        self.last_log = time.time()
        logger.info(self.line())

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        else:
            self._log()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
