"""`kb exec` and execute_shell_command: capture, caps, bad commands, files written, logging, outages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from knowledgebase.config import Settings
from knowledgebase.coordination import audit
from knowledgebase.coordination.execute import execute_shell_command, run_command
from knowledgebase.coordination.spool import pending_files
from knowledgebase.db import Database
from knowledgebase.errors import InputError

KB = [sys.executable, "-m", "knowledgebase"]
UNREACHABLE = "postgresql://kb:hunter2@127.0.0.1:1/kb"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env.update(extra)
    return env


def kb(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KB, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_stdout_and_stderr_are_captured_separately(tmp_path: Path) -> None:
    result = run_command(["sh", "-c", "echo out; echo err >&2; exit 3"], cwd=tmp_path, stream=False)
    assert (result.stdout.text, result.stderr.text) == ("out\n", "err\n")
    assert result.return_code == 3 and result.exit_code == 3 and not result.success
    assert result.stdout.total_bytes == 4 and not result.stdout.truncated and result.error is None


def test_long_output_keeps_head_and_tail_within_the_cap(tmp_path: Path) -> None:
    script = "print('FIRST'); [print(f'line {i}') for i in range(200000)]; print('LAST')"
    result = run_command([sys.executable, "-c", script], cwd=tmp_path, capture_bytes=4096, stream=False)
    text = result.stdout.text
    assert result.stdout.truncated and text.startswith("FIRST\nline 0\n") and text.endswith("line 199999\nLAST\n")
    assert "bytes omitted" in text and len(text.encode()) < 4096 + 100
    assert result.stdout.total_bytes == len("FIRST\nLAST\n") + sum(len(f"line {i}\n") for i in range(200000))


def test_a_hundred_megabytes_of_output_stays_within_the_cap_in_the_store(settings: Settings, db: Database) -> None:
    command = "head -c 100000000 /dev/zero | tr '\\0' 'x'; echo; echo done >&2"
    record = execute_shell_command(command, settings=settings, db=db, task_id="big", stream=False, track_files=False)
    assert record.result.stdout.total_bytes == 100_000_001 and record.result.success
    with db.connection() as conn:
        row = conn.execute("SELECT length(stdout), stdout_bytes, truncated, stderr FROM command_output").fetchone()
    assert row is not None
    length, stored_bytes, truncated, stderr = row
    assert length <= settings.exec_capture_bytes + 100 and stored_bytes == 100_000_001 and truncated
    assert stderr == "done\n"


def test_binary_output_is_summarised(tmp_path: Path) -> None:
    result = run_command(["sh", "-c", "printf 'PK\\003\\004\\000\\000binary'"], cwd=tmp_path, stream=False)
    assert result.stdout.binary and result.stdout.text.startswith("[binary output: 12 bytes; first bytes: 50 4b 03")


def test_a_command_that_cannot_start(tmp_path: Path) -> None:
    missing = run_command(["no-such-program-kb"], cwd=tmp_path, stream=False)
    assert missing.return_code is None and missing.exit_code == 127 and "command not found" in (missing.error or "")
    script = tmp_path / "not-executable.sh"
    script.write_text("echo hi\n")
    denied = run_command([str(script)], cwd=tmp_path, stream=False)
    assert denied.return_code is None and denied.exit_code == 126 and "permission denied" in (denied.error or "")


def test_a_command_killed_by_a_signal(tmp_path: Path) -> None:
    result = run_command(["sh", "-c", "echo before; kill -9 $$"], cwd=tmp_path, stream=False)
    assert result.return_code == -9 and result.exit_code == 137
    assert result.stdout.text == "before\n" and "SIGKILL" in (result.error or "")


def test_a_command_past_its_timeout_is_killed(tmp_path: Path) -> None:
    result = run_command(["sleep", "30"], cwd=tmp_path, stream=False, timeout=0.3)
    assert result.return_code == -9 and "timed out after 0.3 s" in (result.error or "")


def test_files_written_under_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "kept.txt").write_text("same")
    (tmp_path / "changed.txt").write_text("old")
    (tmp_path / "node_modules").mkdir()
    script = "echo new > changed.txt; mkdir -p sub && echo x > sub/created.txt; echo y > node_modules/skipped.js"
    result = run_command(["sh", "-c", script], cwd=tmp_path, stream=False)
    assert result.files_written == ("changed.txt", "sub/created.txt")


def test_empty_commands_and_missing_directories_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="empty"):
        run_command([], cwd=tmp_path)
    with pytest.raises(InputError, match="empty"):
        run_command("   ", cwd=tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        run_command(["true"], cwd=tmp_path / "missing")


def test_execute_logs_the_command_and_its_outcome(settings: Settings, db: Database, tmp_path: Path) -> None:
    record = execute_shell_command(
        ["sh", "-c", "echo 'API_KEY=abcdefgh12345678'; echo oops >&2; touch made.txt; exit 4"],
        settings=settings,
        db=db,
        task_id="T-1",
        cwd=tmp_path,
        stream=False,
    )
    assert record.command_log_id is not None and record.spooled_to is None and record.result.exit_code == 4
    (item,) = audit.task_history(db, "T-1")
    assert item["kind"] == "shell" and item["command"] is not None
    assert item["command"].startswith("sh -c")
    output = item["output"]
    assert output is not None and output["return_code"] == 4 and output["success"] is False
    assert output["stdout"] == "API_KEY=[REDACTED:secret]\n" and output["stderr"] == "oops\n"
    assert output["files_written"] == ["made.txt"] and output["duration_ms"] is not None
    argv = ["sh", "-c", "echo 'API_KEY=[REDACTED:secret]'; echo oops >&2; touch made.txt; exit 4"]
    assert item["tool_input"] == {"argv": argv, "cwd": str(tmp_path.resolve())}  # the key is redacted there too


def test_kb_exec_streams_output_and_exits_with_the_commands_code(db_url: str, tmp_path: Path) -> None:
    env = _env(KB_HOME=str(tmp_path / "home"), KB_DATABASE_URL=db_url)
    proc = kb("exec", "--task", "T-5", "--", "sh", "-c", "echo to-out; echo to-err >&2; exit 7", env=env, cwd=tmp_path)
    assert proc.returncode == 7
    assert proc.stdout == "to-out\n" and proc.stderr == "to-err\n"
    history = json.loads(kb("tasks", "history", "T-5", "--json", env=env).stdout)
    assert history[0]["output"]["stdout"] == "to-out\n" and history[0]["output"]["return_code"] == 7
    shell = kb("exec", "--shell", "--", "echo a | tr a b", env=env, cwd=tmp_path)
    assert shell.returncode == 0 and shell.stdout == "b\n"
    killed = kb("exec", "--", "sh", "-c", "kill -TERM $$", env=env, cwd=tmp_path)
    assert killed.returncode == 128 + 15
    missing = kb("exec", "--", "no-such-program-kb", env=env, cwd=tmp_path)
    assert missing.returncode == 127 and "command not found" in missing.stderr
    assert kb("exec", env=env).returncode == 2  # usage error: no command
    bad = kb("exec", "--shell", "--", "echo", "a", env=env)
    assert bad.returncode == 1 and "one quoted argument" in bad.stderr
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM command_log").fetchone()
        assert row is not None and row[0] == 4  # the usage errors ran nothing and logged nothing


def test_kb_exec_during_an_outage_runs_spools_and_flushes_later(db_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    down = _env(KB_HOME=str(home), KB_DATABASE_URL=UNREACHABLE)
    proc = kb("exec", "--task", "T-out", "--", "sh", "-c", "echo still ran; exit 5", env=down, cwd=tmp_path)
    assert proc.returncode == 5 and proc.stdout == "still ran\n"
    assert "kb: warning:" in proc.stderr and "could not be written" in proc.stderr and "kb audit flush" in proc.stderr
    assert "hunter2" not in proc.stderr
    (spooled,) = pending_files(home / "spool")
    assert "still ran" in spooled.read_text()

    up = _env(KB_HOME=str(home), KB_DATABASE_URL=db_url)
    proc = kb("exec", "--", "true", env=up, cwd=tmp_path)  # the next kb exec that reaches the database flushes
    assert proc.returncode == 0 and proc.stderr == ""
    assert pending_files(home / "spool") == []
    history = json.loads(kb("tasks", "history", "T-out", "--json", env=up).stdout)
    assert history[0]["output"]["stdout"] == "still ran\n" and history[0]["output"]["return_code"] == 5


def test_kb_audit_flush(db_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    kb("exec", "--task", "T-f", "--", "true", env=_env(KB_HOME=str(home), KB_DATABASE_URL=UNREACHABLE), cwd=tmp_path)
    assert len(pending_files(home / "spool")) == 1
    proc = kb("audit", "flush", "--json", env=_env(KB_HOME=str(home), KB_DATABASE_URL=db_url))
    assert json.loads(proc.stdout) == {
        "flushed": 1, "rejected": 0, "remaining": 0, "error": None, "closed": [], "proposed_facts": 0
    }  # fmt: skip
