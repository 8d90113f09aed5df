"""TEST DOUBLES of the local LLM servers the bridge supports, for the bridge's tests. None of
them is the real server; each answers the documented shapes of the calls the bridge makes:

- `FakeKoboldCpp`: FakeKoboldAI (the KoboldAI API) plus KoboldCpp's `/api/extra/version`,
  `/api/extra/true_max_context_length`, `/api/extra/perf`, `/api/extra/tokencount` and
  `/api/extra/generate/stream`
  (SSE: `event: message` / `data: {"token": ...}`), and `completion_tokens` in results, as
  newer KoboldCpp versions report. Its config lengths are KoboldCpp's horde caps (400 new
  tokens, context at most 4096), the true context is larger.
- `FakeOpenAIServer(kind)`: `/v1/models` and `/v1/completions` (with `usage` and `stream:
  true` chunks ending `data: [DONE]`), plus what each kind adds: llama.cpp server (`/props`,
  `/slots`, `/tokenize`), Ollama (`/api/version`, `/api/tags`, `/api/ps`, `/api/show`), vLLM
  (`/version`, `/tokenize`, `max_model_len`), TabbyAPI (`/v1/model`, `/v1/token/encode`),
  text-generation-webui
  (`/v1/internal/model/info`), or nothing (`openai`: a generic OpenAI-compatible server).

Texts are `fake_text(prompt, tokens)`: 4 characters a token, so the cluster's own count
equals the true count unless a test makes the double report another (`usage_tokens`).
Streams emit one token (4 characters) every `token_delay` seconds.

    with FakeOpenAIServer("llamacpp", slots=2) as server:
        ... server.url ...

As a process: `python -m bridge.tests.backend_doubles --kind vllm --port 8000`.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from typing import Any

from bridge.tests.kai_double import FakeKoboldAI, _Handler, _Server, fake_text

KINDS = ("koboldcpp", "llamacpp", "ollama", "vllm", "tabbyapi", "textgen", "openai")

# Sampler fields each kind's /v1/completions takes besides the standard ones; anything else
# is refused with 400, as strict servers do (so a translation that leaks a field fails).
STANDARD_FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "stream"}
EXTRA_FIELDS = {
    "llamacpp": {
        "top_k",
        "min_p",
        "typical_p",
        "tfs_z",
        "repeat_penalty",
        "repeat_last_n",
        "dynatemp_range",
        "dynatemp_exponent",
        "verbose",  # adds __verbose (stopping_word ...) to the answer
    },
    "ollama": {"seed", "frequency_penalty", "presence_penalty", "stream_options"},
    "vllm": {"top_k", "min_p", "repetition_penalty", "stream_options"},
    "tabbyapi": {
        "top_k",
        "top_a",
        "min_p",
        "typical",
        "tfs",
        "repetition_penalty",
        "penalty_range",
        "smoothing_factor",
    },
    "textgen": {
        "top_k",
        "top_a",
        "min_p",
        "typical_p",
        "tfs",
        "repetition_penalty",
        "repetition_penalty_range",
        "smoothing_factor",
    },
    "openai": set(),
}


def _token_ids(request: _Handler, field: str) -> list[int]:
    """The double's tokenizer: one token per 4 characters (as fake_text counts) of the text
    in the body's `field`."""
    length = int(request.headers.get("Content-Length") or 0)
    body = json.loads(request.rfile.read(length) or b"{}")
    text = body.get(field) if isinstance(body, dict) else None
    text = text if isinstance(text, str) else ""
    return list(range(1, (len(text) + 3) // 4 + 1))


def _stream_tokens(text: str) -> list[str]:
    return [text[i : i + 4] for i in range(0, len(text), 4)]


def _start_sse(request: _Handler) -> None:
    request.send_response(200)
    request.send_header("Content-Type", "text/event-stream")
    request.send_header("Cache-Control", "no-cache")
    request.end_headers()
    request.close_connection = True  # the stream ends when the connection does


class FakeKoboldCpp(FakeKoboldAI):
    """KoboldCpp's API as far as the bridge uses it."""

    def __init__(self, port: int = 0, **options: Any) -> None:
        options.setdefault("model", "koboldcpp/FakeModel-7B-Q4_K_M")
        self.true_context = options.pop("true_context", 8192)
        self.version = options.pop("version", "1.78")
        self.token_delay = options.pop("token_delay", 0.05)
        self.password = options.pop("password", None)  # KoboldCpp's --password
        super().__init__(port, **options)
        self.max_length = 400  # KoboldCpp's --hordegenlen default
        self.max_context_length = min(self.true_context, 4096)  # its --hordemaxctx default
        self.owner_busy = False  # perf: idle 0, as while KoboldCpp generates for its owner
        self.queue = 0  # perf: requests waiting
        self.perf_calls = 0
        self.streams = 0  # generate/stream requests answered
        # perf's last_token_count: the last generation's true count when set, else PERF's.
        self.true_counts = False
        self.last_tokens = 0

    def _handle(self, request: _Handler, method: str) -> None:
        path = request.path.split("?")[0].rstrip("/")
        authorized = not self.password or (
            request.headers.get("Authorization") == f"Bearer {self.password}"
        )
        if self._dying.is_set() or self.not_kobold or path.startswith("/_double/"):
            super()._handle(request, method)
        elif not authorized and path in ("/api/v1/model", "/api/latest/model"):
            request.send_json(200, {"result": "koboldcpp/protected-model"})
        elif not authorized and method == "POST":
            unauthorized = {"error": "Unauthorized", "msg": "Authentication key is missing."}
            request.send_json(401, {"detail": {**unauthorized, "type": "unauthorized"}})
        elif method == "GET" and path == "/api/extra/version":
            request.send_json(200, {"result": "KoboldCpp", "version": self.version})
        elif method == "GET" and path == "/api/extra/true_max_context_length":
            request.send_json(200, {"value": self.true_context})
        elif method == "GET" and path == "/api/extra/perf":
            with self._lock:
                self.perf_calls += 1
                busy = self.owner_busy or self._active > 0
                counted = self.last_tokens if self.true_counts else PERF["last_token_count"]
            perf = {**PERF, "last_token_count": counted, "queue": self.queue}
            request.send_json(200, {**perf, "idle": 0 if busy else 1})
        elif method == "POST" and path == "/api/extra/generate/stream":
            self._stream(request)
        elif method == "POST" and path == "/api/extra/tokencount":
            ids = _token_ids(request, "prompt")
            request.send_json(200, {"value": len(ids), "ids": ids})
        else:
            super()._handle(request, method)

    def context_limit(self) -> int | None:
        # The real KoboldCpp (1.76, koboldcpp.py generate) clamps a larger max_context_length
        # to its own context instead of refusing it.
        return None

    def _validated(self, request: _Handler) -> dict[str, Any] | None:
        length = int(request.headers.get("Content-Length") or 0)
        body = json.loads(request.rfile.read(length) or b"null")
        with self._lock:
            self.generate_calls += 1
            self.payloads.append(body)
            verdict = self._verdict(body)
        if verdict is not None:
            request.send_json(*verdict)
            return None
        return body

    def _stream(self, request: _Handler) -> None:
        body = self._validated(request)
        if body is None:
            return
        text = fake_text(body["prompt"], min(self.tokens, body.get("max_length", 80)))
        with self._lock:
            self._active += 1
        try:
            _start_sse(request)
            for token in _stream_tokens(text):
                time.sleep(self.token_delay)
                data = json.dumps({"token": token, "finish_reason": None})
                request.wfile.write(f"event: message\ndata: {data}\n\n".encode())
                request.wfile.flush()
            final = json.dumps({"token": "", "finish_reason": "length"})
            request.wfile.write(f"event: message\ndata: {final}\n\n".encode())
            with self._lock:
                self.generated += 1
                self.streams += 1
                self.last_tokens = len(text) // 4
        except OSError:
            pass
        finally:
            with self._lock:
                self._active -= 1

    def _generate(self, request: _Handler) -> None:
        body = self._validated(request)
        if body is None:
            return
        with self._lock:
            self._active += 1
        try:
            if self._dying.wait(self.delay):
                request.drop()
                return
            tokens = min(self.tokens, body.get("max_length", 80))
            text = fake_text(body["prompt"], tokens)
            with self._lock:
                self.generated += 1
            result = {"text": text, "finish_reason": "length", "completion_tokens": tokens}
            request.send_json(200, {"results": [result]})
        finally:
            with self._lock:
                self._active -= 1


# /api/extra/perf's other fields, with plausible values (the bridge reads idle and queue).
PERF = {
    "last_process": 0.1,
    "last_eval": 1.2,
    "last_token_count": 16,
    "last_seed": 1234,
    "total_gens": 3,
    "stop_reason": 0,
    "total_img_gens": 0,
    "hordeexitcounter": 0,
    "uptime": 120.5,
    "idletime": 3.2,
    "quiet": True,
}


class FakeOpenAIServer:
    """One OpenAI-compatible server of the given kind. Attributes may change while it runs."""

    def __init__(
        self,
        kind: str,
        port: int = 0,
        *,
        model: str | None = None,
        context: int = 4096,
        slots: int = 1,
        tokens: int = 16,
        delay: float = 0.0,
        token_delay: float = 0.05,
        apikey: str | None = None,
    ) -> None:
        if kind not in EXTRA_FIELDS:
            raise ValueError(f"unknown kind {kind!r}")
        self.kind = kind
        self.port = port
        self.model = model or DEFAULT_MODELS[kind]
        self.context = context
        self.tokens = tokens  # tokens per answer, capped by the job's max_tokens
        self.delay = delay  # seconds each non-streamed completion takes
        self.token_delay = token_delay
        self.apikey = apikey  # when set, requests without "Authorization: Bearer <it>": 401
        self.usage_tokens: int | None = None  # report this instead of the true count
        self.slots = [False] * slots  # llama.cpp: whether each slot is processing
        self.owner_slots = 0  # llama.cpp: slots the owner's own requests hold
        self.bodies: list[dict[str, Any]] = []  # completion requests, in order
        self.refused: list[str] = []  # why each refused completion was refused
        self.active = 0
        self.max_active = 0
        self.slot_checks = 0
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._dying = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeOpenAIServer:
        self._server = _Server(("127.0.0.1", self.port), self)  # type: ignore[arg-type]
        self.port = self._server.server_address[1]
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            self._dying.set()
            server.shutdown()
            server.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- HTTP ---------------------------------------------------------------------------

    def _handle(self, request: _Handler, method: str) -> None:
        path = request.path.split("?")[0].rstrip("/")
        if self.apikey and request.headers.get("Authorization") != f"Bearer {self.apikey}":
            request.send_json(401, {"error": {"message": "Invalid API key", "code": 401}})
            return
        answer = self._answer(method, path, request)
        if answer is not None:
            request.send_json(*answer)

    def _answer(self, method: str, path: str, request: _Handler) -> tuple[int, Any] | None:
        if method == "GET" and path == "/v1/models":
            return 200, self._models()
        if method == "POST" and path == "/v1/completions":
            self._complete(request)
            return None
        extra = getattr(self, f"_{self.kind}", None)
        found = extra(method, path, request) if extra else None
        if found is None and method == "POST":  # read the body: the connection is kept alive
            request.rfile.read(int(request.headers.get("Content-Length") or 0))
        return found or (404, {"error": {"message": "File Not Found", "code": 404}})

    def _models(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": self.model, "object": "model", "created": 1735142223}
        entry["owned_by"] = {
            "llamacpp": "llamacpp",
            "vllm": "vllm",
            "tabbyapi": "tabbyAPI",
            "ollama": "library",
            "textgen": "user",
            "openai": "organization-owner",
        }[self.kind]
        if self.kind == "llamacpp":
            entry["meta"] = {"vocab_type": 2, "n_vocab": 128256, "n_ctx_train": 131072}
        if self.kind == "vllm":
            entry.update(root=self.model, parent=None, max_model_len=self.context, permission=[])
        return {"object": "list", "data": [entry]}

    def _llamacpp(self, method: str, path: str, request: _Handler) -> tuple[int, Any] | None:
        if path == "/props":
            settings = {"id": 0, "n_ctx": self.context, "is_processing": False, "params": {}}
            return 200, {
                "default_generation_settings": settings,
                "total_slots": len(self.slots),
                "model_path": self.model,
                "chat_template": "",
                "build_info": "b4567-fake",
            }
        if path == "/tokenize" and method == "POST":
            return 200, {"tokens": _token_ids(request, "content")}
        if path == "/slots":
            with self._lock:
                self.slot_checks += 1
                busy = [i < self.owner_slots or used for i, used in enumerate(self.slots)]
            return 200, [
                {"id": i, "id_task": -1, "n_ctx": self.context, "is_processing": processing}
                for i, processing in enumerate(busy)
            ]
        return None

    def _vllm(self, method: str, path: str, request: _Handler) -> tuple[int, Any] | None:
        if path == "/tokenize" and method == "POST":
            ids = _token_ids(request, "prompt")
            return 200, {"count": len(ids), "max_model_len": self.context, "tokens": ids}
        return (200, {"version": "0.6.3"}) if path == "/version" else None

    def _tabbyapi(self, method: str, path: str, request: _Handler) -> tuple[int, Any] | None:
        if path == "/v1/token/encode" and method == "POST":
            ids = _token_ids(request, "text")
            return 200, {"tokens": ids, "length": len(ids)}
        if path != "/v1/model":
            return None
        parameters = {"max_seq_len": self.context, "cache_mode": "FP16", "max_batch_size": 4}
        return 200, {
            "id": self.model,
            "object": "model",
            "created": 1735142223,
            "owned_by": "tabbyAPI",
            "parameters": parameters,
        }

    def _ollama(self, method: str, path: str, request: _Handler) -> tuple[int, Any] | None:
        details = {"format": "gguf", "family": "llama", "quantization_level": "Q4_K_M"}
        if path == "/api/version":
            return 200, {"version": "0.5.7"}
        if path == "/api/tags":
            return 200, {"models": [{"name": self.model, "model": self.model, "details": details}]}
        if path == "/api/ps":
            return 200, {"models": []}
        if path == "/api/show" and method == "POST":
            length = int(request.headers.get("Content-Length") or 0)
            asked = json.loads(request.rfile.read(length) or b"{}").get("model")
            if asked != self.model:
                return 404, {"error": f"model '{asked}' not found"}
            return 200, {
                "modelfile": "FROM llama",
                "parameters": f'num_ctx                        {self.context}\nstop "<|eot_id|>"',
                "template": "{{ .Prompt }}",
                "details": details,
                "model_info": {"general.architecture": "llama", "llama.context_length": 131072},
            }
        return None

    def _textgen(self, method: str, path: str, request: _Handler) -> tuple[int, Any] | None:
        if path == "/v1/internal/model/info":
            return 200, {"model_name": self.model, "lora_names": []}
        return None

    def _complete(self, request: _Handler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = json.loads(request.rfile.read(length) or b"null")
        problem = self._problem(body)
        with self._lock:
            self.bodies.append(body)
            if problem:
                self.refused.append(problem)
        if problem:
            request.send_json(400, {"error": {"message": problem, "type": "invalid_request"}})
            return
        slot = self._take_slot()
        try:
            tokens = min(self.tokens, body.get("max_tokens") or 16)
            text = fake_text(body["prompt"], tokens)
            usage = self.usage_tokens if self.usage_tokens is not None else tokens
            if body.get("stream"):
                options = body.get("stream_options") or {}
                self._stream(request, text, usage if options.get("include_usage") else None)
                return
            self._dying.wait(self.delay)
            request.send_json(
                200,
                {
                    "id": "cmpl-fake",
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": self.model,
                    "choices": [
                        {"text": text, "index": 0, "logprobs": None, "finish_reason": "length"}
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": usage},
                },
            )
        finally:
            self._free_slot(slot)

    def _problem(self, body: Any) -> str | None:
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            return "prompt is required"
        if body.get("model") != self.model:
            return f"model {body.get('model')!r} not found"
        unknown = set(body) - STANDARD_FIELDS - EXTRA_FIELDS[self.kind]
        if unknown:
            return f"unknown fields: {sorted(unknown)}"
        if self.kind == "vllm" and body.get("top_k") == 0:
            return "top_k must be -1 (disable), or at least 1"
        return None

    def _take_slot(self) -> int | None:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            for index, used in enumerate(self.slots):
                if not used and index >= self.owner_slots:
                    self.slots[index] = True
                    return index
        return None

    def _free_slot(self, slot: int | None) -> None:
        with self._lock:
            self.active -= 1
            if slot is not None:
                self.slots[slot] = False

    def _stream(self, request: _Handler, text: str, usage: int | None) -> None:
        try:
            _start_sse(request)
            for token in _stream_tokens(text):
                time.sleep(self.token_delay)
                chunk = {
                    "id": "cmpl-fake",
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": self.model,
                    "choices": [{"text": token, "index": 0, "finish_reason": None}],
                }
                request.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                request.wfile.flush()
            if usage is not None:  # stream_options.include_usage: a last chunk, no choices
                last = {"id": "cmpl-fake", "choices": [], "usage": {"completion_tokens": usage}}
                request.wfile.write(f"data: {json.dumps(last)}\n\n".encode())
            request.wfile.write(b"data: [DONE]\n\n")
        except OSError:
            pass


DEFAULT_MODELS = {
    "llamacpp": "/models/FakeModel-7B-Q4_K_M.gguf",
    "ollama": "fakemodel:7b",
    "vllm": "FakeOrg/FakeModel-7B",
    "tabbyapi": "FakeModel-7B-exl2",
    "textgen": "FakeModel-7B-GPTQ",
    "openai": "fake-model",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bridge.tests.backend_doubles",
        description="Run a test double of a local LLM server until interrupted.",
    )
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--slots", type=int, default=1, help="llama.cpp: parallel slots")
    args = parser.parse_args(argv)
    double: Any
    if args.kind == "koboldcpp":
        double = FakeKoboldCpp(args.port, true_context=args.context).start()
    else:
        double = FakeOpenAIServer(args.kind, args.port, context=args.context, slots=args.slots)
        double.start()
    print(f"{args.kind} double listening on {double.url}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    while not stopped.wait(0.2):
        pass
    double.stop()


if __name__ == "__main__":
    main()
