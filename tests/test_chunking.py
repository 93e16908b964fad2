"""Structure-aware chunking: definition and heading boundaries, line ranges, token caps, merging."""

from __future__ import annotations

import textwrap

import pytest

from knowledgebase.embedding import count_tokens, load_tokenizer
from knowledgebase.index.chunking import Chunk, chunk_hash, chunk_text, embedding_text

MODEL = "all-MiniLM-L6-v2"
MAX_TOKENS = 256


def counter(texts: list[str] | tuple[str, ...]) -> list[int]:
    tokenizer = load_tokenizer(MODEL)
    return [len(enc.ids) for enc in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def chunk(text: str, path: str, language: str | None, max_tokens: int = MAX_TOKENS) -> list[Chunk]:
    return chunk_text(text, path, language, count_tokens=counter, max_tokens=max_tokens)


def assert_well_formed(chunks: list[Chunk], text: str, max_tokens: int = MAX_TOKENS) -> None:
    """Exact line ranges, ordered and disjoint, every non-blank line covered, all within the model's window."""
    lines = text.split("\n")
    covered: set[int] = set()
    previous_end = 0
    for position, piece in enumerate(chunks):
        assert piece.index == position
        assert 1 <= piece.start_line <= piece.end_line <= len(lines)
        if piece.start_line == piece.end_line and piece.content != lines[piece.start_line - 1]:
            assert piece.content in lines[piece.start_line - 1]  # a slice of an over-long line
        else:
            assert piece.content == "\n".join(lines[piece.start_line - 1 : piece.end_line])
            assert piece.start_line > previous_end
        previous_end = piece.end_line
        covered.update(range(piece.start_line, piece.end_line + 1))
        assert piece.content.strip() and piece.content == piece.content.strip("\n")
        assert piece.token_count == count_tokens(MODEL, piece.content)
        assert count_tokens(MODEL, piece.embedding_text) + 2 <= max_tokens
        assert piece.content_hash == chunk_hash(piece.file_path, piece.symbol, piece.content)
    assert {n for n, line in enumerate(lines, 1) if line.strip()} <= covered


def function(name: str, words: int = 40, indent: str = "") -> str:
    body = " ".join(f"{name}_word{i}" for i in range(words))
    return f'{indent}def {name}(value):\n{indent}    """{body}."""\n{indent}    return value\n'


def test_python_is_cut_at_functions_and_methods_with_qualified_symbols() -> None:
    text = (
        "import os\n\n\n"
        + function("alpha")
        + "\n\n"
        + "class Store:\n    '''A store.'''\n\n"
        + function("get", indent="    ")
        + "\n"
        + function("put", indent="    ")
        + "\n\n"
        + function("omega")
    )
    chunks = chunk(text, "pkg/mod.py", "python")
    assert_well_formed(chunks, text)
    symbols = {name for c in chunks if c.symbol for name in c.symbol.split(", ")}
    assert {"alpha", "Store", "Store.get", "Store.put", "omega"} <= symbols
    assert "Store.put" in [c.symbol for c in chunks]
    get = next(c for c in chunks if c.symbol and "Store.get" in c.symbol)
    assert get.kind == "function"
    assert "    def get(value):" in get.content
    put = next(c for c in chunks if c.symbol == "Store.put")
    assert put.content.startswith("    def put(value):")
    assert put.embedding_text.startswith("pkg/mod.py · Store.put\n    def put(value):")


def test_comments_and_decorators_stay_with_their_definition() -> None:
    text = "x = 1\n\n# Explains beta.\n# More.\n@cache\n" + function("beta", 60)
    chunks = chunk(text, "m.py", "python")
    beta = next(c for c in chunks if c.symbol and "beta" in c.symbol)
    assert beta.content.startswith("# Explains beta.") or beta.start_line <= 3
    assert_well_formed(chunks, text)


def test_a_long_function_is_split_at_statements_and_keeps_its_symbol() -> None:
    statements = "\n".join(f"    total += compute_value_{i}(alpha, beta, gamma, delta)" for i in range(120))
    text = f"def long_one(alpha, beta, gamma, delta):\n    total = 0\n{statements}\n    return total\n"
    chunks = chunk(text, "long.py", "python")
    assert len(chunks) > 3
    assert all(c.symbol == "long_one" for c in chunks)
    assert chunks[0].content.startswith("def long_one(")
    assert_well_formed(chunks, text)


@pytest.mark.parametrize("first_lines", [60, 200])
def test_a_signature_never_stands_alone_in_a_chunk(first_lines: int) -> None:
    """A long function whose first statement is itself over the budget (a long literal): the
    signature goes with the first lines of that statement, not into a chunk of its own."""
    items = "\n".join(f"        'key_{i}': compute_value_{i}(alpha, beta, gamma)," for i in range(first_lines))
    tail = "\n".join(f"    total += step_{i}(table)" for i in range(30))
    text = (
        "def build_table(alpha, beta, gamma):\n    table = {\n" + items + "\n    }\n    total = 0\n" + tail
        + "\n    return total\n"
    )
    chunks = chunk(text, "table.py", "python")
    assert len(chunks) > 2
    assert chunks[0].content.startswith("def build_table(") and chunks[0].end_line - chunks[0].start_line >= 3
    assert all(c.end_line - c.start_line >= 1 for c in chunks)
    assert_well_formed(chunks, text)


def test_tiny_functions_are_merged_with_neighbours() -> None:
    text = "\n\n".join(f"def f{i}():\n    return {i}" for i in range(12)) + "\n"
    chunks = chunk(text, "tiny.py", "python")
    assert len(chunks) < 4
    assert chunks[0].symbol is not None and chunks[0].symbol.startswith("f0, f1")
    assert_well_formed(chunks, text)


def test_editing_one_function_changes_only_its_chunk_hash() -> None:
    names = ["first", "second", "third", "fourth"]
    before = "\n\n".join(function(n) for n in names)
    after = before.replace("return value\n", "return value + 1\n", 1)  # edit `first`
    hashes_before = {c.symbol: c.content_hash for c in chunk(before, "m.py", "python")}
    hashes_after = {c.symbol: c.content_hash for c in chunk(after, "m.py", "python")}
    assert set(hashes_before) == set(names)
    changed = {name for name in names if hashes_before[name] != hashes_after[name]}
    assert changed == {"first"}


def test_lines_added_above_a_function_keep_its_hash() -> None:
    text = function("stable") + "\n\n" + function("other")
    shifted = "# a new comment\n\n\n" + text
    first = {c.symbol: c.content_hash for c in chunk(text, "m.py", "python")}
    second = {c.symbol: (c.content_hash, c.start_line) for c in chunk(shifted, "m.py", "python")}
    assert second["other"][0] == first["other"]
    assert second["other"][1] > next(c.start_line for c in chunk(text, "m.py", "python") if c.symbol == "other")


JS = """
import x from 'y';

// Adds two numbers.
export function add(a, b) {
  return a + b + WORDS;
}

const handler = async (req, res) => {
  res.send(WORDS);
};

export class Greeter extends Base {
  greet(name) {
    return `hello ${name}` + WORDS;
  }
  static part(name) {
    return name + WORDS;
  }
}
"""

TS = """
export interface Shape {
  area(): number; // WORDS
}

export type Id = string; // WORDS

export abstract class Square implements Shape {
  constructor(private side: number) { super(); /* WORDS */ }
  area(): number { return this.side * this.side; /* WORDS */ }
}

namespace Geometry {
  export const unit = 1; // WORDS
}
"""

GO = """
package main

import "fmt"

// Server serves.
type Server struct {
	Name string // WORDS
}

// Run runs the server.
func (s *Server) Run(port int) error {
	fmt.Println(port) // WORDS
	return nil
}

func main() {
	fmt.Println("hi") // WORDS
}
"""

RUST = """
use std::fmt;

/// A point.
#[derive(Debug)]
struct Point { x: i32, y: i32 } // WORDS

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "({}, {})", self.x, self.y) // WORDS
    }

    fn describe(&self) -> String {
        format!("point") // WORDS
    }
}

mod geometry {
    pub fn origin() -> i32 { 0 } // WORDS
}
"""

JAVA = """
package demo;

import java.util.List;

/** A greeter. */
public class Greeter {
    private final String name; // WORDS

    public Greeter(String name) { this.name = name; } // WORDS

    @Override
    public String toString() { return name; } // WORDS
}
"""


@pytest.mark.parametrize(
    ("source", "path", "language", "expected"),
    [
        (JS, "app.js", "javascript", {"add", "handler", "Greeter.greet", "Greeter.part"}),
        (TS, "shape.ts", "typescript", {"Shape", "Id", "Square.constructor", "Square.area", "Geometry"}),
        (GO, "main.go", "go", {"Server", "Server.Run", "main"}),
        (RUST, "lib.rs", "rust", {"Point", "Point.fmt", "Point.describe", "geometry"}),
        (JAVA, "Greeter.java", "java", {"Greeter", "Greeter.Greeter", "Greeter.toString"}),
    ],
)
def test_code_in_each_grammar_is_cut_at_definitions(source: str, path: str, language: str, expected: set[str]) -> None:
    # padding makes each member about half a chunk: classes with two members are opened up
    padding = " ".join(f"padding{i}" for i in range(40))
    text = source.replace("WORDS", padding)
    chunks = chunk(text, path, language)
    assert_well_formed(chunks, text)
    symbols = {s for c in chunks if c.symbol for s in c.symbol.split(", ")}
    assert expected <= symbols, symbols


def test_markdown_is_cut_at_headings_outside_code_fences() -> None:
    para = " ".join(f"word{i}" for i in range(90))
    text = textwrap.dedent(
        f"""\
        ---
        title: Front matter
        ---
        Intro {para}

        # Guide

        {para}

        ## Install

        {para}

        ```bash
        # not a heading
        pip install x
        ```

        Setext Title
        ------------

        {para}
        """
    )
    chunks = chunk(text, "docs/guide.md", "markdown")
    assert_well_formed(chunks, text)
    symbols = [c.symbol for c in chunks]
    assert "Guide > Install" in symbols
    assert "Guide > Setext Title" in symbols
    assert not any(s and "not a heading" in s for s in symbols)
    install = next(c for c in chunks if c.symbol == "Guide > Install")
    assert "pip install x" in install.content and install.kind == "section"


def test_rst_is_cut_at_titles() -> None:
    para = " ".join(f"word{i}" for i in range(90))
    text = f"=====\nTitle\n=====\n\n{para}\n\nUsage\n-----\n\n{para}\n\nDetails\n~~~~~~~\n\n{para}\n"
    chunks = chunk(text, "README.rst", "rst")
    assert_well_formed(chunks, text)
    assert [c.symbol for c in chunks] == ["Title", "Title > Usage", "Title > Usage > Details"]


def test_unknown_languages_fall_back_to_windows_cut_at_blank_lines() -> None:
    paragraphs = ["\n".join(f"line {p}.{i} " + "word " * 12 for i in range(6)) for p in range(12)]
    text = "\n\n".join(paragraphs) + "\n"
    chunks = chunk(text, "notes.txt", None)
    assert len(chunks) > 2
    assert all(c.kind == "window" for c in chunks)
    for piece in chunks:  # windows end at paragraph ends
        assert piece.content.split("\n")[-1].startswith(f"line {piece.content.split(chr(10))[-1].split()[1]}")
        assert piece.content.endswith("word ")
    assert_well_formed(chunks, text)


def test_a_paragraph_longer_than_the_budget_is_cut_at_its_least_indented_line() -> None:
    blocks = [f"block{b}:\n" + "\n".join(f"    item {b}.{i} value value value" for i in range(8)) for b in range(20)]
    text = "\n".join(blocks) + "\n"
    chunks = chunk(text, "conf.yaml", "yaml")
    assert len(chunks) > 1
    assert all(c.content.startswith("block") for c in chunks)
    assert_well_formed(chunks, text)


def test_minified_single_line_is_sliced_within_the_cap() -> None:
    text = "var a=" + ";".join(f"f{i}(x{i},y{i})" for i in range(3000)) + ";\n"
    chunks = chunk(text, "bundle.js", "javascript")
    assert len(chunks) > 5
    assert all(c.start_line == c.end_line == 1 for c in chunks)
    assert "".join(c.content for c in chunks) == text.rstrip("\n")
    assert_well_formed(chunks, text)


@pytest.mark.parametrize("text", ["", "\n\n   \n", "   "])
def test_empty_or_blank_text_has_no_chunks(text: str) -> None:
    assert chunk(text, "empty.py", "python") == []


def test_syntax_errors_still_produce_well_formed_chunks() -> None:
    text = "def broken(:\n    return (\n\nclass Fine:\n    pass\n" + function("after", 50)
    chunks = chunk(text, "bad.py", "python")
    assert_well_formed(chunks, text)
    assert any(c.symbol and "after" in c.symbol for c in chunks)


def test_line_token_counts_add_up_to_the_text_count() -> None:
    text = function("alpha", 80) + "\n" + function("beta", 80)
    assert sum(counter(text.split("\n"))) == count_tokens(MODEL, text)


def test_embedding_text_names_file_and_symbol() -> None:
    assert embedding_text("a/b.py", "C.m", "body") == "a/b.py · C.m\nbody"
    assert embedding_text("a/b.py", None, "body") == "a/b.py\nbody"
