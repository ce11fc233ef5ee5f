"""The continuous-batching engine (chatglm/engine/): the same answers as the static batch it
replaced, slots refilled as rows end, a prefix (or LoRA on/off) per row, seeded sampling
that does not depend on the batch, cancelled rows freeing their slots."""
import json
import math
import os

import pytest
import torch

from conftest import ROOT

DEV = os.path.join(ROOT, "PromptCBLUE", "dev.json")


@pytest.fixture(scope="module")
def loaded(tiny_model, tiny_checkpoint):
    from chatglm.model import ChatGLM
    from chatglm.tokenizer import ChatGLMTokenizer

    model = ChatGLM.from_pretrained(tiny_model, ptuning_checkpoint=tiny_checkpoint)
    return model.eval(), ChatGLMTokenizer.from_pretrained(tiny_model)


def records(path, n):
    return [json.loads(l) for l in open(path, encoding="utf-8")][:n]


def prompt_ids(tok, recs):
    from cblue.features import prompt_ids

    return [prompt_ids(tok, r["input"], None, 128, "left")[0] for r in recs]


def run_engine(model, prompts, settings, stops, slots, adapters=None, constraint_rows=None, engine=None):
    """Answers of the engine with `slots` slots; adapters[i]: what prompt i runs on."""
    from chatglm.engine import Request
    from chatglm.generation import engine_for, model_adapter

    engine = engine or engine_for(model, slots)
    reqs = [engine.add(Request(p, settings, frozenset(stops),
                               model_adapter(engine) if adapters is None else adapters[i],
                               constraint_rows[i] if constraint_rows else None, tag=i))
            for i, p in enumerate(prompts)]
    for _ in engine.run():
        pass
    return [r.tokens for r in reqs], engine


def test_greedy_answers_equal_the_static_batch_record_for_record(loaded):
    """24 real records through 5 slots (rows end and are replaced all the time) give exactly
    the answers of the static engine running them as one batch, free and constrained."""
    from cblue.answer_grammar import grammars_for_records
    from chatglm.generation import GenerationSettings, constraint_for, generate_static

    model, tok = loaded
    recs = records(DEV, 24)
    prompts = prompt_ids(tok, recs)
    settings = GenerationSettings(max_new_tokens=40)
    static = generate_static(model, prompts, settings, tok.stop_ids, tok.pad_token_id)
    ours, engine = run_engine(model, prompts, settings, tok.stop_ids, slots=5)
    assert ours == static
    assert len({len(a) for a in ours}) > 1  # lengths vary: slots were refilled while others ran
    assert engine.stats.prefill_passes > 5

    grammars = grammars_for_records(recs, "v2", "input", tok.can_spell, DEV)
    assert sum(g is not None for g in grammars) > 5
    static_c = generate_static(model, prompts, settings, tok.stop_ids, tok.pad_token_id,
                               constraint_for(model, tok, grammars))
    ours_c, _ = run_engine(model, prompts, settings, tok.stop_ids, slots=5,
                           constraint_rows=constraint_for(model, tok, grammars).rows)
    assert ours_c == static_c
    assert ours_c != ours  # the grammar did change some answers


def test_slots_are_refilled_at_once(loaded):
    """Rows of known lengths (stop set empty: each ends at its own budget): a decode step
    runs with every slot full while requests wait, so the steps are about total / slots,
    far fewer than batches that wait for their longest row."""
    from chatglm.generation import GenerationSettings

    model, tok = loaded
    prompts = prompt_ids(tok, records(DEV, 30))
    lengths = [1 + (7 * i) % 23 for i in range(30)]
    from chatglm.engine import Request
    from chatglm.generation import engine_for

    slots = 4
    engine = engine_for(model, slots)
    reqs = [engine.add(Request(p, GenerationSettings(max_new_tokens=n), frozenset(), None, None))
            for p, n in zip(prompts, lengths)]
    for _ in engine.run():
        pass
    assert [len(r.tokens) for r in reqs] == lengths and all(r.finish_reason == "length" for r in reqs)
    static_steps = sum(max(lengths[b:b + slots]) - 1 for b in range(0, 30, slots))
    # a row of n tokens takes n - 1 decode steps (its first token comes from the prompt pass)
    assert engine.stats.row_steps == sum(n - 1 for n in lengths)
    assert engine.stats.decode_steps <= math.ceil(sum(n - 1 for n in lengths) / slots) + max(lengths)
    assert engine.stats.decode_steps < 0.75 * static_steps
    assert not engine.busy and all(s is None for s in engine.scheduler.slots)


