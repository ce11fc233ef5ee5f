"""The embedded default model: a tiny ChatGLM2 built here, in the original file layout.

No ChatGLM2 weights can be downloaded on a CPU-only machine, so `bash train.sh` without
MODEL builds this once: a sentencepiece tokenizer trained on the PromptCBLUE training file
(unk 0, bos 1, eos 2, byte fallback, like chatglm2's), and a randomly initialised ChatGLM2 of
a few million parameters written as config.json + pytorch_model.bin + tokenizer.model. It then
goes through exactly the loading path a downloaded chatglm2-6b does.

    python -m glm2.tiny --train_file PromptCBLUE/train.json --out output/tiny-chatglm2
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil

import torch

logger = logging.getLogger(__name__)

TINY_SHAPE = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, head_dim=32,
                  num_key_value_heads=2, intermediate_size=688)
DONE_MARKER = ".complete"


def is_built(out_dir: str) -> bool:
    return os.path.isfile(os.path.join(out_dir, DONE_MARKER))


def train_tokenizer(train_file: str, model_path: str, vocab_size: int = 2000) -> None:
    import sentencepiece as spm

    lines = []
    with open(train_file, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            lines.extend([rec.get("input", ""), rec.get("target", ""), "[Round 1]\n\n问：\n\n答："])
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, split_digits=True, hard_vocab_limit=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, max_sentence_length=100000, num_threads=2,
        minloglevel=2)
    with open(model_path, "wb") as f:
        f.write(buf.getvalue())


def build_tiny_model(train_file: str, out_dir: str, seed: int = 0) -> str:
    """Build (once) and return out_dir. Built in a temporary folder and renamed when complete,
    so an interrupted build is never mistaken for a finished one."""
    if is_built(out_dir):
        return out_dir
    from transformers import GlmForCausalLM

    from .checkpoint import save_chatglm
    from .convert import glm_config_from_chatglm, chatglm_config_from_glm
    from .tokenizer import ChatGLM2Tokenizer

    tmp = out_dir.rstrip("/") + ".building"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    train_tokenizer(train_file, os.path.join(tmp, "tokenizer.model"))
    tok = ChatGLM2Tokenizer(os.path.join(tmp, "tokenizer.model"))
    tok.save_pretrained(tmp)
    vocab = -(-len(tok) // 64) * 64  # padded_vocab_size, a multiple of 64 like chatglm2's
    from transformers import GlmConfig

    shape = GlmConfig(vocab_size=vocab, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      max_position_embeddings=4096, rms_norm_eps=1e-5, **TINY_SHAPE)
    # Round-trip through the original config.json so the tiny model is exactly what a chatglm2
    # folder of these sizes would load as.
    config = glm_config_from_chatglm(chatglm_config_from_glm(shape))
    torch.manual_seed(seed)
    model = GlmForCausalLM._from_config(config, dtype=torch.float32)
    save_chatglm(model, tmp)
    open(os.path.join(tmp, DONE_MARKER), "w").close()
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    n = sum(p.numel() for p in model.parameters())
    logger.info("Built tiny ChatGLM2 (%.1fM parameters, vocab %d) in %s", n / 1e6, vocab, out_dir)
    return out_dir


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_file", default="PromptCBLUE/train.json")
    parser.add_argument("--out", default="output/tiny-chatglm2")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(build_tiny_model(args.train_file, args.out, args.seed))


if __name__ == "__main__":
    main()
