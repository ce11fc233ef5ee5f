"""An answer's text as its tokens arrive: what may be shown so far, and where a stop string cuts it.

The final text is `decode(tokens).strip()`, as evaluation writes it; what is streamed is always
a prefix of it: trailing whitespace, a character whose bytes are not all generated yet, and
the last characters that could begin a stop string are held back until the next tokens
decide them.
"""
from __future__ import annotations


class AnswerText:
    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer, self.stops = tokenizer, stops
        self.tokens: list[int] = []
        self.sent = ""  # what has been shown
        self.stopped = False  # a stop string was generated: the answer ends before it

    def add(self, tokens: list[int]) -> str:
        """Take new tokens; return the text that may be shown now beyond what was."""
        if self.stopped or not tokens:
            return ""
        self.tokens += tokens
        text = self.tokenizer.decode(self.tokens).lstrip()
        cut = self._stop_at(text)
        if cut is not None:
            self.stopped = True
            return self._advance(text[:cut].rstrip())
        if text.endswith("\ufffd"):
            return ""
        visible = text.rstrip()
        hold = max((len(s) - 1 for s in self.stops), default=0)
        if hold:
            visible = visible[:max(0, len(visible) - hold)]
        return self._advance(visible)

    def final(self) -> str:
        """The whole answer; `finish()` gives what of it was not shown yet."""
        text = self.tokenizer.decode(self.tokens).strip()
        cut = self._stop_at(text)
        return text if cut is None else text[:cut].rstrip()

    def finish(self) -> str:
        return self._advance(self.final())

    def _stop_at(self, text: str) -> int | None:
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return min(found) if found else None

    def _advance(self, visible: str) -> str:
        if not visible.startswith(self.sent) or len(visible) <= len(self.sent):
            return ""
        delta, self.sent = visible[len(self.sent):], visible
        return delta
