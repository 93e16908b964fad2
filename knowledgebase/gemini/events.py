"""Reading what Gemini CLI hands its hooks: prompts, shell results, and the session transcript.

Pure functions over the hook payloads of Gemini CLI 0.61 (no database, no model), so the parsing
is tested on its own. Formats, as Gemini CLI writes them:

- BeforeAgent's ``prompt`` may start with ``<hook_context>...</hook_context>`` blocks (in headless
  runs the SessionStart context is prepended to the prompt).
- AfterTool for ``run_shell_command``: ``tool_response.llmContent`` is
  ``Output: <stdout+stderr>\\n[Error: ...]\\n[Exit Code: N]\\n[Signal: S]\\n[Background PIDs: ...]\\n
  [Process Group PGID: N]``, possibly wrapped in ``<untrusted_context>``; ``Exit Code`` appears only
  when it is not 0.
- The transcript (``transcript_path``) is JSONL: message records ``{"id", "type": "user"|"gemini", ...}``
  (a repeated id replaces the earlier record), ``{"$set": {"messages": [...]}}`` replacing the list, and
  ``gemini`` records carry ``tokens`` {input, output, cached, thoughts, tool, total} and ``model``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knowledgebase.util.fileio import read_at_most

SESSION_TASK_PREFIX = "gemini-"
MAX_TRANSCRIPT_BYTES = 16 * 1024 * 1024  # only the tail of a larger transcript is read
TRANSCRIPT_DEADLINE_S = 3.0  # reading a transcript never takes more of a hook's budget than this

_HOOK_CONTEXT = re.compile(r"\A\s*<hook_context>.*?</hook_context>\s*", re.S)
_UNTRUSTED = re.compile(r"\A\s*<untrusted_context>\n?(?P<body>.*?)\n?</untrusted_context>\s*\Z", re.S)
_TRAILER = re.compile(r"\n(?P<name>Exit Code|Signal|Background PIDs|Process Group PGID): (?P<value>[^\n]*)\Z")


@dataclass(frozen=True)
class ShellOutcome:
    """A shell command's result as Gemini CLI reported it (stdout and stderr arrive combined)."""

    output: str
    exit_code: int | None
    signal: str | None
    error: str | None
    structured: bool  # False when llmContent was not in the Output:/Exit Code: shape (cancelled, background)

    @property
    def success(self) -> bool:
        return self.structured and not self.exit_code and not self.signal and not self.error


@dataclass(frozen=True)
class ModelCall:
    """One model response of a turn, from the transcript."""

    model: str | None
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    thoughts_tokens: int
    tool_tokens: int
    total_tokens: int


def session_task_id(session_id: str) -> str:
    """The task id of a Gemini CLI session (the same for a resumed session)."""
    cleaned = re.sub(r"[^A-Za-z0-9._:-]", "", session_id or "")[:120]
    if not cleaned:
        raise ValueError("the hook input has no usable session_id")
    return SESSION_TASK_PREFIX + cleaned


def strip_hook_context(prompt: str) -> str:
    """``prompt`` without the ``<hook_context>`` blocks Gemini CLI may have prepended."""
    previous = None
    while previous != prompt:
        previous = prompt
        prompt = _HOOK_CONTEXT.sub("", prompt, count=1)
    return prompt.strip()


