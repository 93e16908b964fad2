"""What a populate run reports: its progress while it runs, and what it did (``populate_project``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from knowledgebase.index.scanning import SkippedFile


@dataclass(frozen=True)
class PopulateProgress:
    """Where a populate run is.

    ``phase`` is waiting (for another agent's populate of the project), scanning, reading (new and
    changed files are read and chunked: ``files_done`` of ``files_total``), loading (the model), embedding
    (``chunks_embedded`` of ``chunks_to_embed``, counted up front: the chunks whose text has no stored
    vector), deleting or done.
    """

    phase: str
    files_total: int = 0
    files_done: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0
    embed_seconds: float = 0.0
    path: str | None = None
    chunks_to_embed: int = 0

    @property
    def chunks_per_second(self) -> float:
        """Embedding rate so far (chunks the model embedded per second of embedding)."""
        return self.chunks_embedded / self.embed_seconds if self.embed_seconds else 0.0


ProgressCallback = Callable[[PopulateProgress], None]


@dataclass(frozen=True)
class PopulateTimings:
    """Seconds spent per stage (``read`` includes decoding, redaction and chunking)."""

    lock_wait: float
    scan: float
    read: float
    embed: float
    write: float
    total: float


@dataclass(frozen=True)
class PopulateReport:
    """What a populate run did.

    ``added``/``changed``/``unchanged``/``deleted`` count files; ``skipped`` lists every path left out
    with its reason; ``lossy_files`` are files stored this run whose undecodable bytes became U+FFFD;
    ``chunks_written`` = ``chunks_embedded`` (sent to the model) + ``chunks_reused`` (a stored vector
    with the same content hash); ``summaries_embedded`` counts the short texts of definitions
    (``knowledgebase.index.summaries``) sent to the model beside them.
    """

    project: str
    project_id: int
    root: str
    files_indexed: int
    added: int
    changed: int
    unchanged: int
    deleted: int
    skipped: tuple[SkippedFile, ...]
    skipped_by_reason: dict[str, int]
    lossy_files: tuple[str, ...]
    chunks_written: int
    chunks_embedded: int
    chunks_reused: int
    secrets_redacted: int
    timings: PopulateTimings
    backend: str  # what embedded the chunks ("openvino bf16", "torch fp32"...), or why nothing was loaded
    summaries_embedded: int = 0
