"""Context assembly: the few things an agent most needs for a prompt, as Markdown within a token budget.

``build_context`` searches the project's chunks and facts (``knowledgebase.search.retrieval``), keeps the
hits relevant enough (relevance >= ``RankingWeights.min_score``; facts also stored at
``RankingWeights.min_fact_confidence`` or above) in score order while they fit, and
renders them as a Markdown block (no HTML or XML tags) in which every item cites its source:
``path:start-end`` for code (with the file's role when it is not source: ``(test)``, ``(docs)``),
``fact #id, confidence c`` for facts. Code comes as search returns it: one item per definition (its best
chunk), tests and docs below source of the same relevance, so they enter only when they still clear
``min_score`` after their role's penalty (or the prompt asks for them: "how do I test ..."). A chunk
that does not fit whole may be cut at a line boundary when enough budget is left; its citation then
gives the lines actually shown.

The budget is counted in the embedding model's tokenizer (``embedder.count_tokens``), over the whole
block including headings. That is a proxy for the agent model's tokenizer, not an exact count; for
code and English it is conservative for Gemini-class tokenizers, whose vocabularies are larger than
MiniLM's WordPiece and spend fewer tokens on the same text.

Past shell commands close to the prompt (``knowledgebase.search.commands``) compete for the same budget
under "Commands run before". With ``activity`` (``knowledgebase.search.activity``), a chunk of a file
another agent changed in the last minutes carries a note saying so, and an "Other agents at work"
section names those changes and the running tasks whose title is close to the prompt; it is added
last, only if it fits.

Each assembled block is recorded in ``context_log`` (prompt, items with their score parts, text), so
"why did the agent see this?" has an answer later.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from knowledgebase import store
from knowledgebase.config import DEFAULT_CONTEXT_BUDGET
from knowledgebase.db import Database
from knowledgebase.embedding import Embedder
from knowledgebase.errors import InputError
from knowledgebase.ranking import DEFAULT_WEIGHTS, RankingWeights, ScoreParts
from knowledgebase.ranking import score as score_parts
from knowledgebase.search import commands as past_commands
from knowledgebase.search.hits import ChunkHit, CommandHit, FactHit, Hit
from knowledgebase.search.retrieval import embedded_query, search
from knowledgebase.util.jsonable import to_jsonable
from knowledgebase.util.redact import redact
from knowledgebase.util.text import storable_text

if TYPE_CHECKING:
    from knowledgebase.search.activity import ActiveWork

DEFAULT_BUDGET = DEFAULT_CONTEXT_BUDGET
# hits considered for one block; more than fit in any usual budget
CANDIDATE_HITS = 24
# a chunk is cut to fit only if at least this many tokens of budget remain for it
MIN_PARTIAL_TOKENS = 64
HEADER = "# Context from the knowledgebase"
INTRO = "Ranked for this prompt from {scope}; each item cites its source."
FACTS_HEADING = "## Known facts"
CODE_HEADING = "## Code"
COMMANDS_HEADING = past_commands.HEADING
# a running task of another agent is named in a block when its title is this close to the prompt
TASK_MIN_SIMILARITY = 0.35


@dataclass(frozen=True)
class ContextItem:
    """One item of a context block: what it is, where it comes from, and why it was chosen."""

    kind: str
    id: int
    citation: str
    score: float
    parts: ScoreParts
    tokens: int
    path: str | None = None
    start_line: int | None = None
    end_line: int | None = None
    truncated: bool = False

    def record(self) -> dict[str, Any]:
        """The JSON recorded in ``context_log``."""
        return {
            "kind": self.kind,
            "id": self.id,
            "citation": self.citation,
            "score": round(self.score, 6),
            "tokens": self.tokens,
            "truncated": self.truncated,
            "parts": {
                k: (round(v, 6) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self.parts).items()
            },
        }


@dataclass(frozen=True)
class ContextPack:
    """An assembled context block. ``token_count`` <= ``budget``, in the embedding model's tokens."""

    prompt: str
    text: str
    items: tuple[ContextItem, ...]
    token_count: int
    budget: int
    project: str | None
    task_id: str | None
    record_id: int | None

    def to_json(self) -> dict[str, Any]:
        """The pack as ``kb context --json`` prints it."""
        return {
            "text": self.text,
            "token_count": self.token_count,
            "budget": self.budget,
            "project": self.project,
            "task_id": self.task_id,
            "record_id": self.record_id,
            "items": [to_jsonable(item) for item in self.items],
        }


