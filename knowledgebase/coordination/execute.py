"""Run a shell command the way an agent's ``execute_shell_command`` does, and put it on record.

``run_command`` runs it with the terminal's stdin, streams its stdout and stderr to ours as they come,
and captures each separately up to a byte cap (the first and the last half of the cap are kept, the
middle is counted and dropped, so memory stays bounded whatever the command prints). It measures the
duration, records the return code (negative when a signal killed it) and which files under the
working directory the command created or changed. Output with NUL bytes or mostly invalid UTF-8 is
recorded as a summary of the binary data rather than as text.

``execute_shell_command`` also logs the command and its outcome (``kb exec``). When the database is
unreachable the entry goes to the local spool (``knowledgebase.coordination.spool``) with a warning instead.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from knowledgebase.config import Settings
from knowledgebase.coordination.audit import (
    CommandRecord,
    omission_marker,
    prepare_exchange,
    prepare_output,
    store_command,
)
from knowledgebase.db import Database
from knowledgebase.errors import DatabaseError, InputError, first_line
from knowledgebase.util.redact import redact

READ_SIZE = 65536
# Folders not walked when looking for written files: version control, dependencies, caches.
SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "node_modules",
        ".venv",
        "venv",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
    }
)
MAX_TRACKED_FILES = 50_000
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


@dataclass(frozen=True)
class CapturedOutput:
    """One stream of a command: what is kept of it, and how much there was."""

    text: str
    total_bytes: int
    truncated: bool
    binary: bool


@dataclass(frozen=True)
class CommandResult:
    """A finished (or unstartable) command."""

    command: str  # as logged: the shell string, or the arguments joined with shell quoting
    argv: tuple[str, ...]
    cwd: str
    return_code: int | None  # None: it never started; negative: killed by that signal
    stdout: CapturedOutput
    stderr: CapturedOutput
    duration_ms: int
    files_written: tuple[str, ...]  # relative to cwd, created or modified while it ran
    error: str | None  # why it did not start, was killed, or why files were not tracked

    @property
    def success(self) -> bool:
        return self.return_code == 0

    @property
    def exit_code(self) -> int:
        """The shell's convention: the code itself, 128+N for signal N, 127/126 when it could not start."""
        if self.return_code is None:
            return EXIT_NOT_FOUND if self.error and "not found" in self.error else EXIT_CANNOT_EXECUTE
        if self.return_code < 0:
            return 128 - self.return_code
        return self.return_code


@dataclass(frozen=True)
class ExecutionRecord:
    """What ``execute_shell_command`` did: the result, and where its log entry went."""

    result: CommandResult
    command_log_id: int | None  # None when the entry was spooled
    spooled_to: Path | None
    warning: str | None


class _HeadTail:
    """Keeps the first and last ``cap // 2`` bytes of a stream and counts the rest."""

    def __init__(self, cap: int) -> None:
        self.head_cap = cap // 2
        self.tail_cap = cap - self.head_cap
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > self.tail_cap:
                del self.tail[: len(self.tail) - self.tail_cap]

    def captured(self) -> CapturedOutput:
        head, tail = bytes(self.head), bytes(self.tail)
        omitted = self.total - len(head) - len(tail)
        if _looks_binary(head or tail):
            text = f"[binary output: {self.total} bytes; first bytes: {_hex_preview(head)}]"
            return CapturedOutput(text, self.total, omitted > 0, True)
        if omitted:
            # cut at a space or line break near the cut, so no token is kept in part; a private-key
            # block cut in two is redacted on each side (``audit.redact_clipped``)
            head, tail = _snap_head(head), _snap_tail(tail)
            omitted = self.total - len(head) - len(tail)
        text = head.decode("utf-8", "replace")
        if omitted:
            text += omission_marker(omitted, "bytes")
        text += tail.decode("utf-8", "replace")
        return CapturedOutput(text, self.total, omitted > 0, False)


