"""Line ranges on their way to becoming chunks: what ``chunking`` and ``syntax`` pass between them."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Piece:
    """A line range on its way to becoming a chunk (internal to the index package)."""

    start: int
    end: int
    kind: str
    symbol: str | None
    fill: bool = False  # statements/paragraphs: packed with neighbours of the same symbol up to the budget
    text: str | None = None  # only for a slice of one over-long line


class Lines:
    """The lines of a file with prefix sums of their token counts."""

    def __init__(self, lines: list[str], counts: Sequence[int]) -> None:
        self.lines = lines
        self.prefix = [0, *itertools.accumulate(counts)]

    def __len__(self) -> int:
        return len(self.lines)

    def tokens(self, start: int, end: int) -> int:
        """Tokens in lines ``start..end`` (1-based, inclusive)."""
        return self.prefix[end] - self.prefix[start - 1]

    def line(self, number: int) -> str:
        return self.lines[number - 1]

    def blank(self, number: int) -> bool:
        return not self.lines[number - 1].strip()

    def furthest_end(self, start: int, budget: int) -> int:
        """The last line ``e >= start - 1`` with ``tokens(start, e) <= budget``."""
        limit = self.prefix[start - 1] + budget
        return bisect.bisect_right(self.prefix, limit, lo=start) - 1
