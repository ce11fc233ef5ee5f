"""Grammar-constrained decoding: a mask on the logits so that only what a grammar allows is written.

The grammar engine is llguidance (Lark-style grammars, an Earley parser over a regex lexer,
masks computed lazily from a token trie): among xgrammar, llguidance and outlines-core it is
the one whose per-grammar cost is about a millisecond for a vocabulary of 65k byte-fallback
sentencepiece pieces, which matters because every record brings its own grammar (its own
options, its own input to copy spans from); BENCHMARKS.md has the comparison. This module
knows nothing of tasks: it takes a grammar text per prompt (None: free text) and keeps one
matcher per row of a batch.

Two rules make a constrained answer valid by construction without changing a valid one:
  * at every step, tokens the grammar does not allow get -inf, so a greedy path that was
    already valid is untouched (its tokens are always allowed);
  * a row's tokens are released only up to the last point where the grammar accepts the
    text; what follows is held back until the grammar accepts again. If the token budget runs
    out first, the answer ends at the last byte where the grammar accepted (a token cut by
    that point is given as its bytes' byte-fallback ids): the longest valid prefix, never a
    half-written option or line, even where a token runs past a line's end (`"]]\n`).
"""
from __future__ import annotations

import json
import logging
from collections import OrderedDict

import numpy as np
import torch

logger = logging.getLogger(__name__)

_ENGINES: dict = {}


def engine_for(tokenizer, vocab_size: int) -> "GrammarEngine":
    """One engine per tokenizer file and logits width, built once per process (~10 ms for
    ChatGLM2's 65k pieces)."""
    key = (getattr(tokenizer, "digest", id(tokenizer)), vocab_size)
    if key not in _ENGINES:
        _ENGINES[key] = GrammarEngine(tokenizer, vocab_size)
    return _ENGINES[key]


class GrammarEngine:
    """llguidance's view of a tokenizer, plus compiled grammars (a bounded cache: the same
    options, e.g. a classification task's labels, compile once)."""

    def __init__(self, tokenizer, vocab_size: int, cache_size: int = 4096):
        import llguidance

        token_bytes = tokenizer.token_bytes()
        specials = [i for i, b in enumerate(token_bytes) if not b and i != tokenizer.eos_token_id]

        class _Wrapped:  # what llguidance.TokenizerWrapper reads
            eos_token_id = tokenizer.eos_token_id
            bos_token_id = None
            tokens = token_bytes
            special_token_ids = specials

            def __call__(self, text):
                return tokenizer.encode_fragment(text.decode("utf-8", "ignore") if isinstance(text, bytes) else text)

        self.llguidance = llguidance
        self.tokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Wrapped()))
        self.eos_token_id = tokenizer.eos_token_id
        self.vocab_size = vocab_size  # the logits' width (padded beyond the tokenizer: never allowed)
        self.words = (self.tokenizer.vocab_size + 31) // 32
        self._compiled: OrderedDict[str, object] = OrderedDict()
        self._cache_size = cache_size
        # Ids that spell the same bytes (a sentencepiece piece and its byte-fallback twin, `a`
        # and `<0x61>`): llguidance's token trie keeps one of them; a mask allows all or none,
        # so that a valid path through the other one is never cut.
        groups: dict[bytes, list[int]] = {}
        for i, b in enumerate(token_bytes):
            if b:
                groups.setdefault(b, []).append(i)
        twins = [g for g in groups.values() if len(g) > 1]
        width = max((len(g) for g in twins), default=0)
        self._twins = torch.tensor([g + [g[0]] * (width - len(g)) for g in twins], dtype=torch.long) if twins else None
        self.token_bytes = token_bytes
        self.byte_ids = {b[0]: i for i, b in reversed(list(enumerate(token_bytes))) if len(b) == 1}
        # What the model writes before the answer proper: ChatGLM3 and GLM-4 answer "\n" + text
        # after <|assistant|> (their metadata line, empty), which every grammar must then allow.
        lead = b"".join(token_bytes[i] for i in tokenizer.encode_answer("")) if hasattr(tokenizer, "encode_answer") else b""
        self.lead = lead.decode("utf-8", "replace")

    def matcher(self, grammar: str):
        """A fresh matcher for `grammar`, or None (with a warning) if the grammar is invalid."""
        template = self._compiled.get(grammar)
        if template is None:
            text = grammar
            if self.lead:  # the lead, then the grammar's own start rule
                text = grammar.replace("start:", "answer_body:", 1) + f"\nstart: {json.dumps(self.lead)} answer_body\n"
            template = self.llguidance.LLMatcher(self.tokenizer, text, log_level=0)
            if template.is_error():
                logger.warning("grammar rejected by llguidance, free text for this prompt: %s",
                               template.get_error().splitlines()[0])
                return None
            self._compiled[grammar] = template
            if len(self._compiled) > self._cache_size:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(grammar)
        return template.deep_copy()

    def row(self, grammar: str | None) -> "RowConstraint | None":
        """A row's constraint for `grammar` (None: free text, or a grammar llguidance rejects)."""
        m = self.matcher(grammar) if grammar else None
        return RowConstraint(m, self, grammar) if m is not None else None

    def forbidden(self, matchers: list) -> torch.Tensor:
        """Bool [len(matchers), vocab_size]: the tokens each matcher forbids next. (One call per
        matcher: llguidance's LLExecutor computes a batch on a thread pool, but measured here
        its hand-off costs more than the ~10-40 us a mask takes.)"""
        bitmask = np.empty((len(matchers), self.words), dtype=np.int32)
        for i, m in enumerate(matchers):
            m.unsafe_compute_mask_ptr(bitmask[i].ctypes.data, self.words * 4)
        bits = np.unpackbits((~bitmask).view(np.uint8), axis=1, bitorder="little")  # 1 = forbidden
        if bits.shape[1] < self.vocab_size:  # logits wider than the tokenizer (padded vocabulary): never allowed
            bits = np.pad(bits, ((0, 0), (0, self.vocab_size - bits.shape[1])), constant_values=1)
        out = torch.from_numpy(bits[:, :self.vocab_size]).view(torch.bool)
        if self._twins is not None:
            out[:, self._twins] = out[:, self._twins].all(dim=-1, keepdim=True).expand(-1, -1, self._twins.shape[1])
        return out


