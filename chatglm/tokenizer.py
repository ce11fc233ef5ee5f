"""The ChatGLM tokenizers, rebuilt without the hub's remote code: sentencepiece (ChatGLM2,
ChatGLM3) here, tiktoken (GLM-4) in chatglm/tiktoken_tokenizer.py, the prompts of each family's
chat in `ChatFormat`, which both share.

The ChatGLM2 hub tokenizer (tokenization_chatglm.py) subclasses the slow HF tokenizer, which
broke in transformers 4.34. Its behaviour is small enough to restate exactly:
  * ids are the sentencepiece ids; the family's special tokens follow the sentencepiece
    vocabulary in order ([MASK], [gMASK], [sMASK], sop, eop, then ChatGLM3's role tokens);
  * every encoded prompt starts with `[gMASK] sop`; a (prompt, answer) pair ends with eos;
  * pad = unk (id 0), eos is sentencepiece's eos (id 2);
  * decoding drops the specials, pad/unk, bos and eos, then (ChatGLM2 only) applies HF's
    `clean_up_tokenization_spaces` as the original predict step does.
ChatGLM3's `build_chat_input` and GLM-4's chat template put each turn as its role token, the
ids of "\n", then the ids of the text (each encoded on its own), and end with <|assistant|>;
the model answers "\n" + text, and its fine-tuning scripts train on exactly that.
"""
from __future__ import annotations

import hashlib
import os
import re

import sentencepiece as spm

from .family import FAMILIES, PROMPT_FORMATS, Family, detect_family

_SPECIAL_IN_TEXT = re.compile(r"(</s>|<unk>)")


def build_prompt(query: str, history: list | None = None) -> str:
    """ChatGLM2's chat format: earlier rounds, then the open question."""
    prompt = ""
    for i, (old_query, response) in enumerate(history or []):
        prompt += f"[Round {i + 1}]\n\n问：{old_query}\n\n答：{response}\n\n"
    prompt += f"[Round {len(history or []) + 1}]\n\n问：{query}\n\n答："
    return prompt


class ChatFormat:
    """Prompts and answers as the family's own chat builds them, over the backend's
    `encode_text` (message text) and `special_ids` (token -> id)."""

    family: Family
    prompt_format: str
    special_ids: dict

    def _init_format(self, family: Family, prompt_format: str | None) -> None:
        self.family = family
        self.prompt_format = prompt_format or family.prompt_format
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"--prompt_format {self.prompt_format!r}; choose one of {PROMPT_FORMATS}")
        if self.prompt_format == "roles" and "<|user|>" not in self.special_ids:
            raise ValueError(f"--prompt_format roles needs the role tokens (<|user|>, <|assistant|>): the "
                             f"{family.name} tokenizer has none")
        self.prefix_ids = [self.special_ids[t] for t in family.prefix]
        # What truncation keeps at the end: the open turn's <|assistant|>.
        self.suffix_ids = [self.special_ids["<|assistant|>"]] if self.prompt_format == "roles" else []
        self.stop_ids = (self.eos_token_id,) + tuple(self.special_ids[t] for t in family.stops)

    def _turn(self, role: str, text: str) -> list[int]:
        return [self.special_ids[f"<|{role}|>"]] + self.encode_text("\n") + self.encode_text(text)

    def encode_prompt(self, query: str, history: list | None = None) -> list[int]:
        """The prefix + the chat prompt (earlier (query, answer) turns, then the open one), untruncated."""
        if self.prompt_format == "rounds":
            return self.prefix_ids + self.encode_text(build_prompt(query, history))
        if self.prompt_format == "plain":  # a base model's continuation: the texts alone
            return self.prefix_ids + self.encode_text("".join(q + a for q, a in history or []) + query)
        ids = list(self.prefix_ids)
        for old_query, response in history or []:
            ids += self._turn("user", old_query) + self._turn("assistant", response)
        return ids + self._turn("user", query) + self.suffix_ids

    def encode_answer(self, text: str) -> list[int]:
        """What the model is trained to answer after the prompt (eos not included)."""
        return self.encode_text("\n") + self.encode_text(text) if self.prompt_format == "roles" else self.encode_text(text)

    detected_by = ""

    def describe(self) -> str:
        why = f" ({self.detected_by})" if self.detected_by else ""
        return f"{self.family.name} tokenizer{why}, {self.prompt_format} prompts, stops at ids {list(self.stop_ids)}"


def _clean_up_tokenization(text: str) -> str:
    # transformers' PreTrainedTokenizerBase.clean_up_tokenization, which the original's
    # batch_decode(..., clean_up_tokenization_spaces=True) applies to every prediction.
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                          (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                          (" 're", "'re")):
        text = text.replace(before, after)
    return text


