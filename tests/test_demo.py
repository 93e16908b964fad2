"""`kb demo` and the demo library: a project indexed, facts with sources, context explained; idempotent."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.errors import InputError
from knowledgebase.facts import list_facts
from knowledgebase.tools import demo
from knowledgebase.tools.demo import REPOSITORY_FACTS, SAMPLE_FACTS, DemoFact, sample_project, seed_project
from tests.support import HashingEmbedder
from tests.test_cli_store import _env, run_kb

REPO = Path(__file__).resolve().parent.parent

MAKEFILE = "test:\n\tpytest -q\n\nlint:\n\truff check .\n"
APP = '''"""The shop's checkout."""


def checkout_total(prices: list[float], discount: float) -> float:
    """The total of a basket after a discount."""
    return round(sum(prices) * (1 - discount), 2)
'''


def _project(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "Makefile").write_text(MAKEFILE)
    (root / "src" / "shop.py").write_text(APP)
    return root


def _facts_about() -> list[DemoFact]:
    return [
        DemoFact("how to run the tests", "`make test`", "Makefile", r"^test:", 0.9),
        DemoFact("checkout total", "src/shop.py checkout_total applies the discount", "src/shop.py", r"def chec", 0.6),
    ]


def _line_of(path: Path, pattern: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if re.search(pattern, line))


def test_the_repository_facts_cite_lines_that_exist_in_this_checkout() -> None:
    for fact in REPOSITORY_FACTS:
        assert (REPO / fact.source_path).is_file(), fact.source_path
        assert _line_of(REPO / fact.source_path, fact.source_line) >= 1
        named = re.findall(r"[\w/]+\.py", fact.value)
        assert all((REPO / path).exists() for path in named), named


def test_the_sample_project_is_a_copy_of_this_package_and_its_facts_hold(tmp_path: Path) -> None:
    root = sample_project(tmp_path / "sample")
    assert sorted(p.name for p in root.iterdir()) == ["migrations", "store"]
    assert (root / "store" / "knowledge.py").read_text() == (REPO / "knowledgebase/store/knowledge.py").read_text()
    assert not list(root.rglob("__pycache__"))
    for fact in SAMPLE_FACTS:
        assert _line_of(root / fact.source_path, fact.source_line) >= 1
    with pytest.raises(InputError, match="exists already"):
        sample_project(root)
    assert (root / "store" / "knowledge.py").exists()  # nothing was removed


def test_seed_records_facts_with_their_source_lines_and_a_rerun_changes_nothing(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    root = _project(tmp_path / "shop")
    embedder = HashingEmbedder()
    first = seed_project(db, embedder, root, settings=settings, facts=_facts_about())
    assert first.facts_added == 2 and first.skipped_facts == ()
    by_label = {f.fact_label: f for f in first.facts}
    assert by_label["how to run the tests"].source_file_path == "Makefile"
    assert by_label["how to run the tests"].source_kind == "chunk"
    assert by_label["checkout total"].confidence_score == 0.6

    embedded = embedder.embedded
    second = seed_project(db, embedder, root, settings=settings, facts=_facts_about())
    assert second.populate.unchanged == 2 and second.populate.chunks_written == 0
    assert second.facts_added == 0
    assert [f.id for f in second.facts] == [f.id for f in first.facts]
    assert embedder.embedded == embedded  # nothing embedded again
    facts = list_facts(db, project="shop")
    assert len(facts) == 2 and all(f.confirmations == 1 for f in facts)


def test_facts_whose_source_is_missing_or_not_indexed_are_skipped_with_the_reason(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    root = _project(tmp_path / "shop")
    (root / ".gitignore").write_text("notes.txt\n")
    (root / "notes.txt").write_text("the staging port is 8080\n")
    facts = [
        DemoFact("nowhere", "x", "docs/missing.md", r".", 0.5),
        DemoFact("no such line", "y", "Makefile", r"^deploy:", 0.5),
        DemoFact("ignored source", "z", "notes.txt", r"port", 0.5),
        *_facts_about(),
    ]
    seeded = seed_project(db, HashingEmbedder(), root, settings=settings, facts=facts)
    reasons = {s.label: s.reason for s in seeded.skipped_facts}
    assert reasons["nowhere"] == "docs/missing.md is not in this project"
    assert reasons["no such line"] == "no line of Makefile matches '^deploy:'"
    assert "'notes.txt' is not indexed in this project" in reasons["ignored source"]
    assert seeded.facts_added == 2  # the others were still recorded
    assert {f.fact_label for f in list_facts(db, project="shop")} == {"how to run the tests", "checkout total"}


def test_the_default_root_is_the_checkout_else_a_git_work_tree_else_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert demo.default_demo_root() == REPO
    monkeypatch.setattr(demo, "checkout_root", lambda: None)  # as when installed from a wheel
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    assert demo.default_demo_root(tmp_path / "repo") == (tmp_path / "repo").resolve()
    with pytest.raises(InputError, match=r"pass the project to index, `kb demo PATH`"):
        demo.default_demo_root(tmp_path)


def test_an_empty_prompt_is_refused_before_anything_is_indexed(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    root = _project(tmp_path / "shop")
    with pytest.raises(InputError, match="prompt is empty"):
        demo.run_demo(settings, path=root, prompt="  ", embedder=HashingEmbedder())
    with db.connection() as conn:
        assert conn.execute("SELECT count(*) FROM projects").fetchone() == (0,)


def test_a_bad_path_is_one_line_and_starts_no_server(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = run_kb("demo", str(tmp_path / "missing"), env=_env(KB_HOME=str(home)), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"kb: error: cannot index {str(tmp_path / 'missing')!r}: no such file or directory"
    ]
    assert not home.exists()


@pytest.mark.slow
def test_kb_demo_explains_the_context_and_a_second_run_reuses_everything(db_url: str, tmp_path: Path) -> None:
    root = _project(tmp_path / "shop")
    env = _env(KB_HOME=str(tmp_path / "home"), KB_DATABASE_URL=db_url)
    first = json.loads(run_kb("demo", str(root), "--json", env=env).stdout)
    assert first["project"] == "shop" and first["populate"]["chunks_embedded"] > 0
    # the repository's facts that hold here (the Makefile's test and lint targets) are recorded
    assert {f["fact_label"] for f in first["facts"]} == {"how to run the tests", "how to lint"}
    assert {s["label"] for s in first["skipped_facts"]} == {
        "where the database schema is defined",
        "where settings are read",
        "where secrets are redacted",
    }
    context = first["context"]
    assert first["prompt"] == "How do I run the tests?"
    top = context["items"][0]
    assert top["kind"] == "fact" and top["citation"].startswith(f"fact #{first['facts'][0]['id']}")
    assert "- **how to run the tests**: `make test` (the whole suite" in context["text"]
    assert top["explain"].startswith("similarity ") and "confidence 0.900 (x0.950)" in top["explain"]
    assert top["parts"]["confidence_factor"] == pytest.approx(0.95)

    second = run_kb("demo", str(root), "--prompt", "what does checkout_total compute?", env=env)
    assert "0 added, 0 changed, 2 unchanged, 0 deleted; 0 chunks embedded" in second.stdout
    assert "2 recorded (0 new this run)" in second.stdout
    assert "### src/shop.py:" in second.stdout and "Why these" in second.stdout
    assert "identifier match" in second.stdout  # the explanation of the chunk that names checkout_total


@pytest.mark.slow
def test_without_a_url_the_demo_database_is_a_throwaway_server() -> None:
    import psycopg

    from knowledgebase.db.schema import verify_schema

    with demo.demo_database() as url:
        with psycopg.connect(url) as conn:
            verify_schema(conn)  # at the head revision, with pgvector
        host = psycopg.conninfo.conninfo_to_dict(url)["host"]
        assert Path(str(host)).exists()
    assert not Path(str(host)).exists()  # the folder with its data and socket is gone
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