_SNAP_BYTES = 256
PREVIEW_BYTES = 32


def _snap_head(head: bytes) -> bytes:
    start = max(0, len(head) - _SNAP_BYTES)
    cut = max(head.rfind(b"\n", start), head.rfind(b" ", start))
    return head[: cut + 1] if cut >= 0 else head


def _snap_tail(tail: bytes) -> bytes:
    found = [i for i in (tail.find(b"\n", 0, _SNAP_BYTES), tail.find(b" ", 0, _SNAP_BYTES)) if i >= 0]
    return tail[min(found) :] if found else tail


def _hex_preview(head: bytes) -> str:
    """The first bytes of binary output in hex, up to where a recognised secret starts."""
    sample = head[:4096].decode("latin-1")  # one character per byte, so positions match
    cleaned = redact(sample) or ""
    same = next((i for i, (a, b) in enumerate(zip(sample, cleaned, strict=False)) if a != b), len(sample))
    if cleaned == sample or same >= PREVIEW_BYTES:
        return head[:PREVIEW_BYTES].hex(" ")
    return (head[:same].hex(" ") + " [REDACTED]").strip()


def _looks_binary(sample: bytes) -> bool:
    sample = sample[:8192]
    if not sample:
        return False
    if b"\x00" in sample:
        return True
    decoded = sample.decode("utf-8", "replace")
    # a multi-byte character cut at the end of the sample is not a sign of binary data
    return decoded.count("\ufffd") > max(2, len(decoded) // 10)


def _pump(stream: IO[bytes], sink: IO[bytes] | None, buffer: _HeadTail) -> None:
    """Copy ``stream`` to ``sink`` (if any) as it comes, keeping head and tail in ``buffer``."""
    fd = stream.fileno()
    while True:
        chunk = os.read(fd, READ_SIZE)
        if not chunk:
            break
        buffer.add(chunk)
        if sink is not None:
            try:
                sink.write(chunk)
                sink.flush()
            except (OSError, ValueError):
                sink = None  # the terminal went away; keep capturing
    stream.close()


def snapshot_files(root: Path, limit: int = MAX_TRACKED_FILES) -> dict[str, tuple[int, int]] | None:
    """``relative path -> (mtime_ns, size)`` of the files under ``root`` (not in SKIP_DIRS); None past ``limit``."""
    found: dict[str, tuple[int, int]] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in SKIP_DIRS:
                        stack.append(Path(entry.path))
                    continue
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            found[os.path.relpath(entry.path, root)] = (info.st_mtime_ns, info.st_size)
            if len(found) > limit:
                return None
    return found


def _changed(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> tuple[str, ...]:
    return tuple(sorted(path for path, signature in after.items() if before.get(path) != signature))


def _argv(command: str | Sequence[str]) -> tuple[tuple[str, ...], str]:
    if isinstance(command, str):
        if not command.strip():
            raise InputError("the command is empty")
        return ("/bin/sh", "-c", command), command
    argv = tuple(command)
    if not argv or not argv[0]:
        raise InputError("the command is empty: give a program and its arguments, e.g. `kb exec -- make test`")
    return argv, shlex.join(argv)


def _not_started(command: str, argv: tuple[str, ...], cwd: Path, started: float, error: str) -> CommandResult:
    empty = CapturedOutput("", 0, False, False)
    duration = int((time.monotonic() - started) * 1000)
    return CommandResult(command, argv, str(cwd), None, empty, empty, duration, (), error)


def run_command(
    command: str | Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    capture_bytes: int = 65536,
    stream: bool = True,
    track_files: bool = True,
    timeout: float | None = None,
) -> CommandResult:
    """Run ``command`` (a string goes through ``/bin/sh -c``; a sequence runs as is) and capture it.

    Never raises for the command's own failures: a program that cannot start, a timeout or a
    signal is reported in the result.
    """
    argv, shown = _argv(command)
    workdir = (cwd or Path.cwd()).resolve()
    if not workdir.is_dir():
        raise InputError(f"working directory {workdir} does not exist")
    before = snapshot_files(workdir) if track_files else None
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=dict(env) if env is not None else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except FileNotFoundError:
        return _not_started(shown, argv, workdir, started, f"cannot start {argv[0]!r}: command not found")
    except PermissionError:
        return _not_started(shown, argv, workdir, started, f"cannot start {argv[0]!r}: permission denied")
    except OSError as exc:
        return _not_started(shown, argv, workdir, started, f"cannot start {argv[0]!r}: {exc.strerror or exc}")
    buffers = (_HeadTail(capture_bytes), _HeadTail(capture_bytes))
    sinks = _terminal_sinks() if stream else (None, None)
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(pipe, sink, buffer), daemon=True)
        for pipe, sink, buffer in zip((proc.stdout, proc.stderr), sinks, buffers, strict=True)
    ]
    for pump in pumps:
        pump.start()
    error = _wait(proc, timeout)
    for pump in pumps:
        pump.join()
    duration = int((time.monotonic() - started) * 1000)
    if proc.returncode < 0 and error is None:
        error = f"killed by signal {_signal_name(-proc.returncode)}"
    files: tuple[str, ...] = ()
    if track_files:
        after = snapshot_files(workdir)
        if before is None or after is None:
            error = error or f"files written not tracked: more than {MAX_TRACKED_FILES} files under {workdir}"
        else:
            files = _changed(before, after)
    return CommandResult(
        shown, argv, str(workdir), proc.returncode, buffers[0].captured(), buffers[1].captured(), duration, files, error
    )


