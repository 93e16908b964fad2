"""Which names hold secrets, and which values assigned to them are code or placeholders, not secrets.

The precision half of ``knowledgebase.util.redact``: its contextual rules match any ``name = value``
(or ``name: value``, ``--name value``) and keep a match only when ``is_secret_key(name)`` and the
value does not ``looks_like_code``; ``redact_value`` asks ``is_secret_key`` of every JSON key.

Names must *end* in a secret word, so ``password_field``, ``token_count`` and ``max_tokens`` are not
secret names. A value is kept when it is an expression (a call, an index, an attribute path:
``token = next(tokens)``, ``password = getpass()``, ``api_key = os.environ["API_KEY"]``), a
placeholder or template (``${DB_PASSWORD}``, ``<password>``, ``hf_***``, ``"%s_upgrades" % x``,
``None``, ``""``), a type (``password: str``), a variable named after the same secret
(``token=token``, ``password=args.password``), an identifier-like word (``bos_token="__start__"``,
``TILE_GLOBAL``), a small number (token ids), or, with spaces around the operator, a bare all-letter
identifier (``token = result``). Tuned on real code: redacting the 54 MB of ``transformers``' source
changes one line (a real-looking token in a test helper); most of what it changes in ``sqlalchemy``'s
docs are example passwords (``scott:tiger``), which it should."""

from __future__ import annotations

import functools
import re

# The word a secret's name ends in (case-insensitive): DB_PASSWORD, aws_secret_access_key, _authToken,
# apiKey, client-secret, X-Api-Key. ``pass``/``pwd``/``pw`` only as a whole word or after a separator.
_SECRET_WORD = (
    r"(?:passw(?:or)?d|passphrase|secret|token|api[_-]?key|apikey|access[_-]?key|secret[_-]?key"
    r"|private[_-]?key|auth[_-]?key|signing[_-]?key|encryption[_-]?key|master[_-]?key|account[_-]?key|credentials?)"
)
_NAME_BODY = rf"(?:[A-Za-z0-9_.-]*?{_SECRET_WORD}|(?:[A-Za-z0-9_.-]*[_.-])?(?:pass|pwd|pw))(?![A-Za-z0-9_-])"
_SECRET_KEY = re.compile(rf"[A-Za-z0-9_.-]*?{_SECRET_WORD}|(?:[A-Za-z0-9_.-]*[_.-])?(?:pass|pwd|pw)", re.I)
SECRET_FLAG = re.compile(rf"--{_NAME_BODY}", re.I)  # a whole argv element

# Values that are not secrets even under a secret name.
NOT_SECRETS = frozenset(
    {
        "none", "null", "nil", "true", "false", "yes", "no", "on", "off", "undefined", "str", "string", "bytes",
        "int", "integer", "bool", "boolean", "any", "object", "optional", "secretstr", "await", "new", "yield",
        "lambda", "not", "self", "this", "required", "prompt", "redacted", "value", "example", "placeholder",
        "dummy", "foobar", "secret", "password", "passwd", "pass", "pwd", "token", "bearer", "basic", "digest",
        "negotiate",
    }
)  # fmt: skip
PLACEHOLDER = re.compile(r"^(?:\$|%\(|\{\{|<|\[|\(|\*+$|x+$|\.\.\.|#)", re.I)
_DOTTED_IDENTIFIER = re.compile(r"^[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)+$")
BARE_WORD = re.compile(r"^[A-Za-z_]+$")
# placeholders and templates anywhere in the value: "hf_***", "sk-...", "%s", "%(name)s", "{}", "<PRE>", "|SEP|"
TEMPLATE = re.compile(r"\*\*\*|\.\.\.|\u2026|%[sd(]|[{}<>]|^\|.*\|$")
# snake_case, kebab-case and CONSTANT_CASE words: names of things, not secrets ("bos_token_id", "TILE_GLOBAL")
_IDENTIFIER_LIKE = re.compile(r"^_*[a-z]+(?:[_-][a-z]+)+_*$|^__[a-z]+__$|^[A-Z][A-Z_]*$")
# CONSTANT_CASE names ending in _KEY (SENTRY_KEY, MY_SERVICE_KEY) hold a secret only when the value is random
KEY_NAME = re.compile(r"[A-Z0-9_]*_KEY")
RANDOM = re.compile(r"(?=[^\n]*\d)(?=[^\n]*[A-Za-z])[A-Za-z0-9+/=_-]{16,}")
_SMALL_NUMBER = re.compile(r"^\d{1,6}$|^\d[\d_]*_\d+$")  # token ids, ports, counts, 129_595



def looks_like_code(name: str, value: str, *, spaced: bool) -> bool:
    """Whether ``value`` (assigned to the secret-named ``name``) is code or a placeholder, not a secret."""
    bare = value.strip("\"'`")
    lower = bare.lower()
    if len(bare) < 4 or lower in NOT_SECRETS or PLACEHOLDER.match(bare) or _DOTTED_IDENTIFIER.match(bare):
        return True
    if TEMPLATE.search(bare) or _IDENTIFIER_LIKE.match(bare) or _SMALL_NUMBER.match(bare) or bare.count(" ") > 3:
        return True  # "%s_upgrades", "{token}", "hf_...", "<s>", "bos_token_id", "TILE", 11098, prose
    word = re.search(rf"{_SECRET_WORD}$|(?:pass|pwd|pw)$", name, re.I)
    if word:
        secret = re.sub(r"[_.-]", "", word.group(0).lower())
        if re.sub(r"[_.-]", "", lower).endswith(secret) or re.search(rf"(?:^|_){secret}(?:_|$)", lower):
            return True  # token=token, password=db_password, api_key=API_KEY, token=pad_token_for_offsets
        if secret in ("token", "key") and bare.isalpha() and bare.islower():
            return True  # a token or key is random; a lower-case word under such a name is a name ("upgrades")
    return spaced and bool(BARE_WORD.match(bare))


def is_placeholder(value: str) -> bool:
    """``<password>``, ``${PW}``, ``pass``, ``hf_***``: a stand-in, not a secret."""
    return value.lower() in NOT_SECRETS or PLACEHOLDER.match(value) is not None or TEMPLATE.search(value) is not None


def is_random_key(name: str, value: str) -> bool:
    """A CONSTANT_CASE ``*_KEY`` name (``SENTRY_KEY``) with a random-looking value: a secret too."""
    return KEY_NAME.fullmatch(name) is not None and RANDOM.fullmatch(value.strip("\"'")) is not None


def is_secret_key(key: object) -> bool:
    """Whether a JSON key or variable name (``api_key``, ``GITHUB_TOKEN``, ``password``) names a secret."""
    return isinstance(key, str) and len(key) < 200 and _is_secret_name(key)


@functools.lru_cache(maxsize=4096)
def _is_secret_name(name: str) -> bool:
    return _SECRET_KEY.fullmatch(name) is not None
