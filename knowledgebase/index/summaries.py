"""The short texts embedded beside a chunk: per definition it holds, its name, in words, and its signature.

A chunk's own vector mixes its name with every line of its body, so a short question ("Dispose of
this pool.") often sits closer to a busy neighbour than to the four-line method that answers it. A
second, short vector per definition or section of a chunk carries only what names it::

    sqlalchemy/pool/impl.py · SingletonThreadPool.dispose
    singleton thread pool dispose
    def dispose(self) -> None:

and a chunk's similarity to a query is the best of its own and those (``knowledgebase.ranking``). A
chunk holding several small methods gets one short vector each, so each can be found by its name. In
``scripts/eval_retrieval.py`` that raised MRR@10 on every docstring-summary set and the developer
questions (numbers in the README, "How well it retrieves"). Docstrings are left out: the chunk's own
vector has them, and adding them here did not help.

``summary_texts`` reads only what ``file_chunks`` stores (path, symbol, content), so ``kb reembed``
rebuilds it exactly, like ``chunking.embedding_text``. A chunk without a symbol (top-level statements,
a window of prose) has none. Signatures are found by name, not by grammar, so every language works: the
first line of the content holding the definition's last name as a word (not after a dot, not in a
comment, a decorator, a string or a statement such as ``return``), continued while its brackets
are open (a signature over several lines), at most ``MAX_SIGNATURE_LINES`` lines.
"""

from __future__ import annotations

import hashlib
import re

from knowledgebase.util.lexical import identifier_parts

MAX_SIGNATURE_LINES = 4
MAX_SIGNATURE_CHARS = 240
# comments, decorators, strings and statements that use a name rather than define it
_NOT_A_SIGNATURE = re.compile(
    r"\s*(?:#|//|/\*|\*|@|\"|'|(?:return|yield|await|raise|throw|if|elif|else|while|for|assert|with|del|print)\b)"
)
_FOLDED = re.compile(r" \(\+\d+\)$")  # "a, b, c (+2)": chunking's fold of a long symbol list


def summary_texts(file_path: str, symbol: str | None, content: str) -> list[str]:
    """What is embedded as the short vectors of a chunk: one text per definition or section it holds
    (none for a chunk without a symbol)."""
    if not symbol:
        return []
    lines = content.split("\n")
    texts = []
    for name in dict.fromkeys(n for n in _FOLDED.sub("", symbol).split(", ") if n):
        parts = [f"{file_path} · {name}", _words(name), signature(lines, name)]
        texts.append("\n".join(dict.fromkeys(p for p in parts if p)))
    return texts


def summary_hash(text: str) -> str:
    """SHA-256 of a summary text: the key its vector is stored and reused under (as a chunk's
    ``content_hash`` is for the chunk's own text)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def summary_items(file_path: str, symbol: str | None, content: str) -> list[tuple[str, str]]:
    """``(hash, text)`` of each summary text of a chunk."""
    return [(summary_hash(text), text) for text in summary_texts(file_path, symbol, content)]


def signature(lines: list[str], qualified: str) -> str | None:
    """The signature of ``qualified`` (``Class.method``) in ``lines``, or None when no line names it."""
    name = re.split(r"[.:]| > ", qualified)[-1].strip()
    if not re.fullmatch(r"[A-Za-z_$][\w$]*", name):
        return None  # a heading: its words are the summary
    pattern = re.compile(rf"(?<![\w$.]){re.escape(name)}(?![\w$])")
    for number, line in enumerate(lines):
        if pattern.search(line) and not _NOT_A_SIGNATURE.match(line):
            taken = [line.strip()]
            depth = _depth(line)
            while depth > 0 and len(taken) < MAX_SIGNATURE_LINES and number + len(taken) < len(lines):
                following = lines[number + len(taken)]
                taken.append(following.strip())
                depth += _depth(following)
            return " ".join(taken)[:MAX_SIGNATURE_CHARS]
    return None


def _depth(line: str) -> int:
    return sum(line.count(c) for c in "([") - sum(line.count(c) for c in ")]")


def _words(qualified: str) -> str:
    """``ScriptDirectory.get_current_heads`` -> ``script directory get current heads``."""
    return " ".join(" ".join(identifier_parts(part)) or part for part in re.split(r"[.:]+| > ", qualified))