class RowConstraint:
    """One row's grammar state: its matcher, the tokens held back until it accepts, and the
    tokens released so far (to find the last accepting byte when the budget ends)."""

    def __init__(self, matcher, engine: GrammarEngine, grammar: str):
        self.matcher, self.engine, self.grammar = matcher, engine, grammar
        self.held: list[int] = []
        self.released: list[int] = []

    def advance(self, token: int) -> list[int]:
        """Feed one generated token; return the tokens that may be released now."""
        if self.matcher is not None and not self.matcher.consume_token(token):
            # Only reachable if a token outside the mask was chosen (never, with -inf); keep
            # the text and stop constraining rather than fail the prediction.
            logger.warning("token %d outside the grammar: %s", token, self.matcher.get_error().splitlines()[0])
            self.matcher = None
        if self.matcher is None or self.matcher.is_accepting():
            released, self.held = self.held + [token], []
            self.released += released
            return released
        self.held.append(token)
        return []

    def finish(self) -> list[int]:
        """The budget ran out: what of the held-back text may still be released, i.e. its
        bytes up to the last one where the grammar accepts (as byte-fallback ids where a
        token is cut); nothing if the tokenizer has no id for some byte."""
        if not self.held or self.matcher is None:
            return []
        replay = self.engine.matcher(self.grammar)  # the grammar from its start (compiled once, cached)
        if replay is None or not all(replay.consume_token(t) for t in self.released):
            return []
        data = b"".join(self.engine.token_bytes[t] for t in self.held)
        best, ids = 0, []
        for k, byte in enumerate(data, 1):
            token = self.engine.byte_ids.get(byte)
            if token is None or not replay.consume_token(token):
                break
            ids.append(token)
            if replay.is_accepting():
                best = k
        out, used = [], 0  # held tokens wholly inside the valid bytes as they are, the rest as byte ids
        for t in self.held:
            if used + len(self.engine.token_bytes[t]) > best:
                break
            out.append(t)
            used += len(self.engine.token_bytes[t])
        self.held = []
        return out + ids[used:best]

    def copy(self) -> "RowConstraint":
        other = RowConstraint.__new__(RowConstraint)
        other.engine, other.grammar = self.engine, self.grammar
        other.matcher = self.matcher.deep_copy() if self.matcher is not None else None
        other.held, other.released = list(self.held), list(self.released)
        return other


