"""The ChatGLM family as data: what differs between ChatGLM2-6B, ChatGLM3-6B and GLM-4-9B.

All three are one architecture (chatglm/convert.py maps each folder onto transformers' Glm); they
differ in sizes and RoPE scale (config.json, read as is), and in what this table holds: the
tokenizer's format and special tokens, the prompt their chat builds, the token that closes a
training row and the tokens a chat stops at, and how their hub tokenizer decodes. Everything
else reads the table; no code branches on a family's name.

The facts are those of THUDM's hub folders (tokenization_chatglm.py, tokenizer_config.json,
generation_config.json of chatglm2-6b, chatglm3-6b and glm-4-9b-chat).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    hub_name: str              # the hub folder our exports and saved configs name
    tokenizer_format: str      # "sentencepiece" (a ModelProto) | "tiktoken" (lines of "base64 rank")
    special_tokens: tuple      # in id order, right after the base vocabulary
    prefix: tuple              # the two tokens every prompt starts with
    prompt_format: str         # "rounds" ([Round i] 问/答 text) | "roles" (<|user|>\n… <|assistant|>)
    eos: str                   # closes each training row; generation stops at it
    stops: tuple               # what else a chat stops at (the next turn's role token)
    pad: str | None            # None: sentencepiece's unk, as ChatGLM2/3
    # ChatGLM2's prompts go through the slow HF tokenizer, which turns `</s>`/`<unk>` written
    # in the text into their ids; ChatGLM3/GLM-4 encode message text with the raw model.
    specials_in_text: bool
    # transformers' clean_up_tokenization_spaces, on in ChatGLM2's predict step, off in 3 and 4
    clean_up_spaces: bool


_GLM_SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
_ROLES = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")

FAMILIES = {f.name: f for f in (
    Family("chatglm2", "THUDM/chatglm2-6b", "sentencepiece", _GLM_SPECIALS, ("[gMASK]", "sop"), "rounds",
           eos="</s>", stops=(), pad=None, specials_in_text=True, clean_up_spaces=True),
    Family("chatglm3", "THUDM/chatglm3-6b", "sentencepiece", _GLM_SPECIALS + _ROLES, ("[gMASK]", "sop"), "roles",
           eos="</s>", stops=("<|user|>", "<|observation|>"), pad=None, specials_in_text=False,
           clean_up_spaces=False),
    Family("glm4", "THUDM/glm-4-9b-chat", "tiktoken",
           ("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>") + _ROLES
           + ("<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>"),
           ("[gMASK]", "<sop>"), "roles", eos="<|endoftext|>", stops=("<|user|>", "<|observation|>"),
           pad="<|endoftext|>", specials_in_text=False, clean_up_spaces=False),
)}
PROMPT_FORMATS = ("rounds", "roles", "plain")


def tokenizer_format(path: str) -> str:
    """"tiktoken" when tokenizer.model is text lines of `base64 rank`, else "sentencepiece"."""
    with open(path, "rb") as f:
        head = f.read(256)
    first = head.split(b"\n", 1)[0].split()
    if len(first) == 2 and first[1].isdigit() and all(c < 128 for c in head):
        return "tiktoken"
    return "sentencepiece"


def _json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def detect_family(model_dir: str) -> tuple[Family, str]:
    """(family, why) of a THUDM folder, from its files (never importing its .py files).

    GLM-4's tokenizer.model is tiktoken's text format. ChatGLM3 shares ChatGLM2's sentencepiece
    model and config fields; what tells it apart is any of: its role tokens in the tokenizer's
    code or chat template, `encode_special_tokens` (a ChatGLM3 tokenizer argument) in
    tokenizer_config.json, clean_up_tokenization_spaces turned off there (ChatGLM3's tokenizer
    passes False, ChatGLM2's leaves the default), an eos list in generation_config.json /
    config.json, or its hub name.
    """
    model_file = os.path.join(model_dir, "tokenizer.model")
    if not os.path.isfile(model_file):
        raise FileNotFoundError(f"{model_dir}: no tokenizer.model; expected a THUDM chatglm2-6b, chatglm3-6b or "
                                "glm-4-9b folder (config.json, weights, tokenizer.model)")
    if tokenizer_format(model_file) == "tiktoken":
        return FAMILIES["glm4"], "tokenizer.model is in tiktoken's format"
    tok_config = _json(os.path.join(model_dir, "tokenizer_config.json"))
    config = _json(os.path.join(model_dir, "config.json"))
    code = os.path.join(model_dir, "tokenization_chatglm.py")
    if os.path.isfile(code):
        with open(code, encoding="utf-8", errors="replace") as f:
            if "<|user|>" in f.read():
                return FAMILIES["chatglm3"], "tokenization_chatglm.py has the role tokens"
    if "<|user|>" in str(tok_config.get("chat_template", "")):
        return FAMILIES["chatglm3"], "tokenizer_config.json's chat template has the role tokens"
    if "encode_special_tokens" in tok_config:
        return FAMILIES["chatglm3"], "tokenizer_config.json has encode_special_tokens"
    if tok_config.get("clean_up_tokenization_spaces") is False:  # ChatGLM3's tokenizer sets it; ChatGLM2's does not
        return FAMILIES["chatglm3"], "tokenizer_config.json turns clean_up_tokenization_spaces off"
    for name in ("generation_config.json", "config.json"):
        eos = _json(os.path.join(model_dir, name)).get("eos_token_id")
        if isinstance(eos, list) and len(eos) > 1:
            return FAMILIES["chatglm3"], f"{name} has several eos ids {eos}"
    hub = str(config.get("_name_or_path", "")) + str(tok_config.get("name_or_path", ""))
    if "chatglm3" in hub.lower():
        return FAMILIES["chatglm3"], f"its hub name is {hub}"
    return FAMILIES["chatglm2"], "no ChatGLM3 or GLM-4 sign in its files"
