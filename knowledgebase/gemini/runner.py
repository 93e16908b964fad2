"""Send a prompt to Gemini with a key from the pool, and put the exchange on record (``run_gemini_command``).

1. Context: when ``knowledgebase.search.context.build_context`` is available and the store has something
   relevant, its Markdown block goes in front of the prompt.
2. A key is acquired from the pool for an estimate of the tokens (``knowledgebase.coordination.keypool``).
3. The request runs one of two ways:
   - ``via="cli"``: the Gemini CLI headless, ``gemini -p PROMPT -m MODEL -o json`` with the key as
     ``GEMINI_API_KEY`` and the context on stdin (the CLI puts stdin before the prompt); token usage
     comes from the ``stats`` of its JSON output. The CLI retries a 429 on the same key up to 10
     times by default; so that the pool can switch keys instead, the run hands the CLI
     ``general.maxAttempts: 1`` in a copy of the user's settings (``knowledgebase.gemini.cli_home``:
     the only layer the CLI reads whatever the files' owner and folder; a user who set the value keeps it).
   - ``via="sdk"``: the ``google-genai`` SDK's ``generate_content`` with the key.
4. A 429 puts the key into cooldown (the delay the server suggests, else KB_KEY_COOLDOWN_SECONDS) and
   the request is retried with another key, up to ``max_attempts`` requests.
5. The key is released with the tokens actually used; the prompt and response go to ``command_log``
   and every attempt's usage to ``usage_log`` (failed attempts too, with their error).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knowledgebase.config import Settings
from knowledgebase.coordination import keypool
from knowledgebase.coordination.audit import log_exchange, log_usage
from knowledgebase.db import Database, transaction
from knowledgebase.errors import CapacityExhausted, InputError, ModelCallError
from knowledgebase.gemini.cli_home import cli_home

if TYPE_CHECKING:
    import psycopg

    from knowledgebase.embedding import Embedder

log = logging.getLogger("knowledgebase.gemini.runner")

VIAS = ("cli", "sdk")
# the answer is not known in advance: reserve this many tokens for it when acquiring a key
ESTIMATED_RESPONSE_TOKENS = 1024
MAX_PROMPT_ARG_BYTES = 100_000  # Linux refuses a single argument over 128 KiB
CLI_EXIT_REASONS = {
    41: "authentication failed (is the key valid? is security.auth.selectedType gemini-api-key?)",
    42: "the CLI refused its input",
    53: "the conversation hit the CLI's turn limit",
    55: "the folder is not trusted by Gemini CLI (set GEMINI_CLI_TRUST_WORKSPACE=true or trust it)",
}


@dataclass(frozen=True)
class ModelReply:
    """What one successful request returned."""

    text: str
    model: str
    prompt_tokens: int
    response_tokens: int
    total_tokens: int
    session_id: str | None = None


class RateLimited(Exception):
    """The key hit a rate limit (HTTP 429); ``retry_after`` is the server's suggested delay in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class GeminiRun:
    """The outcome of ``run_gemini_command``."""

    response: str
    model: str
    via: str
    task_id: str | None
    command_log_id: int
    key_name: str
    attempts: int
    prompt_tokens: int
    response_tokens: int
    total_tokens: int
    latency_ms: int
    context_used: bool


@dataclass(frozen=True)
class _Attempt:
    key_id: int
    error: str
    latency_ms: int


# ----- the two ways of calling Gemini ------------------------------------------------------------


def _retry_delay(text: str) -> float | None:
    """The delay a 429 suggests: ``"retryDelay": "17s"`` or the CLI's ``Suggested retry after 17s``."""
    match = re.search(r'retryDelay"?\s*[:=]\s*"?(\d+(?:\.\d+)?)s', text) or re.search(
        r"retry after (\d+(?:\.\d+)?)\s*s", text, re.I
    )
    return float(match.group(1)) if match else None


