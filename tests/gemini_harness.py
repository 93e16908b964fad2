"""Shared test infrastructure for everything that talks to Gemini: the real Gemini CLI and a fake model.

- ``gemini_cli`` (session fixture): the ``gemini`` executable of ``@google/gemini-cli`` at
  ``GEMINI_CLI_VERSION``, npm-installed once into a cache outside the repository
  (``$KB_TEST_CACHE`` or ``~/.cache/knowledgebase-tests/gemini-cli-<version>``) and reused between runs.
  Skips with a clear reason only when node or npm is missing.
- ``write_gemini_home(root, settings)``: an isolated ``GEMINI_CLI_HOME`` whose user settings select
  API-key auth and switch off auto-update, usage statistics and telemetry (see shared/GEMINI_CLI.md).
- ``gemini_env(home, ...)``: an environment for running the CLI headless in that home, with no
  GEMINI_/GOOGLE_ variables leaking in from the developer's shell.
- ``FakeGeminiServer``: a scripted Gemini API on 127.0.0.1 (never another interface) that answers
  ``streamGenerateContent`` (SSE), ``generateContent`` and ``countTokens``, can answer with errors
  such as 429, and records every request it received. Fixture ``fake_gemini_server`` stops it at teardown.
- ``text_chunk`` / ``function_call_chunk`` / ``write_fake_responses``: build model replies, and the JSONL
  file for the CLI's ``--fake-responses`` option.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

GEMINI_CLI_VERSION = "0.61.0"
GEMINI_CLI_PACKAGE = "@google/gemini-cli"
DEFAULT_MODEL = "gemini-2.5-flash"

# The user settings every isolated home starts with; tests deep-merge their own on top.
BASE_SETTINGS: dict[str, Any] = {
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
}


# --------------------------------------------------------------------------------------------------
# The real Gemini CLI
# --------------------------------------------------------------------------------------------------


def gemini_cli_dir(version: str = GEMINI_CLI_VERSION) -> Path:
    """Where the CLI is installed for tests (outside the repository, shared between runs)."""
    cache = Path(os.environ.get("KB_TEST_CACHE") or Path.home() / ".cache" / "knowledgebase-tests")
    return cache / f"gemini-cli-{version}"


def _installed_version(prefix: Path) -> str | None:
    try:
        manifest = prefix / "node_modules" / "@google" / "gemini-cli" / "package.json"
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def install_gemini_cli(version: str = GEMINI_CLI_VERSION) -> Path:
    """The ``gemini`` executable of ``version``, installed with npm on first use (inter-process safe)."""
    prefix = gemini_cli_dir(version)
    executable = prefix / "node_modules" / ".bin" / "gemini"
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test sessions may install at the same moment
        if _installed_version(prefix) != version or not executable.exists():
            proc = subprocess.run(
                [
                    "npm",
                    "install",
                    "--prefix",
                    str(prefix),
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    f"{GEMINI_CLI_PACKAGE}@{version}",
                ],
                capture_output=True,
                text=True,
                timeout=900,
            )
            if proc.returncode != 0 or _installed_version(prefix) != version:
                raise RuntimeError(f"npm install {GEMINI_CLI_PACKAGE}@{version} failed:\n{proc.stderr[-3000:]}")
    return executable


@pytest.fixture(scope="session")
def gemini_cli() -> Path:
    """Path to the real ``gemini`` executable (``@google/gemini-cli`` at GEMINI_CLI_VERSION)."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the Gemini CLI tests need {' and '.join(missing)} on PATH (Node.js >= 20)")
    return install_gemini_cli()


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def write_gemini_home(root: Path, settings: Mapping[str, Any] | None = None) -> Path:
    """Create ``root/.gemini/settings.json`` (BASE_SETTINGS + ``settings``); returns ``root`` for GEMINI_CLI_HOME."""
    config_dir = root / ".gemini"
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / "settings.json"
    current = json.loads(path.read_text()) if path.exists() else BASE_SETTINGS
    path.write_text(json.dumps(_deep_merge(current, settings or {}), indent=2))
    return root


