"""What the server accepts and how it answers, in OpenAI's shapes.

A body is checked field by field before anything runs: a wrong type, an out-of-range value or
a field the server does not know is a 400 naming that field (OpenAI's error shape), never a
500 or a silently ignored setting. Fields that OpenAI clients send with their neutral value
(presence_penalty 0, logprobs false, ...) are accepted at that value and refused otherwise.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass


class APIError(Exception):
    """An answer in OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# field -> (check, what it must be)
_COMMON = {
    "model": (lambda v: isinstance(v, str), "a string"),
    "max_tokens": (lambda v: v is None or _integer(v), "an integer"),
    "temperature": (lambda v: v is None or (_number(v) and 0 <= v <= 2), "a number from 0 to 2"),
    "top_p": (lambda v: v is None or (_number(v) and 0 < v <= 1), "a number in (0, 1]"),
    "seed": (lambda v: v is None or _integer(v), "an integer"),
    "stop": (lambda v: v is None or isinstance(v, str) or (isinstance(v, list) and len(v) <= 4 and all(
        isinstance(s, str) and s for s in v)), "a string or a list of at most 4 non-empty strings"),
    "n": (lambda v: v is None or v == 1, "1 (one answer per request)"),
    "stream": (lambda v: v is None or isinstance(v, bool), "a boolean"),
    "stream_options": (lambda v: v is None or (isinstance(v, dict) and set(v) <= {"include_usage"}),
                       'an object with "include_usage"'),
    "user": (lambda v: v is None or isinstance(v, str), "a string"),
    # allowed answers, in the fields vLLM's server reads them from
    "guided_choice": (lambda v: v is None or (isinstance(v, list) and v and all(isinstance(s, str) and s for s in v)),
                      "a non-empty list of non-empty strings"),
    "structured_outputs": (lambda v: v is None or (isinstance(v, dict) and set(v) == {"choice"} and isinstance(
        v["choice"], list) and v["choice"] and all(isinstance(s, str) and s for s in v["choice"])),
                           'an object {"choice": [allowed answers]} (the only structured output served)'),
    # ours: PromptCBLUE prompts are constrained to what the official parser accepts; false: free text
    "constrained_decoding": (lambda v: v is None or isinstance(v, bool), "a boolean"),
    # sent by clients with their neutral value
    "presence_penalty": (lambda v: v is None or v == 0, "0 (not supported)"),
    "frequency_penalty": (lambda v: v is None or v == 0, "0 (not supported)"),
    "logprobs": (lambda v: v is None or v is False, "false (not supported)"),
    "logit_bias": (lambda v: v is None or v == {}, "empty (not supported)"),
}
CHAT_FIELDS = {**_COMMON,
               "messages": (lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list of messages"),
               "max_completion_tokens": (lambda v: v is None or _integer(v), "an integer"),
               "top_logprobs": (lambda v: v is None or v == 0, "0 (not supported)")}
COMPLETION_FIELDS = {**_COMMON,
                     "prompt": (lambda v: isinstance(v, str) or (isinstance(v, list) and len(v) == 1 and isinstance(
                         v[0], str)), "a string (one prompt per request)"),
                     "echo": (lambda v: v is None or v is False, "false (not supported)"),
                     "best_of": (lambda v: v is None or v == 1, "1 (not supported)"),
                     "suffix": (lambda v: v is None, "absent (not supported)")}


def parse_body(raw: bytes, fields: dict, required: str) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    for name, value in body.items():
        if name not in fields:
            raise APIError(400, f"unknown parameter: {name}", param=name)
        check, what = fields[name]
        if not check(value):
            raise APIError(400, f"{name} must be {what}, got {json.dumps(value, ensure_ascii=False)[:100]}", param=name)
    if required not in body:
        raise APIError(400, f"{required} is required", param=required)
    return body


def chat_turns(messages: list) -> tuple[str, list[tuple[str, str]]]:
    """(the open user turn, earlier (user, assistant) turns) from OpenAI messages. A system
    message's text goes in front of the first user turn (ChatGLM2 has no system role)."""
    system, turns = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in (
                "system", "user", "assistant"):
            raise APIError(400, f"messages[{i}] must be {{\"role\": system|user|assistant, \"content\": text}}",
                           param=f"messages[{i}]")
        if m["role"] == "system":
            system.append(m["content"])
        else:
            turns.append((m["role"], m["content"]))
    if not turns or turns[-1][0] != "user":
        raise APIError(400, "the last message must be the user's", param="messages")
    history, pending = [], None
    for i, (role, text) in enumerate(turns[:-1]):
        if role == "user" and pending is None:
            pending = text
        elif role == "assistant" and pending is not None:
            history.append((pending, text))
            pending = None
        else:
            raise APIError(400, "user and assistant messages must alternate", param="messages")
    if pending is not None:
        raise APIError(400, "user and assistant messages must alternate", param="messages")
    query = turns[-1][1]
    if system:
        sys_text = "\n".join(system) + "\n"
        if history:
            history[0] = (sys_text + history[0][0], history[0][1])
        else:
            query = sys_text + query
    return query, history


def choice_grammar(options: list[str]) -> str:
    """A grammar that allows exactly one of `options` (llguidance's Lark syntax)."""
    return "start: " + " | ".join(json.dumps(o, ensure_ascii=False) for o in options) + "\n"


@dataclass
class Completion:
    """What the server answers from, whichever endpoint was called."""
    kind: str  # "chat" or "text"
    model: str
    prompt_tokens: int
    id: str = ""
    created: int = 0

    def __post_init__(self):
        self.id = ("chatcmpl-" if self.kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def whole(self, text: str, finish_reason: str, completion_tokens: int) -> dict:
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {"id": self.id, "object": "chat.completion" if self.kind == "chat" else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice],
                "usage": self.usage(completion_tokens)}

    def chunk(self, text: str | None, finish_reason: str | None = None, first: bool = False) -> dict:
        if self.kind == "chat":
            delta = {"role": "assistant", "content": ""} if first else ({} if text is None else {"content": text})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return {"id": self.id, "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice]}

    def usage_chunk(self, completion_tokens: int) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
                "created": self.created, "model": self.model, "choices": [], "usage": self.usage(completion_tokens)}
