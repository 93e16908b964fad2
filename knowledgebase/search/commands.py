"""Past shell commands for a context block ("Commands run before"): the few closest to the prompt, each
with its exit code, when, by which agent, and for a failure its first meaningful error line; a failure
followed in the same task by a success of a similar command shows the pair.

Candidates are the newest shell commands of the project plus the best full-text matches among the
last ``COMMAND_SCAN`` (``knowledgebase.store.activity``). Commands have no stored embeddings: the
few candidates are embedded here ("command + error line"), and scored like any hit
(``knowledgebase.ranking.score``: similarity, full text, and the identifier bonus for a command that
names a file of the retrieved chunks or an identifier of the prompt), with recency. The block keeps
those whose relevance reaches ``min_score``, like chunks and facts, and they compete for the budget
with them (``knowledgebase.search.context``).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from knowledgebase import store
from knowledgebase.db import Database
from knowledgebase.embedding import Embedder
from knowledgebase.ranking import RankingWeights, ScoreParts, score
from knowledgebase.search.hits import CommandHit
from knowledgebase.search.retrieval import embedded_query
from knowledgebase.util.lexical import code_identifiers, tsquery_text

if TYPE_CHECKING:
    import psycopg

COMMAND_SCAN = 500  # newest shell commands of the project looked at
TEXT_CANDIDATES = 12  # best full-text matches among them
RECENT_CANDIDATES = 12  # ... and the newest, whatever their text
# vectors of command readings kept in the (warm) process: the same commands come back prompt after prompt
VECTOR_CACHE_SIZE = 4096
CONTEXT_COMMANDS = 3  # at most this many commands in one block
OUTPUT_CHARS = 4000  # of each end of stdout and stderr read to find the error line
MAX_COMMAND_CHARS = 200
MAX_ERROR_CHARS = 160
FOLLOW_UPS = 5  # later successes of the same task looked at for a failed command
# a later success "is the same thing done right" if it runs the same program or its text is this
# close to the failure's (all-MiniLM-L6-v2: `pytest tests/` ~ `make test` 0.51, ~ `git status` 0.16)
PAIR_MIN_SIMILARITY = 0.4
HEADING = "## Commands run before"

# a line that states an error ("ImportError: ...", "error: ...", "npm ERR!", "fatal: ...") beats one that
# only mentions one ("collected 3 items / 1 error", "1 failed, 2 passed")
_STATED = re.compile(r"\w(Error|Exception)\b:?|\b(error|fatal|panic)(\[[\w-]+\])?:|\bERR!|^E\s", re.I)
_ERROR = re.compile(r"\b(error|errors|exception|fatal|failed|failure|panic|denied|not found)\b", re.I)
_TRACEBACK = "Traceback (most recent call last)"
_vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
_vectors_lock = threading.Lock()


def cached_vectors(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """``embedder.embed_documents(texts)``, each distinct text embedded once per process (LRU)."""
    with _vectors_lock:
        missing = list(dict.fromkeys(t for t in texts if (embedder.name, t) not in _vectors))
    if missing:
        fresh = embedder.embed_documents(missing)
        with _vectors_lock:
            for text, vector in zip(missing, fresh, strict=True):
                _vectors[(embedder.name, text)] = vector
                _vectors.move_to_end((embedder.name, text))
            while len(_vectors) > VECTOR_CACHE_SIZE:
                _vectors.popitem(last=False)
    known = {t: v for t in texts if (v := _vectors.get((embedder.name, t))) is not None}
    if len(known) < len(set(texts)):  # evicted meanwhile by another thread: embed those again
        again = [t for t in dict.fromkeys(texts) if t not in known]
        known |= dict(zip(again, embedder.embed_documents(again), strict=True))
    return np.stack([known[t] for t in texts]) if texts else np.zeros((0, embedder.dimension), dtype=np.float32)


def first_error_line(
    stderr_head: str | None,
    stderr_tail: str | None = None,
    stdout_head: str | None = None,
    stdout_tail: str | None = None,
    error: str | None = None,
) -> str | None:
    """The line that says what went wrong: a Python traceback's exception line, else the first line
    stating an error, else the first mentioning one (stderr before stdout, each by its head then its
    tail), else the last line of stderr, else ``error``; clipped to ``MAX_ERROR_CHARS``."""
    for head, tail in ((stderr_head, stderr_tail), (stdout_head, stdout_tail)):
        found = (
            _traceback_line(head, tail)
            or _error_line(head, _STATED)
            or _error_line(tail, _STATED)
            or _error_line(head, _ERROR)
            or _error_line(tail, _ERROR)
        )
        if found:
            return _clip(found, MAX_ERROR_CHARS)
    for text in (stderr_tail, stderr_head, error):
        lines = _lines(text)
        if lines:
            return _clip(lines[-1], MAX_ERROR_CHARS)
    return None


def _lines(text: str | None) -> list[str]:
    return [" ".join(line.split()) for line in (text or "").splitlines() if line.strip()]


def _traceback_line(head: str | None, tail: str | None) -> str | None:
    for text in (tail, head):
        if not text or _TRACEBACK not in text:
            continue
        after = text[text.rindex(_TRACEBACK) :].splitlines()[1:]
        # the exception line is the first unindented line after the frames
        for line in after:
            if line.strip() and not line[:1].isspace():
                return " ".join(line.split())
    return None


def _error_line(text: str | None, pattern: re.Pattern[str]) -> str | None:
    return next((line for line in _lines(text) if pattern.search(line)), None)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def ago(moment: datetime, now: datetime) -> str:
    """``5 min ago``, ``2.5 h ago``, ``3.0 days ago``."""
    seconds = max(0.0, (now - moment).total_seconds())
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def _code(text: str) -> str:
    flat = _clip(" ".join(text.split()), MAX_COMMAND_CHARS)
    fence = "`" * (max((len(m) for m in re.findall(r"`+", flat)), default=0) + 1)
    return f"{fence}{flat}{fence}" if fence == "`" else f"{fence} {flat} {fence}"


def _who(agent_id: str | None) -> str:
    return agent_id or "an unknown agent"


def _mentions(text: str, names: Iterable[str]) -> bool:
    return any(re.search(r"(?<![\w.])" + re.escape(name) + r"(?![\w])", text) for name in names if name)


@dataclass(frozen=True)
class _Scored:
    row: store.PastCommand
    vector: np.ndarray
    parts: ScoreParts


def past_command_hits(
    db: Database,
    embedder: Embedder,
    prompt: str,
    *,
    project: str | None,
    paths: Iterable[str] = (),
    weights: RankingWeights,
    now: datetime | None = None,
) -> list[CommandHit]:
    """The relevant past shell commands for ``prompt`` (relevance >= ``weights.min_score``), best first,
    at most ``CONTEXT_COMMANDS``; ``text`` is the Markdown line the context block shows. ``paths`` are
    the files of the retrieved chunks: a command naming one of them counts as an identifier match."""
    now = now or datetime.now(UTC)

    def run(conn: psycopg.Connection) -> tuple[list[store.PastCommand], list[store.LaterSuccess]]:
        project_id = store.get_project(conn, project).id if project is not None else None
        rows = store.list_past_commands(
            conn,
            project_id=project_id,
            tsquery=tsquery_text(prompt),
            scan=COMMAND_SCAN,
            limit=TEXT_CANDIDATES,
            recent=RECENT_CANDIDATES,
            head_chars=OUTPUT_CHARS,
            tail_chars=OUTPUT_CHARS,
        )
        failed = [r.id for r in rows if r.success is False and r.task_id is not None]
        return rows, (store.list_later_successes(conn, failed, per_failure=FOLLOW_UPS) if rows else [])

    rows, later = db.read(run)
    if not rows:
        return []
    errors = {
        r.id: first_error_line(r.stderr_head, r.stderr_tail, r.stdout_head, r.stdout_tail, r.error)
        for r in rows
        if r.success is False
    }
    # a command is read as its text and, for a failure, also as "failed: ..." and with its error line;
    # its similarity is that of the closest reading
    readings = [_readings(r, errors.get(r.id)) for r in rows]
    qvec = embedder.embed_query(embedded_query(prompt))  # as retrieval does: one model call
    flat = cached_vectors(embedder, [text for texts in readings for text in texts])
    names = {*code_identifiers(prompt)}
    for path in paths:
        names |= {path, path.rsplit("/", 1)[-1]}
    scored: list[_Scored] = []
    start = 0
    for row, texts in zip(rows, readings, strict=True):
        vectors = flat[start : start + len(texts)]
        start += len(texts)
        sims = vectors @ qvec
        vec = vectors[int(np.argmax(sims))]
        doc = "\n".join(texts)
        age = max(0.0, (now - row.executed_at).total_seconds())
        parts = score(
            similarity=float(np.max(sims)),
            text_rank=row.text_rank,
            identifier_match=_mentions(doc, names),
            age_seconds=age,
            weights=weights,
        )
        if parts.relevance >= weights.min_score:
            scored.append(_Scored(row, vec, parts))
    scored.sort(key=lambda s: (-s.parts.score, -s.row.id))
    chosen = _dedupe(scored)[:CONTEXT_COMMANDS]
    if not chosen:
        return []
    pairs = _pairs([c.row for c in chosen], later, embedder)
    hits: list[CommandHit] = []
    for entry in chosen:
        row, parts = entry.row, entry.parts
        line = _line(row, errors.get(row.id), pairs.get(row.id), now)
        hits.append(
            CommandHit(
                id=row.id,
                score=parts.score,
                parts=parts,
                text=line,
                project=project,
                command=row.command,
                success=row.success,
                return_code=row.return_code,
                task_id=row.task_id,
                created_at=row.executed_at,
                vector=entry.vector,
            )
        )
    return hits


def _readings(row: store.PastCommand, error: str | None) -> list[str]:
    if row.success is not False:
        return [row.command]
    return [row.command, f"failed: {row.command}", *([f"{row.command}\n{error}"] if error else [])]


def _dedupe(scored: list[_Scored]) -> list[_Scored]:
    """One entry per command text and outcome (the best scored, i.e. usually the newest)."""
    seen: set[tuple[str, bool | None]] = set()
    kept: list[_Scored] = []
    for entry in scored:
        key = (" ".join(entry.row.command.split()), entry.row.success)
        if key not in seen:
            seen.add(key)
            kept.append(entry)
    return kept


def _program(command: str) -> str:
    words = [w for w in command.split() if "=" not in w and w not in ("sudo", "env", "time")]
    return words[0].rsplit("/", 1)[-1] if words else ""


def _pairs(
    rows: list[store.PastCommand], later: list[store.LaterSuccess], embedder: Embedder
) -> dict[int, store.LaterSuccess]:
    """For each failed row, the first later success of its task that runs the same program or reads
    like it (``PAIR_MIN_SIMILARITY``)."""
    by_failure: dict[int, list[store.LaterSuccess]] = {}
    for success in later:
        by_failure.setdefault(success.failed_id, []).append(success)
    pairs: dict[int, store.LaterSuccess] = {}
    for row in rows:
        options = by_failure.get(row.id) if row.success is False else None
        if not options:
            continue
        vectors = cached_vectors(embedder, [row.command, *(o.command for o in options)])
        for option, vec in zip(options, vectors[1:], strict=True):
            if _program(option.command) == _program(row.command) or float(vec @ vectors[0]) >= PAIR_MIN_SIMILARITY:
                pairs[row.id] = option
                break
    return pairs


def _line(row: store.PastCommand, error: str | None, then: store.LaterSuccess | None, now: datetime) -> str:
    when = f"{ago(row.executed_at, now)} by {_who(row.agent_id)}"
    if row.success is None:
        return f"ran: {_code(row.command)} (no outcome recorded) {when}; command #{row.id}"
    if row.success:
        return f"worked: {_code(row.command)} (exit {row.return_code}) {when}; command #{row.id}"
    reason = f"exit {row.return_code}" + (f": {_code(error)}" if error else "")
    line = f"failed: {_code(row.command)} ({reason}) {when}; command #{row.id}"
    if then is not None:
        line += (
            f"; then worked: {_code(then.command)} (exit {then.return_code}) {ago(then.executed_at, now)}"
            f" by {_who(then.agent_id)}; command #{then.id}"
        )
    return line


@dataclass(frozen=True)
class Failure:
    """A failed shell command with its first error line, and the similar command that worked after it
    in the same task (None: none did)."""

    id: int
    command: str
    return_code: int | None
    executed_at: datetime
    agent_id: str | None
    task_id: str | None
    error_line: str | None
    then_worked: store.LaterSuccess | None


def recent_failures(db: Database, embedder: Embedder, *, project: str | None, limit: int = 10) -> list[Failure]:
    """The ``limit`` newest failed shell commands of ``project`` (None: every project) among its last
    ``COMMAND_SCAN``, newest first."""
    limit = max(1, min(int(limit), 100))

    def run(conn: psycopg.Connection) -> tuple[list[store.PastCommand], list[store.LaterSuccess]]:
        project_id = store.get_project(conn, project).id if project is not None else None
        rows = store.list_past_commands(
            conn,
            project_id=project_id,
            tsquery=None,
            scan=COMMAND_SCAN,
            limit=0,
            recent=COMMAND_SCAN,
            head_chars=OUTPUT_CHARS,
            tail_chars=OUTPUT_CHARS,
        )
        failed = [r for r in rows if r.success is False][:limit]
        return failed, store.list_later_successes(conn, [r.id for r in failed if r.task_id], per_failure=FOLLOW_UPS)

    failed, later = db.read(run)
    pairs = _pairs(failed, later, embedder)
    return [
        Failure(
            id=r.id,
            command=r.command,
            return_code=r.return_code,
            executed_at=r.executed_at,
            agent_id=r.agent_id,
            task_id=r.task_id,
            error_line=first_error_line(r.stderr_head, r.stderr_tail, r.stdout_head, r.stdout_tail, r.error),
            then_worked=pairs.get(r.id),
        )
        for r in failed
    ]