def gemini_env(
    home: Path,
    *,
    api_key: str = "dummy",
    base_url: str | None = None,
    trust_workspace: bool = True,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for a headless CLI run in the isolated ``home`` (no GEMINI_/GOOGLE_ leaks)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_", "GOOGLE_"))}
    env.update({"GEMINI_CLI_HOME": str(home), "GEMINI_API_KEY": api_key, "NO_COLOR": "1"})
    if trust_workspace:
        env["GEMINI_CLI_TRUST_WORKSPACE"] = "true"
    if base_url:
        env["GOOGLE_GEMINI_BASE_URL"] = base_url
    env.update(extra or {})
    return env


@pytest.fixture
def gemini_home(tmp_path: Path) -> Path:
    """An isolated GEMINI_CLI_HOME with the base settings (extend with ``write_gemini_home``)."""
    return write_gemini_home(tmp_path / "gemini-home")


# --------------------------------------------------------------------------------------------------
# Scripted model replies
# --------------------------------------------------------------------------------------------------


def usage_metadata(prompt_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": output_tokens,
        "totalTokenCount": prompt_tokens + output_tokens,
    }


def text_chunk(text: str, *, prompt_tokens: int = 10, output_tokens: int = 5, finish: bool = True) -> dict[str, Any]:
    """A GenerateContentResponse chunk carrying ``text`` (the last chunk of a turn has ``finish``)."""
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if finish:
        candidate["finishReason"] = "STOP"
    return {"candidates": [candidate], "usageMetadata": usage_metadata(prompt_tokens, output_tokens)}


def function_call_chunk(
    name: str, args: Mapping[str, Any], *, prompt_tokens: int = 10, output_tokens: int = 5
) -> dict[str, Any]:
    """A chunk in which the model calls the tool ``name`` with ``args`` (e.g. run_shell_command)."""
    part = {"functionCall": {"name": name, "args": dict(args)}}
    return {
        "candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": usage_metadata(prompt_tokens, output_tokens),
    }


def write_fake_responses(path: Path, turns: Sequence[Sequence[Mapping[str, Any]]]) -> Path:
    """The JSONL file for ``gemini --fake-responses``: one line (a list of chunks) per model call."""
    lines = [json.dumps({"method": "generateContentStream", "response": list(chunks)}) for chunks in turns]
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------------------------
# A fake Gemini API on loopback
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or the raw text when it was not JSON

    @property
    def action(self) -> str:
        """``streamGenerateContent``, ``generateContent``, ``countTokens``... (after the ``:``)."""
        return self.path.rsplit(":", 1)[-1] if ":" in self.path else ""

    @property
    def model(self) -> str:
        tail = self.path.split("/models/", 1)[-1]
        return tail.split(":", 1)[0]

    @property
    def api_key(self) -> str | None:
        """The key the client sent (``x-goog-api-key`` header or ``key`` query parameter)."""
        return self.headers.get("x-goog-api-key") or (self.query.get("key") or [None])[0]

    def text(self) -> str:
        """Every text part of the request's contents, joined (what the model was sent)."""
        parts: list[str] = []
        body = self.body if isinstance(self.body, dict) else {}
        for content in body.get("contents", []):
            parts.extend(str(p["text"]) for p in content.get("parts", []) if "text" in p)
        return "\n".join(parts)


@dataclass(frozen=True)
class ScriptedError:
    """An HTTP error reply, shaped like Google's (``{"error": {"code", "message", "status", "details"}}``)."""

    status: int = 429
    message: str = "Resource has been exhausted (e.g. check quota)."
    retry_delay_s: float | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        status_name = {429: "RESOURCE_EXHAUSTED", 400: "INVALID_ARGUMENT", 500: "INTERNAL", 503: "UNAVAILABLE"}
        error: dict[str, Any] = {
            "code": self.status,
            "message": self.message,
            "status": status_name.get(self.status, "UNKNOWN"),
        }
        if self.retry_delay_s is not None:
            error["details"] = [
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{self.retry_delay_s:g}s"}
            ]
        return {"error": error}


Reply = list[dict[str, Any]] | ScriptedError


class FakeGeminiServer:
    """A scripted Gemini API bound to 127.0.0.1 only, for ``GOOGLE_GEMINI_BASE_URL`` or the SDK's base_url.

    Replies are consumed in order by generate calls (``streamGenerateContent`` and ``generateContent``);
    ``countTokens`` is answered without consuming one. With the script used up, ``fallback`` answers
    (by default a 500 error saying so, so a test that under-scripts fails loudly).
    """

    def __init__(self, fallback: Reply | None = None) -> None:
        self.requests: list[RecordedRequest] = []
        self.fallback: Reply = fallback or ScriptedError(500, "FakeGeminiServer: no scripted reply left")
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # script ---------------------------------------------------------------------------------------
    def add_reply(self, chunks: Sequence[Mapping[str, Any]]) -> FakeGeminiServer:
        with self._lock:
            self._script.append([dict(c) for c in chunks])
        return self

    def add_text(self, text: str, *, prompt_tokens: int = 10, output_tokens: int = 5) -> FakeGeminiServer:
        return self.add_reply([text_chunk(text, prompt_tokens=prompt_tokens, output_tokens=output_tokens)])

    def add_error(
        self, status: int = 429, message: str | None = None, *, retry_delay_s: float | None = None
    ) -> FakeGeminiServer:
        error = ScriptedError(status, message or ScriptedError.message, retry_delay_s)
        with self._lock:
            self._script.append(error)
        return self

    @property
    def pending(self) -> int:
        """Scripted replies not used yet."""
        with self._lock:
            return len(self._script)

    def generate_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.action in ("streamGenerateContent", "generateContent")]

    # lifecycle ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() the server first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeGeminiServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                server._handle(self, "GET")

            def do_POST(self) -> None:
                server._handle(self, "POST")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-gemini", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeGeminiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # serving --------------------------------------------------------------------------------------
    def _next_reply(self) -> Reply:
        with self._lock:
            return self._script.popleft() if self._script else self.fallback

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length).decode("utf-8", "replace") if length else ""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        request = RecordedRequest(
            method=method,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=body,
        )
        with self._lock:
            self.requests.append(request)
        if request.action == "countTokens":
            self._send_json(handler, 200, {"totalTokens": max(1, len(json.dumps(body or {})) // 4)})
        elif request.action in ("streamGenerateContent", "generateContent"):
            reply = self._next_reply()
            if isinstance(reply, ScriptedError):
                self._send_json(handler, reply.status, reply.body(), reply.headers)
            elif request.action == "streamGenerateContent":
                self._send_sse(handler, reply)
            else:
                self._send_json(handler, 200, _merge_chunks(reply))
        else:
            self._send_json(handler, 404, ScriptedError(404, f"FakeGeminiServer: no route {parts.path}").body())

    @staticmethod
    def _send_json(
        handler: BaseHTTPRequestHandler, status: int, payload: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    @staticmethod
    def _send_sse(handler: BaseHTTPRequestHandler, chunks: list[dict[str, Any]]) -> None:
        data = b"".join(f"data: {json.dumps(chunk)}\r\n\r\n".encode() for chunk in chunks)
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


def _merge_chunks(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """One GenerateContentResponse from streamed chunks: parts concatenated, the last chunk's metadata."""
    if not chunks:
        return {"candidates": []}
    merged = copy.deepcopy(chunks[-1])
    parts = [
        p for c in chunks for cand in c.get("candidates", [])[:1] for p in cand.get("content", {}).get("parts", [])
    ]
    if merged.get("candidates"):
        merged["candidates"][0].setdefault("content", {"role": "model"})["parts"] = parts
    return merged


@pytest.fixture
def fake_gemini_server() -> Iterator[FakeGeminiServer]:
    """A started FakeGeminiServer on 127.0.0.1, stopped at teardown."""
    with FakeGeminiServer() as server:
        yield server
