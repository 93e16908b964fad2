"""Secret redaction, applied to everything before it is stored or embedded.

One module serves file ingestion, the audit log, facts and hooks. It recognises well-known key
formats (Google, OpenAI, Anthropic, GitHub, GitLab, Slack, AWS, Stripe), JWTs, bearer tokens,
private-key blocks, passwords inside URLs, and values assigned to names that say they are secret
(``DB_PASSWORD=...``, ``"api_key": "..."``, ``--token xyz``). A redacted value becomes
``[REDACTED:<kind>]``; the number of lines never changes, so line ranges of chunks stay true.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_SECRET_NAME = (
    r"[A-Za-z0-9_.-]*"
    r"(?:passw(?:or)?d|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|auth[_-]?key"
    r"|client[_-]?secret|credentials?)"
    r"[A-Za-z0-9_.-]*"
)


def _marker(kind: str) -> str:
    return f"[REDACTED:{kind}]"


def _keep_lines(kind: str) -> Callable[[re.Match[str]], str]:
    """Replace a (possibly multi-line) match with a marker followed by as many newlines."""

    def repl(match: re.Match[str]) -> str:
        return _marker(kind) + "\n" * match.group(0).count("\n")

    return repl


def _value_only(kind: str) -> Callable[[re.Match[str]], str]:
    """Keep the ``prefix`` group (the name and operator) and replace the ``value`` group."""

    def repl(match: re.Match[str]) -> str:
        value = match.group("value")
        if value.startswith("[REDACTED:") or len(value) < 4:
            return match.group(0)
        return match.group("prefix") + _marker(kind) + (match.groupdict().get("suffix") or "")

    return repl


_RULES: list[tuple[str, re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (
        "private-key",
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?"
            r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)",
            re.S,
        ),
        _keep_lines("private-key"),
    ),
    (
        "url-password",
        re.compile(r"(?P<prefix>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]+:)(?P<value>[^\s@/]+)(?P<suffix>@)"),
        _value_only("password"),
    ),
    (
        "bearer",
        re.compile(r"(?P<prefix>\b(?:Bearer|Token|Basic)\s+)(?P<value>[A-Za-z0-9._~+/=-]{16,})"),
        _value_only("token"),
    ),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), _keep_lines("jwt")),
    ("google-api-key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}"), _keep_lines("google-api-key")),
    ("anthropic-key", re.compile(r"\bsk-ant-[A-Za-z0-9_-]{20,}"), _keep_lines("anthropic-key")),
    ("openai-key", re.compile(r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,}"), _keep_lines("openai-key")),
    (
        "github-token",
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})"),
        _keep_lines("github-token"),
    ),
    ("gitlab-token", re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}"), _keep_lines("gitlab-token")),
    ("slack-token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), _keep_lines("slack-token")),
    ("aws-access-key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), _keep_lines("aws-access-key")),
    ("stripe-key", re.compile(r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"), _keep_lines("stripe-key")),
    # NAME = "value" / "name": "value" / name: 'value' (quoted values, any language or config format)
    (
        "assigned-secret",
        re.compile(
            rf"(?P<prefix>[\"']?\b{_SECRET_NAME}[\"']?\s*(?::=|=|:)\s*(?P<q>[\"']))(?P<value>[^\"'\n]+)(?P<suffix>(?P=q))",
            re.I,
        ),
        _value_only("secret"),
    ),
    # NAME=value on its own line, as in .env files and shell scripts (unquoted)
    (
        "env-secret",
        re.compile(rf"(?P<prefix>^[ \t]*(?:export[ \t]+)?{_SECRET_NAME}=)(?P<value>[^\s\"'#(][^\s#()]*)$", re.I | re.M),
        _value_only("secret"),
    ),
    # --password xyz / --api-key=xyz on a command line
    (
        "flag-secret",
        re.compile(rf"(?P<prefix>--{_SECRET_NAME}(?:=|[ \t]+))(?P<value>[^\s\"'-][^\s\"']*)", re.I),
        _value_only("secret"),
    ),
]


@dataclass(frozen=True)
class Redaction:
    """Redacted text and what was found in it."""

    text: str
    count: int
    kinds: tuple[str, ...]


def redact_text(text: str) -> Redaction:
    """``text`` with every recognised secret replaced, and a count of replacements by kind."""
    count = 0
    kinds: list[str] = []
    for kind, pattern, repl in _RULES:
        new_text = pattern.sub(repl, text)
        added = new_text.count("[REDACTED:") - text.count("[REDACTED:")
        if added:
            count += added
            kinds.append(kind)
        text = new_text
    return Redaction(text=text, count=count, kinds=tuple(kinds))


def redact(text: str | None) -> str | None:
    """``text`` with secrets replaced (None stays None)."""
    if text is None:
        return None
    return redact_text(text).text


def redact_value(value: Any) -> Any:
    """Redact every string inside a JSON-like value (dicts, lists, strings); other values pass through."""
    if isinstance(value, str):
        return redact_text(value).text
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value
