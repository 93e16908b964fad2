"""What a search returns: a chunk of a file, a fact, or a past command, each with its score and its parts.

``Hit`` holds what every kind has; ``ChunkHit``, ``FactHit`` and ``CommandHit`` add their own fields,
their citation and their JSON. ``to_json()`` is the one shape every adapter prints: ``kb search
--json`` (documented in the README), the MCP server's ``search`` tool.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from knowledgebase.ranking import ScoreParts
from knowledgebase.util.jsonable import to_jsonable

if TYPE_CHECKING:  # numpy only for the annotation: a process that only prints hits need not import it
    import numpy as np

KINDS = ("chunk", "fact", "command")  # what a search can return
DEFAULT_KINDS = ("chunk", "fact")


@dataclass(frozen=True, kw_only=True)
class Hit(ABC):
    """One search result, with its score and the parts it was computed from.

    ``created_at`` is when the chunk was indexed, the fact last confirmed, or the command run.
    ``vector`` is the item's embedding, kept only when a search needs it (MMR).
    """

    kind: ClassVar[str]
    id: int
    score: float
    parts: ScoreParts
    text: str
    project: str | None
    created_at: datetime
    vector: np.ndarray | None = field(default=None, repr=False, compare=False)

    @abstractmethod
    def citation(self) -> str:
        """Where the hit comes from, as an agent quotes it."""

    @abstractmethod
    def to_json(self, *, explain: bool = False) -> dict[str, Any]:
        """The hit as JSON values; ``explain`` adds the score parts and their one-line explanation."""

    def overlaps(self, other: Hit) -> bool:
        """Whether ``other`` covers some of the same lines of the same file (only chunks do)."""
        return False

    def explain(self) -> str:
        return f"{self.kind} {self.citation()}: {self.parts.explain()}"

    def _json(self, fields: dict[str, Any], explain: bool) -> dict[str, Any]:
        data = {"kind": self.kind, "id": self.id, "project": self.project, "score": round(self.score, 6)}
        data |= fields | {"citation": self.citation()}
        if explain:
            data["parts"] = to_jsonable(self.parts)
            data["explain"] = self.parts.explain()
        return data


@dataclass(frozen=True, kw_only=True)
class ChunkHit(Hit):
    """Lines ``start_line``-``end_line`` (1-based, inclusive) of ``path``, relative to the project root:
    the chunk that matched, whose text the hit holds. When it is one of several chunks of a definition
    (function, class) or section, ``definition_start``-``definition_end`` is that definition's whole span,
    which the citation gives. ``role`` is the file's role (``knowledgebase.util.roles``)."""

    kind: ClassVar[str] = "chunk"
    path: str
    start_line: int
    end_line: int
    symbol: str | None
    language: str | None
    content_hash: str
    role: str | None = None
    definition_start: int | None = None
    definition_end: int | None = None

    @property
    def span(self) -> tuple[int, int]:
        """The lines cited: the definition's whole span, else the chunk's."""
        if self.definition_start is not None and self.definition_end is not None:
            return min(self.definition_start, self.start_line), max(self.definition_end, self.end_line)
        return self.start_line, self.end_line

    @property
    def definition_key(self) -> tuple[str | None, str, str] | None:
        """What identifies the definition or section this chunk is part of (None: none)."""
        if self.definition_start is None or self.symbol is None:
            return None
        return (self.project, self.path, self.symbol)

    def citation(self) -> str:
        """``src/x.py:10-42``: the definition's span when the chunk is part of one."""
        start, end = self.span
        return f"{self.path}:{start}-{end}"

    def to_json(self, *, explain: bool = False) -> dict[str, Any]:
        fields = {
            "path": self.path,
            "start_line": self.start_line,
            "end_line": self.end_line,
            "symbol": self.symbol,
            "language": self.language,
            "role": self.role,
            "definition_start": self.span[0],
            "definition_end": self.span[1],
            "text": self.text,
        }
        return self._json(fields, explain)

    def overlaps(self, other: Hit) -> bool:
        return (
            isinstance(other, ChunkHit)
            and self.project == other.project
            and self.path == other.path
            and self.start_line <= other.end_line
            and other.start_line <= self.end_line
        )


@dataclass(frozen=True, kw_only=True)
class FactHit(Hit):
    """A fact: ``confidence_score`` as stored, ``effective_confidence`` as the search saw it (decayed
    since ``created_at``, its last confirmation, and lowered when stale); ``source_path`` is the file it
    was read from, if any."""

    kind: ClassVar[str] = "fact"
    fact_label: str
    fact_value: str
    confidence_score: float
    effective_confidence: float | None = None
    is_stale: bool
    pinned: bool
    source_path: str | None
    task_id: str | None

    @property
    def path(self) -> str | None:
        """The file the fact was read from: what a search's path glob matches, as a chunk's path."""
        return self.source_path

    def citation(self) -> str:
        """``fact #7, confidence 0.81`` (``, stale`` when its source has changed)."""
        stale = ", stale" if self.is_stale else ""
        return f"fact #{self.id}, confidence {self.effective_confidence or 0:.2f}{stale}"

    def to_json(self, *, explain: bool = False) -> dict[str, Any]:
        fields = {
            "fact_label": self.fact_label,
            "fact_value": self.fact_value,
            "confidence_score": self.confidence_score,
            "effective_confidence": round(self.effective_confidence or 0.0, 6),
            "is_stale": self.is_stale,
            "source_path": self.source_path,
            "text": self.text,
        }
        return self._json(fields, explain)


@dataclass(frozen=True, kw_only=True)
class CommandHit(Hit):
    """A logged command (or prompt) and its outcome: ``success`` is None when none was recorded."""

    kind: ClassVar[str] = "command"
    command: str
    success: bool | None
    return_code: int | None
    task_id: str | None

    def citation(self) -> str:
        """``command #12, exit 0`` or ``command #12, no outcome recorded``."""
        outcome = "no outcome recorded" if self.success is None else f"exit {self.return_code}"
        return f"command #{self.id}, {outcome}"

    def to_json(self, *, explain: bool = False) -> dict[str, Any]:
        fields = {
            "command": self.command,
            "success": self.success,
            "return_code": self.return_code,
            "task_id": self.task_id,
            "executed_at": to_jsonable(self.created_at),
            "text": self.text,
        }
        return self._json(fields, explain)


HIT_KINDS: dict[str, type[Hit]] = {cls.kind: cls for cls in (ChunkHit, FactHit, CommandHit)}


def hit_to_wire(hit: Hit) -> dict[str, Any]:
    """Every field of ``hit`` but its vector, as JSON values (what the warm process sends a command)."""
    data = {f.name: getattr(hit, f.name) for f in fields(hit) if f.name != "vector"}
    return {"kind": hit.kind, **to_jsonable(data)}


def hit_from_wire(data: dict[str, Any]) -> Hit:
    """The hit ``hit_to_wire`` described (ValueError for anything else)."""
    try:
        cls = HIT_KINDS[data["kind"]]
        values = {k: v for k, v in data.items() if k != "kind"}
        values["parts"] = ScoreParts(**values["parts"])
        values["created_at"] = datetime.fromisoformat(values["created_at"])
        return cls(**values)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a search hit: {exc}") from None
