"""Parity with the original THUDM implementation on the tiny golden checkpoint."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import GOLDEN, needs_golden
from chatglm.generation import GenerationSettings, generate
from chatglm.model import ChatGLM
from chatglm.tokenizer import ChatGLMTokenizer

pytestmark = needs_golden
MODEL = os.path.join(GOLDEN, "model")
CKPT = os.path.join(GOLDEN, "ptuning-checkpoint-20")


def ragged(d, key):
    flat, off = d[key + "_flat"], d[key + "_offsets"]
    return [flat[off[i]:off[i + 1]].tolist() for i in range(len(off) - 1)]


@pytest.fixture(scope="module")
def ref():
    return {name: np.load(os.path.join(GOLDEN, "reference", f"{name}.npz")) for name in ("dev_base", "dev_ckpt20")}


@pytest.fixture(scope="module")
def dev_records():
    with open(os.path.join(GOLDEN, "data", "dev.json"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def base():
    return ChatGLM.from_pretrained(MODEL).eval()


@pytest.fixture(scope="module")
def tuned():
    m = ChatGLM.from_pretrained(MODEL, pre_seq_len=8)
    m.load_prefix(CKPT)
    return m.eval()


def test_tokenizer_ids_match_original(ref, dev_records):
    from cblue.features import prompt_ids

    tok = ChatGLMTokenizer.from_pretrained(MODEL)
    d = ref["dev_base"]
    assert [tok.special_ids[t] for t in ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")] == [4091, 4092, 4093, 4094, 4095]
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 2)
    for rec, full, trunc, target in zip(dev_records, ragged(d, "prompt_ids"), ragged(d, "prompt_ids_trunc"),
                                        ragged(d, "target_ids")):
        assert tok.encode_prompt(rec["input"]) == full
        assert prompt_ids(tok, rec["input"], None, 128, "right")[0] == trunc  # the original's truncation
        assert tok.encode_text(rec["target"]) == target


def test_decoding_matches_original_predictions(ref):
    tok = ChatGLMTokenizer.from_pretrained(MODEL)
    with open(os.path.join(GOLDEN, "reference", "generated_predictions_base.txt"), encoding="utf-8") as f:
        original = [json.loads(line) for line in f]
    gens = ragged(ref["dev_base"], "gen_ids")
    labels = ragged(ref["dev_base"], "eval_label_ids")
    assert [tok.decode(g).strip() for g in gens] == [o["predict"] for o in original]
    assert [tok.decode(l).strip() for l in labels] == [o["labels"] for o in original]


@pytest.mark.parametrize("folder", ["model", "model-safetensors"])
def test_base_logits_match(ref, folder):
    m = ChatGLM.from_pretrained(os.path.join(GOLDEN, folder)).eval()
    d = ref["dev_base"]
    with torch.no_grad():
        for ids, want in zip(ragged(d, "prompt_ids_trunc"), d["last_logits"]):
            got = m(torch.tensor([ids])).logits[0, -1]
            assert torch.allclose(got, torch.from_numpy(want), atol=1e-4, rtol=0)
        full = m(torch.tensor([ragged(d, "prompt_ids_trunc")[0]])).logits[0]
        off = d["full_logits_first4_offsets"]
        assert torch.allclose(full, torch.from_numpy(d["full_logits_first4"][off[0]:off[1]]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["dev_base", "dev_ckpt20"])
def test_left_padded_batches_match(ref, base, tuned, name):
    m, d = (base if name == "dev_base" else tuned), ref[name]
    with torch.no_grad():
        got = m(torch.from_numpy(d["eval_input_ids"]), attention_mask=torch.from_numpy(d["eval_attention_mask"]),
                position_ids=torch.from_numpy(d["eval_position_ids"])).logits[:, -1]
        assert torch.allclose(got, torch.from_numpy(d["eval_last_logits"]), atol=1e-4, rtol=0)
        got = m(torch.from_numpy(d["batch_input_ids"]), attention_mask=torch.from_numpy(d["batch_attention_mask"])
                ).logits[:, -1]
        assert torch.allclose(got, torch.from_numpy(d["batch_last_logits"]), atol=1e-4, rtol=0)


def test_prefix_logits_and_gradient_match(ref, tuned):
    d = ref["dev_ckpt20"]
    assert torch.equal(tuned.prefix_encoder.embedding.weight.detach(), torch.from_numpy(d["prefix_weight"]))
    with torch.no_grad():
        for ids, want in zip(ragged(d, "prompt_ids_trunc"), d["last_logits"]):
            assert torch.allclose(tuned(torch.tensor([ids])).logits[0, -1], torch.from_numpy(want), atol=1e-4, rtol=0)
    tuned.prefix_encoder.zero_grad()
    out = tuned(torch.from_numpy(d["train_input_ids"][:4]), labels=torch.from_numpy(d["train_labels"][:4]))
    out.loss.backward()
    assert abs(out.loss.item() - float(d["grad_batch_loss"])) < 1e-5
    grad = tuned.prefix_encoder.embedding.weight.grad
    assert torch.allclose(grad, torch.from_numpy(d["prefix_grad"]), atol=1e-6, rtol=1e-4)
    tuned.prefix_encoder.zero_grad()


def test_per_row_training_loss_matches(base):
    t = np.load(os.path.join(GOLDEN, "reference", "train_base.npz"))
    ids, labels, losses = t["train_input_ids"], t["train_labels"], t["train_loss"]
    with torch.no_grad():
        for i in range(0, len(ids), 37):
            loss = base(torch.from_numpy(ids[i:i + 1]), labels=torch.from_numpy(labels[i:i + 1])).loss
            assert abs(loss.item() - float(losses[i])) < 1e-4


@pytest.mark.parametrize("name", ["dev_base", "dev_ckpt20"])
def test_greedy_generation_matches(ref, base, tuned, name):
    """The original always emits 65 tokens; ours stops at eos, so compare up to it."""
    m, d = (base if name == "dev_base" else tuned), ref[name]
    prompts = ragged(d, "prompt_ids_trunc")
    ours = generate(m, prompts, GenerationSettings(max_new_tokens=65), eos_token_id=2, pad_token_id=0)
    for got, want in zip(ours, ragged(d, "gen_ids")):
        want = want[:want.index(2)] if 2 in want else want
        assert got == want


def test_fresh_prefix_is_the_originals_init():
    m = ChatGLM.from_pretrained(MODEL, pre_seq_len=8, seed=42)
    torch.manual_seed(42)
    assert torch.equal(m.prefix_encoder.embedding.weight.detach(), torch.randn(8, 256))
    assert torch.isfinite(m.prefix_encoder.embedding.weight).all()


def test_gradient_checkpointing_keeps_the_prefix_gradient(ref):
    d = ref["dev_ckpt20"]
    m = ChatGLM.from_pretrained(MODEL, pre_seq_len=8)
    m.load_prefix(CKPT)
    m.gradient_checkpointing_enable()
    m.train()
    m.prefix_encoder.dropout.p = 0.0  # the reference gradient was taken without dropout
    out = m(torch.from_numpy(d["train_input_ids"][:4]), labels=torch.from_numpy(d["train_labels"][:4]))
    out.loss.backward()
    assert torch.allclose(m.prefix_encoder.embedding.weight.grad, torch.from_numpy(d["prefix_grad"]),
                          atol=1e-6, rtol=1e-4)
