"""Generation for ChatGLM with a prefix: the functions callers use (generate, stream_tokens,
stream_text, side_by_side), on the continuous-batching engine (chatglm/engine/).

Positions are 0..n-1 over each row's real tokens, as the original tokenizer's left padding
gives them, so a row's output does not depend on what it is batched with (in fp32, up to
float rounding of ~1e-7 in the logits). Beam search runs one record at a time on its own
static batch of beams; `generate_static` is the engine before continuous batching (a batch
runs until its longest answer ends), kept as the reference its answers are checked against
and that bench/continuous_batching.py measures it beside.
"""
from __future__ import annotations

from typing import Iterator

import torch

from .constraint import BatchConstraint
from .decode import StaticDecoder
from .engine import Engine, GenerationSettings, Request
from .engine.runner import left_pad
from .model import ChatGLM, positions_from_mask

__all__ = ["GenerationSettings", "left_pad", "generate", "generate_static", "stream_tokens", "stream_text",
           "side_by_side", "engine_for", "TUNED", "NO_ANSWER"]


def prefill(model: ChatGLM, ids: torch.Tensor, mask: torch.Tensor):
    """The prompt pass: the prefix in front, the KV cache filled, and the logits of each row's
    last position -> (logits [batch, vocab] fp32, cache, mask with the prefix columns, positions).
    Only the last position goes through the output layer, as a [batch, hidden] matrix: given
    transformers' `logits_to_keep=1` instead, the output layer gets a strided [batch, 1, hidden]
    view, which torch's matmul cannot fold into one product and runs as a batched product over a
    copy of the output layer for every row (0.5 GB a row at 6B; BENCHMARKS.md)."""
    full_mask = model.extend_mask(mask)
    positions = positions_from_mask(mask)
    out = model.base.model(input_ids=ids, attention_mask=full_mask, position_ids=positions,
                           past_key_values=model.past_for(ids.shape[0], growing=True), use_cache=True)
    logits = model.base.lm_head(out.last_hidden_state[:, -1]).float()
    return logits, out.past_key_values, full_mask, positions


class _Stepper:
    """Feeds a batch through the model, one token per row per step.

    The prompt goes through the model once (prefix in front, KV cache filled); every later
    token goes through `StaticDecoder`, which writes the cache in place (chatglm/decode.py).
    """

    def __init__(self, model: ChatGLM, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int,
                 compiled: bool = False):
        self.logits, cache, full_mask, positions = prefill(model, ids, mask)
        self.decoder = StaticDecoder(model.base, cache, full_mask, positions[:, -1:] + 1, max_new_tokens,
                                     compiled=compiled)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.logits = self.decoder.step(tokens)
        return self.logits

    def reorder(self, index: torch.Tensor) -> None:
        self.decoder.reorder(index)
        self.logits = self.logits[index]


def constraint_for(model: ChatGLM, tokenizer, grammars) -> BatchConstraint | None:
    """The decoding constraint of a batch: one grammar text per prompt (None: free text), or
    None when no prompt has one. What the grammars say is the caller's business (for
    PromptCBLUE: cblue/answer_grammar.py)."""
    return BatchConstraint.build(tokenizer, model.base.config.vocab_size, grammars)