def _terminal_sinks() -> tuple[IO[bytes] | None, IO[bytes] | None]:
    import sys

    return getattr(sys.stdout, "buffer", None), getattr(sys.stderr, "buffer", None)


def _signal_name(number: int) -> str:
    try:
        return f"{signal.Signals(number).name} ({number})"
    except ValueError:
        return str(number)


def _wait(proc: subprocess.Popen[bytes], timeout: float | None) -> str | None:
    """Wait for ``proc``; forward SIGTERM/SIGHUP to it; kill it after ``timeout``. Returns an error or None."""
    forwarded: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for forward in (signal.SIGTERM, signal.SIGHUP):
            forwarded[forward] = signal.signal(forward, lambda number, _frame: proc.send_signal(number))
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            try:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                proc.wait(remaining)
                return None
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return f"timed out after {timeout:g} s and was killed"
            except KeyboardInterrupt:
                # Ctrl-C from the terminal reached the command too (same process group): let it
                # decide what to do, and record whatever it ends with
                continue
    finally:
        for forward, handler in forwarded.items():
            signal.signal(forward, handler)


def command_record(
    result: CommandResult,
    *,
    task_id: str | None = None,
    agent_id: str | None = None,
    session_id: str | None = None,
    project_id: int | None = None,
    agent_mode: str | None = None,
    permissions: str | None = None,
    user_confirmation: bool | None = None,
) -> CommandRecord:
    """The audit entry for ``result``, redacted and ready to store or spool."""
    exchange = prepare_exchange(
        task_id=task_id,
        prompt=None,
        command=result.command,
        kind="shell",
        tool_input={"argv": list(result.argv), "cwd": result.cwd},
        agent_id=agent_id,
        session_id=session_id,
        project_id=project_id,
        agent_mode=agent_mode,
        permissions=permissions,
        user_confirmation=user_confirmation,
    )
    outcome = prepare_output(
        stdout=result.stdout.text,
        stderr=result.stderr.text,
        # a command that never started is logged with the shell's code for it (127 not found, 126
        # not executable), the code `kb exec` exits with
        return_code=result.exit_code if result.return_code is None else result.return_code,
        files_written=result.files_written,
        success=result.success,
        duration_ms=result.duration_ms,
        stdout_bytes=result.stdout.total_bytes,
        stderr_bytes=result.stderr.total_bytes,
        truncated=result.stdout.truncated or result.stderr.truncated,
        error=result.error,
        # the capture already kept head and tail; leave room for redaction markers, longer than short secrets
        max_chars=2 * max(len(result.stdout.text), len(result.stderr.text)) + 1024,
    )
    return CommandRecord(exchange, outcome)


