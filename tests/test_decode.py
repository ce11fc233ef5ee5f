"""The static-cache decode step: same numbers as transformers' own forward, compiled or not."""
import pytest
import torch

from conftest import needs_golden
from chatglm import decode
from chatglm.decode import StaticDecoder
from chatglm.generation import GenerationSettings, generate, left_pad
from chatglm.model import ChatGLM, positions_from_mask
from test_half_precision import CKPT, MODEL, golden_prompts

pytestmark = needs_golden


@pytest.mark.parametrize("batch,few_rows", [(8, 32), (1, 32), (8, 4)])
def test_static_decoder_matches_the_transformers_forward(batch, few_rows, monkeypatch):
    """Logits of 24 decode steps, a left-padded batch with a prefix: our step against
    GlmForCausalLM with its own growing cache. Each way `chatglm.decode.project` runs a product:
    a matrix-vector product (batch 1), W @ x^T (batch 8), the layer's own forward (more rows
    than FEW_ROWS)."""
    monkeypatch.setattr(decode, "FEW_ROWS", few_rows)
    tok, prompts = golden_prompts(batch)
    model = ChatGLM.from_pretrained(MODEL, ptuning_checkpoint=CKPT).eval()
    ids, mask = left_pad(prompts, tok.pad_token_id, "cpu")
    full_mask, pos = model.extend_mask(mask), positions_from_mask(mask)
    with torch.inference_mode():
        out = model.base(input_ids=ids, attention_mask=full_mask, position_ids=pos,
                         past_key_values=model.past_for(batch, growing=True), use_cache=True)
        ref_cache, ref_mask, ref_pos = out.past_key_values, full_mask, pos[:, -1:] + 1
        ours = StaticDecoder(model.base, _copy(ref_cache), full_mask, ref_pos, max_new_tokens=24)
        tokens = out.logits[:, -1].argmax(-1)
        for _ in range(24):
            ref_mask = torch.cat([ref_mask, ref_mask.new_ones(batch, 1)], dim=-1)
            ref = model.base(input_ids=tokens[:, None], attention_mask=ref_mask, position_ids=ref_pos,
                             past_key_values=ref_cache, use_cache=True).logits[:, -1].float()
            got = ours.step(tokens)
            assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
            assert torch.equal(got.argmax(-1), ref.argmax(-1))
            tokens, ref_pos = ref.argmax(-1), ref_pos + 1


def _copy(cache):
    from transformers.cache_utils import DynamicCache

    return DynamicCache(ddp_cache_data=[(l.keys.clone(), l.values.clone()) for l in cache.layers])


def test_compiled_decode_gives_the_eager_outputs():
    """torch.compile of the fixed-shape step (what runs by default on CUDA), on the CPU:
    identical greedy outputs, rows leaving the batch included."""
    tok, prompts = golden_prompts(24)
    model = ChatGLM.from_pretrained(MODEL, ptuning_checkpoint=CKPT)
    eager = generate(model, prompts, GenerationSettings(max_new_tokens=40), tok.eos_token_id, tok.pad_token_id)
    compiled = generate(model, prompts, GenerationSettings(max_new_tokens=40, compiled=True), tok.eos_token_id,
                        tok.pad_token_id)
    assert compiled == eager
    assert len({len(o) for o in eager}) > 1  # some rows ended early and left the batch