@dataclass(frozen=True)
class _Block:
    hit: Hit | None  # None: the "Other agents at work" section
    text: str
    item: ContextItem


def build_context(
    db: Database,
    embedder: Embedder,
    prompt: str,
    *,
    project: str | None = None,
    task_id: str | None = None,
    budget: int | None = None,
    weights: RankingWeights | None = None,
    record: bool = True,
    commands: bool = True,
    activity: ActiveWork | None = None,
) -> ContextPack:
    """The context block for ``prompt`` within ``budget`` tokens (default ``KB_CONTEXT_BUDGET``'s default,
    1500; adapters pass ``settings.context_budget``), recorded in ``context_log`` unless ``record`` is False.

    ``commands`` False leaves past commands out; ``activity`` is what other agents do (see the module).
    An empty block (``text == ""``) means nothing relevant fitted or the store holds nothing yet.
    """
    budget = DEFAULT_BUDGET if budget is None else budget
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise InputError(f"the context budget must be a positive number of tokens, not {budget!r}")
    weights = weights or DEFAULT_WEIGHTS
    prompt = storable_text(prompt) if isinstance(prompt, str) else prompt  # recorded as given, minus NUL
    embedder = _SharedQuery(embedder)  # the prompt is embedded once for every part of the block
    hits = search(db, embedder, prompt, project=project, limit=CANDIDATE_HITS, weights=weights)
    # the cutoff asks "does it answer the prompt?" (relevance, what min_score was calibrated on); a
    # fact's confidence and recency order the hits and show in its citation, but do not decide that
    hits = [h for h in hits if h.parts.relevance >= weights.min_score and _trusted(h, weights)]
    if commands and isinstance(prompt, str) and prompt.strip():
        paths = [h.path for h in hits if isinstance(h, ChunkHit)]
        found = past_commands.past_command_hits(db, embedder, prompt, project=project, paths=paths, weights=weights)
        hits = _merge(hits, list(found))
    blocks = _pack(hits, embedder, budget, project, activity)
    if activity is not None and not activity.empty:
        blocks = _with_activity(blocks, activity, embedder, prompt, budget, project)
    text = _render(blocks, project)
    token_count = embedder.count_tokens(text) if text else 0
    items = tuple(b.item for b in blocks)
    record_id = None
    if record:
        with db.connection() as conn:
            project_id = store.get_project(conn, project).id if project is not None else None
            if task_id is not None:
                store.ensure_task(conn, task_id, project_id=project_id)
            record_id = store.insert_context_record(
                conn,
                prompt=redact(prompt) or "",
                budget=budget,
                token_count=token_count,
                items=[item.record() for item in items],
                text=text,
                project_id=project_id,
                task_id=task_id,
            ).id
    return ContextPack(
        prompt=prompt,
        text=text,
        items=items,
        token_count=token_count,
        budget=budget,
        project=project,
        task_id=task_id,
        record_id=record_id,
    )


class _SharedQuery:
    """``embedder`` with its query vectors remembered: retrieval, past commands and the activity section
    all compare with the prompt's vector, and a model call costs more than the rest of the block."""

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder
        self._queries: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self._embedder.name

    @property
    def dimension(self) -> int:
        return self._embedder.dimension

    def embed_documents(self, texts: Any) -> Any:
        return self._embedder.embed_documents(texts)

    def embed_query(self, text: str) -> Any:
        if text not in self._queries:
            self._queries[text] = self._embedder.embed_query(text)
        return self._queries[text]

    def count_tokens(self, text: str) -> int:
        return self._embedder.count_tokens(text)


def _trusted(hit: Hit, weights: RankingWeights) -> bool:
    """Whether a hit may enter a block at all: a fact only once stored at ``min_fact_confidence`` or
    above (a proposal from the trail starts below it)."""
    return not isinstance(hit, FactHit) or hit.confidence_score >= weights.min_fact_confidence


