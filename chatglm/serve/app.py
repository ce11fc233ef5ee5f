"""The HTTP routes, in OpenAI's API shapes (what vLLM's and OpenAI's clients speak).

    GET  /v1/models            the base ("base") and every loaded checkpoint, the default first
    POST /v1/chat/completions  messages -> the family's chat prompt; stream: server-sent events
    POST /v1/completions       a raw prompt
    GET  /health               200 while serving, 503 while draining

Every request becomes one row of the engine's continuous batch (chatglm/serve/worker.py); its
`model` names the row's adapter. Answers are what evaluation writes for the same prompt and
checkpoint (greedy unless `temperature` > 0, prompts cut to --max_source_length from the left,
PromptCBLUE prompts constrained to what the official parser accepts unless
`"constrained_decoding": false`).
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass, field

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine import GenerationSettings, Request
from .protocol import CHAT_FIELDS, COMPLETION_FIELDS, APIError, Completion, chat_turns, choice_grammar, parse_body
from .text import AnswerText
from .worker import EngineWorker

MAX_BODY_BYTES = 1 << 20
logger = logging.getLogger("chatglm.serve")


@dataclass
class ServerState:
    tokenizer: object
    worker: EngineWorker
    models: dict  # served name -> engine adapter name (None: the base)
    model_length: int  # positions the model takes: prompt + prefix + answer
    max_source_length: int
    max_new_tokens: int  # the default max_tokens
    grammars: object | None = None  # chatglm.constraint.GrammarEngine
    constrained: bool = True
    version: str = "v2"
    api_key: str | None = None
    draining: bool = False
    prefix_lengths: dict = field(default_factory=dict)  # adapter -> prefix columns


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="ChatGLM (PromptCBLUE) OpenAI-compatible server", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def guard(request: HTTPRequest, call_next):
        if state.draining and request.url.path != "/health":
            return _error(APIError(503, "the server is shutting down; no new requests", kind="server_error"))
        if state.api_key and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {state.api_key}".encode()):
                return _error(APIError(401, "missing or wrong API key (Authorization: Bearer KEY)",
                                       kind="authentication_error", code="invalid_api_key"))
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
            return _error(APIError(413, f"the request body is over {MAX_BODY_BYTES} bytes"))
        return await call_next(request)

    @app.exception_handler(APIError)
    async def api_error(_, e: APIError):
        return _error(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, e: StarletteHTTPException):
        return _error(APIError(e.status_code, str(e.detail)))

    @app.exception_handler(Exception)
    async def unexpected(_, e: Exception):  # a bug, not the client's fault: say so in the same shape
        logger.exception("request failed")
        return _error(APIError(500, f"internal error: {type(e).__name__}: {e}", kind="server_error"))

    @app.get("/health")
    async def health():
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return {"status": "ok", "in_flight": state.worker.in_flight, "finished": dict(state.worker.finished)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "chatglm"}
                                           for name in state.models]}

    @app.post("/v1/chat/completions")
    async def chat(request: HTTPRequest):
        body = parse_body(await _body(request), CHAT_FIELDS, "messages")
        query, history = chat_turns(body["messages"])
        return await _complete(state, request, body, "chat", query, history)

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        body = parse_body(await _body(request), COMPLETION_FIELDS, "prompt")
        prompt = body["prompt"] if isinstance(body["prompt"], str) else body["prompt"][0]
        return await _complete(state, request, body, "text", prompt, None)

    return app


async def _body(request: HTTPRequest) -> bytes:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise APIError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
    return raw


def _error(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def build_request(state: ServerState, body: dict, kind: str, text: str, history) -> tuple[Request, str, list[str]]:
    """(the engine request, the served model's name, stop strings) for a checked body."""
    from cblue.features import truncate_prompt

    tok = state.tokenizer
    name = body.get("model") or next(iter(state.models))
    if name not in state.models:
        raise APIError(404, f"the model `{name}` does not exist; GET /v1/models lists the served ones", param="model",
                       code="model_not_found")
    adapter = state.models[name]
    field_name = "messages" if kind == "chat" else "prompt"
    if kind == "chat":
        ids = tok.encode_prompt(text, history)
        suffix = len(tok.suffix_ids)
    else:
        ids, suffix = list(tok.prefix_ids) + tok.encode_text(text), 0
    used = len(ids) + state.prefix_lengths.get(adapter, 0)
    if used >= state.model_length:
        raise APIError(400, f"the prompt is {len(ids)} tokens; this model takes at most {state.model_length} "
                            f"positions in all", param=field_name, code="context_length_exceeded")
    ids = truncate_prompt(ids, state.max_source_length, len(tok.prefix_ids), "left", suffix)  # as evaluation does
    used = len(ids) + state.prefix_lengths.get(adapter, 0)
    budget_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(budget_field)
    if max_tokens is None:
        max_tokens = min(state.max_new_tokens, state.model_length - used)
    if max_tokens < 1 or used + max_tokens > state.model_length:
        raise APIError(400, f"{budget_field} must be from 1 to {state.model_length - used} for this prompt "
                            f"({used} of the model's {state.model_length} positions used), got {max_tokens}",
                       param=budget_field)
    temperature = body.get("temperature")
    sample = temperature is not None and temperature > 0
    seed = body.get("seed")
    settings = GenerationSettings(max_new_tokens=max_tokens, do_sample=sample,
                                  temperature=temperature if sample else 1.0,
                                  top_p=(body.get("top_p") or 1.0) if sample else 1.0,
                                  seed=seed if seed is not None else secrets.randbelow(2 ** 31))
    choices = body.get("guided_choice") or (body.get("structured_outputs") or {}).get("choice")
    grammar = None
    if choices:
        grammar = choice_grammar(choices)
    elif body.get("constrained_decoding", state.constrained) and state.grammars is not None:
        from cblue.answer_grammar import grammar_for_prompt

        grammar = grammar_for_prompt(text, None, state.version, tok.can_spell)
    constraint = state.grammars.row(grammar) if grammar and state.grammars is not None else None
    if choices and constraint is None:
        raise APIError(400, "the allowed answers could not be compiled to a grammar", param="structured_outputs")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    return Request(ids, settings, frozenset(tok.stop_ids), adapter, constraint), name, stops


async def _complete(state: ServerState, http: HTTPRequest, body: dict, kind: str, text: str, history):
    request, name, stops = build_request(state, body, kind, text, history)
    out = Completion(kind, name, len(request.prompt))
    answer = AnswerText(state.tokenizer, stops)
    sink = state.worker.submit(request)
    if body.get("stream"):
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(_stream(request, sink, answer, out, usage), media_type="text/event-stream")
    try:
        while True:
            try:
                update = await asyncio.wait_for(sink.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if await http.is_disconnected():  # nobody waits for this answer any more
                    request.cancelled = True
                    return JSONResponse({}, status_code=499)
                continue
            if update.error:
                raise APIError(400 if update.finish_reason is None else 500, update.error,
                               kind="invalid_request_error" if update.finish_reason is None else "server_error")
            answer.add(update.tokens)
            if answer.stopped and not update.finished:
                request.cancelled = True  # a stop string ended it: free the slot now
            if update.finished or answer.stopped:
                reason = "stop" if answer.stopped or update.finish_reason == "stop" else "length"
                return out.whole(answer.final(), reason, len(answer.tokens))
    finally:
        if not request.finished:
            request.cancelled = True


async def _stream(request: Request, sink: asyncio.Queue, answer: AnswerText, out: Completion, usage: bool):
    def event(data) -> str:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    try:
        if out.kind == "chat":
            yield event(out.chunk(None, first=True))
        while True:
            update = await sink.get()
            if update.error:
                yield event(APIError(500, update.error, kind="server_error").body())
                break
            delta = answer.add(update.tokens)
            if delta:
                yield event(out.chunk(delta))
            if answer.stopped and not update.finished:
                request.cancelled = True
            if update.finished or answer.stopped:
                rest = answer.finish()
                if rest:
                    yield event(out.chunk(rest))
                reason = "stop" if answer.stopped or update.finish_reason == "stop" else "length"
                yield event(out.chunk(None, reason))
                if usage:
                    yield event(out.usage_chunk(len(answer.tokens)))
                break
        yield "data: [DONE]\n\n"
    finally:  # the client went away mid-stream (or the answer ended): the slot is freed at the next step
        if not request.finished:
            request.cancelled = True