class ChatGLMTokenizer(ChatFormat):
    """Encodes prompts and answers exactly like THUDM's ChatGLMTokenizer (chatglm2-6b, chatglm3-6b)."""

    padding_side = "left"

    def __init__(self, model_file: str, _digest: str | None = None, family: str = "chatglm2",
                 prompt_format: str | None = None):
        if not os.path.isfile(model_file):
            raise FileNotFoundError(f"{model_file}: no sentencepiece tokenizer.model here")
        self.model_file = model_file
        with open(model_file, "rb") as f:
            proto = f.read()
        self.digest = hashlib.sha1(proto).hexdigest()
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=proto)
        except RuntimeError as e:
            raise ValueError(f"{model_file}: not a sentencepiece model ({str(e).splitlines()[0][:120]}); ChatGLM2 and "
                             "ChatGLM3 folders have one, GLM-4's is a tiktoken file") from None
        self.n_words = self.sp.vocab_size()
        fam = FAMILIES[family]
        self.special_ids = {tok: self.n_words + i for i, tok in enumerate(fam.special_tokens)}
        self.eos_token_id = self.sp.eos_id()
        self.bos_token_id = self.sp.bos_id()
        self.pad_token_id = self.sp.unk_id()
        self.unk_token_id = self.sp.unk_id()
        self._init_format(fam, prompt_format)
        self._fragment_sp = None  # built on first use by encode_fragment
        self._byte_fallback = None  # known on first use by can_spell
        self._skipped = set(self.special_ids.values()) | {self.eos_token_id, self.bos_token_id,
                                                          self.pad_token_id}

    def __reduce__(self):
        # Pickled by path plus content digest: `datasets.map(num_proc=N)` can ship it, and its
        # cache fingerprint changes when the tokenizer file does.
        return (ChatGLMTokenizer, (self.model_file, self.digest, self.family.name, self.prompt_format))

    @classmethod
    def from_pretrained(cls, path: str, prompt_format: str | None = None):
        return load_tokenizer(path, prompt_format)

    def __len__(self) -> int:
        return self.n_words + len(self.special_ids)

    def encode_text(self, text: str) -> list[int]:
        """Ids of plain text, no special tokens added.

        As the original's slow HF tokenizer: its special tokens written in the text (`</s>`,
        `<unk>`) become their ids, the whitespace next to them is dropped, and each piece of
        text between them is encoded on its own.
        """
        if not self.family.specials_in_text or ("</s>" not in text and "<unk>" not in text):
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

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._skipped and 0 <= i < self.n_words]
        else:
            ids = [i for i in ids if 0 <= i < self.n_words]
        text = self.sp.decode(ids)
        return _clean_up_tokenization(text) if self.family.clean_up_spaces else text

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
        config = {"name_or_path": self.family.hub_name, "remove_space": False, "do_lower_case": False,
                  "tokenizer_class": "ChatGLMTokenizer",
                  "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}}
        if self.family.name != "chatglm2":  # ChatGLM3's tokenizer takes it (and is known by it, family.py)
            config.update(encode_special_tokens=False, clean_up_tokenization_spaces=False, padding_side="left")
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            json.dump(config, f, indent=2)



def load_tokenizer(path: str, prompt_format: str | None = None, family: str | None = None):
    """The tokenizer of a THUDM folder (its family detected from the files, or `family`), or of
    a sentencepiece tokenizer.model file (ChatGLM2)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such folder; --model_name_or_path must be a chatglm2-6b, chatglm3-6b "
                                "or glm-4-9b folder (config.json, weights, tokenizer.model)")
    if not os.path.isdir(path):
        return ChatGLMTokenizer(path, family=family or "chatglm2", prompt_format=prompt_format)
    if family and family not in FAMILIES:
        raise ValueError(f"--model_family {family!r}; choose one of {sorted(FAMILIES)}")
    fam, why = (FAMILIES[family], "--model_family") if family else detect_family(path)
    if fam.tokenizer_format == "tiktoken":
        from .tiktoken_tokenizer import TiktokenTokenizer

        tok = TiktokenTokenizer(path, fam.name, prompt_format)
    else:
        model_file = os.path.join(path, "tokenizer.model")
        if fam.tokenizer_format == "sentencepiece" and detect_family(path)[0].tokenizer_format == "tiktoken":
            raise ValueError(f"{model_file} is a tiktoken file (GLM-4), not the sentencepiece model {fam.name} has")
        tok = ChatGLMTokenizer(model_file, family=fam.name, prompt_format=prompt_format)
    tok.detected_by = why
    return tok
