"""Parsing what Gemini CLI 0.61 hands its hooks: prompts, shell results, transcripts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from knowledgebase.gemini import events as gemini_events
from knowledgebase.gemini.events import parse_shell_outcome, session_task_id, strip_hook_context, turn_model_calls


def test_strip_hook_context_removes_only_leading_blocks() -> None:
    assert strip_hook_context("<hook_context>digest\nmore</hook_context>\n\nfix the bug") == "fix the bug"
    assert strip_hook_context("<hook_context>a</hook_context><hook_context>b</hook_context> x") == "x"
    kept = "explain <hook_context>this</hook_context> tag"
    assert strip_hook_context(kept) == kept
    assert strip_hook_context("  plain  ") == "plain"
    assert strip_hook_context("<hook_context>unterminated") == "<hook_context>unterminated"


def test_session_task_id() -> None:
    assert session_task_id("0ba55aab-067b") == "gemini-0ba55aab-067b"
    assert session_task_id("a b/../c") == "gemini-ab..c"
    with pytest.raises(ValueError, match="session_id"):
        session_task_id("")


@pytest.mark.parametrize(
    ("content", "output", "code", "success"),
    [
        (
            "<untrusted_context>\nOutput: hello\nerr\nExit Code: 3\nProcess Group PGID: 7762\n</untrusted_context>",
            "hello\nerr",
            3,
            False,
        ),
        ("Output: ok\nProcess Group PGID: 12", "ok", 0, True),
        ("Output: (empty)\nProcess Group PGID: 12", "", 0, True),
        # output lines that look like trailers are output, not the trailer at the end
        (
            "Output: Exit Code: 9 is in the log\nall good\nProcess Group PGID: 1",
            "Exit Code: 9 is in the log\nall good",
            0,
            True,
        ),
        ("Output: boom\nError: spawn failed\nExit Code: 127", "boom\nError: spawn failed", 127, False),
    ],
)
def test_parse_shell_outcome(content: str, output: str, code: int, success: bool) -> None:
    outcome = parse_shell_outcome({"llmContent": content})
    assert (outcome.output, outcome.exit_code, outcome.success) == (output, code, success)


def test_parse_shell_outcome_signal_cancel_and_error_field() -> None:
    killed = parse_shell_outcome({"llmContent": "Output: partial\nSignal: SIGTERM\nProcess Group PGID: 5"})
    assert killed.signal == "SIGTERM" and not killed.success and killed.output == "partial"
    cancelled = parse_shell_outcome({"llmContent": "Command was cancelled by user before it could complete."})
    assert not cancelled.structured and cancelled.exit_code is None and not cancelled.success
    assert cancelled.output.startswith("Command was cancelled")
    errored = parse_shell_outcome({"llmContent": "Output: x", "error": {"message": "denied", "type": "X"}})
    assert errored.error == "denied" and not errored.success
    parts = parse_shell_outcome({"llmContent": [{"text": "Output: a"}, {"text": "Exit Code: 2"}]})
    assert (parts.output, parts.exit_code) == ("a", 2)
    assert parse_shell_outcome(None).output == ""


def test_turn_model_calls_counts_only_the_latest_turn(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    records = [
        {"id": "u1", "type": "user", "content": [{"text": "one"}]},
        {"id": "g1", "type": "gemini", "tokens": {"input": 1, "output": 1, "total": 2}},
        {"id": "u2", "type": "user", "content": [{"text": "two"}]},
        {"id": "g2", "type": "gemini", "tokens": {"input": 10, "output": 2, "total": 12}, "model": "m"},
        {"id": "g2", "type": "gemini", "tokens": {"input": 10, "output": 3, "total": 13}, "model": "m"},
        {"id": "u3", "type": "user", "content": [{"functionResponse": {}}]},
        {"id": "g3", "type": "gemini", "tokens": {"input": 20, "output": -4, "cached": 5, "total": "x"}},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\nnot json\n[1]\n")
    calls = turn_model_calls(path)
    assert [(c.input_tokens, c.output_tokens, c.total_tokens) for c in calls] == [(10, 3, 13), (20, 0, 0)]
    assert calls[0].model == "m" and calls[1].model is None and calls[1].cached_tokens == 5


def test_turn_model_calls_reads_only_the_tail_of_a_huge_transcript(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gemini_events, "MAX_TRANSCRIPT_BYTES", 200)
    path = tmp_path / "t.jsonl"
    filler = [json.dumps({"id": f"x{i}", "type": "info", "content": "." * 50}) for i in range(50)]
    tail = [
        json.dumps({"id": "u", "type": "user", "content": "go"}),
        json.dumps({"id": "g", "type": "gemini", "tokens": {"input": 4, "output": 2, "total": 6}}),
    ]
    path.write_text("\n".join(filler + tail) + "\n")
    assert [c.total_tokens for c in turn_model_calls(path)] == [6]
    with pytest.raises(FileNotFoundError):
        turn_model_calls(tmp_path / "missing.jsonl")
