"""run_gemini_command / `kb run-gemini`: the real Gemini CLI against a scripted model and a loopback
fake API, and the google-genai SDK against the fake API; keys, 429 rotation, logging, context."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from knowledgebase.config import Settings
from knowledgebase.coordination import keypool
from knowledgebase.coordination.audit import task_history
from knowledgebase.db import Database
from knowledgebase.errors import CapacityExhausted, InputError, ModelCallError
from knowledgebase.gemini.runner import run_gemini_command
from tests.gemini_harness import FakeGeminiServer, gemini_env, text_chunk, write_fake_responses
from tests.support import HashingEmbedder

SECRETS = {"KB_TEST_GEMINI_KEY_A": "gemini-test-key-aaaa-0001", "KB_TEST_GEMINI_KEY_B": "gemini-test-key-bbbb-0002"}


@pytest.fixture
def pool(db: Database) -> dict[str, str]:
    """Two keys in the pool; returns key name -> secret."""
    keypool.add_key(db, "a", env_var="KB_TEST_GEMINI_KEY_A", rpm=10, environ=SECRETS)
    keypool.add_key(db, "b", env_var="KB_TEST_GEMINI_KEY_B", rpm=10, environ=SECRETS)
    return {"a": SECRETS["KB_TEST_GEMINI_KEY_A"], "b": SECRETS["KB_TEST_GEMINI_KEY_B"]}


def _secrets_stored(db: Database, secrets: dict[str, str]) -> list[str]:
    with db.connection() as conn:
        text = " ".join(
            str(row[0])
            for table in ("command_log", "usage_log", "api_keys", "tasks", "command_output")
            for row in conn.execute(psycopg.sql.SQL("SELECT t::text FROM {} t").format(psycopg.sql.Identifier(table)))
        )
    return [name for name, secret in secrets.items() if secret in text]


def _grant_tokens(db: Database) -> list[int]:
    with db.connection() as conn:
        return [row[0] for row in conn.execute("SELECT tokens FROM api_key_grants ORDER BY id").fetchall()]


@pytest.mark.gemini
def test_cli_way_with_a_scripted_model(
    db: Database, settings: Settings, pool: dict[str, str], gemini_cli: Path, gemini_home: Path, tmp_path: Path
) -> None:
    fake = write_fake_responses(
        tmp_path / "fake.jsonl", [[text_chunk("Run `make deps` first.", prompt_tokens=120, output_tokens=9)]]
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    run = run_gemini_command(
        db,
        "How do I build this?",
        settings=replace(settings, gemini_bin=str(gemini_cli)),
        via="cli",
        task_id="T-1",
        use_context=False,
        extra_args=["--fake-responses", str(fake)],
        cwd=workdir,
        environ=gemini_env(gemini_home, extra=SECRETS),
    )
    assert run.response == "Run `make deps` first."
    assert (run.prompt_tokens, run.response_tokens, run.total_tokens) == (120, 9, 129)
    assert run.model == "gemini-2.5-flash" and run.attempts == 1 and run.key_name in pool and run.via == "cli"
    (item,) = task_history(db, "T-1")
    assert item["prompt"] == "How do I build this?" and item["response"] == "Run `make deps` first."
    assert item["agent_mode"] == "gemini-cli" and item["session_id"]
    assert item["usage"] == {
        "prompt_tokens": 120,
        "response_tokens": 9,
        "total_tokens": 129,
        "models": ["gemini-2.5-flash"],
    }
    assert _grant_tokens(db) == [129]  # the key was released with the tokens actually used
    assert _secrets_stored(db, SECRETS) == []


@pytest.mark.gemini
def test_cli_way_moves_to_another_key_after_a_429(
    db: Database,
    settings: Settings,
    pool: dict[str, str],
    gemini_cli: Path,
    gemini_home: Path,
    fake_gemini_server: FakeGeminiServer,
    tmp_path: Path,
) -> None:
    fake_gemini_server.add_error(429, retry_delay_s=30).add_text(
        "answered on the second key", prompt_tokens=40, output_tokens=4
    )
    run = run_gemini_command(
        db,
        "hello",
        settings=replace(settings, gemini_bin=str(gemini_cli)),  # KB_HOME under /tmp, wherever HOME is
        via="cli",
        task_id="T-2",
        use_context=False,
        base_url=fake_gemini_server.url,
        cwd=tmp_path,
        environ=gemini_env(gemini_home, extra=SECRETS),
    )
    assert run.response == "answered on the second key" and run.attempts == 2 and run.total_tokens == 44
    first, second = fake_gemini_server.generate_requests()
    assert first.api_key != second.api_key and {first.api_key, second.api_key} == set(pool.values())
    assert second.api_key == pool[run.key_name] and "hello" in second.text()
    usage = {u.name: u for u in keypool.key_usage(db, environ=SECRETS)}
    limited = next(name for name, secret in pool.items() if secret == first.api_key)
    cooling = usage[limited].cooldown_until
    assert cooling is not None and usage[run.key_name].cooldown_until is None
    with db.connection() as conn:
        row = conn.execute("SELECT now()").fetchone()
        failed = conn.execute("SELECT error FROM usage_log WHERE NOT success").fetchall()
    assert row is not None and timedelta(seconds=20) < cooling - row[0] <= timedelta(seconds=30)
    assert len(failed) == 1 and "429" in failed[0][0]
    (item,) = task_history(db, "T-2")
    assert item["usage"] is not None and item["usage"]["total_tokens"] == 44
    assert _secrets_stored(db, SECRETS) == []


def test_sdk_way_against_a_fake_server_rotates_keys_on_429(
    db: Database, settings: Settings, pool: dict[str, str], fake_gemini_server: FakeGeminiServer
) -> None:
    fake_gemini_server.add_error(429).add_text("hello from the sdk", prompt_tokens=11, output_tokens=3)
    run = run_gemini_command(
        db,
        "say hello",
        settings=settings,
        via="sdk",
        task_id="T-3",
        use_context=False,
        base_url=fake_gemini_server.url,
        environ=SECRETS,
    )
    assert run.response == "hello from the sdk" and run.total_tokens == 14 and run.attempts == 2
    first, second = fake_gemini_server.generate_requests()
    assert first.action == "generateContent" and first.model == "gemini-2.5-flash"
    assert first.api_key != second.api_key and second.text() == "say hello"
    (item,) = task_history(db, "T-3")
    assert item["response"] == "hello from the sdk" and item["agent_mode"] == "gemini-sdk"
    with db.connection() as conn:
        rows = conn.execute(
            "SELECT success, total_tokens, api_key_id IS NOT NULL FROM usage_log ORDER BY id"
        ).fetchall()
    assert rows == [(False, 0, True), (True, 14, True)]
    assert sorted(_grant_tokens(db)) == [0, 14]


def test_a_refused_request_is_logged_and_raised(
    db: Database, settings: Settings, pool: dict[str, str], fake_gemini_server: FakeGeminiServer
) -> None:
    fake_gemini_server.add_error(400, "API key not valid. Please pass a valid API key.")
    with pytest.raises(ModelCallError, match="API key not valid"):
        run_gemini_command(
            db,
            "hi",
            settings=settings,
            via="sdk",
            task_id="T-4",
            use_context=False,
            base_url=fake_gemini_server.url,
            environ=SECRETS,
        )
    (item,) = task_history(db, "T-4")
    assert item["prompt"] == "hi" and item["response"] is None
    with db.connection() as conn:
        (error,) = conn.execute("SELECT error FROM usage_log WHERE NOT success").fetchone()  # type: ignore[misc]
    assert "API key not valid" in error
    assert _grant_tokens(db) == [0]


def test_when_every_attempt_is_rate_limited_the_keys_cool_down(
    db: Database, settings: Settings, pool: dict[str, str], fake_gemini_server: FakeGeminiServer
) -> None:
    fake_gemini_server.add_error(429, retry_delay_s=45).add_error(429, retry_delay_s=45)
    with pytest.raises(ModelCallError, match="every attempt was rate-limited"):
        run_gemini_command(
            db,
            "hi",
            settings=settings,
            via="sdk",
            use_context=False,
            max_attempts=2,
            base_url=fake_gemini_server.url,
            environ=SECRETS,
            key_timeout=1,
        )
    assert all(u.cooldown_until is not None for u in keypool.key_usage(db, environ=SECRETS))
    with pytest.raises(CapacityExhausted, match="capacity returns at"):
        run_gemini_command(
            db,
            "again",
            settings=settings,
            via="sdk",
            use_context=False,
            base_url=fake_gemini_server.url,
            environ=SECRETS,
            key_timeout=1,
        )
    assert len(fake_gemini_server.generate_requests()) == 2


def test_context_from_the_store_reaches_the_model(
    db: Database, settings: Settings, pool: dict[str, str], fake_gemini_server: FakeGeminiServer
) -> None:
    from knowledgebase.facts import add_fact

    embedder = HashingEmbedder()
    add_fact(
        db,
        embedder,
        label="build command",
        value="the build needs make deps before make build",
        project="alpha",
        confidence=0.9,
    )
    fake_gemini_server.add_text("ok")
    run = run_gemini_command(
        db,
        "which make command does the build need",
        settings=settings,
        via="sdk",
        project="alpha",
        embedder=embedder,
        base_url=fake_gemini_server.url,
        environ=SECRETS,
    )
    assert run.context_used
    (request,) = fake_gemini_server.generate_requests()
    sent = request.text()
    assert "make deps before make build" in sent and sent.endswith("which make command does the build need")


def test_bad_input(db: Database, settings: Settings, pool: dict[str, str]) -> None:
    with pytest.raises(InputError, match="prompt is empty"):
        run_gemini_command(db, "  ", settings=settings, environ=SECRETS)
    with pytest.raises(InputError, match="via must be one of"):
        run_gemini_command(db, "hi", settings=settings, via="carrier-pigeon", environ=SECRETS)
    with pytest.raises(ModelCallError, match="KB_GEMINI_BIN"):
        run_gemini_command(
            db,
            "hi",
            settings=replace(settings, gemini_bin="/nonexistent/gemini"),
            via="cli",
            use_context=False,
            environ=SECRETS,
        )
    assert _grant_tokens(db) == []  # nothing was sent, no key was taken


def test_kb_run_gemini(
    db_url: str, db: Database, pool: dict[str, str], fake_gemini_server: FakeGeminiServer, tmp_path: Path
) -> None:
    fake_gemini_server.add_text("four", prompt_tokens=5, output_tokens=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KB_", "GEMINI_", "GOOGLE_"))}
    env.update(SECRETS, KB_HOME=str(tmp_path), KB_DATABASE_URL=db_url, GOOGLE_GEMINI_BASE_URL=fake_gemini_server.url)

    def kb(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "knowledgebase", "run-gemini", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    proc = kb("--via", "sdk", "--no-context", "--task", "T-9", "--json", "what is 2+2?")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["response"] == "four" and result["total_tokens"] == 6 and result["task_id"] == "T-9"
    empty = kb("--via", "sdk", "--no-context", " ")
    assert empty.returncode == 1 and "prompt is empty" in empty.stderr
    keypool.disable_key(db, "a")
    keypool.disable_key(db, "b")
    none_left = kb("--via", "sdk", "--no-context", "hi")
    assert none_left.returncode == 1 and "kb keys add" in none_left.stderr
