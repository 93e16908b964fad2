"""File roles (source, test, docs, changelog...) and definitions as the unit of a hit."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from knowledgebase import store
from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.errors import InputError
from knowledgebase.index.ingest import populate_project
from knowledgebase.index.scanning import scan_project
from knowledgebase.ranking import DEFAULT_WEIGHTS, LEGACY, score
from knowledgebase.search.hits import ChunkHit
from knowledgebase.search.retrieval import rerank, search
from knowledgebase.util.roles import ROLES, file_role, query_roles
from tests.support import HashingEmbedder


@pytest.mark.parametrize(
    ("path", "role"),
    [
        ("src/jinja2/loaders.py", "source"),
        ("starlette/routing.py", "source"),
        ("tests/test_loader.py", "test"),
        ("tests/support.py", "test"),
        ("pkg/conftest.py", "test"),
        ("web/app.test.ts", "test"),
        ("server/handler_test.go", "test"),
        ("README.md", "docs"),
        ("docs/api.rst", "docs"),
        ("docs/release-notes.md", "changelog"),
        ("CHANGES.rst", "changelog"),
        ("CHANGELOG.md", "changelog"),
        ("pyproject.toml", "config"),
        (".github/workflows/ci.yml", "config"),
        ("Makefile", "config"),
        ("docs/conf.py", "config"),
        ("api/service_pb2.py", "generated"),
        ("examples/basic/test.py", "example"),
        ("docs/examples/cache_extension.py", "example"),
        ("pkg/_vendor/six.py", "vendored"),
    ],
)
def test_file_roles_from_paths(path: str, role: str) -> None:
    assert file_role(path) == role and role in ROLES


@pytest.mark.parametrize(
    ("query", "asked"),
    [
        ("how do I test a websocket endpoint", {"test"}),
        ("what changed in 0.47.0", {"changelog"}),
        ("an example of a custom extension", {"example"}),
        ("where is a setting read from the environment", set()),
        ("how is the Range header parsed", set()),
    ],
)
def test_questions_ask_for_roles(query: str, asked: set[str]) -> None:
    assert query_roles(query) == asked


def _hit(id: int, path: str, similarity: float, *, role: str, start: int, end: int, **extra: object) -> ChunkHit:
    return ChunkHit(
        id=id,
        score=similarity,
        parts=score(similarity=similarity),
        text=f"lines {start}-{end}",
        project="p",
        path=path,
        start_line=start,
        end_line=end,
        symbol=extra.get("symbol"),  # type: ignore[arg-type]
        language="python",
        content_hash=f"h{id}",
        created_at=datetime(2025, 1, 1, tzinfo=UTC),
        role=role,
        definition_start=extra.get("definition_start"),  # type: ignore[arg-type]
        definition_end=extra.get("definition_end"),  # type: ignore[arg-type]
    )


def test_role_priors_rank_source_first_unless_the_question_asks_for_tests() -> None:
    hits = [
        _hit(1, "tests/test_invoice.py", 0.52, role="test", start=1, end=9, symbol="test_total"),
        _hit(2, "docs/invoice.md", 0.51, role="docs", start=1, end=9, symbol="Invoices"),
        _hit(3, "src/invoice.py", 0.50, role="source", start=1, end=9, symbol="invoice_total"),
    ]
    assert rerank(hits, weights=DEFAULT_WEIGHTS.with_(**LEGACY))[0].path == "tests/test_invoice.py"
    ranked = rerank(hits, query="where is the invoice total computed")
    assert ranked[0].path == "src/invoice.py" and ranked[0].parts.role_prior == 0.0
    assert ranked[1].parts.role_prior < 0 and "role prior" in ranked[1].parts.explain()
    asked = rerank(hits, query="how do I test the invoice total")
    assert asked[0].path == "tests/test_invoice.py" and asked[0].parts.role_prior > 0


def test_one_hit_per_definition_citing_its_whole_span() -> None:
    span = {"symbol": "Invoice.total", "definition_start": 10, "definition_end": 90}
    hits = [
        _hit(1, "src/invoice.py", 0.40, role="source", start=10, end=12, **span),
        _hit(2, "src/invoice.py", 0.60, role="source", start=40, end=70, **span),
        _hit(3, "src/invoice.py", 0.50, role="source", start=71, end=90, **span),
        _hit(4, "src/tax.py", 0.45, role="source", start=1, end=20),
    ]
    ranked = rerank(hits)
    assert [h.id for h in ranked] == [2, 4]
    best = ranked[0]
    assert isinstance(best, ChunkHit) and best.citation() == "src/invoice.py:10-90"
    assert (best.start_line, best.end_line, best.text) == (40, 70, "lines 40-70")  # the part that matched
    assert [h.id for h in rerank(hits, weights=DEFAULT_WEIGHTS.with_(**LEGACY))] == [2, 3, 4, 1]


def _project(root: Path) -> Path:
    statements = "\n".join(f"    total += invoice_line_{i}(order, currency, rounding)" for i in range(90))
    files = {
        "src/invoice.py": (
            f"def invoice_total(order, currency, rounding):\n    total = 0\n{statements}\n    return total\n"
        ),
        "tests/test_invoice.py": "def test_invoice_total():\n    assert invoice_total(order) == 42\n",
        "docs/invoice.md": "# Invoices\n\nThe invoice total is the sum of the invoice lines.\n",
        "CHANGES.md": "# 2.0\n\n- invoice totals are rounded per line\n",
    }
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def test_roles_are_stored_shown_and_filtered(db: Database, settings: Settings, tmp_path: Path) -> None:
    root = _project(tmp_path / "shop")
    embedder = HashingEmbedder()
    assert {f.rel_path: f.role for f in scan_project(root, settings) if hasattr(f, "role")} == {
        "src/invoice.py": "source",
        "tests/test_invoice.py": "test",
        "docs/invoice.md": "docs",
        "CHANGES.md": "changelog",
    }
    populate_project(db, embedder, root, project="shop", settings=settings)
    with db.connection() as conn:
        stored = {f.path: f.role for f in store.list_files(conn, store.get_project(conn, "shop").id)}
        assert stored["tests/test_invoice.py"] == "test" and stored["CHANGES.md"] == "changelog"
        # a file indexed before roles existed has none: the next populate sets it without re-reading
        conn.execute("UPDATE project_files SET role = NULL")
    populate_project(db, embedder, root, project="shop", settings=settings)
    with db.connection() as conn:
        assert {f.role for f in store.list_files(conn, store.get_project(conn, "shop").id)} == {
            "source",
            "test",
            "docs",
            "changelog",
        }
    hits = search(db, embedder, "invoice total", project="shop", kinds=("chunk",), limit=10)
    assert {h.path: h.role for h in hits if isinstance(h, ChunkHit)}["docs/invoice.md"] == "docs"
    only_tests = search(db, embedder, "invoice total", project="shop", roles=["test"], limit=10)
    assert only_tests and {h.path for h in only_tests} == {"tests/test_invoice.py"}
    several = search(db, embedder, "invoice total", project="shop", roles=["docs", "changelog"], limit=10)
    assert {h.path for h in several} == {"docs/invoice.md", "CHANGES.md"}


def test_a_long_definition_is_one_hit_with_its_whole_span(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    root = _project(tmp_path / "shop")
    embedder = HashingEmbedder()
    populate_project(db, embedder, root, project="shop", settings=settings)
    with db.connection() as conn:
        file = store.get_file(conn, store.get_project(conn, "shop").id, "src/invoice.py")
        chunks = store.list_chunks(conn, file.id)
    assert len(chunks) > 2 and all(c.symbol == "invoice_total" for c in chunks)
    last = max(c.end_line for c in chunks)
    hits = search(db, embedder, "invoice_line order currency rounding", project="shop", kinds=("chunk",), limit=10)
    source = [h for h in hits if isinstance(h, ChunkHit) and h.path == "src/invoice.py"]
    assert len(source) == 1 and source[0].citation() == f"src/invoice.py:1-{last}"
    legacy = search(
        db,
        embedder,
        "invoice_line order currency rounding",
        project="shop",
        kinds=("chunk",),
        limit=10,
        weights=DEFAULT_WEIGHTS.with_(**LEGACY),
    )
    assert len([h for h in legacy if isinstance(h, ChunkHit) and h.path == "src/invoice.py"]) > 1


@pytest.mark.parametrize("roles", [["tests"], [], ["source", "binary"]])
def test_unknown_roles_are_refused(db: Database, roles: list[str]) -> None:
    with pytest.raises(InputError, match="file role"):
        search(db, HashingEmbedder(), "invoice", roles=roles)


def test_revision_0006_adds_the_role_column_and_takes_it_away(fresh_database_url: str) -> None:
    import psycopg

    from knowledgebase.db.schema import downgrade, upgrade

    def columns() -> set[str]:
        with psycopg.connect(fresh_database_url) as conn:
            rows = conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'project_files'")
            return {r[0] for r in rows}

    upgrade(fresh_database_url, "0005")
    assert "role" not in columns()
    upgrade(fresh_database_url)
    assert "role" in columns()
    with psycopg.connect(fresh_database_url) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO project_files (project_id, path, content, content_hash, size_bytes, role)"
            " VALUES ((SELECT id FROM projects LIMIT 1), 'x.py', '', 'h', 0, 'binary')"
        )
    downgrade(fresh_database_url, "0005")
    assert "role" not in columns()


def test_source_outside_every_definition_ranks_below_a_definition() -> None:
    """A module docstring (no symbol) that reads like the question yields to the function it describes."""
    hits = [
        _hit(1, "src/invoice.py", 0.55, role="source", start=1, end=6),
        _hit(2, "src/invoice.py", 0.50, role="source", start=8, end=30, symbol="invoice_total"),
    ]
    assert [h.id for h in rerank(hits, weights=DEFAULT_WEIGHTS.with_(**LEGACY))] == [1, 2]
    ranked = rerank(hits, query="where is the invoice total computed")
    assert [h.id for h in ranked] == [2, 1] and ranked[1].parts.role_prior == -DEFAULT_WEIGHTS.outside_definition