def _merge(hits: list[Hit], extra: list[Hit]) -> list[Hit]:
    """``hits`` in their order, with each of ``extra`` (best first) before the first hit it outscores."""
    merged: list[Hit] = []
    pending = sorted(extra, key=lambda h: -h.score)
    for hit in hits:
        while pending and pending[0].score > hit.score:
            merged.append(pending.pop(0))
        merged.append(hit)
    return merged + pending


def _pack(
    hits: list[Hit], embedder: Embedder, budget: int, project: str | None, activity: ActiveWork | None = None
) -> list[_Block]:
    """Choose blocks greedily by score while the whole rendered text stays within ``budget``."""
    chosen: list[_Block] = []
    used = embedder.count_tokens(_render([], project, force_header=True))
    for hit in hits:
        remaining = budget - used
        if remaining <= 0:
            break
        block = _block(hit, embedder, activity)
        # a section heading costs a few tokens the first time a kind appears
        heading = 0 if any(b.item.kind == hit.kind for b in chosen) else embedder.count_tokens(_heading(hit))
        if block.item.tokens + heading > remaining and isinstance(hit, ChunkHit):
            cut = _cut_chunk(hit, embedder, remaining - heading, activity)
            if cut is None:
                continue
            block = cut
        if block.item.tokens + heading > remaining:
            continue
        chosen.append(block)
        used += block.item.tokens + heading
    # token counts of parts need not add up exactly to the count of the joined text: check the whole
    while chosen and embedder.count_tokens(_render(chosen, project)) > budget:
        chosen.remove(min(chosen, key=lambda b: b.item.score))
    return chosen


def _with_activity(
    blocks: list[_Block], work: ActiveWork, embedder: Embedder, prompt: str, budget: int, project: str | None
) -> list[_Block]:
    """``blocks`` and, if it fits, the section on the other agents' work that concerns this block: the
    changes of the files shown, and the running tasks whose title is close to the prompt."""
    from knowledgebase.search.activity import render_active_work

    shown = {b.hit.path for b in blocks if isinstance(b.hit, ChunkHit)}
    changes = tuple(c for c in work.changes if c.path in shown)
    tasks = work.tasks
    if tasks:
        qvec = embedder.embed_query(embedded_query(prompt))
        vectors = past_commands.cached_vectors(embedder, [t.title for t in tasks])
        tasks = tuple(t for t, v in zip(tasks, vectors, strict=True) if float(v @ qvec) >= TASK_MIN_SIMILARITY)
    text = render_active_work(work, tasks=tasks, changes=changes)
    if not text:
        return blocks
    tokens = embedder.count_tokens(text)
    who = sorted({c.agent_id or "unknown" for c in changes} | {t.owner or "unknown" for t in tasks})
    item = ContextItem(
        kind="activity",
        id=0,
        citation=f"{len(tasks)} tasks, {len(changes)} changed files of " + ", ".join(who),
        score=0.0,
        parts=score_parts(similarity=0.0),
        tokens=tokens,
    )
    with_section = [*blocks, _Block(None, text, item)]
    return with_section if embedder.count_tokens(_render(with_section, project)) <= budget else blocks


def _heading(hit: Hit) -> str:
    if isinstance(hit, FactHit):
        return FACTS_HEADING
    return COMMANDS_HEADING if isinstance(hit, CommandHit) else CODE_HEADING


def _render(blocks: list[_Block], project: str | None, *, force_header: bool = False) -> str:
    if not blocks and not force_header:
        return ""
    scope = f"project {project}" if project else "all projects"
    lines = [HEADER, "", INTRO.format(scope=scope)]
    facts = [b for b in blocks if isinstance(b.hit, FactHit)]
    commands = [b for b in blocks if isinstance(b.hit, CommandHit)]
    code = [b for b in blocks if b.hit is not None and not isinstance(b.hit, FactHit | CommandHit)]
    if facts:
        lines += ["", FACTS_HEADING, ""]
        lines += [b.text for b in facts]
    if commands:
        lines += ["", COMMANDS_HEADING, ""]
        lines += [b.text for b in commands]
    if code:
        lines += ["", CODE_HEADING]
        for b in code:
            lines += ["", b.text]
    for b in blocks:
        if b.hit is None:
            lines += ["", b.text]
    return "\n".join(lines) + "\n"


