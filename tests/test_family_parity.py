"""Parity with the hub model's math on ChatGLM3 (rope_ratio 50, as -32k) and GLM-4 (rope_ratio 500,
eps 1.5625e-7) folders: fp32 logits within 1e-4 and greedy generations, with and without a prefix.
The reference (tests/hub_reference.py) is first checked against the original code's own outputs on
the shared golden ChatGLM2, so what it says of the other families is the hub code's behaviour."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import GOLDEN, ROOT, needs_golden
from hub_reference import hub_greedy, hub_logits
from chatglm.checkpoint import iter_checkpoint_tensors
from chatglm.generation import GenerationSettings, generate
from chatglm.model import ChatGLM
from chatglm.prefix import CHECKPOINT_PREFIX
from chatglm.tokenizer import load_tokenizer

DEV = os.path.join(ROOT, "PromptCBLUE", "dev.json")


def _folder(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        return dict(iter_checkpoint_tensors(model_dir)), json.load(f)


@needs_golden
def test_the_reference_is_the_original_code():
    state, cfg = _folder(os.path.join(GOLDEN, "model"))
    prefix = torch.load(os.path.join(GOLDEN, "ptuning-checkpoint-20", "pytorch_model.bin"),
                        weights_only=True)[CHECKPOINT_PREFIX + "embedding.weight"]
    for name, pre in (("dev_base", None), ("dev_ckpt20", prefix)):
        ref = np.load(os.path.join(GOLDEN, "reference", f"{name}.npz"))
        flat, offsets = ref["prompt_ids_trunc_flat"], ref["prompt_ids_trunc_offsets"]
        for i in range(3):
            ids = flat[offsets[i]:offsets[i + 1]].tolist()
            got = hub_logits(state, cfg, ids, pre)[-1]
            assert torch.allclose(got, torch.from_numpy(ref["last_logits"][i]), atol=1e-4)


def _prompts(tok, n=3):
    with open(DEV, encoding="utf-8") as f:
        return [tok.encode_prompt(json.loads(line)["input"])[-60:] for line in list(f)[:n]]


@pytest.mark.parametrize("family", ["chatglm3", "glm4"])
def test_logits_and_greedy_answers_equal_the_hub_math(family, chatglm3, glm4, tmp_path):
    model_dir = {"chatglm3": chatglm3, "glm4": glm4}[family]
    state, cfg = _folder(model_dir)
    tok = load_tokenizer(model_dir)
    # [gMASK] sop kept in front of the prompt's last tokens (its turn and <|assistant|>)
    prompts = [p[:2] + p[-40:] for p in _prompts(tok)]
    torch.manual_seed(5)
    rows = torch.randn(4, 2 * cfg["num_layers"] * cfg["multi_query_group_num"] * cfg["kv_channels"])
    ckpt = tmp_path / "prefix"
    ckpt.mkdir()
    torch.save({CHECKPOINT_PREFIX + "embedding.weight": rows}, ckpt / "pytorch_model.bin")
    settings = GenerationSettings(max_new_tokens=10)
    for checkpoint, prefix in ((None, None), (str(ckpt), rows)):
        model = ChatGLM.from_pretrained(model_dir, ptuning_checkpoint=checkpoint).eval()
        with torch.no_grad():
            for ids in prompts:
                ours = model(input_ids=torch.tensor([ids])).logits[0]
                assert torch.allclose(ours, hub_logits(state, cfg, ids, prefix), atol=1e-4)
        # one left-padded batch against each prompt alone in the reference
        batch = generate(model, prompts, settings, tok.stop_ids, tok.pad_token_id)
        assert batch == [hub_greedy(state, cfg, ids, set(tok.stop_ids), 10, prefix) for ids in prompts]
