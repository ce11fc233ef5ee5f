"""Export a ChatGLM2, ChatGLM3 or GLM-4 folder (optionally with a LoRA adapter merged in, or a full fine-tune) as a
transformers-native folder that AutoModelForCausalLM, AutoTokenizer and vLLM load with no
remote code: the layout of THUDM's glm-4-9b-chat-hf.

    python -m chatglm.export --model_name_or_path /path/to/chatglm2-6b --output_dir out/chatglm2-hf
    python -m chatglm.export --model_name_or_path output/tiny-chatglm2 \
        --checkpoint output/tiny-chatglm2-lora-8-2e-3/checkpoint-1600 --output_dir out/tuned-hf

Writes `config.json` (model_type glm), sharded `model*.safetensors`, `generation_config.json`,
and a fast tokenizer (`tokenizer.json`, `tokenizer_config.json` with the family's chat template)
giving exactly the original tokenizer's ids and prompt. A LoRA adapter is merged unless
`--no_merge`, which writes the base and puts the adapter under `adapter/` for
`PeftModel.from_pretrained`. A P-tuning prefix is not weights a model file can hold: export says
so and writes the base model alone.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys

import torch

from .lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, merge_lora
from .checkpoint import folder_dtype, run_checkpoint
from .memory import require_fit
from .model import ChatGLM, checkpoint_kind
from .tokenizer import ChatGLMTokenizer, load_tokenizer

logger = logging.getLogger(__name__)

# ChatGLM2's prompt (chatglm/tokenizer.build_prompt) as a chat template: `[gMASK]sop`, then each
# exchange as `[Round i]\n\n问：…\n\n答：…\n\n`, the last one open.
ROUNDS_TEMPLATE = (
    "[gMASK]sop"
    "{% set ns = namespace(round=0) %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{% set ns.round = ns.round + 1 %}"
    "{{ '[Round ' ~ ns.round ~ ']\n\n问：' ~ message['content'] ~ '\n\n答：' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] ~ '\n\n' }}{% endif %}"
    "{% endfor %}"
)


def roles_template(prefix: str, separator: str) -> str:
    """ChatGLM3's build_chat_input / GLM-4's template: `<|role|>` + "\n" + text per message, then
    `<|assistant|>`. The hub encodes "\n" and the text apart; a fast tokenizer encodes the span
    between two special tokens at once, so for sentencepiece the text gets its own dummy-prefix
    space back from `separator` ("\n " -> ▁ \n ▁text, as the hub's two encodes)."""
    literal = separator.replace("\n", "\\n")  # inside a Jinja string
    return (prefix + "{% for message in messages %}<|{{ message['role'] }}|>{{ '" + literal + "' }}"
            "{{ message['content'] }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def chat_template(tokenizer) -> str:
    if tokenizer.prompt_format == "rounds":
        return ROUNDS_TEMPLATE
    if tokenizer.prompt_format != "roles":
        raise ValueError(f"--prompt_format {tokenizer.prompt_format}: no chat template to export for it")
    sentencepiece = tokenizer.family.tokenizer_format == "sentencepiece"
    return roles_template("".join(tokenizer.family.prefix), "\n " if sentencepiece else "\n")


def tiktoken_fast_tokenizer(tokenizer):
    """GLM-4's tiktoken BPE as a `tokenizers` BPE (transformers' TikTokenConverter, the same split
    pattern), its special tokens after the ranks with the hub's ids."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from .tiktoken_tokenizer import GLM4_PATTERN

    backend = TikTokenConverter(vocab_file=tokenizer.model_file, pattern=GLM4_PATTERN).converted()
    specials = [t for t, _ in sorted(tokenizer.special_ids.items(), key=lambda kv: kv[1])]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    _check_ids(backend, tokenizer)
    eos = tokenizer.family.eos
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, pad_token=tokenizer.family.pad,
                                   additional_special_tokens=specials, padding_side="left",
                                   chat_template=chat_template(tokenizer), model_max_length=1 << 30,
                                   clean_up_tokenization_spaces=False)


def _check_ids(backend, tokenizer) -> None:
    for token, expected in tokenizer.special_ids.items():
        if backend.token_to_id(token) != expected:
            raise ValueError(f"{token} would get id {backend.token_to_id(token)}, the original has {expected}")


def fast_tokenizer(tokenizer: ChatGLMTokenizer):
    """A PreTrainedTokenizerFast with the original's ids: the sentencepiece BPE model (byte
    fallback, identity normalisation, a dummy prefix on each piece of text) as a `tokenizers`
    BPE, as transformers converts Llama's, then the family's specials after the sentencepiece
    vocabulary ([MASK] [gMASK] [sMASK] sop eop, and ChatGLM3's role tokens, in that order)."""
    if tokenizer.family.tokenizer_format == "tiktoken":
        return tiktoken_fast_tokenizer(tokenizer)
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_base import generate_merges

    proto = sentencepiece_model_pb2.ModelProto()
    with open(tokenizer.model_file, "rb") as f:
        proto.ParseFromString(f.read())
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if spec.model_type != sentencepiece_model_pb2.TrainerSpec.BPE or norm.name not in ("identity", ""):
        raise ValueError(f"{tokenizer.model_file}: sentencepiece model type {spec.model_type}, normaliser "
                         f"{norm.name!r}; export converts chatglm2's kind (BPE, identity)")
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    # Merge order = the merged piece's score: what sentencepiece's BPE applies first.
    scores = {p.piece: p.score for p in proto.pieces}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=generate_merges(vocab, scores), unk_token="<unk>",
                                   fuse_unk=True, byte_fallback=spec.byte_fallback))
    steps = [normalizers.Prepend("\u2581")] if norm.add_dummy_prefix else []
    backend.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "\u2581")])
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
                                        + ([decoders.Strip(" ", 1, 0)] if norm.add_dummy_prefix else []))
    # unk and control pieces (<s>, </s>) written in the text: their own ids, the whitespace
    # around them dropped (as the original's slow tokenizer, see ChatGLMTokenizer.encode_text).
    control = [p.piece for p in proto.pieces if p.type in (2, 3)]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=True, rstrip=True)
                                for t in control])
    # single_word: `sop`/`eop` only as tokens of their own, never inside a word of the text.
    specials = list(tokenizer.family.special_tokens)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False, single_word=t in ("sop", "eop"))
                                for t in specials])
    _check_ids(backend, tokenizer)
    # ChatGLM2 decodes with HF's clean_up_tokenization (" ?" -> "?", ...); transformers 5 skips it
    # for BPE unless told, and then the decoded answers would differ. ChatGLM3 does not.
    clean = tokenizer.family.clean_up_spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="</s>", pad_token="<unk>",
        additional_special_tokens=specials, padding_side="left", chat_template=chat_template(tokenizer),
        model_max_length=1 << 30, clean_up_tokenization_spaces=clean,
        clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=clean)