def test_rows_of_different_prefixes_share_a_batch(loaded, tiny_checkpoint):
    """The loaded prefix, a second checkpoint's prefix and the base, interleaved in one batch:
    each row's answer is that of a model holding only its own prefix."""
    from chatglm.generation import GenerationSettings, TUNED, engine_for, generate_static
    from chatglm.model import ChatGLM, base_only, checkpoint_prefix_key_values

    model, tok = loaded
    other_dir = os.path.join(os.path.dirname(tiny_checkpoint), "checkpoint-10")
    prompts = prompt_ids(tok, records(DEV, 8))
    settings = GenerationSettings(max_new_tokens=24)
    engine = engine_for(model, 6)
    engine.add_prefix("step10", checkpoint_prefix_key_values(model, other_dir))
    names = [TUNED, "step10", None]
    adapters = [names[i % 3] for i in range(len(prompts))]
    ours, _ = run_engine(model, prompts, settings, tok.stop_ids, 6, adapters, engine=engine)

    other = ChatGLM.from_pretrained(model.model_dir, ptuning_checkpoint=other_dir).eval()
    with base_only(model):
        base = generate_static(model, prompts, settings, tok.stop_ids, tok.pad_token_id)
    expected = {TUNED: generate_static(model, prompts, settings, tok.stop_ids, tok.pad_token_id),
                "step10": generate_static(other, prompts, settings, tok.stop_ids, tok.pad_token_id), None: base}
    assert ours == [expected[a][i] for i, a in enumerate(adapters)]
    assert expected[TUNED] != expected["step10"] != base  # three different models really


def test_lora_on_and_off_per_row(tiny_model):
    """With a LoRA adapter, rows with it on and rows with it off share a batch; each equals
    the model with the adapter on, or switched off, alone."""
    from chatglm.generation import GenerationSettings, TUNED, generate_static
    from chatglm.model import ChatGLM, base_only
    from chatglm.tokenizer import ChatGLMTokenizer

    tok = ChatGLMTokenizer.from_pretrained(tiny_model)
    model = ChatGLM.from_pretrained(tiny_model)
    model.add_lora(4, 8.0, 0.0, ["q_proj", "v_proj", "gate_up_proj"], seed=3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)  # a trained-looking adapter (a fresh one is zero: no change)
    model.eval()
    prompts = prompt_ids(tok, records(DEV, 6))
    settings = GenerationSettings(max_new_tokens=20)
    adapters = [TUNED if i % 2 else None for i in range(len(prompts))]
    ours, _ = run_engine(model, prompts, settings, tok.stop_ids, 4, adapters)
    on = generate_static(model, prompts, settings, tok.stop_ids, tok.pad_token_id)
    with base_only(model):
        off = generate_static(model, prompts, settings, tok.stop_ids, tok.pad_token_id)
    assert on != off
    assert ours == [on[i] if a else off[i] for i, a in enumerate(adapters)]


def test_sampling_depends_on_the_seed_not_on_the_batch(loaded):
    from chatglm.generation import GenerationSettings

    model, tok = loaded
    prompts = prompt_ids(tok, records(DEV, 6))
    settings = GenerationSettings(max_new_tokens=16, do_sample=True, temperature=1.5, top_p=0.95, seed=11)
    alone = [run_engine(model, [p], settings, tok.stop_ids, 1)[0][0] for p in prompts[:3]]
    together, _ = run_engine(model, prompts, settings, tok.stop_ids, 3)
    assert together[:3] == alone
    other_seed, _ = run_engine(model, prompts, GenerationSettings(max_new_tokens=16, do_sample=True, temperature=1.5,
                                                                  top_p=0.95, seed=12), tok.stop_ids, 3)
    assert other_seed != together


def test_a_cancelled_request_frees_its_slot(loaded):
    from chatglm.engine import Request
    from chatglm.generation import GenerationSettings, engine_for

    model, tok = loaded
    prompts = prompt_ids(tok, records(DEV, 3))
    engine = engine_for(model, 1)
    settings = GenerationSettings(max_new_tokens=30)
    first, second = (engine.add(Request(p, settings, frozenset(), None)) for p in prompts[:2])
    engine.step(), engine.step()
    assert engine.scheduler.slots[0] is first
    first.cancelled = True
    events = engine.step()
    assert first.finish_reason == "cancelled" and any(e.request is first and e.finished for e in events)
    assert engine.scheduler.slots[0] is second  # taken at once by the waiting request
    for _ in engine.run():
        pass
    assert len(second.tokens) == 30 and not engine.busy


def test_unknown_adapter_is_refused(loaded):
    from chatglm.engine import Request
    from chatglm.generation import GenerationSettings, engine_for

    model, tok = loaded
    engine = engine_for(model, 2)
    with pytest.raises(KeyError, match="no adapter named 'nope'"):
        engine.add(Request([5, 6], GenerationSettings(), frozenset(), "nope"))