def text_of(value: Any) -> str:
    """A tool result (string, Part, list of Parts, anything JSON) as plain text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return value["text"]
    if isinstance(value, list):
        return "\n".join(text_of(v) for v in value)
    return json.dumps(value, ensure_ascii=False, default=str)


def unwrap_untrusted(text: str) -> str:
    match = _UNTRUSTED.match(text)
    return match.group("body") if match else text


def parse_shell_outcome(tool_response: Any) -> ShellOutcome:
    """The output, exit code and signal of a ``run_shell_command`` AfterTool ``tool_response``."""
    response = tool_response if isinstance(tool_response, dict) else {"llmContent": tool_response}
    error = response.get("error")
    error_text = text_of(error.get("message") if isinstance(error, dict) else error) or None
    content = unwrap_untrusted(text_of(response.get("llmContent")))
    if not content.startswith("Output: "):
        return ShellOutcome(output=content, exit_code=None, signal=None, error=error_text, structured=False)
    trailers: dict[str, str] = {}
    while match := _TRAILER.search(content):
        trailers.setdefault(match.group("name"), match.group("value").strip())
        content = content[: match.start()]
    output = content[len("Output: ") :]
    if output == "(empty)":
        output = ""
    exit_code: int | None = 0
    if "Exit Code" in trailers:
        try:
            exit_code = int(trailers["Exit Code"])
        except ValueError:
            exit_code = None
    return ShellOutcome(
        output=output, exit_code=exit_code, signal=trailers.get("Signal"), error=error_text, structured=True
    )


def turn_model_calls(transcript_path: str | Path) -> list[ModelCall]:
    """The model responses of the session's latest turn (after its last typed user message).

    Raises FileNotFoundError / OSError when the transcript cannot be read: only a regular file is
    read (a FIFO or a device would block the hook), and within ``TRANSCRIPT_DEADLINE_S``.
    """
    messages = _transcript_messages(Path(transcript_path))
    start = 0
    for index, message in enumerate(messages):
        if message.get("type") == "user" and _has_typed_text(message.get("content")):
            start = index + 1
    calls = []
    for message in messages[start:]:
        tokens = message.get("tokens")
        if message.get("type") != "gemini" or not isinstance(tokens, dict):
            continue
        calls.append(
            ModelCall(
                model=message.get("model") if isinstance(message.get("model"), str) else None,
                input_tokens=_count(tokens.get("input")),
                output_tokens=_count(tokens.get("output")),
                cached_tokens=_count(tokens.get("cached")),
                thoughts_tokens=_count(tokens.get("thoughts")),
                tool_tokens=_count(tokens.get("tool")),
                total_tokens=_count(tokens.get("total")),
            )
        )
    return calls


def _read_tail(path: Path, limit: int) -> tuple[bytes, bool]:
    """The last ``limit`` bytes of the regular file ``path``, and whether the file was longer.

    Opened without blocking (a FIFO would wait for a writer), refused unless regular, and read
    against a deadline (a file on a hung network mount).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        start = max(0, info.st_size - limit)
        os.lseek(fd, start, os.SEEK_SET)
        data = read_at_most(fd, limit, deadline=time.monotonic() + TRANSCRIPT_DEADLINE_S, name=str(path))
    finally:
        os.close(fd)
    return data, start > 0


def _transcript_messages(path: Path) -> list[dict[str, Any]]:
    data, skip_partial = _read_tail(path, MAX_TRANSCRIPT_BYTES)
    lines = data.splitlines()
    if skip_partial and lines:
        lines = lines[1:]
    order: list[str] = []
    by_id: dict[str, dict[str, Any]] = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written right now, or damaged: the rest still counts
        if not isinstance(record, dict):
            continue
        replaced = record.get("$set", {}).get("messages") if isinstance(record.get("$set"), dict) else None
        if isinstance(replaced, list):
            order, by_id = [], {}
            for message in replaced:
                _upsert(order, by_id, message)
        elif "type" in record:
            _upsert(order, by_id, record)
    return [by_id[key] for key in order]


def _upsert(order: list[str], by_id: dict[str, dict[str, Any]], message: Any) -> None:
    if not isinstance(message, dict):
        return
    key = str(message.get("id") or f"#{len(order)}")
    if key not in by_id:
        order.append(key)
    by_id[key] = message


def _has_typed_text(content: Any) -> bool:
    """True for a user message the person typed (text parts), False for tool results."""
    if isinstance(content, str):
        return bool(content.strip())
    if isinstance(content, list):
        return any(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content)
    return False


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