def _cli_json(text: str) -> dict[str, Any] | None:
    """The JSON object the CLI printed (alone on stdout, or last on stderr after its log lines)."""
    stripped = text.strip()
    if not stripped:
        return None
    candidates = [stripped] + [stripped[m.start() + 1 :] for m in reversed(list(re.finditer(r"\n\{", stripped)))]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _cli_usage(stats: Mapping[str, Any], model: str) -> tuple[str, int, int, int]:
    """(model, prompt, response, total) tokens summed over the models in the CLI's ``stats``."""
    prompt = response = total = 0
    models = stats.get("models") or {}
    for tokens in (m.get("tokens") or {} for m in models.values()):
        prompt += int(tokens.get("prompt", tokens.get("input", 0)) or 0)
        response += int(tokens.get("candidates", 0) or 0)
        total += int(tokens.get("total", 0) or 0)
    return (next(iter(models), model) if len(models) == 1 else model), prompt, response, total or prompt + response


def call_cli(
    prompt: str,
    *,
    context: str | None,
    model: str,
    secret: str,
    settings: Settings,
    base_url: str | None = None,
    timeout: float = 300,
    cwd: Path | None = None,
    extra_args: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> ModelReply:
    """One headless Gemini CLI run; RateLimited on a 429, ModelCallError on any other failure."""
    base_env = os.environ if environ is None else environ
    home = cli_home(settings, base_env)
    if home.warning:
        log.warning("%s", home.warning)
    env = {**base_env, **home.env, "GEMINI_API_KEY": secret}
    if base_url:
        env["GOOGLE_GEMINI_BASE_URL"] = base_url
    stdin, arg = (context or ""), prompt
    if len(prompt.encode()) > MAX_PROMPT_ARG_BYTES:  # too long for argv: everything through stdin
        stdin, arg = f"{stdin}\n\n{prompt}".strip(), "Do what the text above asks."
    argv = [settings.gemini_bin, "-p", arg, "-m", model, "-o", "json", *extra_args]
    try:
        proc = subprocess.run(argv, input=stdin, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ModelCallError(
            f"the Gemini CLI {settings.gemini_bin!r} was not found: install it (npm install -g @google/gemini-cli) "
            "or point KB_GEMINI_BIN at it, or send the prompt through the Gemini API instead (via \"sdk\")"
        ) from None
    except subprocess.TimeoutExpired:
        raise ModelCallError(f"the Gemini CLI did not finish within {timeout:g} s") from None
    payload = _cli_json(proc.stdout) or _cli_json(proc.stderr)
    error = (payload or {}).get("error")
    if isinstance(error, dict):
        message = str(error.get("message") or error)
        if error.get("code") == 429 or "RESOURCE_EXHAUSTED" in message:
            raise RateLimited(message, _retry_delay(message))
        raise ModelCallError(f"the Gemini CLI failed (exit {proc.returncode}): {message}")
    if proc.returncode != 0 or payload is None:
        reason = CLI_EXIT_REASONS.get(proc.returncode) or (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelCallError(f"the Gemini CLI failed (exit {proc.returncode}): {reason}")
    used_model, prompt_tokens, response_tokens, total = _cli_usage(payload.get("stats") or {}, model)
    return ModelReply(
        str(payload.get("response") or ""), used_model, prompt_tokens, response_tokens, total, payload.get("session_id")
    )


def call_sdk(
    prompt: str, *, context: str | None, model: str, secret: str, base_url: str | None = None, timeout: float = 300
) -> ModelReply:
    """One ``generate_content`` call with the google-genai SDK; RateLimited on a 429."""
    from google import genai
    from google.genai import errors, types

    options = types.HttpOptions(base_url=base_url, timeout=int(timeout * 1000))
    client = genai.Client(api_key=secret, http_options=options)
    contents = f"{context}\n\n{prompt}" if context else prompt
    try:
        response = client.models.generate_content(model=model, contents=contents)
    except errors.APIError as exc:
        details = json.dumps(exc.details) if exc.details is not None else ""
        if exc.code == 429:
            raise RateLimited(f"429 {exc.status}: {exc.message}", _retry_delay(details)) from None
        raise ModelCallError(f"the Gemini API refused the request: {exc.code} {exc.status}: {exc.message}") from None
    except Exception as exc:  # connection errors come from httpx/httpx2, whichever the SDK uses
        raise ModelCallError(f"the Gemini API could not be reached: {type(exc).__name__}: {exc}") from None
    finally:
        client.close()
    usage = response.usage_metadata
    prompt_tokens = (usage.prompt_token_count or 0) if usage else 0
    response_tokens = (usage.candidates_token_count or 0) if usage else 0
    total = (usage.total_token_count or prompt_tokens + response_tokens) if usage else 0
    return ModelReply(response.text or "", response.model_version or model, prompt_tokens, response_tokens, total)


# ----- the whole run -----------------------------------------------------------------------------


def prompt_context(
    db: Database,
    settings: Settings,
    prompt: str,
    *,
    project: str | None,
    task_id: str | None,
    budget: int | None,
    embedder: Embedder | None = None,
) -> str | None:
    """The retrieval context for ``prompt`` (None when retrieval is not installed or found nothing)."""
    try:
        from knowledgebase.search.context import build_context
    except ImportError:
        return None
    if embedder is None:
        from knowledgebase.embedding import embedder_from_settings

        embedder = embedder_from_settings(settings)
    pack = build_context(
        db, embedder, prompt, project=project, task_id=task_id, budget=budget or settings.context_budget
    )
    return pack.text or None


def estimate_tokens(text: str) -> int:
    """A generous estimate of a request's tokens: ~4 characters a token, plus room for the answer."""
    return len(text) // 4 + 1 + ESTIMATED_RESPONSE_TOKENS


def run_gemini_command(
    db: Database,
    prompt: str,
    *,
    settings: Settings,
    via: str = "cli",
    task_id: str | None = None,
    project: str | None = None,
    model: str | None = None,
    use_context: bool = True,
    context_budget: int | None = None,
    embedder: Embedder | None = None,
    base_url: str | None = None,
    timeout: float = 300,
    max_attempts: int = 3,
    key_timeout: float | None = None,
    cwd: Path | None = None,
    extra_args: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> GeminiRun:
    """Answer ``prompt`` with Gemini through the CLI or the SDK, with a pooled key, and log it all.

    Raises CapacityExhausted when no key has room within ``key_timeout`` (KB_KEY_WAIT_SECONDS),
    ModelCallError when the request fails otherwise or every attempt was rate-limited.
    """
    if not prompt or not prompt.strip():
        raise InputError("the prompt is empty")
    if via not in VIAS:
        raise InputError(f"via must be one of {', '.join(VIAS)}, not {via!r}")
    if max_attempts < 1:
        raise InputError("max_attempts must be at least 1")
    if via == "cli" and shutil.which(settings.gemini_bin) is None:
        raise ModelCallError(
            f"the Gemini CLI {settings.gemini_bin!r} was not found: install it (npm install -g @google/gemini-cli) "
            "or point KB_GEMINI_BIN at it, or send the prompt through the Gemini API instead (via \"sdk\")"
        )
    model = model or settings.gemini_model
    context = (
        prompt_context(db, settings, prompt, project=project, task_id=task_id, budget=context_budget, embedder=embedder)
        if use_context
        else None
    )
    estimate = estimate_tokens((context or "") + prompt)
    failures: list[_Attempt] = []
    for attempt in range(1, max_attempts + 1):
        try:
            lease = keypool.acquire_key(
                db, estimate, timeout=settings.key_wait_seconds if key_timeout is None else key_timeout, environ=environ
            )
        except CapacityExhausted:
            if failures:  # the attempts that were made stay on record
                _log_failure(db, settings, prompt, via, model, task_id, failures)
            raise
        started = time.monotonic()
        try:
            if via == "cli":
                reply = call_cli(
                    prompt,
                    context=context,
                    model=model,
                    secret=lease.secret,
                    settings=settings,
                    base_url=base_url,
                    timeout=timeout,
                    cwd=cwd,
                    extra_args=extra_args,
                    environ=environ,
                )
            else:
                reply = call_sdk(
                    prompt, context=context, model=model, secret=lease.secret, base_url=base_url, timeout=timeout
                )
        except RateLimited as exc:
            latency = int((time.monotonic() - started) * 1000)
            keypool.release(db, lease, tokens_used=0)
            keypool.cool_down(db, lease, exc.retry_after or settings.key_cooldown_seconds)
            failures.append(_Attempt(lease.key_id, f"429 on key {lease.name}: {exc}", latency))
            continue
        except ModelCallError as exc:
            keypool.release(db, lease, tokens_used=0)
            failures.append(_Attempt(lease.key_id, str(exc), int((time.monotonic() - started) * 1000)))
            _log_failure(db, settings, prompt, via, model, task_id, failures)
            raise
        latency = int((time.monotonic() - started) * 1000)
        keypool.release(db, lease, tokens_used=reply.total_tokens)
        entry_id = _log_success(db, settings, prompt, via, task_id, reply, lease, latency, failures)
        return GeminiRun(
            response=reply.text,
            model=reply.model,
            via=via,
            task_id=task_id,
            command_log_id=entry_id,
            key_name=lease.name,
            attempts=attempt,
            prompt_tokens=reply.prompt_tokens,
            response_tokens=reply.response_tokens,
            total_tokens=reply.total_tokens,
            latency_ms=latency,
            context_used=context is not None,
        )
    _log_failure(db, settings, prompt, via, model, task_id, failures)
    raise ModelCallError(
        f"every attempt was rate-limited ({max_attempts}): "
        + "; ".join(f.error for f in failures)
        + ". The keys are cooling down; see `kb keys list`."
    )


def _log_failed_attempts(
    conn: psycopg.Connection, model: str, task_id: str | None, entry_id: int, failures: list[_Attempt]
) -> None:
    for failure in failures:
        log_usage(
            conn,
            request_type="generate",
            model=model,
            api_key_id=failure.key_id,
            task_id=task_id,
            command_log_id=entry_id,
            latency_ms=failure.latency_ms,
            success=False,
            error=failure.error,
        )


def _log_success(
    db: Database,
    settings: Settings,
    prompt: str,
    via: str,
    task_id: str | None,
    reply: ModelReply,
    lease: keypool.Lease,
    latency_ms: int,
    failures: list[_Attempt],
) -> int:
    with transaction(db) as conn:
        entry = log_exchange(
            conn,
            task_id=task_id,
            prompt=prompt,
            response=reply.text,
            kind="prompt",
            agent_mode=f"gemini-{via}",
            agent_id=settings.agent_id,
            session_id=reply.session_id,
        )
        _log_failed_attempts(conn, reply.model, task_id, entry.id, failures)
        log_usage(
            conn,
            request_type="generate",
            model=reply.model,
            prompt_tokens=reply.prompt_tokens,
            response_tokens=reply.response_tokens,
            total_tokens=reply.total_tokens,
            api_key_id=lease.key_id,
            task_id=task_id,
            command_log_id=entry.id,
            latency_ms=latency_ms,
        )
    return entry.id


def _log_failure(
    db: Database, settings: Settings, prompt: str, via: str, model: str, task_id: str | None, failures: list[_Attempt]
) -> None:
    with transaction(db) as conn:
        entry = log_exchange(
            conn,
            task_id=task_id,
            prompt=prompt,
            response=None,
            kind="prompt",
            agent_mode=f"gemini-{via}",
            agent_id=settings.agent_id,
        )
        _log_failed_attempts(conn, model, task_id, entry.id, failures)