def _inline(text: str) -> str:
    """Text safe on one Markdown line: whitespace collapsed; anything tag-like kept inside a code span."""
    flat = " ".join(text.split())
    if "<" in flat or ">" in flat:
        fence = "`" * (max((len(m) for m in re.findall(r"`+", flat)), default=0) + 1)
        return f"{fence} {flat} {fence}"
    return flat


def _fence(content: str) -> str:
    longest = max((len(m) for m in re.findall(r"`{3,}", content)), default=2)
    return "`" * (longest + 1)


def _chunk_text(hit: ChunkHit, content: str, end_line: int, activity: ActiveWork | None = None) -> str:
    symbol = f" `{hit.symbol}`" if hit.symbol else ""
    if hit.role not in (None, "source"):
        symbol += f" ({hit.role})"  # a test, a doc page, the changelog: said, so nobody takes it for the code
    fence = _fence(content)
    note = _changed_note(hit.path, activity)
    return (
        f"### {hit.path}:{hit.start_line}-{end_line}{symbol}\n\n{note}{fence}{hit.language or ''}\n{content}\n{fence}"
    )


def _changed_note(path: str, activity: ActiveWork | None) -> str:
    """The warning above a chunk of a file another agent changed lately ("" when none did)."""
    change = activity.changed(path) if activity is not None else None
    if change is None:
        return ""
    from knowledgebase.search.activity import change_line

    # not a "> " blockquote: Gemini CLI escapes ">" inside hook_context, and "&gt; Note" is what the model saw
    return f"**Note:** {change_line(change, _now())} (another agent); the file may differ from this text.\n\n"


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _block(hit: Hit, embedder: Embedder, activity: ActiveWork | None = None) -> _Block:
    if isinstance(hit, FactHit):
        text = f"- **{_inline(hit.fact_label)}**: {_inline(hit.fact_value)} ({hit.citation()})"
    elif isinstance(hit, CommandHit):
        text = f"- {hit.text}"
    elif isinstance(hit, ChunkHit):
        text = _chunk_text(hit, hit.text.rstrip("\n"), hit.end_line, activity)
    else:
        text = f"### {hit.citation()}\n\n{_fence(hit.text)}\n{hit.text}\n{_fence(hit.text)}"
    return _Block(hit, text, _item(hit, embedder.count_tokens(text), hit.citation()))


def _item(hit: Hit, tokens: int, citation: str, *, cut_at: int | None = None) -> ContextItem:
    """The item of ``hit``; ``cut_at`` is the last line shown of a chunk cut to fit."""
    if not isinstance(hit, ChunkHit):
        return ContextItem(kind=hit.kind, id=hit.id, citation=citation, score=hit.score, parts=hit.parts, tokens=tokens)
    return ContextItem(
        kind=hit.kind,
        id=hit.id,
        citation=citation,
        score=hit.score,
        parts=hit.parts,
        tokens=tokens,
        path=hit.path,
        start_line=hit.start_line,
        end_line=hit.end_line if cut_at is None else cut_at,
        truncated=cut_at is not None,
    )


def _cut_chunk(hit: ChunkHit, embedder: Embedder, room: int, activity: ActiveWork | None = None) -> _Block | None:
    """The longest leading part of a chunk (whole lines) whose block fits in ``room`` tokens."""
    if room < MIN_PARTIAL_TOKENS:
        return None
    lines = hit.text.rstrip("\n").split("\n")
    best: _Block | None = None
    low, high = 1, len(lines) - 1
    while low <= high:
        middle = (low + high) // 2
        end_line = hit.start_line + middle - 1
        text = _chunk_text(hit, "\n".join(lines[:middle]), end_line, activity)
        tokens = embedder.count_tokens(text)
        if tokens <= room:
            citation = f"{hit.path}:{hit.start_line}-{end_line}"
            best = _Block(hit, text, _item(hit, tokens, citation, cut_at=end_line))
            low = middle + 1
        else:
            high = middle - 1
    return best
