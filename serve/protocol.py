"""The OpenAI wire format: request bodies -> engine Requests (every bad value a 400 naming expected and
actual), results -> response bodies and streamed chunks.

Supported: /v1/chat/completions (messages) and /v1/completions (prompt: text or token ids) with max_tokens
(or max_completion_tokens), temperature, top_p, stop, seed, stream (+ stream_options.include_usage), n=1;
our extension `preference` (one weight per objective) and vLLM's `top_k`, `repetition_penalty`, `ignore_eos`.
Unset sampling values take the export's defaults, so a request equals `hoe generate` with the same options.
Responses carry `hoe: {preference, router_mix, objectives}`.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass

from hoe.core.errors import HoEError, InputError, PreferenceError

from .rows import Request, Row

# Fields whose non-default values ask for something this server does not do: refused, not silently ignored.
_UNSUPPORTED = {"logprobs": (None, False, 0), "top_logprobs": (None, 0), "tools": (None, []), "functions": (None, []),
                "echo": (None, False), "best_of": (None, 1), "suffix": (None, "")}


class ApiError(Exception):
    """An HTTP error in OpenAI's JSON shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error", headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str | None, expected: str, actual, code: str | None = None) -> ApiError:
    return ApiError(400, f"{param}: expected {expected}, got {actual!r}" if param else f"expected {expected}, "
                    f"got {actual!r}", param=param, code=code)


@dataclass
class Parsed:
    """A validated request: what to run and how to answer."""

    kind: str  # "chat" or "completion"
    request: Request
    stream: bool
    include_usage: bool


class ServedModel:
    """What the HTTP layer knows of the model it serves."""

    def __init__(self, model, name: str) -> None:
        self.model, self.name = model, name
        self.created = int(time.time())

    def card(self) -> dict:
        m = self.model
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "hoe",
                "objectives": m.objectives, "default_preference": m.router.uniform() if m.router.enabled else None,
                "context_length": m.context_length, "backend": m.backend.name}


# ------------------------------------------------------------------------------------------- requests


def parse(kind: str, body, served: ServedModel) -> Parsed:
    if not isinstance(body, dict):
        raise bad(None, "a JSON object as the request body", type(body).__name__)
    _check_model(body.get("model"), served.name)
    if body.get("n", 1) != 1:
        raise bad("n", "1 (one choice per request)", body.get("n"))
    for name, defaults in _UNSUPPORTED.items():
        if name in body and not any(body[name] == d and type(body[name]) is type(d) for d in defaults):
            raise bad(name, f"{defaults[0] if len(defaults) == 1 else defaults[1]!r} or unset (not supported)",
                      body[name])
    model = served.model
    ids = _chat_ids(body, model) if kind == "chat" else _completion_ids(body, model)
    request = Request(ids, _config(body, model), _preference(body, model), id=_new_id(kind))
    try:
        Row(model, request)  # the engine's own checks (prompt length and ids, stop strings), before queueing
    except InputError as e:
        raise prompt_error(e, kind) from e
    stream = _typed(body, "stream", bool, "true or false") or False
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("stream_options", "an object like {\"include_usage\": true}", options)
    return Parsed(kind, request, stream, bool(options.get("include_usage", False)))


def _check_model(name, served: str) -> None:
    if name is not None and name != served:
        raise ApiError(400, f"model: unknown model {name!r}; this server serves {[served]}", param="model",
                       code="model_not_found")


def _chat_ids(body: dict, model) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "a non-empty list of {role, content} objects", messages)
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad(f"messages[{i}]", "an object with a string 'role'", m)
        clean.append({"role": m["role"], "content": _content(m.get("content"), i)})
    if model.tokenizer is None:
        raise ApiError(400, "this export has no tokenizer: use /v1/completions with token ids", param="messages")
    return _encode(lambda: model.tokenizer.encode_chat(clean), "messages")