def execute_shell_command(
    command: str | Sequence[str],
    *,
    settings: Settings,
    db: Database | None = None,
    task_id: str | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stream: bool = True,
    track_files: bool = True,
    timeout: float | None = None,
    session_id: str | None = None,
    agent_mode: str | None = None,
    permissions: str | None = None,
    user_confirmation: bool | None = None,
    project: str | None = None,
) -> ExecutionRecord:
    """Run ``command`` (see ``run_command``) and log it under ``task_id``; spool the entry if the database is down.

    ``db``: an open database to log to; by default one is opened from ``settings`` after the command
    finished (so a slow or missing database never delays or stops the command). The entry belongs to
    ``project`` (a name), else to the indexed project whose root contains the working directory.
    """
    if task_id is not None and not task_id.strip():
        raise InputError("the task id must not be empty")
    result = run_command(
        command,
        cwd=cwd,
        env=env,
        capture_bytes=settings.exec_capture_bytes,
        stream=stream,
        track_files=track_files,
        timeout=timeout,
    )
    record = command_record(
        result,
        task_id=task_id,
        agent_id=settings.agent_id,
        session_id=session_id,
        agent_mode=agent_mode,
        permissions=permissions,
        user_confirmation=user_confirmation,
    )
    return log_or_spool(record, result, settings=settings, db=db, project=project)


def log_or_spool(
    record: CommandRecord,
    result: CommandResult,
    *,
    settings: Settings,
    db: Database | None = None,
    project: str | None = None,
) -> ExecutionRecord:
    """Store ``record``, then replay anything spooled earlier; if the database is unreachable, spool it.

    A record without a project gets ``project`` (a name), else the indexed project containing the
    command's working directory; a ``project`` that does not exist is left out, with a warning.
    """
    from knowledgebase.coordination.spool import flush_spool, spool_entry

    own = db is None
    warning = None
    try:
        try:
            if db is None:
                from knowledgebase.db import open_database

                db = open_database(settings)
            record, warning = _with_project(db, record, project, result.cwd)
            entry, _ = store_command(db, record)
        except DatabaseError as exc:
            reason = first_line(exc)
            path = spool_entry(settings.spool_dir, record)
            warning = (
                f"the command ran, but its log entry could not be written ({reason}); it was saved to {path} "
                "and will be written by `kb audit flush` or the next `kb exec` that reaches the database"
            )
            return ExecutionRecord(result, None, path, warning)
        # entries spooled during an earlier outage; if the database went away again they wait for next time
        with contextlib.suppress(DatabaseError):
            flush_spool(db, settings.spool_dir, closings=False)  # sessions' closings: for who proposes their facts
    finally:
        if own and db is not None:
            db.close()
    return ExecutionRecord(result, entry.id, None, warning)


def _with_project(
    db: Database, record: CommandRecord, project: str | None, cwd: str
) -> tuple[CommandRecord, str | None]:
    """``record`` attached to its project (see ``log_or_spool``), and a warning when ``project`` is unknown."""
    from knowledgebase import store

    if record.exchange.project_id is not None:
        return record, None
    with db.connection() as conn:
        if project is not None:
            found = store.find_project(conn, project)
            if found is None:
                return record, f"{store.unknown_project(conn, project)}; the command was logged without a project"
        else:
            found = store.project_for_path(conn, os.path.realpath(cwd))
    if found is None:
        return record, None
    return replace(record, exchange=replace(record.exchange, project_id=found.id)), None