def _portable_tokenizer_config(folder: str, tokenizer) -> None:
    """tokenizer_config.json as transformers 4.x and serving engines read it too: the generic
    fast-tokenizer class and the chat template inside (transformers 5 also reads the .jinja)."""
    path = os.path.join(folder, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg.update(tokenizer_class="PreTrainedTokenizerFast", chat_template=chat_template(tokenizer),
               additional_special_tokens=[t for t, _ in sorted(tokenizer.special_ids.items(), key=lambda kv: kv[1])])
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=2)


def export(model_dir: str, output_dir: str, checkpoint: str | None = None, merge: bool = True,
           dtype: torch.dtype | None = None, max_shard_size: str = "2GB") -> dict:
    """Write the folder; return what was written (for the log and tests)."""
    from transformers import GenerationConfig

    if checkpoint:  # a run folder: its best checkpoint when recorded, else its newest
        checkpoint = run_checkpoint(checkpoint) or checkpoint
    kind = checkpoint_kind(checkpoint) if checkpoint else None
    # Loaded in the dtype it is written in (the folder's own unless --dtype): never fp32 first.
    weights_dir = checkpoint if kind == "full" else model_dir
    dtype = dtype or folder_dtype(weights_dir)
    require_fit(weights_dir, dtype, "cpu", extra_bytes=_shard_bytes(max_shard_size), flags="--dtype")
    load = checkpoint if kind == "full" or (kind == "lora" and merge) else None  # a prefix or a kept adapter: base alone
    model = ChatGLM.from_pretrained(model_dir, ptuning_checkpoint=load, dtype=dtype)
    tokenizer = load_tokenizer(model_dir)
    base = model.base
    note = None
    if kind == "prefix":
        note = (f"{checkpoint} is a P-tuning prefix, which cannot be merged into the weights (it is extra "
                "key/value vectors, not a weight update); writing the base model only")
    elif kind == "lora" and merge:
        merge_lora(base)  # in fp32 layer by layer, then back to `dtype`
    base.config.use_cache = True
    base.config.dtype = dtype
    tmp = output_dir.rstrip("/") + ".writing"  # renamed when complete: never a half-written folder
    shutil.rmtree(tmp, ignore_errors=True)
    base.save_pretrained(tmp, max_shard_size=max_shard_size, safe_serialization=True)
    stops = list(tokenizer.stop_ids)  # ChatGLM3 and GLM-4 chats also stop at the next turn's role token
    GenerationConfig(eos_token_id=stops[0] if len(stops) == 1 else stops, pad_token_id=tokenizer.pad_token_id,
                     do_sample=False).save_pretrained(tmp)
    fast_tokenizer(tokenizer).save_pretrained(tmp)
    _portable_tokenizer_config(tmp, tokenizer)
    if kind == "lora" and not merge:
        os.makedirs(os.path.join(tmp, "adapter"))
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            shutil.copyfile(os.path.join(checkpoint, name), os.path.join(tmp, "adapter", name))
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(tmp, output_dir)
    return {"output_dir": output_dir, "checkpoint": checkpoint, "kind": kind,
            "merged": kind in ("lora", "full") and (merge or kind == "full"), "note": note}


def _shard_bytes(size: str) -> int:
    """--max_shard_size ("2GB", "500MB") in bytes: what writing one shard holds beside the model."""
    units = {"GB": 1 << 30, "MB": 1 << 20, "KB": 1 << 10}
    for unit, factor in units.items():
        if size.upper().endswith(unit):
            return int(float(size[:-len(unit)]) * factor)
    return int(size)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m chatglm.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_name_or_path", required=True, help="a chatglm2 folder (original layout)")
    ap.add_argument("--checkpoint", help="a LoRA adapter to merge, or a full fine-tune checkpoint (or a prefix: "
                                         "refused politely, the base is written); a run folder: its best "
                                         "checkpoint when recorded, else its newest")
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--no_merge", action="store_true", help="keep a LoRA adapter apart, under OUTPUT/adapter/")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                    help="weights' dtype in the folder written (default: the source folder's own, e.g. fp16 for "
                         "THUDM's; the model is loaded in it, never in fp32 first)")
    ap.add_argument("--max_shard_size", default="2GB")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = export(args.model_name_or_path, args.output_dir, args.checkpoint, not args.no_merge,
                    getattr(torch, args.dtype) if args.dtype else None, args.max_shard_size)
    if result["note"]:
        print(f"chatglm.export: {result['note']}", file=sys.stderr)
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main, "python -m chatglm.export")