def _content(content, i: int) -> str:
    """A message's content: a string, or a list of text parts [{"type": "text", "text": ...}]."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise bad(f"messages[{i}].content", "a string or a list of text parts", content)


def _completion_ids(body: dict, model) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str) and prompt:
        if model.tokenizer is None:
            raise ApiError(400, "this export has no tokenizer: give the prompt as token ids", param="prompt")
        return _encode(lambda: model.tokenizer.encode(prompt), "prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    raise bad("prompt", "one non-empty string or one list of token ids", prompt)


def _encode(fn, param: str) -> list[int]:
    try:
        return fn()
    except HoEError as e:
        raise ApiError(400, f"{param}: {e}", param=param) from e


def _config(body: dict, model):
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                   or max_tokens < 1):
        raise bad("max_tokens", "an integer >= 1", max_tokens)
    temperature = _number(body, "temperature", lambda x: 0 <= x <= 2, "a number in [0, 2]")
    top_p = _number(body, "top_p", lambda x: 0 < x <= 1, "a number in (0, 1]")
    penalty = _number(body, "repetition_penalty", lambda x: x > 0, "a number > 0")
    top_k = body.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < -1):
        raise bad("top_k", "an integer >= 0 (0 or -1: all tokens)", top_k)
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise bad("seed", "an integer", seed)
    try:
        return model.default_config(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                    top_k=max(top_k, 0) if top_k is not None else None,
                                    repetition_penalty=penalty, seed=seed, stop=_stop(body.get("stop")),
                                    ignore_eos=_typed(body, "ignore_eos", bool, "true or false"))
    except HoEError as e:
        raise ApiError(400, str(e)) from e


def _stop(stop) -> list[str] | None:
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not 1 <= len(stops) <= 4 or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop", "a non-empty string or a list of 1 to 4 non-empty strings", stop)
    return stops


def _preference(body: dict, model) -> list[float] | None:
    pref = body.get("preference")
    router = model.router
    if pref is None:
        return None
    if not router.enabled:
        raise bad("preference", "no preference (this model has no objectives)", pref)
    n = router.n_objectives
    if (not isinstance(pref, list) or len(pref) != n
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in pref)):
        raise bad("preference", f"a list of {n} numbers, one weight per objective {router.objectives}", pref)
    if not all(math.isfinite(w) and w >= 0 for w in pref) or sum(pref) <= 0:
        raise bad("preference", f"{n} finite weights >= 0, not all 0 (for {router.objectives})", pref)
    try:
        router.rows(pref, 1)
    except PreferenceError as e:
        raise ApiError(400, f"preference: {e}", param="preference") from e
    return [float(w) for w in pref]


def _number(body: dict, name: str, ok, expected: str):
    x = body.get(name)
    if x is None:
        return None
    if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x) or not ok(x):
        raise bad(name, expected, x)
    return float(x)


def _typed(body: dict, name: str, typ, expected: str):
    x = body.get(name)
    if x is not None and not isinstance(x, typ):
        raise bad(name, expected, x)
    return x


def prompt_error(e: InputError, kind: str) -> ApiError:
    """The engine's prompt checks (too long, empty, ids out of range) as a 400."""
    code = "context_length_exceeded" if "context" in str(e) else None
    return ApiError(400, f"{'messages' if kind == 'chat' else 'prompt'}: {e}",
                    param="messages" if kind == "chat" else "prompt", code=code)


def _new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"


# ------------------------------------------------------------------------------------------- responses


def extension(result, model) -> dict:
    return {"preference": result.preference, "router_mix": result.router_mix, "objectives": model.objectives,
            "timings": result.timings}


def usage(result) -> dict:
    p, n = len(result.prompt_token_ids), len(result.token_ids)
    return {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}


def response(parsed: Parsed, result, served: ServedModel) -> dict:
    """The whole answer of a non-streamed request."""
    if parsed.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": result.text},
                  "logprobs": None, "finish_reason": result.finish_reason}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}
        obj = "text_completion"
    return {"id": parsed.request.id, "object": obj, "created": int(time.time()), "model": served.name,
            "choices": [choice], "usage": usage(result), "hoe": extension(result, served.model)}


def chunk(parsed: Parsed, served: ServedModel, piece: str | None = None, finish_reason: str | None = None,
          role: bool = False, extra: dict | None = None, choices: bool = True) -> dict:
    """One streamed chunk (`data: {...}`): a text piece, the role opener, or the final one with finish_reason."""
    if parsed.kind == "chat":
        delta = {"role": "assistant", "content": ""} if role else ({"content": piece} if piece else {})
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    out = {"id": parsed.request.id, "object": obj, "created": int(time.time()), "model": served.name,
           "choices": [choice] if choices else []}
    out.update(extra or {})
    return out
