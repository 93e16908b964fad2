"""Redaction: the corpus of formats and structures, and that the structures are redacted where they are stored."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from knowledgebase.config import Settings
from knowledgebase.coordination import audit, taskqueue
from knowledgebase.coordination.execute import command_record, run_command
from knowledgebase.coordination.spool import pending_files, spool_entry
from knowledgebase.db import Database
from knowledgebase.index.ingest import populate_project
from knowledgebase.index.scanning import ScannedFile, SkippedFile, SkipReason, resolve_root, scan_project
from knowledgebase.util.redact import redact, redact_value
from tests.redaction_corpus import AWS_ID, AWS_SECRET, CASES, NEGATIVE, NPM, PEM, PEM_BODY, POSITIVE, Case
from tests.support import HashingEmbedder

PASSWORD = "hunter2-" "EXAMPLE"


def _leaks(case: Case) -> list[str]:
    out = redact(case.text) or ""
    if not case.secrets:
        return [] if out == case.text else [f"changed: {out!r}"]
    leaked = [s for s in case.secrets if s in out]
    return leaked + ([] if "[REDACTED:" in out else ["no marker"])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_redaction_corpus(case: Case) -> None:
    assert _leaks(case) == [], case.text
    once = redact(case.text) or ""
    assert redact(once) == once  # redacting twice (audit after hooks, say) changes nothing more
    assert once.count("\n") == case.text.count("\n")  # line ranges of chunks stay true


def test_corpus_recall_and_false_positives(capsys: pytest.CaptureFixture[str]) -> None:
    found = sum(not _leaks(c) for c in POSITIVE)
    false_positives = sum(bool(_leaks(c)) for c in NEGATIVE)
    with capsys.disabled():
        print(
            f"\nredaction corpus: recall {found}/{len(POSITIVE)} ({found / len(POSITIVE):.0%}), "
            f"false positives {false_positives}/{len(NEGATIVE)}"
        )
    assert (found, false_positives) == (len(POSITIVE), 0)


def test_values_under_secret_named_keys_are_redacted_at_any_depth() -> None:
    value = {
        "api_key": "plain-value-1",
        "GITHUB_TOKEN": "abc",
        "db": {"password": 123456, "user": "app", "hosts": [{"clientSecret": "s3"}]},
        "credentials": ["one-1", "two-2"],
        "max_tokens": 1000,
        "token_count": 3,
        "password_field": "text",
        "password_hint": None,
        "token": "",
        "enabled": True,
    }
    cleaned = redact_value(value)
    dump = json.dumps(cleaned)
    for secret in ("plain-value-1", '"abc"', "123456", '"s3"', "one-1", "two-2"):
        assert secret not in dump
    assert cleaned["db"]["user"] == "app" and cleaned["max_tokens"] == 1000 and cleaned["token_count"] == 3
    assert cleaned["password_field"] == "text" and cleaned["password_hint"] is None and cleaned["token"] == ""


def test_argv_flags_and_programs_are_redacted() -> None:
    argv = ["deploy", "--password", PASSWORD, "--api-key=Y0urApiKey123", "--user", "bob", "--token-file", "t.txt"]
    assert redact_value(argv) == [
        "deploy", "--password", "[REDACTED:secret]", "--api-key=[REDACTED:secret]", "--user", "bob",
        "--token-file", "t.txt",
    ]  # fmt: skip
    assert redact_value(["curl", "-u", "bob:curlpw99", "https://x"])[2] == "bob:[REDACTED:secret]"
    assert redact_value(["mysql", "-uroot", "-pMyS3cret", "app"])[2] == "-p[REDACTED:secret]"
    assert redact_value(["sshpass", "-p", "sshS3cret", "ssh", "h"])[2] == "[REDACTED:secret]"
    assert redact_value(["API_TOKEN=tok3n-value-9", "./cmd"])[0] == "API_TOKEN=[REDACTED:secret]"
    assert redact_value(["ls", "-p", "src"]) == ["ls", "-p", "src"]


def test_a_secret_straddling_the_clip_point_is_not_kept_in_part() -> None:
    limit = 1000
    for secret, line in (
        (NPM, f"token is {NPM} ok"),
        (PASSWORD, f"DB_PASSWORD={PASSWORD}"),
        ("MIIEowIBAAKCAQEA", f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----"),
    ):
        for shift in range(0, len(line), 3):  # the cut falls at every place in the secret's line
            text = "a " * ((limit // 2 - shift) // 2) + line + "\n" + "b " * (limit * 2)
            output = audit.prepare_output(stdout=text, max_chars=limit)
            assert output.truncated and output.stdout is not None
            assert not any(secret[i : i + 6] in output.stdout for i in range(len(secret) - 6)), (shift, output.stdout)


def test_half_a_private_key_left_by_the_capture_is_redacted(tmp_path: Path) -> None:
    lines = [f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}" + "\nQUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=" * 200]
    script = tmp_path / "key.txt"
    script.write_text(lines[0] + "\n-----END RSA PRIVATE KEY-----\n")
    result = run_command(["cat", str(script)], cwd=tmp_path, capture_bytes=2048, stream=False, track_files=False)
    assert result.stdout.truncated
    record = command_record(result)
    stored = record.outcome.stdout or ""
    assert "MIIEowIBAAKCAQEA" not in stored and "QUJDREVGR0hJSktM" not in stored, stored
    assert stored.count("[REDACTED:private-key]") == 2 and "bytes omitted" in stored


def test_the_hex_preview_of_binary_output_holds_no_secret(
    tmp_path: Path, db: Database, conn: psycopg.Connection
) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x00\x01" + f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}".encode() + b"\x00" * 64)
    result = run_command(["cat", str(blob)], cwd=tmp_path, stream=False, track_files=False)
    assert result.stdout.binary
    assert AWS_SECRET.encode()[:8].hex(" ") not in result.stdout.text
    assert "00 01" in result.stdout.text and "[REDACTED]" in result.stdout.text
    audit.store_command(db, command_record(result, task_id="T-bin"))
    assert AWS_SECRET.encode()[:8].hex(" ") not in _all_rows(conn) and "[REDACTED]" in _all_rows(conn)
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"\x7fELF\x02\x01\x01" + b"\x00" * 64)
    shown = run_command(["cat", str(plain)], cwd=tmp_path, stream=False, track_files=False).stdout.text
    assert "7f 45 4c 46 02 01 01 00" in shown and "[REDACTED]" not in shown


# --------------------------------------------------------------------------------------------------
# Where it is stored: the real database, the spool, the scanner
# --------------------------------------------------------------------------------------------------


def _all_rows(conn: psycopg.Connection) -> str:
    tables = ("tasks", "command_log", "command_output")
    return "\n".join(r[0] for t in tables for r in conn.execute(f"SELECT t::text FROM {t} t").fetchall())


def test_a_task_context_with_nested_secret_keys_is_stored_redacted(db: Database, conn: psycopg.Connection) -> None:
    context = {"deploy": {"env": {"DB_PASSWORD": PASSWORD, "API_TOKEN": "tok-0123"}, "aws": {"secret": 987654}}}
    taskqueue.create_task(db, "T-ctx", title="deploy", context=context)
    taskqueue.claim_next_task(db, owner="w", lease_seconds=600)
    taskqueue.update_context(db, "T-ctx", {"creds": {"api_key": "k-5678-xyz"}}, owner="w")
    stored = _all_rows(conn)
    for secret in (PASSWORD, "tok-0123", "987654", "k-5678-xyz"):
        assert secret not in stored
    assert stored.count("[REDACTED:secret]") == 4


def test_a_hook_tool_input_with_argv_flags_is_stored_redacted(db: Database, conn: psycopg.Connection) -> None:
    argv = ["deploy", "--password", PASSWORD, "--api-key=Y0urApiKey123", f"--aws-secret={AWS_SECRET}"]
    audit.log_exchange(
        db, task_id="T-hook", prompt=None, kind="tool", tool_name="run",
        tool_input={"argv": argv, "env": {"NPM_TOKEN": "n-1234-5678"}, "headers": {"X-Api-Key": "h-1234-5678"}},
    )  # fmt: skip
    stored = _all_rows(conn)
    for secret in (PASSWORD, "Y0urApiKey123", AWS_SECRET, "n-1234-5678", "h-1234-5678"):
        assert secret not in stored
    (row,) = conn.execute("SELECT tool_input FROM command_log WHERE task_id = 'T-hook'").fetchall()
    assert row[0]["argv"][:3] == ["deploy", "--password", "[REDACTED:secret]"]


def test_joined_command_lines_are_redacted_in_the_log_and_the_spool(
    settings: Settings, db: Database, conn: psycopg.Connection, tmp_path: Path
) -> None:
    argv = ["sh", "-c", "true", "--password", "my pass word", "-pX9", f"API_TOKEN={NPM}", "mysql", "-pMyS3cret"]
    result = run_command(argv, cwd=tmp_path, stream=False, track_files=False)
    assert "my pass word" in result.command  # shlex.join quoted it
    record = command_record(result, task_id="T-join")
    audit.store_command(db, record)
    spooled = spool_entry(settings.spool_dir, record)
    assert pending_files(settings.spool_dir) == [spooled]
    for stored in (_all_rows(conn), spooled.read_text()):
        for secret in ("my pass word", "pass word", NPM, "MyS3cret"):
            assert secret not in stored


def test_a_long_output_with_secrets_at_both_clip_points_is_stored_redacted(
    db: Database, conn: psycopg.Connection
) -> None:
    half = audit.MAX_OUTPUT_CHARS // 2
    # the head's cut falls 20 characters into the first line, the tail's 9 characters before the end of the key
    text = "x" * (half - 20) + f" GITHUB_TOKEN={PASSWORD}9 " + "y" * half * 3
    text += f" aws_secret_access_key = {AWS_SECRET}" + " " + "z" * (half - 10)
    audit.log_command(db, command="make", task_id="T-long", stdout=text, stderr=text, return_code=0)
    stored = _all_rows(conn)
    assert "characters omitted" in stored
    for secret in (f"{PASSWORD}9", AWS_SECRET):
        assert not any(secret[i : i + 6] in stored for i in range(len(secret) - 5)), secret


def test_secret_file_names_are_skipped_and_redacted_where_stored(
    db: Database, conn: psycopg.Connection, tmp_path: Path
) -> None:
    root = tmp_path / "proj"
    (root / "dumps").mkdir(parents=True)
    (root / "dumps" / f"backup-{AWS_ID}.sql").write_text("select 1;\n")
    (root / "main.py").write_text("x = 1\n")
    entries = list(scan_project(resolve_root(root), Settings(home=tmp_path / "home")))
    skipped = [e for e in entries if isinstance(e, SkippedFile)]
    assert [e.rel_path for e in entries if isinstance(e, ScannedFile)] == ["main.py"]
    assert [(s.reason, AWS_ID in s.rel_path) for s in skipped] == [(SkipReason.SECRET_FILE, False)]
    audit.log_command(db, command="dump", task_id="T-f", files_written=[f"dumps/backup-{AWS_ID}.sql"], return_code=0)
    assert AWS_ID not in _all_rows(conn)


@pytest.mark.parametrize(
    "rel",
    [
        ".npmrc", ".netrc", ".pypirc", ".aws/credentials", "home/.aws/credentials", ".ssh/id_rsa", "id_ed25519",
        "keys/id_ecdsa_sk", "deploy_rsa", ".docker/config.json", ".kube/config", ".pgpass", ".git-credentials",
        ".env", ".env.production", "certs/server.key",
    ],
)  # fmt: skip
def test_credential_files_are_skipped_by_the_scanner(tmp_path: Path, rel: str) -> None:
    root = tmp_path / "proj"
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"aws_secret_access_key = {AWS_SECRET}\n")
    (root / "main.py").write_text("x = 1\n")
    entries = {e.rel_path: e for e in scan_project(resolve_root(root), Settings(home=tmp_path / "home"))}
    entry = entries[rel]
    assert isinstance(entry, SkippedFile) and entry.reason == SkipReason.SECRET_FILE


@pytest.mark.parametrize("rel", ["id_utils.py", ".ssh/id_rsa.pub", "aws/credentials.md", "config.json", "README"])
def test_ordinary_files_near_those_names_are_still_indexed(tmp_path: Path, rel: str) -> None:
    root = tmp_path / "proj"
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x = 1\n")
    entries = {e.rel_path: e for e in scan_project(resolve_root(root), Settings(home=tmp_path / "home"))}
    assert isinstance(entries[rel], ScannedFile)



def test_a_populated_project_stores_no_credential_file_and_no_secret(
    db: Database, settings: Settings, tmp_path: Path, conn: psycopg.Connection
) -> None:
    root = tmp_path / "app"
    files = {
        ".aws/credentials": f"[default]\naws_access_key_id = {AWS_ID}\naws_secret_access_key = {AWS_SECRET}\n",
        ".npmrc": f"//registry.npmjs.org/:_authToken={NPM}\n",
        ".netrc": f"machine api.example login bob password {PASSWORD}\n",
        ".ssh/id_rsa": PEM + "\n",
        f"dumps/backup-{AWS_ID}.sql": "select 1;\n",
        "config.yaml": f"db:\n  host: db.example\n  password: {PASSWORD}\n",
        "deploy.sh": f"#!/bin/sh\nAPI_TOKEN={NPM} ./release --password '{PASSWORD}'\nmysql -uroot -p{PASSWORD} app\n",
        "app.py": "def login(user, password):\n    token = next(tokens)\n    return check(user, password)\n",
    }
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content)
    report = populate_project(db, HashingEmbedder(), root, settings=settings)
    assert report.skipped_by_reason == {str(SkipReason.SECRET_FILE): 5}
    tables = ("project_files", "file_chunks")
    stored = "\n".join(r[0] for t in tables for r in conn.execute(f"SELECT t::text FROM {t} t"))
    for secret in (AWS_ID, AWS_SECRET, NPM, PASSWORD, PEM_BODY[:16]):
        assert secret not in stored
    assert "token = next(tokens)" in stored and "[REDACTED:secret]" in stored
