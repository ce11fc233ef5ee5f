"""The embedded default model: a tiny ChatGLM2 built here, in the original file layout.

No ChatGLM2 weights can be downloaded on a CPU-only machine, so `bash train.sh` without
MODEL builds this once: a sentencepiece tokenizer trained on the PromptCBLUE training file
(unk 0, bos 1, eos 2, byte fallback, like chatglm2's), and a ChatGLM2 of a few million
parameters, randomly initialised and optionally pre-trained briefly as a causal LM on the file's
texts, written as config.json + pytorch_model.bin + tokenizer.model. It then goes through
exactly the loading path a downloaded chatglm2-6b does. The folder remembers its recipe (data,
seed, pre-training steps) and is rebuilt when that changes.

    python -m chatglm.tiny --train_file PromptCBLUE/train.json --out output/tiny-chatglm2 --pretrain_steps 300 \
        --documents paired --shape num_key_value_heads=8 --chat_file PromptCBLUE/chat.json --chat_steps 200 \
        --terse_cue 请简要回答：      # what train.sh builds

With `--chat_file PromptCBLUE/chat.json --chat_steps N` a supervised chat stage follows (long,
chatty answers to conversational questions, tools/sample_chat.py), so the base answers like a
chat model before tuning (`--terse_cue` also teaches it a brevity instruction); `--documents
paired` pre-trains on each record as one text (prompt then answer) and `--shape
num_key_value_heads=8` changes the shape. train.sh's embedded default uses all of them
(BENCHMARKS.md, "The demo's base").
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import random
import shutil

import torch

from .progress import Progress

logger = logging.getLogger(__name__)

TINY_SHAPE = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, head_dim=32,
                  num_key_value_heads=2, intermediate_size=688)
DONE_MARKER = ".complete"
PRETRAIN_LR = 3e-3  # the pre-training's peak learning rate (AdamW, warm-up, cosine decay)


def _sha1(path: str) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def build_recipe(train_file: str, seed: int, pretrain_steps: int, chat_file: str | None = None,
                 chat_steps: int = 0, documents: str = "split", shape: dict | None = None,
                 terse_cue: str = "", pretrain_lr: float = PRETRAIN_LR) -> dict:
    """What the built model depends on; a cached build with another recipe is rebuilt."""
    recipe = {"train_file_sha1": _sha1(train_file), "seed": seed, "pretrain_steps": pretrain_steps,
              "shape": {**TINY_SHAPE, **(shape or {})}}
    if chat_file:
        recipe.update(chat_file_sha1=_sha1(chat_file), chat_steps=chat_steps)
    if documents != "split":
        recipe.update(documents=documents)
    if terse_cue:
        recipe.update(terse_cue=terse_cue)
    if pretrain_lr != PRETRAIN_LR:  # recorded only when changed, so earlier builds stay cached
        recipe.update(pretrain_lr=pretrain_lr)
    return recipe


def is_built(out_dir: str, recipe: dict | None = None) -> bool:
    marker = os.path.join(out_dir, DONE_MARKER)
    if not os.path.isfile(marker):
        return False
    if recipe is None:
        return True
    with open(marker, encoding="utf-8") as f:
        try:
            return json.load(f) == json.loads(json.dumps(recipe))
        except json.JSONDecodeError:
            return False


def _read(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def train_tokenizer(files: str | list[str], model_path: str, vocab_size: int = 2000) -> None:
    import sentencepiece as spm

    lines = []
    for path in [files] if isinstance(files, str) else files:
        for rec in _read(path):
            lines.extend([rec.get("input", ""), rec.get("target", ""), "[Round 1]\n\n问：\n\n答："])
    # Every character is a piece (character_coverage 1.0), so a file with more distinct characters
    # than the vocabulary (the real PromptCBLUE training set has ~4,100) needs a larger one; the
    # sample data's tokenizer stays as it is.
    chars = len(set("".join(lines)))
    vocab_size = max(vocab_size, chars + vocab_size // 2)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, split_digits=True, hard_vocab_limit=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, max_sentence_length=100000, num_threads=2,
        minloglevel=2)
    with open(model_path, "wb") as f:
        f.write(buf.getvalue())


def train_tiktoken(files: list[str], model_path: str, vocab_size: int = 3000) -> None:
    """A GLM-4-format tokenizer.model (tiktoken's `base64 rank` lines): a byte-level BPE trained by
    `tokenizers` with GLM-4's split pattern, its ranks the 256 bytes then the merges in order
    (tiktoken applies the lowest-ranked pair first, as the BPE applies its earliest merge)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from .tiktoken_tokenizer import GLM4_PATTERN, write_ranks

    lines = [rec.get(k, "") for path in files for rec in _read(path) for k in ("input", "target")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GLM4_PATTERN), behavior="isolated"), ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lines, trainer)
    to_byte = {c: b for b, c in bytes_to_unicode().items()}  # ByteLevel's printable stand-in per byte
    ranks = {bytes([b]): b for b in range(256)}
    for merge in json.loads(tok.to_str())["model"]["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        token = bytes(to_byte[c] for c in left + right)
        ranks.setdefault(token, len(ranks))
    write_ranks(ranks, model_path)


def fit(model, next_batch, steps: int, lr: float, what: str) -> list[float]:
    """AdamW with warm-up and cosine decay (to a tenth) over `steps` batches of next_batch(step)
    = (input_ids, labels): the loop both building stages share."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * max(
        0.1, 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    model.train()
    losses = []
    with Progress(steps, f"building the tiny model: {what}", unit="steps") as progress:
        for step in range(steps):
            input_ids, labels = next_batch(step)
            loss = model(input_ids=input_ids, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            progress.update(1, loss=sum(losses[-20:]) / len(losses[-20:]))
    model.eval()
    return losses


def text_windows(tokenizer, texts: list[str], seq_len: int = 128, batch_size: int = 16, seed: int = 0):
    """next_batch for causal-LM training on plain texts: random windows of their token stream."""
    stream = []
    for text in texts:
        stream.extend(tokenizer.encode_text(text) + [tokenizer.eos_token_id])
    data = torch.tensor(stream, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)

    def windows(_step):
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=gen)
        batch = torch.stack([data[s:s + seq_len] for s in starts.tolist()])
        return batch, batch

    return windows


def pretrain(model, tokenizer, texts: list[str], steps: int, seq_len: int = 128, batch_size: int = 16,
             lr: float = PRETRAIN_LR, seed: int = 0) -> list[float]:
    """Causal-LM training of all weights on plain texts (no chat template)."""
    return fit(model, text_windows(tokenizer, texts, seq_len, batch_size, seed), steps, lr, "pre-training")


def chat_columns(pairs: list[dict], terse_cue: str = "") -> dict:
    """The chat stage's examples: each pair as asked (its chatty answer) and, with terse_cue, once
    more with the cue before its question and its plain answer."""
    columns = {"input": [p["input"] for p in pairs], "target": [p["target"] for p in pairs]}
    if terse_cue:
        columns["input"] += [terse_cue + p["input"] for p in pairs]
        columns["target"] += [p.get("plain_target", p["target"]) for p in pairs]
    return columns


def chat_tune(model, tokenizer, pairs: list[dict], steps: int, batch_size: int = 16, lr: float = 1e-3,
              seed: int = 0, texts: list[str] | None = None, terse_cue: str = "") -> list[float]:
    """Supervised stage on chat pairs, in the model's own prompt format and with the loss on the
    answer only, exactly as main.py builds a training row: afterwards the base answers any
    prompt, at length and in its own words (the "before" of the demo, as ChatGLM2-6B is).
    With terse_cue, every pair is also taught once more with that instruction before its question
    and its plain answer (plain_target) after it: the base then follows a brevity instruction as
    instruction-tuned chat models do, a skill a prefix can call up (it can stand in for context
    that is there, not take away context that is)."""
    from cblue.features import PadCollator, train_features

    rows = train_features(chat_columns(pairs, terse_cue),
                          tokenizer, "input", "target", None, 128, 192, "left")
    gen = torch.Generator().manual_seed(seed)
    collate = PadCollator(tokenizer.pad_token_id)  # main.py's: right padding, labels -100 on the pads

    def batch(_step):
        pick = torch.randint(0, len(rows["input_ids"]), (batch_size,), generator=gen).tolist()
        padded = collate([{"input_ids": rows["input_ids"][i], "labels": rows["labels"][i]} for i in pick])
        return padded["input_ids"], padded["labels"]

    if not texts:
        return fit(model, batch, steps, lr, "chat stage")
    # Every other step continues the pre-training on the plain texts, so what the model learned
    # there is kept rather than overwritten by the chat answers (as chat models mix pre-training
    # data into their supervised stage).
    plain = text_windows(tokenizer, texts, batch_size=batch_size, seed=seed + 1)
    return fit(model, lambda step: batch(step) if step % 2 == 0 else plain(step), steps, lr, "chat stage")


def pretraining_texts(records: list[dict], documents: str, seed: int) -> list[str]:
    """The pre-training corpus. "split": every prompt and every answer a text of its own, shuffled
    apart, so the model learns the language and the answer formats but not which answer a prompt
    asks for. "paired": each record one document, its prompt followed by its answer, as a web page
    holding questions and answers reads; the model learns the tasks as text completion."""
    if documents == "paired":
        # A chat pair is read here without its chat frame (plain_target): in plain text a question
        # is answered plainly, so only the chat prompt format, taught by the chat stage, cues the
        # frame, and a prefix can switch it off again.
        texts = [r.get("input", "") + r.get("plain_target", r.get("target", "")) for r in records]
    else:
        texts = [r.get(k, "") for r in records for k in ("input", "target") if r.get(k)]
    random.Random(seed).shuffle(texts)
    return texts


def build_tiny_model(train_file: str, out_dir: str, seed: int = 0, pretrain_steps: int = 0,
                     chat_file: str | None = None, chat_steps: int = 0, family: str = "chatglm2",
                     rope_ratio: float | None = None, documents: str = "split", shape: dict | None = None,
                     terse_cue: str = "", pretrain_lr: float = PRETRAIN_LR) -> str:
    """Build (once) and return out_dir. Built in a temporary folder and renamed when complete,
    so an interrupted build is never mistaken for a finished one. With chat_file (records of
    input = question, target = answer) the tokenizer and pre-training cover its texts too, and
    chat_steps of the supervised chat stage follow the pre-training. `family` writes the folder
    of a ChatGLM3 (role tokens, its tokenizer_config and generation_config) or GLM-4 (a tiktoken
    tokenizer.model, its special tokens and eos set) instead; `rope_ratio` scales the RoPE base
    as chatglm3-6b-32k's and GLM-4's config.json do."""
    recipe = build_recipe(train_file, seed, pretrain_steps, chat_file, chat_steps, documents, shape,
                          terse_cue if chat_file and chat_steps else "", pretrain_lr)
    if family != "chatglm2" or rope_ratio:
        recipe.update(family=family, rope_ratio=rope_ratio)
    if is_built(out_dir, recipe):
        return out_dir
    from transformers import GlmConfig, GlmForCausalLM

    from .checkpoint import save_chatglm
    from .convert import chatglm_config_from_glm, glm_config_from_chatglm
    from .family import FAMILIES
    from .tokenizer import load_tokenizer

    fam = FAMILIES[family]
    tmp = out_dir.rstrip("/") + ".building"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    texts_files = [train_file] + ([chat_file] if chat_file else [])
    if fam.tokenizer_format == "tiktoken":
        train_tiktoken(texts_files, os.path.join(tmp, "tokenizer.model"))
    else:
        train_tokenizer(texts_files, os.path.join(tmp, "tokenizer.model"))
    tok = load_tokenizer(os.path.join(tmp, "tokenizer.model") if family == "chatglm2" else tmp, family=family)
    tok.save_pretrained(tmp)
    vocab = -(-len(tok) // 64) * 64  # padded_vocab_size, a multiple of 64 like chatglm2's
    glm = GlmConfig(vocab_size=vocab, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                    max_position_embeddings=4096, rms_norm_eps=1e-5, **recipe["shape"])
    # Round-trip through the original config.json so the tiny model is exactly what a folder of
    # these sizes would load as.
    raw = chatglm_config_from_glm(glm, hub_name=fam.hub_name)
    if rope_ratio:
        raw["rope_ratio"] = rope_ratio
    if fam.pad is not None:  # GLM-4's config.json lists its whole eos set
        raw.update(eos_token_id=list(tok.stop_ids), pad_token_id=tok.pad_token_id)
    config = glm_config_from_chatglm(raw)
    torch.manual_seed(seed)
    model = GlmForCausalLM._from_config(config, dtype=torch.float32)
    chat = _read(chat_file) if chat_file else []
    texts = pretraining_texts(_read(train_file) + chat, documents, seed)
    if pretrain_steps:
        pretrain(model, tok, texts, pretrain_steps, lr=pretrain_lr, seed=seed)
    if chat and chat_steps:
        chat_tune(model, tok, chat, chat_steps, seed=seed, texts=texts if documents == "paired" else None,
                  terse_cue=terse_cue)
    save_chatglm(model, tmp, hub_name=fam.hub_name)
    if fam.stops:  # what their chat stops at, as their hub folders write it
        with open(os.path.join(tmp, "generation_config.json"), "w", encoding="utf-8") as f:
            json.dump({"eos_token_id": list(tok.stop_ids), "pad_token_id": tok.pad_token_id}, f, indent=2)
    with open(os.path.join(tmp, DONE_MARKER), "w", encoding="utf-8") as f:
        json.dump(recipe, f)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    n = sum(p.numel() for p in model.parameters())
    logger.info("Built tiny %s (%.1fM parameters, vocab %d) in %s", family, n / 1e6, vocab, out_dir)
    return out_dir


def parse_shape(text: str) -> dict:
    """`num_key_value_heads=8,num_hidden_layers=6` -> a dict of TINY_SHAPE's fields."""
    shape = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in TINY_SHAPE or not value.isdigit():
            raise ValueError(f"--shape: '{item}' is not FIELD=N with FIELD one of {', '.join(TINY_SHAPE)}")
        shape[key] = int(value)
    return shape


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_file", default="PromptCBLUE/train.json")
    parser.add_argument("--out", default="output/tiny-chatglm2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain_steps", type=int, default=0,
                        help="causal-LM pre-training steps on the texts of --train_file (0: random weights)")
    parser.add_argument("--pretrain_lr", type=float, default=PRETRAIN_LR, help="the pre-training's peak learning rate")
    parser.add_argument("--chat_file", default=None,
                        help="chat pairs (input, target) for a supervised stage after pre-training: PromptCBLUE/chat.json")
    parser.add_argument("--chat_steps", type=int, default=0)
    parser.add_argument("--documents", default="split", choices=["split", "paired"],
                        help="pre-training texts: prompts and answers apart (split) or each record as one text (paired)")
    parser.add_argument("--shape", default="", help="fields of the tiny shape to change, e.g. num_key_value_heads=8")
    parser.add_argument("--terse_cue", default="",
                        help="an instruction the chat stage also teaches, each pair once more with it and its plain "
                             "answer (e.g. '请简要回答：')")
    parser.add_argument("--family", default="chatglm2", choices=["chatglm2", "chatglm3", "glm4"],
                        help="write the folder of this family (its tokenizer format, special tokens, eos set)")
    parser.add_argument("--rope_ratio", type=float, default=None, help="as chatglm3-6b-32k's (50) or GLM-4's (500)")
    args = parser.parse_args()
    try:
        shape = parse_shape(args.shape)
    except ValueError as e:
        parser.error(str(e))  # one line, exit 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(build_tiny_model(args.train_file, args.out, args.seed, args.pretrain_steps, args.chat_file, args.chat_steps,
                           args.family, args.rope_ratio, args.documents, shape, args.terse_cue, args.pretrain_lr))


if __name__ == "__main__":
    main()
