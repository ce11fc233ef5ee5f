"""GLM-4's tokenizer: its tokenizer.model is tiktoken's BPE file (a `base64(token) rank` line per
token), read by the `tiktoken` package with the hub tokenizer's split pattern.

As THUDM's ChatGLM4Tokenizer: the BPE ids are the ranks; the special tokens follow them, as
tokenizer_config.json's `added_tokens_decoder` lists them (or, without one, in the family's
order); message text is encoded with no special tokens recognised in it (`disallowed_special=()`
in the hub code); pad and eos are <|endoftext|>; decoding drops the special tokens and joins
the bytes as UTF-8 (invalid bytes replaced).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os

from .family import FAMILIES
from .tokenizer import ChatFormat

# The split pattern of the GLM-4 hub tokenizer (a fact of its format, as cl100k's is of OpenAI's).
GLM4_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def read_ranks(path: str) -> dict[bytes, int]:
    """tokenizer.model -> {token bytes: rank}; a malformed line is one error naming it."""
    ranks = {}
    with open(path, encoding="ascii", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError:
                raise ValueError(f"{path}:{n}: expected `base64-token rank` (a GLM-4 tiktoken file)") from None
    return ranks


def write_ranks(ranks: dict[bytes, int], path: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(token).decode()} {rank}\n")


def special_tokens_of(model_dir: str, n_words: int, family: str) -> dict[str, int]:
    """{token: id}: tokenizer_config.json's added tokens when it lists them, else the family's."""
    try:
        with open(os.path.join(model_dir, "tokenizer_config.json"), encoding="utf-8") as f:
            added = json.load(f).get("added_tokens_decoder") or {}
    except (OSError, ValueError):
        added = {}
    if added:
        return {entry["content"]: int(i) for i, entry in added.items()}
    return {tok: n_words + i for i, tok in enumerate(FAMILIES[family].special_tokens)}


class TiktokenTokenizer(ChatFormat):
    padding_side = "left"

    def __init__(self, model_dir: str, family: str = "glm4", prompt_format: str | None = None,
                 _digest: str | None = None):
        import tiktoken

        self.model_dir = model_dir
        self.model_file = os.path.join(model_dir, "tokenizer.model")
        with open(self.model_file, "rb") as f:
            self.digest = hashlib.sha1(f.read()).hexdigest()
        ranks = read_ranks(self.model_file)
        self.enc = tiktoken.Encoding(name=f"{family}:{self.digest[:8]}", pat_str=GLM4_PATTERN,
                                     mergeable_ranks=ranks, special_tokens={})
        self.n_words = len(ranks)
        self._bytes = {rank: token for token, rank in ranks.items()}
        self.special_ids = special_tokens_of(model_dir, self.n_words, family)
        fam = FAMILIES[family]
        self.eos_token_id = self.special_ids[fam.eos]
        self.pad_token_id = self.special_ids[fam.pad]
        self.bos_token_id = None
        self.unk_token_id = None
        self._init_format(fam, prompt_format)
        self._special_set = set(self.special_ids.values())

    def __reduce__(self):
        # by path plus content digest, as ChatGLMTokenizer: `datasets` caches change with the file
        return (TiktokenTokenizer, (self.model_dir, self.family.name, self.prompt_format, self.digest))

    def __len__(self) -> int:
        return max(self.n_words, max(self.special_ids.values()) + 1)

    def encode_text(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    encode_fragment = encode_text  # no dummy prefix: a piece of text mid-answer encodes the same

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        out, pending = [], b""
        for i in map(int, ids):
            if i in self._bytes:
                pending += self._bytes[i]
            elif i in self._special_set and not skip_special_tokens:
                out.append(pending.decode("utf-8", errors="replace"))
                pending = b""
                out.append(next(t for t, j in self.special_ids.items() if j == i))
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    def batch_decode(self, batch, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def token_bytes(self) -> list[bytes]:
        """The bytes each id stands for in generated text; specials stand for none."""
        return [self._bytes.get(i, b"") for i in range(len(self))]

    def can_spell(self, text: str) -> bool:
        return True  # byte-level BPE: every byte is a token

    def save_pretrained(self, path: str) -> None:
        """tokenizer.model + tokenizer_config.json (its added tokens, as the hub folder's)."""
        import shutil

        os.makedirs(path, exist_ok=True)
        if os.path.abspath(self.model_file) != os.path.abspath(os.path.join(path, "tokenizer.model")):
            shutil.copyfile(self.model_file, os.path.join(path, "tokenizer.model"))
        write_tokenizer_config(path, self.special_ids, self.family.hub_name)


def write_tokenizer_config(path: str, special_ids: dict[str, int], hub_name: str) -> None:
    """GLM-4's tokenizer_config.json: its special tokens as added tokens, eos = pad = <|endoftext|>."""
    config = {
        "name_or_path": hub_name,
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True}
                                 for t, i in sorted(special_ids.items(), key=lambda kv: kv[1])},
        "additional_special_tokens": [t for t, _ in sorted(special_ids.items(), key=lambda kv: kv[1])],
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLM4Tokenizer", None]},
        "clean_up_tokenization_spaces": False, "do_lower_case": False, "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "padding_side": "left", "remove_space": False,
        "tokenizer_class": "ChatGLM4Tokenizer",
    }
    with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