def _stops(eos_token_id) -> frozenset:
    """The ids generation ends at: one eos, or the family's set (the tokenizer's stop_ids)."""
    return frozenset([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id)


TUNED = "tuned"  # the engine's name for what the model itself holds (its prefix or LoRA adapter)


def engine_for(model: ChatGLM, num_slots: int, compiled: bool = False) -> Engine:
    """An engine on the model's base weights with the model's own tuning loaded as `TUNED`
    (its prefix, computed once here, without dropout; or its LoRA adapter, unless switched
    off by `base_only`). Rows name TUNED or None (the base); more prefixes may be added."""
    engine = Engine(model.base, num_slots, compiled)
    if model.prefix_encoder is not None:
        with torch.inference_mode():
            was = model.prefix_encoder.training
            model.prefix_encoder.eval()
            engine.add_prefix(TUNED, model.prefix_encoder.key_values(1, model.dtype))
            model.prefix_encoder.train(was)
    elif model.lora_config is not None and not getattr(model, "lora_off", False):
        engine.add_lora(TUNED)
    return engine


def model_adapter(engine: Engine) -> str | None:
    """What rows of "the model as it is" name: TUNED if it holds tuning, else the base."""
    return TUNED if TUNED in engine.adapters else None


def generate(model: ChatGLM, prompts: list[list[int]], settings: GenerationSettings, eos_token_id,
             pad_token_id: int, constraint: BatchConstraint | None = None) -> list[list[int]]:
    """New token ids for each prompt, without the stop token that ended it. `eos_token_id`: one
    id or several (ChatGLM3 and GLM-4 chats also stop at the next turn's role token)."""
    results: list[list[int]] = [[] for _ in prompts]
    for step in stream_tokens(model, prompts, settings, eos_token_id, pad_token_id, constraint):
        for row, token in step:
            results[row].append(token)
    return results


def generate_static(model: ChatGLM, prompts: list[list[int]], settings: GenerationSettings, eos_token_id,
                    pad_token_id: int, constraint: BatchConstraint | None = None,
                    budgets: list[int] | None = None) -> list[list[int]]:
    """`generate` as before continuous batching: one left-padded batch that runs until its
    longest answer ends (finished rows leave, their slots stay empty). The reference the
    engine's answers are checked against, and what bench/continuous_batching.py compares.
    `budgets`: each prompt's own max_new_tokens (at most settings.max_new_tokens)."""
    results: list[list[int]] = [[] for _ in prompts]
    with torch.inference_mode():
        for step in _sample_steps(model, prompts, settings, eos_token_id, pad_token_id, constraint, budgets):
            for row, token in step:
                results[row].append(token)
    return results


@torch.inference_mode()
def stream_tokens(model: ChatGLM, prompts: list[list[int]], settings: GenerationSettings, eos_token_id,
                  pad_token_id: int, constraint: BatchConstraint | None = None) -> Iterator[list[tuple[int, int]]]:
    """Generation as it happens: per step, (prompt index, new token) for every row that has
    new tokens. The prefix in use is the one the model holds when called. With a
    constraint, a row's tokens come out only where its grammar accepts the text so far
    (several at once after a held-back stretch; chatglm/constraint.py)."""
    was_training = model.training
    model.eval()  # no prefix dropout while generating
    try:
        if settings.num_beams > 1:  # beam search knows its answer only at the end
            for row, p in enumerate(prompts):
                rows = constraint.repeat(row, settings.num_beams) if constraint is not None else None
                yield [(row, t) for t in _beam_search(model, p, settings, eos_token_id, rows)]
            return
        engine = engine_for(model, max(1, len(prompts)), settings.compiled)
        adapter, stops = model_adapter(engine), _stops(eos_token_id)
        for i, p in enumerate(prompts):
            engine.add(Request(p, settings, stops, adapter, constraint.rows[i] if constraint is not None else None,
                               tag=i))
        for events in engine.run():
            yield [(e.request.tag, t) for e in events for t in e.tokens]
    finally:
        model.train(was_training)


def stream_text(model: ChatGLM, tokenizer, prompts: list[list[int]], settings: GenerationSettings,
                grammars=None) -> Iterator[list[str]]:
    """Each prompt's answer so far, as text, after every step (what a demo shows while it
    types). A character whose bytes are not all generated yet is held back, not shown as \ufffd.
    `grammars`: one grammar text per prompt (None: free text), see constraint_for."""
    constraint = constraint_for(model, tokenizer, grammars)
    steps = stream_tokens(model, prompts, settings, tokenizer.stop_ids, tokenizer.pad_token_id, constraint)
    yield from _texts(tokenizer, len(prompts), steps)


def _texts(tokenizer, n: int, steps) -> Iterator[list[str]]:
    tokens: list[list[int]] = [[] for _ in range(n)]
    shown = [""] * n
    for step in steps:
        for row, token in step:
            tokens[row].append(token)
            text = tokenizer.decode(tokens[row]).lstrip()
            if not text.endswith("\ufffd"):
                shown[row] = text
        yield list(shown)
    yield [tokenizer.decode(t).strip() for t in tokens]  # the final answers, as generate() + decode give


def _sample_steps(model, prompts, settings, eos_token_id, pad_token_id, constraint=None, budgets=None):
    stops = _stops(eos_token_id)
    ids, mask = left_pad(prompts, pad_token_id, model.device)
    stepper = _Stepper(model, ids, mask, settings.max_new_tokens, settings.compiled)
    procs = settings.processors()
    gen = torch.Generator(device="cpu").manual_seed(settings.seed) if settings.do_sample else None
    active = list(range(len(prompts)))  # rows still generating, in the order the cache holds them
    seen, logits = ids, stepper.logits
    for step in range(settings.max_new_tokens):
        scores = procs(seen, logits) if procs else logits
        if settings.do_sample:
            if constraint is not None:
                scores = constraint.mask_(scores, active)
            probs = torch.softmax(scores, dim=-1).cpu()
            tokens = torch.multinomial(probs, 1, generator=gen).squeeze(1).to(ids.device)
        else:
            tokens = scores.argmax(dim=-1)
        chosen = tokens.tolist()  # the step's one device-to-host copy
        if constraint is not None and not settings.do_sample:
            redo = constraint.refused(active, chosen)  # greedy: a mask only where the argmax is not allowed
            if redo:
                tokens = constraint.mask_(scores, active, only=redo).argmax(dim=-1)
                chosen = tokens.tolist()
        stopped = [t in stops for t in chosen]
        if constraint is None:
            yield [(row, token) for row, token, done in zip(active, chosen, stopped) if not done]
        else:
            yield [(row, t) for row, token, done in zip(active, chosen, stopped) if not done
                   for t in constraint.advance(row, token)]
        last = step == settings.max_new_tokens - 1
        cut = [not done and (last or (budgets is not None and step + 1 >= budgets[row]))
               for row, done in zip(active, stopped)]
        if constraint is not None and any(cut):  # cut off by the budget: each answer ends where its grammar accepted last
            yield [(row, t) for row, c in zip(active, cut) if c for t in constraint.finish(row)]
        ended = [a or b for a, b in zip(stopped, cut)]
        if all(ended):
            break
        if any(ended):  # finished rows leave the batch: short answers stop costing compute
            keep = [i for i, done in enumerate(ended) if not done]
            index = torch.tensor(keep, device=ids.device)
            stepper.reorder(index)
            active, tokens, seen = [active[i] for i in keep], tokens[index], seen[index]
        seen = torch.cat([seen, tokens[:, None]], dim=-1)
        logits = stepper.step(tokens)


def _beam_search(model: ChatGLM, prompt: list[int], settings: GenerationSettings, eos_token_id,
                 constraint: BatchConstraint | None = None) -> list[int]:
    """Beam search for one prompt (length-normalised log-probability, like transformers').
    `constraint`: one row per beam; a beam cut off by the budget ends at its last point the
    grammar accepts."""
    stops = _stops(eos_token_id)
    k = settings.num_beams
    ids, mask = left_pad([prompt] * k, 0, model.device)
    stepper = _Stepper(model, ids, mask, settings.max_new_tokens)
    procs = settings.processors()
    beams = [[] for _ in range(k)]
    scores = torch.zeros(k, device=ids.device)
    scores[1:] = -float("inf")  # all beams start identical: expand only the first
    done: list[tuple[float, list[int]]] = []
    seen = ids
    logits = stepper.logits
    for step in range(settings.max_new_tokens):
        scores_step = procs(seen, logits) if procs else logits
        if constraint is not None:
            scores_step = constraint.mask_(scores_step, list(range(len(beams))))
        logp = torch.log_softmax(scores_step, dim=-1)
        cand = (scores[:, None] + logp).view(-1)
        top_scores, top_idx = cand.topk(2 * k)
        vocab = logp.shape[-1]
        keep_beam, keep_tok, keep_score = [], [], []
        for s, idx in zip(top_scores.tolist(), top_idx.tolist()):
            if s == float("-inf"):  # the rest are forbidden too (a grammar leaves fewer than 2k candidates)
                break
            b, t = divmod(idx, vocab)
            if t in stops:
                done.append((s / (len(beams[b]) + 1), beams[b]))
            else:
                keep_beam.append(b), keep_tok.append(t), keep_score.append(s)
            if len(keep_beam) == k:
                break
        if not keep_beam:  # every candidate ended
            break
        best_alive = keep_score[0] / (len(beams[keep_beam[0]]) + 1)
        if len(done) >= k and max(d[0] for d in done) >= best_alive:
            break
        if constraint is not None:
            constraint = constraint.advanced(keep_beam, keep_tok)
        if step == settings.max_new_tokens - 1:
            done.extend((s / (len(beams[b]) + 1), _valid_end(beams[b] + [t], constraint, i))
                        for i, (b, t, s) in enumerate(zip(keep_beam, keep_tok, keep_score)))
            break
        index = torch.tensor(keep_beam, device=ids.device)
        beams = [beams[b] + [t] for b, t in zip(keep_beam, keep_tok)]
        scores = torch.tensor(keep_score, device=ids.device)
        tokens = torch.tensor(keep_tok, device=ids.device)
        stepper.reorder(index)
        seen = torch.cat([seen[index], tokens[:, None]], dim=-1)
        logits = stepper.step(tokens)
    return max(done, key=lambda d: d[0])[1] if done else _valid_end(beams[0], constraint, 0)


def _valid_end(tokens: list[int], constraint: BatchConstraint | None, beam: int) -> list[int]:
    """A beam cut off by the budget: its tokens up to where its grammar accepted last."""
    row = constraint.rows[beam] if constraint is not None else None
    if row is None or not row.held:
        return tokens
    held = len(row.held)
    return tokens[:len(tokens) - held] + row.copy().finish()


# What the demos show for an answer of no text (the model's first token ended it), instead of
# an empty box that looks like a broken page.
NO_ANSWER = "(no answer: the model stopped at once, its first token was the end)"


def side_by_side(model: ChatGLM, tokenizer, prompt: list[int], settings: GenerationSettings,
                 grammar: str | None = None) -> Iterator[tuple[str, str]]:
    """(base answer so far, tuned answer so far) for one prompt, both rows of one batch: the
    base row runs the same loaded weights without the prefix (or with the LoRA adapter off).
    `grammar` constrains both answers alike (None: free text)."""
    if settings.num_beams > 1:  # beams: one record at a time, base then tuned
        from .model import base_only

        with base_only(model):
            base = generate(model, [prompt], settings, tokenizer.stop_ids, tokenizer.pad_token_id,
                            constraint_for(model, tokenizer, [grammar]))[0]
        tuned = generate(model, [prompt], settings, tokenizer.stop_ids, tokenizer.pad_token_id,
                         constraint_for(model, tokenizer, [grammar]))[0]
        yield "", ""
        yield tokenizer.decode(base).strip(), tokenizer.decode(tuned).strip()
        return
    yield "", ""
    for base_text, tuned_text in _texts(tokenizer, 2, _side_by_side_steps(model, tokenizer, prompt, settings, grammar)):
        yield base_text, tuned_text


@torch.inference_mode()
def _side_by_side_steps(model, tokenizer, prompt, settings, grammar):
    was_training = model.training
    model.eval()
    try:
        engine = engine_for(model, 2, settings.compiled)
        stops = _stops(tokenizer.stop_ids)
        constraint = constraint_for(model, tokenizer, [grammar, grammar])
        for row, adapter in enumerate((None, model_adapter(engine))):
            engine.add(Request(prompt, settings, stops, adapter, constraint.rows[row] if constraint else None, tag=row))
        for events in engine.run():
            yield [(e.request.tag, t) for e in events for t in e.tokens]
    finally:
        model.train(was_training)
