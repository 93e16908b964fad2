"""Definition boundaries of source code, from tree-sitter grammars that ship in their wheels.

``code_pieces(text, language, lines, budget)`` turns the top-level syntax of a file into line-range
pieces for ``knowledgebase.index.chunking``: one per function, class, method, impl block..., named with its
qualified symbol (``Outer.method``); statements between definitions become fill pieces. A definition
over the budget is opened up: its header (signature, decorators, docstring...) and body statements
become fill pieces of the same symbol and its nested definitions pieces of their own, recursively.
Comments (and Rust attributes) directly above a definition belong to it.

Grammars are loaded on first use and cached per process; ``None`` means "no grammar here, use the
line-window fallback".
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from knowledgebase.index.pieces import Lines, Piece

if TYPE_CHECKING:
    from tree_sitter import Node, Parser


@dataclass(frozen=True)
class Grammar:
    """How to read one language's syntax tree."""

    module: str
    function: str
    definitions: Mapping[str, str]  # node type -> chunk kind
    wrappers: frozenset[str] = frozenset()  # node types that may wrap one definition (export, decorators)
    leading: frozenset[str] = frozenset({"comment"})  # attach to the definition right below them
    declarations: frozenset[str] = frozenset()  # `const f = () => ...` style definitions
    fields: Mapping[str, str] = field(default_factory=dict)  # wrapper type -> field holding the definition


_JS_DEFINITIONS = {
    "function_declaration": "function",
    "generator_function_declaration": "function",
    "method_definition": "function",
    "class_declaration": "class",
    "class": "class",
}
_TS_DEFINITIONS = {
    **_JS_DEFINITIONS,
    "abstract_class_declaration": "class",
    "interface_declaration": "class",
    "enum_declaration": "class",
    "type_alias_declaration": "class",
    "function_signature": "function",
    "method_signature": "function",
    "abstract_method_signature": "function",
    "internal_module": "module",
    "module": "module",
}
_JS_WRAPPERS = frozenset({"export_statement", "expression_statement", "ambient_declaration"})
_JS_FIELDS = {"export_statement": "declaration"}
_JS_DECLARATIONS = frozenset({"lexical_declaration", "variable_declaration"})

GRAMMARS: dict[str, Grammar] = {
    "python": Grammar(
        "tree_sitter_python",
        "language",
        {"function_definition": "function", "class_definition": "class"},
        wrappers=frozenset({"decorated_definition"}),
        fields={"decorated_definition": "definition"},
    ),
    "javascript": Grammar(
        "tree_sitter_javascript",
        "language",
        _JS_DEFINITIONS,
        wrappers=_JS_WRAPPERS,
        declarations=_JS_DECLARATIONS,
        fields=_JS_FIELDS,
    ),
    "typescript": Grammar(
        "tree_sitter_typescript",
        "language_typescript",
        _TS_DEFINITIONS,
        wrappers=_JS_WRAPPERS,
        declarations=_JS_DECLARATIONS,
        fields=_JS_FIELDS,
    ),
    "tsx": Grammar(
        "tree_sitter_typescript",
        "language_tsx",
        _TS_DEFINITIONS,
        wrappers=_JS_WRAPPERS,
        declarations=_JS_DECLARATIONS,
        fields=_JS_FIELDS,
    ),
    "go": Grammar(
        "tree_sitter_go",
        "language",
        {"function_declaration": "function", "method_declaration": "function", "type_declaration": "class"},
    ),
    "rust": Grammar(
        "tree_sitter_rust",
        "language",
        {
            "function_item": "function",
            "function_signature_item": "function",
            "struct_item": "class",
            "enum_item": "class",
            "union_item": "class",
            "trait_item": "class",
            "impl_item": "class",
            "mod_item": "module",
            "macro_definition": "function",
        },
        leading=frozenset({"line_comment", "block_comment", "attribute_item"}),
    ),
    "java": Grammar(
        "tree_sitter_java",
        "language",
        {
            "class_declaration": "class",
            "interface_declaration": "class",
            "enum_declaration": "class",
            "record_declaration": "class",
            "annotation_type_declaration": "class",
            "method_declaration": "function",
            "constructor_declaration": "function",
        },
        leading=frozenset({"line_comment", "block_comment"}),
    ),
}


@functools.cache
def parser_for(language: str) -> Parser | None:
    """A cached tree-sitter parser for ``language``, or None if its grammar is not installed."""
    from tree_sitter import Language, Parser

    grammar = GRAMMARS.get(language)
    if grammar is None:
        return None
    try:
        module = importlib.import_module(grammar.module)
    except ImportError:
        return None
    return Parser(Language(getattr(module, grammar.function)()))


def code_pieces(text: str, language: str, lines: Lines, budget: int) -> list[Piece] | None:
    """Pieces of ``text`` at definition boundaries, or None when ``language`` has no grammar here."""
    parser = parser_for(language)
    if parser is None:
        return None
    tree = parser.parse(text.encode("utf-8"))
    return _Splitter(GRAMMARS[language], lines, budget).pieces(tree.root_node.named_children, (), "code", None)


@dataclass(frozen=True)
class _Definition:
    kind: str
    name: str | None
    body: Node | None


