"""A fake OpenAI + Anthropic HTTP API on 127.0.0.1 for the real SDKs to talk to.

Speaks `/v1/chat/completions`, `/v1/completions` (legacy: one prompt or a list in one request),
`/v1/responses` and `/v1/messages`, as JSON and as SSE streams (HTTP/1.1, chunked), with usage computed from
the request the way the vendors report it. Every usage it reports is kept in `reported` so tests can price it
independently. Request headers steer it:

- `x-fake-status: 400` answers with that status and the vendor's error body;
- `x-fake-cached: N` reports N of the input tokens as cache reads;
- `x-fake-output-tokens: N` reports N output tokens (at most the request's cap; default 17);
- `x-fake-cut-after: N` sends N stream events, then drops the connection mid-body;
- `x-fake-tool-call: NAME` (chat completions with `tools`) calls tool NAME with no arguments until the
  conversation holds a tool result, then answers.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# What the vendors answer for a model alias (OpenAI resolves aliases to dated snapshots).
SNAPSHOTS = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18"}
REPLY_WORDS = ["Your", " order", " ships", " on", " Tuesday", "."]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return " ".join(_text(v) for k, v in value.items() if k in ("content", "text", "input", "system"))
    if isinstance(value, list):
        return " ".join(_text(v) for v in value)
    return ""


class FakeLLM:
    """The server; `base_url` for OpenAI clients, `anthropic_url` for Anthropic ones."""

    def __init__(self) -> None:
        self.reported: list[dict[str, Any]] = []  # {"path", "model", "usage"} per answered request
        self.requests: list[dict[str, Any]] = []  # {"path", "body", "headers"}
        self.delay_s = 0.0
        self._lock = threading.Lock()
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-llm", daemon=True
        )

    @property
    def anthropic_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        return f"{self.anthropic_url}/v1"

    def start(self) -> FakeLLM:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def record(self, path: str, model: str, usage: dict[str, Any]) -> None:
        with self._lock:
            self.reported.append({"path": path, "model": model, "usage": usage})


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # many concurrent clients (the proxy's fleet test) must not be refused


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_fake: FakeLLM

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    # ------------------------------------------------------------------ plumbing
    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_stream(self, events: Iterator[tuple[str | None, dict[str, Any] | str]]) -> None:
        cut = self.headers.get("x-fake-cut-after")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for sent, (event, data) in enumerate(events):
                if cut is not None and sent >= int(cut):
                    self.close_connection = True
                    self.wfile.flush()
                    return  # no terminating chunk: the client sees the body end too early
                payload = data if isinstance(data, str) else json.dumps(data)
                text = (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"
                raw = text.encode()
                self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client closed the stream early

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        fake = self.server_fake
        with fake._lock:
            fake.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
        if fake.delay_s:
            time.sleep(fake.delay_s)
        status = self.headers.get("x-fake-status")
        anthropic = self.path == "/v1/messages"
        if status is not None:
            if anthropic:
                error = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad request"}}
            else:
                error = {"error": {"message": "bad request", "type": "invalid_request_error", "code": None}}
            self._send_json(int(status), error)
            return
        handler = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/responses": self._responses,
            "/v1/messages": self._messages,
        }.get(self.path)
        if handler is None:
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})
            return
        handler(body)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [{"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"}],
                },
            )
            return
        self._send_json(404, {"error": {"message": f"no route {self.path}"}})

    # ------------------------------------------------------------------ usage
    def _tokens(self, body: dict[str, Any], prompt_keys: tuple[str, ...], cap_keys: tuple[str, ...]) -> tuple[int, int]:
        prompt = " ".join(_text(body.get(k)) for k in prompt_keys)
        input_tokens = 8 + math.ceil(len(prompt) / 4)
        cap = next((body[k] for k in cap_keys if isinstance(body.get(k), int)), 1000)
        wanted = int(self.headers.get("x-fake-output-tokens") or 2 * len(REPLY_WORDS) + 5)
        return input_tokens, min(cap, wanted)

    def _cached(self, input_tokens: int) -> int:
        return min(input_tokens, int(self.headers.get("x-fake-cached") or 0))

    # ------------------------------------------------------------------ OpenAI chat completions
    def _chat(self, body: dict[str, Any]) -> None:
        model = SNAPSHOTS.get(body["model"], body["model"])
        prompt, completion = self._tokens(body, ("messages",), ("max_completion_tokens", "max_tokens"))
        choices = body.get("n") or 1
        completion *= choices
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": self._cached(prompt), "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        base = {
            "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
            "created": 1741570283,
            "model": model,
            "system_fingerprint": "fp_06737a9306",
            "service_tier": "default",
        }
        if not body.get("stream"):
            self.server_fake.record(self.path, model, usage)
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(REPLY_WORDS),
                "refusal": None,
                "annotations": [],
            }
            finish = "stop"
            tool = self.headers.get("x-fake-tool-call")
            answered = any(m.get("role") == "tool" for m in body["messages"])
            if tool and body.get("tools") and not answered:
                call = {"id": "call_4417", "type": "function", "function": {"name": tool, "arguments": "{}"}}
                message = {**message, "content": None, "tool_calls": [call]}
                finish = "tool_calls"
            choice = [
                {"index": i, "message": message, "logprobs": None, "finish_reason": finish} for i in range(choices)
            ]
            self._send_json(200, {**base, "object": "chat.completion", "choices": choice, "usage": usage})
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if include_usage:
            self.server_fake.record(self.path, model, usage)

        def events() -> Iterator[tuple[str | None, dict[str, Any] | str]]:
            chunk = {**base, "object": "chat.completion.chunk"}
            extra = {"usage": None} if include_usage else {}
            first = {
                "index": 0,
                "delta": {"role": "assistant", "content": "", "refusal": None},
                "logprobs": None,
                "finish_reason": None,
            }
            yield None, {**chunk, "choices": [first], **extra}
            for word in REPLY_WORDS:
                delta = {"index": 0, "delta": {"content": word}, "logprobs": None, "finish_reason": None}
                yield None, {**chunk, "choices": [delta], **extra}
            yield (
                None,
                {**chunk, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}], **extra},
            )
            if include_usage:
                yield None, {**chunk, "choices": [], "usage": usage}
            yield None, "[DONE]"

        self._send_stream(events())

    # ------------------------------------------------------------------ OpenAI completions (legacy)
    def _completions(self, body: dict[str, Any]) -> None:
        model = body["model"]
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        prompt, completion = self._tokens(body, ("prompt",), ("max_tokens",))
        choices = len(prompts) * (body.get("n") or 1)  # n choices per prompt, one list
        usage = {"prompt_tokens": prompt, "completion_tokens": completion * choices}
        usage["total_tokens"] = prompt + usage["completion_tokens"]
        base = {"id": "cmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "object": "text_completion", "created": 1741570283}
        base = {**base, "model": model, "system_fingerprint": None}
        text = "".join(REPLY_WORDS)
        if not body.get("stream"):
            self.server_fake.record(self.path, model, usage)
            answers = [{"text": text, "index": i, "logprobs": None, "finish_reason": "stop"} for i in range(choices)]
            self._send_json(200, {**base, "choices": answers, "usage": usage})
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if include_usage:
            self.server_fake.record(self.path, model, usage)

        def events() -> Iterator[tuple[str | None, dict[str, Any] | str]]:
            for i, word in enumerate(REPLY_WORDS):
                finish = "stop" if i == len(REPLY_WORDS) - 1 else None
                yield None, {**base, "choices": [{"text": word, "index": 0, "logprobs": None, "finish_reason": finish}]}
            if include_usage:
                yield None, {**base, "choices": [], "usage": usage}
            yield None, "[DONE]"

        self._send_stream(events())

    # ------------------------------------------------------------------ OpenAI responses
    def _responses(self, body: dict[str, Any]) -> None:
        model = SNAPSHOTS.get(body["model"], body["model"])
        input_tokens, output_tokens = self._tokens(body, ("instructions", "input"), ("max_output_tokens",))
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": self._cached(input_tokens)},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        }
        self.server_fake.record(self.path, model, usage)
        text = "".join(REPLY_WORDS)
        message = {
            "type": "message",
            "id": "msg_67ccd3acc8d48190a77525dc6de64b4104becb25c5d6b5b4",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        response = {
            "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c5d6b5b4",
            "object": "response",
            "created_at": 1741476777,
            "status": "completed",
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": model,
            "output": [message],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "temperature": 1.0,
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "metadata": {},
        }
        if not body.get("stream"):
            self._send_json(200, response)
            return

        def events() -> Iterator[tuple[str | None, dict[str, Any] | str]]:
            pending = {**response, "status": "in_progress", "output": [], "usage": None}
            seq = iter(range(100))
            yield "response.created", {"type": "response.created", "response": pending, "sequence_number": next(seq)}
            yield (
                "response.in_progress",
                {"type": "response.in_progress", "response": pending, "sequence_number": next(seq)},
            )
            item = {**message, "status": "in_progress", "content": []}
            yield (
                "response.output_item.added",
                {"type": "response.output_item.added", "output_index": 0, "item": item, "sequence_number": next(seq)},
            )
            for word in REPLY_WORDS:
                yield (
                    "response.output_text.delta",
                    {
                        "type": "response.output_text.delta",
                        "item_id": message["id"],
                        "output_index": 0,
                        "content_index": 0,
                        "delta": word,
                        "logprobs": [],
                        "sequence_number": next(seq),
                    },
                )
            yield (
                "response.output_item.done",
                {"type": "response.output_item.done", "output_index": 0, "item": message, "sequence_number": next(seq)},
            )
            yield (
                "response.completed",
                {"type": "response.completed", "response": response, "sequence_number": next(seq)},
            )

        self._send_stream(events())

    # ------------------------------------------------------------------ Anthropic messages
    def _messages(self, body: dict[str, Any]) -> None:
        model = body["model"]
        input_tokens, output_tokens = self._tokens(body, ("system", "messages"), ("max_tokens",))
        cached = self._cached(input_tokens)
        usage = {
            "input_tokens": input_tokens - cached,  # Anthropic reports input without cache reads
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }
        self.server_fake.record(self.path, model, usage)
        message = {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "".join(REPLY_WORDS)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            self._send_json(200, message)
            return

        def events() -> Iterator[tuple[str | None, dict[str, Any] | str]]:
            start_usage = {**usage, "output_tokens": 1}
            yield (
                "message_start",
                {
                    "type": "message_start",
                    "message": {**message, "content": [], "stop_reason": None, "usage": start_usage},
                },
            )
            yield (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
            yield "ping", {"type": "ping"}
            for word in REPLY_WORDS:
                yield (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}},
                )
            yield "content_block_stop", {"type": "content_block_stop", "index": 0}
            yield (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": output_tokens},
                },
            )
            yield "message_stop", {"type": "message_stop"}

        self._send_stream(events())