class BatchConstraint:
    """The constraints of one generation call: `rows[i]` is prompt i's (None: free text)."""

    def __init__(self, engine: GrammarEngine, grammars: list[str | None]):
        self.engine = engine
        self.rows = [engine.row(g) for g in grammars]

    @classmethod
    def build(cls, tokenizer, vocab_size: int, grammars) -> "BatchConstraint | None":
        if not grammars or not any(grammars):
            return None
        return cls(engine_for(tokenizer, vocab_size), list(grammars))

    def repeat(self, row: int, k: int) -> "BatchConstraint | None":
        """k copies of prompt `row`'s constraint (the beams of a beam search), or None if free."""
        if self.rows[row] is None:
            return None
        other = BatchConstraint.__new__(BatchConstraint)
        other.engine, other.rows = self.engine, [self.rows[row].copy() for _ in range(k)]
        return other

    def advanced(self, parents: list[int], tokens: list[int]) -> "BatchConstraint":
        """The beams after a step: beam i continues beam parents[i] with tokens[i]."""
        other = BatchConstraint.__new__(BatchConstraint)
        other.engine = self.engine
        other.rows = []
        for b, t in zip(parents, tokens):
            row = self.rows[b].copy()
            row.advance(t)
            other.rows.append(row)
        return other

    def refused(self, active: list[int], chosen: list[int]) -> list[int]:
        """Positions j whose chosen token (for prompt active[j]) its grammar does not allow next."""
        return refused(self.engine, [self.rows[r] for r in active], chosen)

    def mask_(self, scores: torch.Tensor, active: list[int], only: list[int] | None = None) -> torch.Tensor:
        """What each active row's grammar forbids set to -inf, in place; see `mask_`."""
        return mask_(self.engine, scores, [self.rows[r] for r in active], only)

    def advance(self, row: int, token: int) -> list[int]:
        """Tokens of prompt `row` that can be shown now, after `token` (eos is never passed)."""
        c = self.rows[row]
        return [token] if c is None else c.advance(token)

    def finish(self, row: int) -> list[int]:
        """Prompt `row` ran out of budget: the held-back tokens that still end validly."""
        c = self.rows[row]
        return [] if c is None else c.finish()


def refused(engine: GrammarEngine, rows: list[RowConstraint | None], chosen: list[int]) -> list[int]:
    """Positions j whose chosen token its grammar (rows[j]; None: free) does not allow next.
    Greedy decoding needs a mask only for these rows: where the grammar allows the argmax,
    the masked argmax is the same token. (A mask over the vocabulary costs tens of
    microseconds a row; checking one token, about one.)"""
    out = []
    for j, (c, t) in enumerate(zip(rows, chosen)):
        if c is None or c.matcher is None:
            continue
        ok = c.matcher.is_accepting() if t == engine.eos_token_id else c.matcher.validate_tokens([t]) == 1
        if not ok:
            out.append(j)
    return out


def mask_(engine: GrammarEngine, scores: torch.Tensor, rows: list[RowConstraint | None],
          only: list[int] | None = None) -> torch.Tensor:
    """Set to -inf, in place, what each row's grammar forbids; scores[j] is rows[j]'s (`only`:
    just these positions j). A grammar that allows nothing at all (a matcher in error) allows eos."""
    positions = range(len(rows)) if only is None else only
    picked = [(j, rows[j]) for j in positions if rows[j] is not None and rows[j].matcher is not None]
    if not picked:
        return scores
    forbidden = engine.forbidden([c.matcher for _, c in picked])
    forbidden[forbidden.all(dim=1), engine.eos_token_id] = False
    forbidden = forbidden[:, :scores.shape[1]].to(scores.device)
    if len(picked) == scores.shape[0]:  # every row constrained (the usual batch): one op
        return scores.masked_fill_(forbidden, float("-inf"))
    index = torch.tensor([j for j, _ in picked], device=scores.device)
    scores.index_copy_(0, index, scores.index_select(0, index).masked_fill(forbidden, float("-inf")))
    return scores