class _Splitter:
    def __init__(self, grammar: Grammar, lines: Lines, budget: int) -> None:
        self.grammar = grammar
        self.lines = lines
        self.budget = budget

    def pieces(self, nodes: list[Node], scope: tuple[str, ...], kind: str, symbol: str | None) -> list[Piece]:
        """Pieces for sibling ``nodes`` inside ``scope``; non-definitions get ``kind``/``symbol``."""
        pieces: list[Piece] = []
        leading: list[Node] = []  # comments waiting to see whether a definition follows them
        for node in nodes:
            if node.type in self.grammar.leading:
                if leading and _first_line(node) > _last_line(leading[-1]) + 1:
                    pieces.extend(self._fill(leading, kind, symbol))
                    leading = []
                leading.append(node)
                continue
            definition = self._definition(node)
            attached = bool(leading) and definition is not None and _first_line(node) <= _last_line(leading[-1]) + 1
            if not attached:
                pieces.extend(self._fill(leading, kind, symbol))
            start = _first_line(leading[0]) if attached else _first_line(node)
            leading = []
            if definition is None:
                pieces.append(Piece(start, _last_line(node), kind, symbol, fill=True))
            else:
                pieces.extend(self._definition_pieces(node, definition, start, scope))
        pieces.extend(self._fill(leading, kind, symbol))
        return pieces

    def _fill(self, nodes: list[Node], kind: str, symbol: str | None) -> list[Piece]:
        return [Piece(_first_line(n), _last_line(n), kind, symbol, fill=True) for n in nodes]

    def _definition_pieces(
        self, node: Node, definition: _Definition, start: int, scope: tuple[str, ...]
    ) -> list[Piece]:
        inner_scope = (*scope, definition.name) if definition.name else scope
        symbol = ".".join(inner_scope) or None
        end = _last_line(node)
        children = _body_children(definition.body)
        if self.lines.tokens(start, end) <= self.budget or not children:
            return [Piece(start, end, definition.kind, symbol)]
        pieces: list[Piece] = []
        body_start = _first_line(children[0])
        if body_start > start:
            pieces.append(Piece(start, body_start - 1, definition.kind, symbol, fill=True))
        pieces.extend(self.pieces(children, inner_scope, definition.kind, symbol))
        body_end = max(_last_line(child) for child in children)
        if end > body_end:
            pieces.append(Piece(body_end + 1, end, definition.kind, symbol, fill=True))
        return pieces

    def _definition(self, node: Node) -> _Definition | None:
        """What ``node`` defines (kind, name, body), or None for a plain statement or comment."""
        grammar = self.grammar
        if node.type in grammar.wrappers:
            field_name = grammar.fields.get(node.type)
            inner = node.child_by_field_name(field_name) if field_name else None
            if inner is None and node.named_children:
                inner = node.named_children[-1]
            return self._definition(inner) if inner is not None else None
        if node.type in grammar.declarations:
            return _declared_function(node)
        kind = grammar.definitions.get(node.type)
        if kind is None:
            return None
        return _Definition(kind, _name(node), node.child_by_field_name("body"))


def _first_line(node: Node) -> int:
    return node.start_point.row + 1


def _last_line(node: Node) -> int:
    """1-based last line, not counting a trailing newline the node may end with."""
    end = node.end_point
    if end.column == 0 and end.row > node.start_point.row:
        return end.row
    return end.row + 1


def _text(node: Node | None) -> str | None:
    if node is None or node.text is None:
        return None
    return node.text.decode("utf-8", errors="replace")


def _name(node: Node) -> str | None:
    if node.type == "impl_item":  # Rust: `impl Trait for Type` -> "Type" (qualified methods: Type.method)
        return _text(node.child_by_field_name("type"))
    if node.type == "method_declaration" and node.child_by_field_name("receiver") is not None:  # Go
        receiver = node.child_by_field_name("receiver")
        receiver_type = _find_type(receiver) if receiver is not None else None
        name = _text(node.child_by_field_name("name"))
        return f"{receiver_type}.{name}" if receiver_type else name
    if node.type == "type_declaration":  # Go: type Foo struct {...}
        spec = next((c for c in node.named_children if c.type in ("type_spec", "type_alias")), None)
        return _text(spec.child_by_field_name("name")) if spec is not None else None
    return _text(node.child_by_field_name("name"))


def _find_type(node: Node) -> str | None:
    if node.type == "type_identifier":
        return _text(node)
    for child in node.named_children:
        found = _find_type(child)
        if found:
            return found
    return None


def _declared_function(node: Node) -> _Definition | None:
    """``const handler = (req) => {...}`` and friends: a declaration of one function or class."""
    declarators = [c for c in node.named_children if c.type == "variable_declarator"]
    if len(declarators) != 1:
        return None
    value = declarators[0].child_by_field_name("value")
    if value is None:
        return None
    if value.type in ("arrow_function", "function_expression", "function", "generator_function"):
        kind = "function"
    elif value.type == "class":
        kind = "class"
    else:
        return None
    return _Definition(kind, _text(declarators[0].child_by_field_name("name")), value.child_by_field_name("body"))


def _body_children(body: Node | None) -> list[Node]:
    """The statements and members inside a definition's body."""
    if body is None:
        return []
    children = body.named_children
    if len(children) == 1 and children[0].type == "statement_list":  # Go wraps a block's statements
        children = children[0].named_children
    return children
