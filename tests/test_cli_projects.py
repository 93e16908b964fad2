"""Projects you can see: `kb projects`, did-you-mean for unknown names, the project of the current
directory for exec/tasks/facts, `kb log`, and `kb search`'s output modes (the bag-of-words embedder:
nothing here claims semantic behaviour)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from knowledgebase import store
from knowledgebase.cli import cli
from knowledgebase.coordination.audit import log_exchange
from knowledgebase.db import Database
from tests.retrieval_support import SOURCES, index_files
from tests.support import HashingEmbedder


@pytest.fixture
def roots(db: Database, fake_embedder: HashingEmbedder, tmp_path: Path) -> dict[str, Path]:
    """Projects alpha (SOURCES) and beta, with real folders as roots, under tmp_path/src."""
    found = {}
    with db.connection() as conn:
        for name, files in (("alpha", SOURCES), ("beta", {"other.py": "def unrelated():\n    return 42\n"})):
            root = tmp_path / "src" / name
            (root / "src").mkdir(parents=True)
            index_files(conn, fake_embedder, name, files)
            store.ensure_project(conn, name, str(root.resolve()))
            found[name] = root.resolve()
    return found


@pytest.fixture
def kb(db_url: str, fake_embedder: HashingEmbedder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, roots):  # type: ignore[no-untyped-def]
    """Run ``kb`` in-process against the test database; the current directory starts outside every project."""
    import knowledgebase.embedding

    monkeypatch.setattr(knowledgebase.embedding, "embedder_from_settings", lambda settings, purpose="": fake_embedder)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    monkeypatch.chdir(outside)
    runner = CliRunner()
    env = {"KB_HOME": str(tmp_path / "home"), "KB_DATABASE_URL": db_url}

    def run(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
        return runner.invoke(cli, list(args), input=input, catch_exceptions=False, env=env)

    return run


def test_projects_list_and_show_count_what_each_holds(kb, db: Database, roots) -> None:  # type: ignore[no-untyped-def]
    assert kb("fact", "add", "test command", "make test", "--project", "alpha").exit_code == 0
    listed = kb("projects", "list")
    assert listed.exit_code == 0
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:4] == ["PROJECT", "FILES", "CHUNKS", "FACTS"]
    alpha = next(r for r in rows if r.startswith("alpha"))
    assert alpha.split()[1:4] == ["3", str(_chunks(db, "alpha")), "1"] and str(roots["alpha"]) in alpha
    data = {p["name"]: p for p in json.loads(kb("projects", "list", "--json").stdout)}
    assert set(data) == {"alpha", "beta"}
    assert data["alpha"]["files"] == 3 and data["alpha"]["facts"] == 1 and data["beta"]["facts"] == 0
    assert data["alpha"]["root_path"] == str(roots["alpha"]) and data["alpha"]["last_populated_at"]
    shown = json.loads(kb("projects", "show", "beta", "--json").stdout)
    assert shown["name"] == "beta" and shown["files"] == 1
    text = kb("projects", "show", "alpha").stdout
    assert re.search(r"last populate\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(", text)
    os.chdir(roots["beta"] / "src")  # without a name: the project of the current directory
    assert kb("projects", "show").stdout.startswith("project          beta")


def _chunks(db: Database, project: str) -> int:
    with db.connection() as conn:
        return sum(c.count for c in store.list_store_counts(conn) if c.project == project and c.category == "chunks")


def test_an_empty_project_is_explicit_and_never_populated(kb) -> None:  # type: ignore[no-untyped-def]
    created = kb("projects", "add", "infra")
    assert created.exit_code == 0 and "Created project 'infra'" in created.stdout
    assert "exists already" in kb("projects", "add", "infra").stdout
    shown = json.loads(kb("projects", "show", "infra", "--json").stdout)
    assert shown["root_path"] is None and shown["last_populated_at"] is None
    assert kb("fact", "add", "deploy host", "ci.internal", "--project", "infra").exit_code == 0


def test_rm_asks_first_and_keeps_the_audit_trail(kb, db: Database) -> None:  # type: ignore[no-untyped-def]
    assert kb("fact", "add", "test command", "make test", "--project", "alpha").exit_code == 0
    with db.connection() as conn:
        alpha = store.get_project(conn, "alpha")
    log_exchange(db, task_id=None, prompt="hello", project_id=alpha.id)

    declined = kb("projects", "rm", "alpha", input="n\n")
    assert declined.exit_code == 1
    assert "3 files" in declined.stderr and "1 active facts" in declined.stderr and "Nothing deleted" in declined.stderr
    assert {p["name"] for p in json.loads(kb("projects", "list", "--json").stdout)} == {"alpha", "beta"}

    confirmed = kb("projects", "rm", "alpha", input="y\n")
    assert confirmed.exit_code == 0 and "Deleted project 'alpha'" in confirmed.stdout
    assert {p["name"] for p in json.loads(kb("projects", "list", "--json").stdout)} == {"beta"}
    with db.connection() as conn:
        entries = store.list_command_log(conn)
        assert [(e.prompt, e.project_id) for e in entries] == [("hello", None)]  # kept, without the project
        assert store.list_knowledge(conn) == []

    gone = kb("projects", "rm", "beta", "--yes", "--json")
    assert gone.exit_code == 0 and json.loads(gone.stdout)["deleted"]["name"] == "beta"


@pytest.mark.parametrize(
    "args",
    [
        ("fact", "add", "test command", "make test", "--project", "alph"),
        ("tasks", "create", "T-1", "--project", "alph"),
        ("search", "pool", "--project", "alph"),
        ("fact", "list", "--project", "alph"),
        ("tasks", "list", "--project", "alph"),
        ("projects", "rm", "alph", "--yes"),
    ],
)
def test_an_unknown_project_is_refused_with_a_suggestion_and_creates_nothing(kb, db: Database, args) -> None:  # type: ignore[no-untyped-def]
    from knowledgebase.errors import NotFound

    with pytest.raises(NotFound, match=r"project 'alph' does not exist; did you mean 'alpha'\?.*kb projects add alph"):
        kb(*args)
    with db.connection() as conn:
        assert [p.name for p in store.list_projects(conn)] == ["alpha", "beta"]
        assert store.list_tasks(conn, status=None, project_id=None, limit=10) == []
    assert json.loads(kb("fact", "list", "--json").stdout) == []


def test_no_close_name_lists_the_projects(kb) -> None:  # type: ignore[no-untyped-def]
    from knowledgebase.errors import NotFound

    with pytest.raises(NotFound, match=r"project 'zzz' does not exist \(projects: alpha, beta\)"):
        kb("fact", "add", "x", "y", "--project", "zzz")


def test_exec_tasks_and_facts_attach_the_project_of_the_current_directory(kb, db: Database, roots) -> None:  # type: ignore[no-untyped-def]
    os.chdir(roots["alpha"] / "src")
    assert kb("exec", "--quiet", "--", "true").exit_code == 0
    assert kb("tasks", "create", "T-9", "--title", "here").exit_code == 0
    assert kb("fact", "add", "lint command", "ruff check").exit_code == 0
    with db.connection() as conn:
        alpha = store.get_project(conn, "alpha").id
        assert [e.project_id for e in store.list_command_log(conn)] == [alpha]
        assert store.get_task(conn, "T-9").project_id == alpha
    assert json.loads(kb("fact", "list", "--json").stdout)[0]["project"] == "alpha"
    os.chdir(roots["alpha"].parent.parent / "elsewhere")  # outside: no project
    assert kb("exec", "--quiet", "--", "true").exit_code == 0
    with db.connection() as conn:
        assert [e.project_id for e in store.list_command_log(conn)] == [alpha, None]


def test_exec_with_an_unknown_project_runs_and_warns(kb, db: Database) -> None:  # type: ignore[no-untyped-def]
    result = kb("exec", "--quiet", "--project", "alph", "--", "true")
    assert result.exit_code == 0
    assert "kb: warning: project 'alph' does not exist; did you mean 'alpha'?" in result.stderr
    assert "the command was logged without a project" in result.stderr
    with db.connection() as conn:
        assert [e.project_id for e in store.list_command_log(conn)] == [None]


def test_a_command_that_was_not_found_is_logged_with_127(kb, db: Database) -> None:  # type: ignore[no-untyped-def]
    assert kb("exec", "--quiet", "--", "no-such-command-kb17").exit_code == 127
    with db.connection() as conn:
        entry = store.list_command_log(conn)[0]
        output = store.list_command_output(conn, entry.id)[0]
    assert output.return_code == 127 and output.success is False and "not found" in (output.error or "")
    logged = json.loads(kb("log", "--json").stdout)
    assert logged[-1]["output"]["return_code"] == 127


def test_kb_log_shows_recent_entries_with_filters(kb, db: Database) -> None:  # type: ignore[no-untyped-def]
    log_exchange(db, task_id="T-1", prompt="how do I run the tests?", response="make test", session_id="s1")
    for command in ("true", "false"):
        kb("exec", "--quiet", "--task", "T-2", "--", command)
    every = json.loads(kb("log", "--json").stdout)
    assert [e["kind"] for e in every] == ["prompt", "shell", "shell"]  # oldest first
    assert every[0]["task_id"] == "T-1" and every[0]["session_id"] == "s1"
    failed = json.loads(kb("log", "--failed", "--json").stdout)
    assert [(e["command"], e["output"]["return_code"]) for e in failed] == [("false", 1)]
    assert [e["command"] for e in json.loads(kb("log", "-n", "1", "--json").stdout)] == ["false"]
    assert [e["prompt"] for e in json.loads(kb("log", "--session", "s1", "--json").stdout)] == [
        "how do I run the tests?"
    ]
    assert len(json.loads(kb("log", "--task", "T-2", "--json").stdout)) == 2
    text = kb("log").stdout
    assert "prompt: how do I run the tests?" in text and "failed (return code 1)" in text and "task_id T-2" in text
    assert kb("log", "--task", "nope").stderr.strip() == "No log entries."


def test_tasks_list_has_a_header(kb) -> None:  # type: ignore[no-untyped-def]
    assert kb("tasks", "create", "T-1", "--title", "fix CI").exit_code == 0
    header, row = kb("tasks", "list").stdout.splitlines()
    assert header.split("\t") == ["ID", "STATUS", "PRIORITY", "TITLE", "OWNER"]
    assert row.split("\t") == ["T-1", "pending", "0", "fix CI", "-"]


def test_searching_outside_every_project_says_so_and_names_the_projects(kb, roots) -> None:  # type: ignore[no-untyped-def]
    result = kb("search", "open a pool of connections")
    assert result.exit_code == 0
    assert result.stderr.startswith("kb: ")
    assert "is not inside an indexed project: searched all projects" in result.stderr
    titles = [line for line in result.stdout.splitlines() if re.match(r"\s*\d+\. ", line)]
    assert titles and all(re.search(r"\[(alpha|beta)\] ", t) for t in titles)
    # another project's file is shown by its absolute path (openable from here)
    assert any(str(roots["alpha"] / "src" / "db.py") in t for t in titles)

    os.chdir(roots["alpha"] / "src")
    inside = kb("search", "open a pool of connections")
    assert inside.stderr == ""
    top = next(line for line in inside.stdout.splitlines() if re.match(r"\s*1\. ", line))
    assert "[alpha]" not in top and " db.py:1-4" in top  # relative to the current directory


def test_search_output_modes_for_editors_and_scripts(kb, roots) -> None:  # type: ignore[no-untyped-def]
    os.chdir(roots["alpha"])
    vim = kb("search", "open a pool of connections", "--vimgrep", "-n", "3").stdout.splitlines()
    assert vim and all(re.fullmatch(r"src/\w+\.py:\d+:1:0\.\d{3} .+", line) for line in vim)
    assert vim[0].startswith("src/db.py:1:1:")
    files = kb("search", "open a pool of connections", "-l").stdout.splitlines()
    assert files[0] == "src/db.py" and len(files) == len(set(files))
    lines = kb("search", "open a pool of connections", "--jsonl", "-n", "2").stdout.splitlines()
    hits = [json.loads(line) for line in lines]
    assert len(hits) == 2 and hits[0]["path"] == "src/db.py" and hits[0]["project_root"] == str(roots["alpha"])
    as_json = json.loads(kb("search", "open a pool of connections", "--json", "--limit", "2").stdout)
    assert as_json == hits
    from knowledgebase.errors import InputError

    with pytest.raises(InputError, match="choose one output"):
        kb("search", "pool", "--json", "--vimgrep")
