"""The ChatGLM2 tokenizer, rebuilt on sentencepiece alone.

The original hub tokenizer (tokenization_chatglm.py) subclasses the slow HF tokenizer, which
broke in transformers 4.34. Its behaviour is small enough to restate exactly:
  * ids are the sentencepiece ids; five special tokens follow the sentencepiece vocabulary
    in this order: [MASK], [gMASK], [sMASK], sop, eop;
  * every encoded prompt starts with `[gMASK] sop`; a (prompt, answer) pair ends with eos;
  * pad = unk (id 0), eos is sentencepiece's eos (id 2);
  * decoding drops the specials, pad/unk, bos and eos, then applies HF's
    `clean_up_tokenization_spaces` as the original predict step does.
"""
from __future__ import annotations

import hashlib
import os
import re

import sentencepiece as spm

SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
_SPECIAL_IN_TEXT = re.compile(r"(</s>|<unk>)")


def build_prompt(query: str, history: list | None = None) -> str:
    """ChatGLM2's chat format: earlier rounds, then the open question."""
    prompt = ""
    for i, (old_query, response) in enumerate(history or []):
        prompt += f"[Round {i + 1}]\n\n问：{old_query}\n\n答：{response}\n\n"
    prompt += f"[Round {len(history or []) + 1}]\n\n问：{query}\n\n答："
    return prompt


def _clean_up_tokenization(text: str) -> str:
    # transformers' PreTrainedTokenizerBase.clean_up_tokenization, which the original's
    # batch_decode(..., clean_up_tokenization_spaces=True) applies to every prediction.
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                          (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                          (" 're", "'re")):
        text = text.replace(before, after)
    return text


class ChatGLM2Tokenizer:
    """Encodes prompts and answers exactly like THUDM's ChatGLMTokenizer (chatglm2-6b)."""

    padding_side = "left"

    def __init__(self, model_file: str, _digest: str | None = None):
        if not os.path.isfile(model_file):
            raise FileNotFoundError(f"{model_file}: no sentencepiece tokenizer.model here")
        self.model_file = model_file
        with open(model_file, "rb") as f:
            proto = f.read()
        self.digest = hashlib.sha1(proto).hexdigest()
        self.sp = spm.SentencePieceProcessor(model_proto=proto)
        self.n_words = self.sp.vocab_size()
        self.special_ids = {tok: self.n_words + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self.eos_token_id = self.sp.eos_id()
        self.bos_token_id = self.sp.bos_id()
        self.pad_token_id = self.sp.unk_id()
        self.unk_token_id = self.sp.unk_id()
        self.gmask_id = self.special_ids["[gMASK]"]
        self.sop_id = self.special_ids["sop"]
        self.prefix_ids = [self.gmask_id, self.sop_id]
        self._fragment_sp = None  # built on first use by encode_fragment
        self._byte_fallback = None  # known on first use by can_spell
        self._skipped = set(self.special_ids.values()) | {self.eos_token_id, self.bos_token_id,
                                                          self.pad_token_id}

    def __reduce__(self):
        # Pickled by path plus content digest: `datasets.map(num_proc=N)` can ship it, and its
        # cache fingerprint changes when the tokenizer file does.
        return (ChatGLM2Tokenizer, (self.model_file, self.digest))

    @classmethod
    def from_pretrained(cls, path: str) -> "ChatGLM2Tokenizer":
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such folder; --model_name_or_path must be a chatglm2 folder "
                                    "(config.json, weights, tokenizer.model)")
        return cls(os.path.join(path, "tokenizer.model") if os.path.isdir(path) else path)

    def __len__(self) -> int:
        return self.n_words + len(SPECIAL_TOKENS)

    def encode_text(self, text: str) -> list[int]:
        """Ids of plain text, no special tokens added.

        As the original's slow HF tokenizer: its special tokens written in the text (`</s>`,
        `<unk>`) become their ids, the whitespace next to them is dropped, and each piece of
        text between them is encoded on its own.
        """
        if "</s>" not in text and "<unk>" not in text:
            return self.sp.encode(text)
        ids: list[int] = []
        parts = _SPECIAL_IN_TEXT.split(text)
        for i, part in enumerate(parts):
            if part in ("</s>", "<unk>"):
                ids.append(self.sp.piece_to_id(part))
                continue
            if i > 0:
                part = part.lstrip()
            if i < len(parts) - 1:
                part = part.rstrip()
            if part:
                ids.extend(self.sp.encode(part))
        return ids

    def encode_prompt(self, query: str, history: list | None = None) -> list[int]:
        """`[gMASK] sop` + ids of the chat prompt, untruncated."""
        return self.prefix_ids + self.encode_text(build_prompt(query, history))

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._skipped and 0 <= i < self.n_words]
        else:
            ids = [i for i in ids if 0 <= i < self.n_words]
        return _clean_up_tokenization(self.sp.decode(ids))

    def batch_decode(self, batch, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def token_bytes(self) -> list[bytes]:
        """The bytes each id stands for in generated text (what a grammar engine matches
        against): `▁` is a space, `<0xNN>` pieces are their byte, and the specials, unk, bos
        and eos stand for no text (b"")."""
        out = []
        for i in range(len(self)):
            if i >= self.n_words or self.sp.is_control(i) or self.sp.is_unknown(i):
                out.append(b"")
            elif self.sp.is_byte(i):
                out.append(bytes([int(self.sp.id_to_piece(i)[3:5], 16)]))
            else:
                out.append(self.sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
        return out

    def encode_fragment(self, text: str) -> list[int]:
        """Ids of a piece of text in the middle of an answer: without sentencepiece's dummy
        prefix (the leading `▁` that `encode_text` gives the start of a text)."""
        if self._fragment_sp is None:
            from sentencepiece import sentencepiece_model_pb2

            proto = sentencepiece_model_pb2.ModelProto()
            proto.ParseFromString(self.sp.serialized_model_proto())
            proto.normalizer_spec.add_dummy_prefix = False
            self._fragment_sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        return self._fragment_sp.encode(text)

    def can_spell(self, text: str) -> bool:
        """Whether generated ids can spell `text` exactly (always, with byte fallback)."""
        if self._byte_fallback is None:
            self._byte_fallback = sum(self.sp.is_byte(i) for i in range(self.n_words)) == 256
        if self._byte_fallback:
            return True
        ids = self.encode_fragment(text)
        return self.unk_token_id not in ids and self.decode(ids) == text

    def save_pretrained(self, path: str) -> None:
        """Write the original folder's tokenizer files (tokenizer.model + tokenizer_config.json)."""
        import json
        import shutil

        os.makedirs(path, exist_ok=True)
        if os.path.abspath(self.model_file) != os.path.abspath(os.path.join(path, "tokenizer.model")):
            shutil.copyfile(self.model_file, os.path.join(path, "tokenizer.model"))
        config = {"name_or_path": "THUDM/chatglm2-6b", "remove_space": False, "do_lower_case": False,
                  "tokenizer_class": "ChatGLMTokenizer",
                  "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}}
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            json.dump(config, f, indent=2)

