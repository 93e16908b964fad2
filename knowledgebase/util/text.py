"""Text that PostgreSQL can hold and a tokenizer can read, whatever a caller handed in."""

from __future__ import annotations


def storable_text(text: str) -> str:
    """``text`` with lone surrogates (``'\\ud800'``, undecodable bytes escaped by ``surrogateescape``)
    and NUL characters turned into U+FFFD: PostgreSQL ``text`` holds neither, and UTF-8 cannot
    encode a lone surrogate. Valid text comes back unchanged (and without a copy)."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # a surrogate pair spelt as two code points becomes its character; a lone one U+FFFD
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text
