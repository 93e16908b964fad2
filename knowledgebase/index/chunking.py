"""Cutting a file into chunks that respect its structure and fit the embedding model.

``chunk_text(text, file_path, language, count_tokens=..., max_tokens=...)`` returns ``Chunk``s:

- code in Python, JavaScript, TypeScript/TSX, Go, Rust and Java is cut at function and class
  boundaries with tree-sitter (``knowledgebase.index.syntax``); a definition too long for one chunk is cut
  at its statements (the class header or function signature goes with the first part), and
  definitions shorter than a quarter of the budget are merged with a neighbour;
- Markdown is cut at headings (ATX and setext, ignoring fenced code) and reStructuredText at its
  underlined titles; each chunk's symbol is its heading trail (``Install > Linux``);
- anything else is cut into windows of whole paragraphs, a long paragraph at the blank or
  least-indented line that keeps the window fullest, and a single over-long line (minified code) at
  whitespace.

Every chunk records 1-based inclusive line ranges into the file (``content`` is exactly those lines,
without leading or trailing blank lines), its ``kind`` (function, class, module, code, section,
text, window) and ``symbol`` (the qualified name of the definition(s) it holds, e.g.
``Database.connection``, or the heading trail).

What is embedded is ``embedding_text(file_path, symbol, content)``: a one-line header with the file
path and symbol, then the content, so a chunk stands alone. It is not stored: ``file_chunks`` keeps
the raw ``content`` plus ``symbol`` and the file's path, from which the embedded text is rebuilt
exactly (``kb reembed`` does this). ``content_hash`` is the SHA-256 of the embedded text, so two
chunks share a hash exactly when they share a vector, and a stored vector is reused for any chunk
with the same hash. The header holds no line numbers, so an edit above a function does not change
that function's hash. Beside it, each definition or section of a chunk gets a short text of its own
(name and signature, ``Chunk.summaries``; ``knowledgebase.index.summaries``), embedded too.

Sizes are in the embedding model's tokens (``TokenCounter``): the model reads ``max_tokens`` (256 for
all-MiniLM-L6-v2) including two special tokens and the header, and the rest is the budget for
content. Counting tokens line by line is exact for WordPiece tokenizers, whose pre-tokenizer splits
at whitespace.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from knowledgebase.errors import EmbeddingError
from knowledgebase.index.pieces import Lines, Piece
from knowledgebase.index.summaries import summary_items
from knowledgebase.index.syntax import code_pieces

if TYPE_CHECKING:
    from knowledgebase.embedding import Embedder

TokenCounter = Callable[[Sequence[str]], list[int]]
"""Token counts (without special tokens) of several texts."""

SPECIAL_TOKENS = 2  # [CLS] and [SEP]
SYMBOL_RESERVE = 12  # header tokens kept free for the symbol name
TRIVIAL_TOKENS = 4  # a closing `}` or `end` may use part of the reserve rather than be a chunk of its own
MIN_BUDGET = 32
MAX_SYMBOLS_IN_NAME = 3
CODE_LANGUAGES = frozenset({"python", "javascript", "typescript", "tsx", "go", "rust", "java"})


@dataclass(frozen=True)
class Chunk:
    """One piece of a file, ready to embed and store."""

    file_path: str
    index: int
    start_line: int
    end_line: int
    kind: str
    symbol: str | None
    content: str
    token_count: int
    content_hash: str

    @property
    def embedding_text(self) -> str:
        """What the model embeds: a header naming the file and symbol, then the content."""
        return embedding_text(self.file_path, self.symbol, self.content)

    @property
    def summaries(self) -> list[tuple[str, str]]:
        """``(hash, text)`` of each short text embedded beside the chunk (``knowledgebase.index.summaries``)."""
        return summary_items(self.file_path, self.symbol, self.content)


def embedding_text(file_path: str, symbol: str | None, content: str) -> str:
    """The text embedded for a chunk of ``file_path`` (rebuildable from ``file_chunks`` rows)."""
    header = f"{file_path} · {symbol}" if symbol else file_path
    return f"{header}\n{content}"


def chunk_hash(file_path: str, symbol: str | None, content: str) -> str:
    """SHA-256 of the embedded text: equal hashes mean equal vectors."""
    return hashlib.sha256(embedding_text(file_path, symbol, content).encode("utf-8")).hexdigest()


def token_counter(embedder: Embedder) -> TokenCounter:
    """Batch token counting for ``embedder``'s model: its fast tokenizer, else ``embedder.count_tokens``."""
    from knowledgebase.embedding import load_tokenizer

    try:
        tokenizer = load_tokenizer(embedder.name)
    except EmbeddingError:
        return lambda texts: [embedder.count_tokens(text) for text in texts]
    return lambda texts: [len(enc.ids) for enc in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def chunk_text(
    text: str, file_path: str, language: str | None, *, count_tokens: TokenCounter, max_tokens: int = 256
) -> list[Chunk]:
    """Cut ``text`` (the file at ``file_path``) into chunks of at most ``max_tokens`` embedded tokens."""
    raw_lines = text.split("\n")
    if raw_lines and raw_lines[-1] == "":
        raw_lines.pop()
    if not any(line.strip() for line in raw_lines):
        return []
    lines = Lines(raw_lines, count_tokens(raw_lines))
    header_tokens = count_tokens([file_path])[0] + 1
    budget = max(MIN_BUDGET, max_tokens - SPECIAL_TOKENS - header_tokens - SYMBOL_RESERVE)
    pieces: list[Piece] | None = None
    if language in CODE_LANGUAGES:
        pieces = code_pieces(text, language, lines, budget)
    elif language == "markdown":
        pieces = markdown_pieces(lines, budget)
    elif language == "rst":
        pieces = rst_pieces(lines, budget)
    if pieces is None:
        pieces = paragraph_pieces(lines, 1, len(lines), "window", None)
    fitted = [part for piece in _cover(pieces, len(lines)) for part in _fit(piece, lines, budget, count_tokens)]
    merged = _merge(fitted, lines, budget, min_tokens=budget // 4)
    room = max_tokens - SPECIAL_TOKENS - header_tokens  # for the symbol and the content
    return _emit(merged, lines, file_path, count_tokens, room)


def paragraph_pieces(lines: Lines, start: int, end: int, kind: str, symbol: str | None) -> list[Piece]:
    """Blank-line separated blocks of ``start..end`` as fill pieces."""
    pieces: list[Piece] = []
    block_start: int | None = None
    for number in range(start, end + 1):
        if lines.blank(number):
            if block_start is not None:
                pieces.append(Piece(block_start, number - 1, kind, symbol, fill=True))
                block_start = None
        elif block_start is None:
            block_start = number
    if block_start is not None:
        pieces.append(Piece(block_start, end, kind, symbol, fill=True))
    return pieces


_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_RST_ADORNMENT = re.compile(r"^([=\-`:'\"~^_*+#<>.!$%&(),/;?@\[\]{|}])\1{2,}[ \t]*$")


def markdown_pieces(lines: Lines, budget: int) -> list[Piece]:
    """Sections of a Markdown file, one per heading (fenced code and front matter are not headings)."""
    headings: list[tuple[int, int, str]] = []  # (line, level, title)
    fence: str | None = None
    first = 1
    if len(lines) > 1 and lines.line(1).strip() == "---":  # YAML front matter
        closing = next((n for n in range(2, len(lines) + 1) if lines.line(n).strip() in ("---", "...")), None)
        first = closing + 1 if closing else 1
    for number in range(first, len(lines) + 1):
        line = lines.line(number)
        fence_match = _FENCE.match(line)
        if fence is not None:
            if fence_match and fence_match.group(1)[0] == fence[0] and len(fence_match.group(1)) >= len(fence):
                fence = None
            continue
        if fence_match:
            fence = fence_match.group(1)
            continue
        atx = _ATX.match(line)
        if atx:
            headings.append((number, len(atx.group(1)), (atx.group(2) or "").strip()))
            continue
        setext = _SETEXT.match(line)
        previous = number - 1
        if (
            setext
            and previous >= first
            and not lines.blank(previous)
            and not (headings and headings[-1][0] == previous)
            and not _FENCE.match(lines.line(previous))
        ):
            headings.append((previous, 1 if setext.group(1)[0] == "=" else 2, lines.line(previous).strip()))
    return _sections(lines, headings, budget)


def rst_pieces(lines: Lines, budget: int) -> list[Piece]:
    """Sections of a reStructuredText file, one per title (levels in order of first appearance)."""
    styles: list[tuple[str, bool]] = []
    headings: list[tuple[int, int, str]] = []
    number = 1
    while number < len(lines):
        title = lines.line(number)
        under = _RST_ADORNMENT.match(lines.line(number + 1))
        if (
            under
            and title.strip()
            and not title[0].isspace()
            and not _RST_ADORNMENT.match(title)
            and len(lines.line(number + 1).rstrip()) >= len(title.rstrip())
        ):
            over = number > 1 and lines.line(number - 1).rstrip() == lines.line(number + 1).rstrip()
            style = (under.group(1), over)
            if style not in styles:
                styles.append(style)
            headings.append((number - 1 if over else number, styles.index(style) + 1, title.strip()))
            number += 2
            continue
        number += 1
    return _sections(lines, headings, budget)


def _sections(lines: Lines, headings: list[tuple[int, int, str]], budget: int) -> list[Piece]:
    pieces: list[Piece] = []
    if not headings or headings[0][0] > 1:
        end = headings[0][0] - 1 if headings else len(lines)
        pieces.extend(paragraph_pieces(lines, 1, end, "text", None))
    trail: list[tuple[int, str]] = []
    for position, (start, level, title) in enumerate(headings):
        end = headings[position + 1][0] - 1 if position + 1 < len(headings) else len(lines)
        while trail and trail[-1][0] >= level:
            trail.pop()
        trail.append((level, title))
        symbol = " > ".join(name for _, name in trail if name) or None
        if lines.tokens(start, end) <= budget:
            pieces.append(Piece(start, end, "section", symbol))
        else:  # the heading line travels with the first paragraph
            pieces.extend(paragraph_pieces(lines, start, end, "section", symbol))
    return pieces


def _cover(pieces: list[Piece], line_count: int) -> list[Piece]:
    """Sorted pieces that do not overlap; lines between pieces join the piece before them."""
    ordered = sorted(pieces, key=lambda p: (p.start, -p.end))
    result: list[Piece] = []
    for piece in ordered:
        if result and piece.start <= result[-1].end:
            last = result[-1]
            if piece.end > last.end:  # two constructs share a line: keep them together
                result[-1] = _combine(last, piece)
            continue
        if result and piece.start > result[-1].end + 1:
            result[-1] = replace(result[-1], end=piece.start - 1)
        result.append(piece)
    if result:
        result[0] = replace(result[0], start=1)
        result[-1] = replace(result[-1], end=line_count)
    return result


def _fit(piece: Piece, lines: Lines, budget: int, count_tokens: TokenCounter) -> list[Piece]:
    """``piece`` if it fits the budget, else windows of it (cut where the code or text has a seam)."""
    if lines.tokens(piece.start, piece.end) <= budget:
        return [piece]
    parts: list[Piece] = []
    start = piece.start
    while start <= piece.end:
        if lines.tokens(start, start) > budget:
            parts.extend(_split_line(piece, start, lines.line(start), budget, count_tokens))
            start += 1
            continue
        furthest = min(lines.furthest_end(start, budget), piece.end)
        cut = furthest if furthest == piece.end else _seam(lines, start + (furthest - start) // 2, furthest)
        parts.append(replace(piece, start=start, end=cut, fill=True))
        start = cut + 1
    return parts


def _seam(lines: Lines, low: int, high: int) -> int:
    """The best last line for a window in ``low..high``: a blank line, else before the least-indented line."""
    best, best_score = high, None
    for number in range(high, low - 1, -1):
        if lines.blank(number):
            return number
        following = lines.line(number + 1) if number < len(lines) else ""
        score = len(following) - len(following.lstrip()) if following.strip() else -1
        if best_score is None or score < best_score:
            best, best_score = number, score
    return best


def _split_line(piece: Piece, number: int, line: str, budget: int, count_tokens: TokenCounter) -> list[Piece]:
    """Slices of one over-long line, each within the budget, cut at whitespace where there is some."""
    chars_per_token = len(line) / max(1, count_tokens([line])[0])
    target = max(1, int(budget * chars_per_token * 0.9))
    parts: list[Piece] = []
    position = 0
    while position < len(line):
        size = target
        while True:
            end = min(len(line), position + size)
            if end < len(line):
                space = line.rfind(" ", position + size // 2, end)
                end = space + 1 if space > position else end
            if size == 1 or count_tokens([line[position:end]])[0] <= budget:
                break
            size = max(1, int(size * 0.8))
        if line[position:end].strip():
            parts.append(replace(piece, start=number, end=number, fill=False, text=line[position:end]))
        position = end
    return parts


def _merge(pieces: list[Piece], lines: Lines, budget: int, *, min_tokens: int) -> list[Piece]:
    """Pack runs of fill pieces into balanced chunks, then join small pieces to a related neighbour."""
    packed: list[Piece] = []
    for _, run in itertools.groupby(pieces, key=_run_key):
        packed.extend(_pack(list(run), lines, budget, min_tokens))
    merged: list[Piece] = []
    for piece in packed:
        if merged and _joinable(merged[-1], piece, lines, budget, min_tokens):
            merged[-1] = _combine(merged[-1], piece)
        else:
            merged.append(piece)
    return merged


def _run_key(piece: Piece) -> object:
    """Consecutive fill pieces of one symbol share a key; every other piece is a run of its own."""
    return ("fill", piece.symbol) if piece.fill and piece.text is None else object()


def _pack(run: list[Piece], lines: Lines, budget: int, min_tokens: int = 0) -> list[Piece]:
    """Pack a run into as few chunks as fit the budget, of similar size (no tiny last part).

    A group smaller than ``min_tokens`` (a signature, a class header) is never closed on its own: it
    takes the next piece if both fit, else the first lines of it (cut at a seam), so a definition's
    header always comes with the start of its body."""
    if len(run) == 1:
        return run
    sizes = [lines.tokens(p.start, p.end) for p in run]
    target = sum(sizes) / max(1, -(-sum(sizes) // budget))
    groups: list[Piece] = []
    current, current_tokens = run[0], sizes[0]
    for piece, tokens in zip(run[1:], sizes[1:], strict=True):
        if current_tokens < min_tokens and current_tokens + tokens <= budget:
            current, current_tokens = _combine(current, piece), current_tokens + tokens
        elif current_tokens + tokens > budget or current_tokens + tokens / 2 > target:
            furthest = min(lines.furthest_end(current.start, budget), piece.end - 1)
            if current_tokens < min_tokens and furthest >= piece.start:
                cut = _seam(lines, piece.start, furthest)
                groups.append(_combine(current, replace(piece, end=cut)))
                current, current_tokens = replace(piece, start=cut + 1), lines.tokens(cut + 1, piece.end)
                continue
            groups.append(current)
            current, current_tokens = piece, tokens
        else:
            current, current_tokens = _combine(current, piece), current_tokens + tokens
    groups.append(current)
    return groups


def _joinable(first: Piece, second: Piece, lines: Lines, budget: int, min_tokens: int) -> bool:
    """Whether two neighbours should become one chunk: one is small, both fit, and they belong together.

    Parts of an opened-up definition or section (fill pieces with a symbol) only join pieces of the
    same or a nested symbol, so the tail of one function never rides along with the next function.
    """
    if first.text is not None or second.text is not None:
        return False
    first_tokens, second_tokens = lines.tokens(first.start, first.end), lines.tokens(second.start, second.end)
    if second_tokens <= TRIVIAL_TOKENS and _related(first.symbol, second.symbol):
        return first_tokens + second_tokens <= budget + TRIVIAL_TOKENS  # a closing brace or `end`
    if first_tokens + second_tokens > budget or min(first_tokens, second_tokens) >= min_tokens:
        return False
    if (first.fill and first.symbol) or (second.fill and second.symbol):
        return _related(first.symbol, second.symbol)
    return True


def _related(first: str | None, second: str | None) -> bool:
    if first is None or second is None:
        return first == second
    return first == second or any(
        inner.startswith(outer + sep) for outer, inner in ((first, second), (second, first)) for sep in (".", " > ")
    )


def _combine(first: Piece, second: Piece) -> Piece:
    symbols = [s for s in dict.fromkeys([*_split_symbols(first.symbol), *_split_symbols(second.symbol)]) if s]
    if len(symbols) > MAX_SYMBOLS_IN_NAME:
        symbol: str | None = ", ".join(symbols[:MAX_SYMBOLS_IN_NAME]) + f" (+{len(symbols) - MAX_SYMBOLS_IN_NAME})"
    else:
        symbol = ", ".join(symbols) or None
    return Piece(
        start=first.start,
        end=max(first.end, second.end),
        kind=_combined_kind(first, second),
        symbol=symbol,
        fill=first.fill and second.fill and first.symbol == second.symbol,
    )


def _combined_kind(first: Piece, second: Piece) -> str:
    """The shared kind; a definition's kind over the kind of statements around it; else ``code``."""
    if first.kind == second.kind:
        return first.kind
    if first.fill != second.fill:
        return second.kind if first.fill else first.kind
    return "code"


def _split_symbols(symbol: str | None) -> list[str]:
    if not symbol:
        return []
    return [part for part in re.sub(r" \(\+\d+\)$", "", symbol).split(", ") if part]


def _short_symbol(symbol: str | None, room: int, count_tokens: TokenCounter) -> str | None:
    """``symbol``, with trailing names folded into ``(+N)`` until it fits ``room`` tokens."""
    if not symbol or count_tokens([symbol])[0] <= room:
        return symbol
    names = _split_symbols(symbol)
    for keep in range(len(names) - 1, 0, -1):
        shorter = ", ".join(names[:keep]) + f" (+{len(names) - keep})"
        if count_tokens([shorter])[0] <= room:
            return shorter
    return names[0] if names and count_tokens([names[0]])[0] <= room else None


def _emit(pieces: list[Piece], lines: Lines, file_path: str, count_tokens: TokenCounter, room: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    for piece in pieces:
        start, end = piece.start, piece.end
        if piece.text is not None:
            content, tokens = piece.text, count_tokens([piece.text])[0]
        else:
            while start <= end and lines.blank(start):
                start += 1
            while end >= start and lines.blank(end):
                end -= 1
            if start > end:
                continue
            content, tokens = "\n".join(lines.lines[start - 1 : end]), lines.tokens(start, end)
        symbol = _short_symbol(piece.symbol, room - tokens - 1, count_tokens)
        chunks.append(
            Chunk(
                file_path=file_path,
                index=len(chunks),
                start_line=start,
                end_line=end,
                kind=piece.kind,
                symbol=symbol,
                content=content,
                token_count=tokens,
                content_hash=chunk_hash(file_path, symbol, content),
            )
        )
    return chunks
