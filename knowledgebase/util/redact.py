"""Secret redaction, applied to everything before it is stored or embedded.

One module serves file ingestion, the audit log, task contexts, facts and hooks. A redacted value
becomes ``[REDACTED:<kind>]``; the number of lines never changes, so line ranges of chunks stay true.

What it recognises, in three layers:

- Key formats with a fixed, documented shape: private-key blocks (also half a block, as left by
  head/tail clipping: a BEGIN with no END, or base64 lines ending in an END line), JWTs, and the
  token prefixes of Google (API keys, OAuth tokens, client secrets), OpenAI, Anthropic, GitHub,
  GitLab, Slack, AWS, Stripe, npm, PyPI, Hugging Face, Docker Hub, SendGrid, DigitalOcean, Shopify
  and Telegram.
- Secrets by their context in the text: passwords in URLs (also holding ``/`` or ``@``); values
  assigned to names that end in a secret word (``password``, ``*_TOKEN``, ``api_key``,
  ``aws_secret_access_key``, ``_authToken``...) in every common form: quoted, ``.env``/shell
  (``API_TOKEN=x ./cmd``, trailing ``# comments``), INI (``password = x``), YAML (``password: x``),
  libpq keyword strings (``host=db password=x``), command-line flags (``--password x``,
  ``--api-key=x``, ``'--token=a b'`` as ``shlex.join`` quotes it), HTTP headers (``X-Api-Key:``,
  ``Authorization:``, ``Bearer``/``Basic``/``Token`` credentials), ``curl -u user:pw``,
  ``mysql -pX``, ``sshpass -p x``, ``docker login -p x``, ``.netrc`` and ``.pgpass`` lines.
- Structure (``redact_value``): in JSON-like values, every scalar under a secret-named key
  (``{"db": {"password": 1234}}``, ``GITHUB_TOKEN``, ``apiKey``), and in lists of strings (argv)
  the argument after a secret flag (``["--password", "x"]``).

Precision: ordinary code stays readable (``token = next(tokens)``, ``password_field``, placeholders,
NLP tokens, hashes, UUIDs, SHAs); the rules for it are in ``knowledgebase.util.secret_values``.

Why hand-written rules: detect-secrets (Yelp, Apache-2.0; last release 1.5.0, 2024) was measured
on this package's own source: 0.11 MB/s through ``scan_line``, a finding on most lines from its
entropy plugins (``token = next(tokens)`` is three findings), and it reports secret values without
the positions a replacement needs. ``redact`` runs on every prompt, tool output and file chunk, so
its rules are plain regular expressions kept here, written from the vendors' documented token
formats (no scanner's rule file is copied). Speed: a rule with a fixed literal runs only when that
literal is in the text, with no leading ``\b`` (which would disable the engine's literal-prefix
search); the contextual rules run only on the lines holding one of their hint words. About 9 MB/s on
source code and logs, 12 MB/s on prose (``scripts/bench_redact.py``), against 2.4 MB/s for the previous,
smaller rule set on the same texts. ``tests/redaction_corpus.py`` holds one positive and one negative
case per format and structure.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from knowledgebase.util.secret_values import (
    BARE_WORD,
    NOT_SECRETS,
    PLACEHOLDER,
    SECRET_FLAG,
    is_placeholder,
    is_random_key,
    is_secret_key,
    looks_like_code,
)

__all__ = ["MARKER_PREFIX", "Redaction", "is_secret_key", "redact", "redact_argv", "redact_text", "redact_value"]

MARKER_PREFIX = "[REDACTED:"

# The contextual rules match any name (fast) and keep only secret ones (``is_secret_key``); they run
# only on text holding one of these (lower-case) words.
_NAME_HINTS = ("pass", "pw", "secret", "token", "key", "credential", "auth")
_ANY_NAME = r"(?<![A-Za-z0-9_.-])[A-Za-z0-9_.-]+"


def _marker(kind: str) -> str:
    return f"{MARKER_PREFIX}{kind}]"


def _at_word_start(match: re.Match[str]) -> bool:
    """Whether ``match`` starts a word (the rules' patterns leave out a leading ``\\b``: it would
    disable the regular expression engine's fast literal-prefix search and cost 15x the time)."""
    start = match.start()
    return start == 0 or not (match.string[start - 1].isalnum() or match.string[start - 1] == "_")


def _after_digits(match: re.Match[str], count: int = 8) -> bool:
    """Whether ``count`` digits come right before ``match`` (a Telegram bot id before its token)."""
    return match.start() >= count and match.string[match.start() - count : match.start()].isdigit()


def _keep_lines(kind: str) -> Callable[[re.Match[str]], str]:
    """Replace a (possibly multi-line) match with a marker followed by as many newlines."""

    def repl(match: re.Match[str]) -> str:
        if not _at_word_start(match) and match.group(0)[0].isalnum():
            return match.group(0)
        return _marker(kind) + "\n" * match.group(0).count("\n")

    return repl


def _value_only(kind: str, *, check: bool = False, placeholders: bool = False) -> Callable[[re.Match[str]], str]:
    """Keep the ``prefix`` group (the name and operator) and replace the ``value`` group.

    With ``check``, a value that looks like code or a placeholder (``looks_like_code``) is kept; with
    ``placeholders``, only a placeholder (``<password>``, ``${PW}``, ``pass``).
    """

    def repl(match: re.Match[str]) -> str:
        value = match.group("value")
        groups = match.groupdict()
        if match.group(0)[0].isalnum() and not _at_word_start(match):
            return match.group(0)
        if value.startswith(MARKER_PREFIX) or (not check and len(value) < 4):
            return match.group(0)
        if placeholders and is_placeholder(value):
            return match.group(0)
        if check:
            name = groups.get("name") or ""
            if not is_secret_key(name) and not is_random_key(name, value):
                return match.group(0)
            spaced = bool(re.search(r"\s$", match.group("prefix")))
            if looks_like_code(name, value, spaced=spaced):
                return match.group(0)
        return match.group("prefix") + _marker(kind) + (groups.get("suffix") or "")

    return repl


_SECRET_VALUE = _value_only("secret")
_CHECKED_SECRET_VALUE = _value_only("secret", check=True)
_HEADER_NAME = re.compile(
    r"(?:[A-Za-z0-9]+-)+(?:api-?key|token|secret|auth|password|access-?key|subscription-key)|(?:proxy-)?authorization",
    re.I,
)


def _header(match: re.Match[str]) -> str:
    """``X-Api-Key: value``: the value replaced when the name is a credential header's."""
    value = match.group("value")
    if not _HEADER_NAME.fullmatch(match.group("name")) or looks_like_code("", value, spaced=False):
        return match.group(0)
    return _SECRET_VALUE(match)


_Rule = tuple[str, re.Pattern[str], Callable[[re.Match[str]], str], tuple[str, ...]]


def _token(kind: str, pattern: str, *hints: str) -> _Rule:
    """A rule for a key format with a fixed shape: the whole match is replaced, when one of ``hints`` is there."""
    return (kind, re.compile(pattern), _keep_lines(kind), hints)

_UNQUOTED = r"[^\s'\"`,;&|<>(){}\[\]]++"  # possessive: a value cut short by "(" must not match shorter

_RULES: list[_Rule] = [
    (
        "private-key",  # a whole block, or a BEGIN whose END was clipped away
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?"
            r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)",
            re.S,
        ),
        _keep_lines("private-key"),
        ("private key",),
    ),
    _token("jwt", r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", "eyj"),
    _token("google-api-key", r"AIza[0-9A-Za-z_-]{35}", "aiza"),
    _token("google-oauth-token", r"ya29\.[0-9A-Za-z_-]{20,}", "ya29."),
    _token("anthropic-key", r"sk-ant-[A-Za-z0-9_-]{20,}", "sk-ant-"),
    _token("openai-key", r"sk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,}", "sk-"),
    _token(
        "github-token", r"gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,}",
        "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_",
    ),
    _token("gitlab-token", r"gl(?:pat|dt|rt|ptt|cbt)-[A-Za-z0-9_-]{20,}", "glpat-", "gldt-", "glrt-", "glptt-", "glcb"),
    _token("slack-token", r"xox[abposre]-[A-Za-z0-9-]{10,}|xapp-\d-[A-Za-z0-9-]{10,}", "xox", "xapp-"),
    _token("slack-webhook", r"hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9/_-]{20,}", "hooks.slack.com"),
    _token("aws-access-key", r"(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", "akia", "asia", "abia", "acca"),
    _token("stripe-key", r"[rs]k_(?:live|test)_[A-Za-z0-9]{16,}", "sk_live", "sk_test", "rk_live", "rk_test"),
    _token("npm-token", r"npm_[A-Za-z0-9]{36}\b", "npm_"),
    _token("pypi-token", r"pypi-AgE[A-Za-z0-9_-]{50,}", "pypi-age"),
    _token("huggingface-token", r"hf_[A-Za-z0-9]{34,}\b", "hf_"),
    _token("docker-token", r"dckr_pat_[A-Za-z0-9_-]{20,}", "dckr_pat_"),
    _token("sendgrid-key", r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}\b", "sg."),
    _token("digitalocean-token", r"do[por]_v1_[a-f0-9]{64}\b", "_v1_"),
    _token("shopify-token", r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b", "shp"),
    _token("google-client-secret", r"GOCSPX-[A-Za-z0-9_-]{28}", "gocspx-"),
    (  # 123456789:AA... (the bot id before the colon is not the secret)
        "telegram-bot-token",
        re.compile(r":AA[A-Za-z0-9_-]{33}\b"),
        lambda m: ":" + _marker("telegram-bot-token") if _after_digits(m) else m[0],
        (":aa",),
    ),
    (
        "pgpass",  # ~/.pgpass lines: host:port:database:user:password
        re.compile(r"(?P<prefix>^[^:\s#]+:(?:\d{1,5}|\*):[^:\s]+:[^:\s]+:)(?P<value>\S+)$", re.M),
        _value_only("password", placeholders=True),
        (":",),
    ),
    # ---- line-local rules (every match lies within one line): run only on lines holding a hint ----
    (
        "url-password",  # scheme://user:password@host, the password may hold "/" and "@"
        re.compile(r"(?P<prefix>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@'\"]{0,200}:)(?P<value>[^\s'\"]{1,200}?)(?P<suffix>@[^\s@/'\"]{1,255}+(?=[/?#'\"\s]|$))"),
        _value_only("password", placeholders=True),
        ("://",),
    ),
    (
        "bearer",
        re.compile(r"(?P<prefix>(?:Bearer|Token|Basic)[ \t]+)(?P<value>[A-Za-z0-9._~+/=-]{16,})"),
        _value_only("token"),
        ("bearer", "token", "basic"),
    ),
    # curl -u user:pw / --user user:pw ; sshpass -p pw ; mysql -ppw (also as shlex.join quotes it)
    (
        "secret",
        re.compile(
            r"(?P<prefix>curl\b[^\n|;&]{0,200}?\s(?:-u|--user)[ \t=]*(?P<q>['\"])[^\s:'\"]+:)"
            r"(?P<value>[^'\"\n]+)(?P<suffix>(?P=q))"
        ),
        _value_only("secret"),
        ("curl",),
    ),
    (
        "secret",
        re.compile(
            r"(?P<prefix>curl\b[^\n|;&]{0,200}?\s['\"]?(?:-u|--user)(?:[ \t=]+|(?=\w))['\"]?[^\s:'\"]+:)"
            r"(?P<value>[^\s'\"]+)"
        ),
        _value_only("secret"),
        ("curl",),
    ),
    (
        "secret",
        re.compile(
            r"(?P<prefix>(?:sshpass|(?:docker|podman|nerdctl|helm[ \t]+registry)[ \t]+login\b[^\n|;&]{0,200}?)"
            r"[ \t]+['\"]?-p[ \t]*['\"]?)(?P<value>[^\s'\"]+)"
        ),
        _value_only("secret"),
        ("sshpass", "login"),
    ),
    (
        "secret",
        re.compile(
            r"(?P<prefix>(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlsh|mariadb)\b[^\n|;&]{0,200}?\s(?:(?P<q>['\"])-p(?=[^'\"\n]+(?P=q))|-p))"
            r"(?P<value>(?(q)[^'\"\n]+|[^\s'\"]+))"
        ),
        lambda m: m.group("prefix") + _marker("secret"),
        ("mysql", "mariadb"),
    ),
    # .netrc: "machine h login u password p", or "password p" on a line of its own
    (
        "netrc",
        re.compile(
            r"(?P<prefix>^[ \t]*(?:machine|default)\b[^\n]{0,200}?[ \t](?P<name>password)[ \t]+)(?P<value>\S+)", re.M
        ),
        _value_only("password", check=True),
        ("password",),
    ),
    (
        "netrc",
        re.compile(r"(?P<prefix>^[ \t]*(?P<name>password)[ \t]+)(?P<value>\S+)(?=[ \t]*$)", re.M),
        _value_only("password", check=True),
        ("password",),
    ),
    # "name": "value" / NAME = 'value' / name: "value" / NAME := "value" (quoted values, any language or format)
    (
        "assigned-secret",
        re.compile(
            rf"(?P<prefix>(?P<name>{_ANY_NAME})[\"']?[ \t]*(?::=|=>|=|:)[ \t]*(?P<q>[\"']))"
            r"(?P<value>[^\"'\n]+)(?P<suffix>(?P=q))",
            re.I,
        ),
        _value_only("secret", check=True),
        _NAME_HINTS,
    ),
    # '--token=a b' / "API_TOKEN=a b": a whole assignment in quotes, as shlex.join writes it
    (
        "flag-secret",
        re.compile(r"(?P<prefix>(?P<q>['\"])(?:--)?(?P<name>[A-Za-z0-9_.-]+)=)(?P<value>[^'\"\n]+)(?P<suffix>(?P=q))"),
        _value_only("secret", check=True),
        _NAME_HINTS,
    ),
    # --password xyz / --api-key=xyz / --token 'a b' on a command line
    (
        "flag-secret",
        re.compile(
            r"(?P<prefix>(?<![\w-])--(?P<name>[A-Za-z0-9_.-]+)(?:=|[ \t]+))"
            r"(?P<value>'[^'\n]*'|\"[^\"\n]*\"|[^\s\"'-][^\s\"']*)"
        ),
        _value_only("secret", check=True),
        _NAME_HINTS,
    ),
    # X-Api-Key: v / Private-Token: v / Authorization: v (a header anywhere: curl -H, logs, HTTP dumps)
    (
        "header-secret",
        re.compile(
            r"(?P<prefix>(?<![\w-])(?P<name>[A-Za-z][A-Za-z0-9-]*)[ \t]*:[ \t]*)"
            r"(?P<value>[^\s'\",;]{4,}(?:[ \t]+[A-Za-z0-9._~+/=-]{8,})?)"
        ),
        _header,
        _NAME_HINTS,
    ),
    # password: x (YAML, also "- password: x" and quoted keys) at the start of a line
    (
        "assigned-secret",
        re.compile(
            rf"(?P<prefix>^[ \t]*(?:-[ \t]+)?[\"']?(?P<name>{_ANY_NAME})[\"']?[ \t]*:[ \t]+)"
            rf"(?P<value>{_UNQUOTED})(?![(\[{{])",
            re.M,
        ),
        _value_only("secret", check=True),
        _NAME_HINTS,
    ),
    # NAME=value anywhere: .env and shell (API_TOKEN=x ./cmd, export X=y # comment), libpq
    # (host=db password=x), INI (password = x), credentials files (aws_secret_access_key = x)
    (
        "assigned-secret",
        re.compile(
            rf"(?P<prefix>(?P<name>{_ANY_NAME})(?:[ \t]*(?<![=!<>:])=(?!=)[ \t]*))"
            rf"(?P<value>{_UNQUOTED})(?![(\[{{])(?P<kwarg>[),])?",
        ),
        lambda m: _assigned(m),  # (defined below)
        _NAME_HINTS,
    ),
]


def _assigned(match: re.Match[str]) -> str:
    """``NAME=value``: as ``_value_only(check=True)``, also keeping ``f(token=result)``-style keyword arguments."""
    if match.group("kwarg") and BARE_WORD.match(match.group("value")):
        return match.group(0)
    replaced = _CHECKED_SECRET_VALUE(match)
    if replaced != match.group(0):
        replaced += match.group("kwarg") or ""
    return replaced


@dataclass(frozen=True)
class Redaction:
    """Redacted text and what was found in it."""

    text: str
    count: int
    kinds: tuple[str, ...]


_FIRST_LINE_RULE = next(i for i, rule in enumerate(_RULES) if rule[0] == "url-password")
_WHOLE_TEXT_RULES = _RULES[:_FIRST_LINE_RULE]
# line-local rules grouped by their hints, in order: each group runs on the lines holding one of its hints
_LINE_GROUPS: list[tuple[re.Pattern[str], list[_Rule]]] = []
for _rule in _RULES[_FIRST_LINE_RULE:]:
    if _LINE_GROUPS and _LINE_GROUPS[-1][1][0][3] == _rule[3]:
        _LINE_GROUPS[-1][1].append(_rule)
    else:
        _LINE_GROUPS.append((re.compile("|".join(re.escape(h) for h in _rule[3])), [_rule]))


def redact_text(text: str) -> Redaction:
    """``text`` with every recognised secret replaced, and a count of replacements by kind."""
    kinds: list[str] = []
    text, count = _apply(_WHOLE_TEXT_RULES, text, text.lower(), kinds)
    text, tails = _redact_key_tails(text)
    if tails:
        count += tails
        if "private-key" not in kinds:
            kinds.insert(0, "private-key")
    lower = text.lower()
    lines: list[str] | None = None
    lower_lines: list[str] = []
    starts: list[int] = []
    for hints, rules in _LINE_GROUPS:
        hits = [m.start() for m in hints.finditer(lower)]
        if not hits:
            continue
        if lines is None:
            lines, lower_lines = text.split("\n"), lower.split("\n")
            starts = list(itertools.accumulate((len(line) + 1 for line in lower_lines[:-1]), initial=0))
        chosen = sorted({bisect.bisect_right(starts, hit) - 1 for hit in hits})
        sub = "\n".join(lines[i] for i in chosen)
        sub, added = _apply(rules, sub, "\n".join(lower_lines[i] for i in chosen), kinds)
        done = sub.split("\n")
        if len(done) == len(chosen):
            for i, line in zip(chosen, done, strict=True):
                lines[i] = line
        else:  # never expected (the rules keep line breaks): run them on the whole text
            whole, added = _apply(rules, "\n".join(lines), lower, kinds)
            lines, lower = whole.split("\n"), whole.lower()
            lower_lines = lower.split("\n")
            starts = list(itertools.accumulate((len(line) + 1 for line in lower_lines[:-1]), initial=0))
        count += added
    if lines is not None:
        text = "\n".join(lines)
    return Redaction(text=text, count=count, kinds=tuple(kinds))


_PEM_END = re.compile(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
_BASE64_LINE = re.compile(r"[A-Za-z0-9+/=]{16,}\r?")


def _redact_key_tails(text: str) -> tuple[str, int]:
    """The second half of a private-key block whose BEGIN was clipped away: the base64 lines before an
    END line (whole blocks are gone by now). Walks back from each END, so it takes linear time."""
    if "PRIVATE KEY" not in text:
        return text, 0
    out: list[str] = []
    last = count = 0
    for match in _PEM_END.finditer(text):
        end_line = match.start()
        if end_line < last or (end_line > 0 and text[end_line - 1] != "\n"):
            continue
        begin = end_line
        while begin > 0:
            line_start = text.rfind("\n", 0, begin - 1) + 1
            if line_start < last or not _BASE64_LINE.fullmatch(text, line_start, begin - 1):
                break
            begin = line_start
        if begin == end_line:
            continue  # an END line alone
        out += [text[last:begin], _marker("private-key") + "\n" * text.count("\n", begin, match.end())]
        last, count = match.end(), count + 1
    return "".join(out) + text[last:], count


def _apply(rules: list[_Rule], text: str, lower: str, kinds: list[str]) -> tuple[str, int]:
    count = 0
    for kind, pattern, repl, hints in rules:
        if not any(hint in lower for hint in hints):
            continue  # a literal every match contains is absent: skip the regular expression
        new_text = pattern.sub(repl, text)
        if new_text == text:
            continue
        added = new_text.count(MARKER_PREFIX) - text.count(MARKER_PREFIX)
        if added:
            count += added
            if kind not in kinds:
                kinds.append(kind)
        text = new_text
    return text, count


def redact(text: str | None) -> str | None:
    """``text`` with secrets replaced (None stays None)."""
    if text is None:
        return None
    return redact_text(text).text


def redact_value(value: Any) -> Any:
    """Redact a JSON-like value (dicts, lists, strings): every string, every scalar under a secret-named
    key, and in lists of strings (argv) the argument after a secret flag. Other values pass through."""
    if isinstance(value, str):
        return redact_text(value).text
    if isinstance(value, dict):
        return {k: _redact_under_secret_key(v) if is_secret_key(k) else redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, str) for v in value):
            return redact_argv(value)
        return [redact_value(v) for v in value]
    return value


def _redact_under_secret_key(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        cleaned = redact_text(value).text
        if cleaned != value or not value.strip() or PLACEHOLDER.match(value) or value.lower() in NOT_SECRETS:
            return cleaned
        return _marker("secret")
    if isinstance(value, int | float):
        return _marker("secret")
    if isinstance(value, list | tuple):
        return [_redact_under_secret_key(v) for v in value]
    return redact_value(value)  # a dict: its own keys decide


_MYSQL_PROGRAMS = frozenset({"mysql", "mysqldump", "mysqladmin", "mysqlimport", "mysqlsh", "mariadb"})
_LOGIN_PROGRAMS = frozenset({"docker", "podman", "nerdctl", "helm"})  # `docker login -p x`
_PROGRAMS = _MYSQL_PROGRAMS | _LOGIN_PROGRAMS | {"curl", "sshpass"}


def redact_argv(argv: list[str] | tuple[str, ...]) -> list[str]:
    """Each argument redacted, and the one after a secret flag (``--password x``, ``curl -u u:pw``) replaced."""
    out: list[str] = []
    previous = program = ""
    for arg in argv:
        name = arg.rsplit("/", 1)[-1]
        if not program or name in _PROGRAMS:  # the program is the first word, or a known one later (sh -c ...)
            program = name
        cleaned = redact_text(arg).text
        if cleaned == arg and not arg.startswith("-"):
            if SECRET_FLAG.fullmatch(previous) and not looks_like_code("", arg, spaced=False):
                cleaned = _marker("secret")
            elif previous in ("-u", "--user") and program == "curl" and ":" in arg:
                cleaned = arg.split(":", 1)[0] + ":" + _marker("secret")
            elif previous == "-p" and (program == "sshpass" or (program in _LOGIN_PROGRAMS and "login" in argv)):
                cleaned = _marker("secret")
        elif program in _MYSQL_PROGRAMS and re.fullmatch(r"-p[^\s]+", arg):
            cleaned = "-p" + _marker("secret")
        out.append(cleaned)
        previous = arg
    return out
