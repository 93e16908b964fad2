"""Past commands in a context block ("Commands run before"): the relevant few with exit code, time, agent
and error line; a failure and the similar command that worked after it; within the budget; recorded.

The bag-of-words embedder where nothing semantic is claimed; the real model where a test claims the
command is chosen by meaning."""

from __future__ import annotations

import re
from typing import Any

import pytest

from knowledgebase import store
from knowledgebase.coordination import audit
from knowledgebase.db import Database
from knowledgebase.ranking import DEFAULT_WEIGHTS
from knowledgebase.search.commands import HEADING, first_error_line, past_command_hits, recent_failures
from knowledgebase.search.context import build_context
from tests.retrieval_support import SOURCES, index_files
from tests.support import HashingEmbedder, as_agent


@pytest.fixture
def db_url(db_url: str) -> str:
    return as_agent(db_url)


TRACEBACK = """\
============================= test session starts ==============================
collected 0 items / 1 error
Traceback (most recent call last):
  File "/src/alpha/tests/test_mail.py", line 3, in <module>
    from app.mail import send_invoice_email
ImportError: cannot import name 'send_invoice_email' from 'app.mail'
=========================== short test summary info ============================
"""


@pytest.fixture
def alpha(db: Database, fake_embedder: HashingEmbedder) -> int:
    with db.connection() as conn:
        return index_files(conn, fake_embedder, "alpha", SOURCES).id


def shell(db: Database, project_id: int | None, command: str, **outcome: Any) -> int:
    outcome.setdefault("return_code", 0)
    fields = {k: outcome.pop(k) for k in ("task_id", "agent_id") if k in outcome}
    fields.setdefault("task_id", "task-a")
    fields.setdefault("agent_id", "agent-a")
    entry, _ = audit.log_command(db, command=command, project_id=project_id, **fields, **outcome)
    return entry.id


def test_first_error_line_reads_tracebacks_error_lines_and_falls_back() -> None:
    assert first_error_line(TRACEBACK) == "ImportError: cannot import name 'send_invoice_email' from 'app.mail'"
    pytest_e = "collected 3 items / 1 error\n\nE   ModuleNotFoundError: No module named 'httpx'\n= 1 error in 0.1s =\n"
    assert first_error_line(None, None, pytest_e) == "E ModuleNotFoundError: No module named 'httpx'"
    assert first_error_line("npm ERR! missing script: test\n") == "npm ERR! missing script: test"
    assert first_error_line("warming up\nsomething odd happened\n") == "something odd happened"  # last stderr line
    assert first_error_line("fetching\n3 tests failed\n") == "3 tests failed"  # only mentions one
    assert first_error_line(None, "ok\nfatal: not a git repository\n") == "fatal: not a git repository"
    assert first_error_line(None, None, None, None, "signal 9") == "signal 9"
    assert first_error_line(None) is None and first_error_line("", "", "\n\n", "") is None
    long = "error: " + "x" * 5000
    line = first_error_line(long)
    assert line is not None and line.startswith("error: x") and len(line) <= 160


def test_no_commands_no_section_then_a_relevant_failure_is_shown_with_its_pair(
    db: Database, fake_embedder: HashingEmbedder, alpha: int
) -> None:
    prompt = "pytest tests fail with ImportError send_invoice_email"
    empty = build_context(db, fake_embedder, prompt, project="alpha", record=False)
    assert HEADING not in empty.text and all(i.kind != "command" for i in empty.items)

    failed = shell(db, alpha, "pytest tests/", return_code=1, stdout=TRACEBACK)
    shell(db, alpha, "git status")  # unrelated success in between, not a pair
    worked = shell(db, alpha, "pytest -p no:cacheprovider tests/", stdout="3 passed")
    pack = build_context(db, fake_embedder, prompt, project="alpha")

    assert HEADING in pack.text
    (line,) = [ln for ln in pack.text.splitlines() if ln.startswith("- failed: `pytest tests/`")]
    assert "(exit 1: `ImportError: cannot import name 'send_invoice_email' from 'app.mail'`)" in line
    assert "by agent-a" in line and re.search(r"\d+ s ago", line) and f"command #{failed}" in line
    assert "then worked: `pytest -p no:cacheprovider tests/` (exit 0)" in line and f"command #{worked}" in line
    (item,) = [i for i in pack.items if i.kind == "command" and i.id == failed]
    assert item.citation == f"command #{failed}, exit 1" and item.tokens > 0
    with db.connection() as conn:
        (record,) = store.list_context_records(conn)
    assert {"kind": "command", "id": failed}.items() <= next(i for i in record.items if i["kind"] == "command").items()
    assert HEADING in record.text


def test_a_later_success_of_another_task_or_of_a_dissimilar_command_is_no_pair(
    db: Database, fake_embedder: HashingEmbedder, alpha: int
) -> None:
    shell(db, alpha, "pytest tests/", return_code=1, stdout=TRACEBACK, task_id="task-a")
    shell(db, alpha, "pytest -x tests/", task_id="task-b")  # similar, but another task
    shell(db, alpha, "git status", task_id="task-a")  # same task, not similar
    pack = build_context(db, fake_embedder, "pytest tests ImportError", project="alpha", record=False)
    (line,) = [ln for ln in pack.text.splitlines() if "failed: `pytest tests/`" in ln]
    assert "then worked" not in line


def test_a_command_with_no_output_or_no_outcome_and_a_missing_agent(
    db: Database, fake_embedder: HashingEmbedder, alpha: int
) -> None:
    audit.log_exchange(
        db,
        task_id="task-a",
        prompt=None,
        command="make deploy",
        kind="shell",
        project_id=alpha,
        agent_id="agent-a",
    )
    shell(db, alpha, "make release", return_code=2, agent_id=None)  # failed, printed nothing, no agent id
    every = DEFAULT_WEIGHTS.with_(min_score=0.0)
    pack = build_context(db, fake_embedder, "make deploy make release", project="alpha", weights=every, record=False)
    assert re.search(r"- ran: `make deploy` \(no outcome recorded\) \d+ s ago by agent-a; command #\d+", pack.text)
    assert re.search(r"- failed: `make release` \(exit 2\) \d+ s ago by an unknown agent; command #\d+", pack.text)


def test_a_huge_output_is_read_by_its_ends_and_the_block_stays_in_budget(
    db: Database, fake_embedder: HashingEmbedder, alpha: int
) -> None:
    noise = "".join(f"collecting module {i}\n" for i in range(300_000))  # ~7 MB, clipped when logged
    shell(db, alpha, "pytest tests/", return_code=1, stdout=noise + TRACEBACK, stderr="x" * 2_000_000)
    for budget in (40, 120, 400, 1500):
        pack = build_context(db, fake_embedder, "pytest tests", project="alpha", budget=budget, record=False)
        assert pack.token_count <= budget == pack.budget
        assert fake_embedder.count_tokens(pack.text) == pack.token_count
    assert "ImportError: cannot import name" in pack.text  # the traceback's last line, from the tail
    assert len(pack.text) < 20_000


@pytest.mark.parametrize(
    ("prompt", "loser"),
    [("send_invoice_email", "chunk"), ("email the invoice as a PDF attachment to the customer", "command")],
)
def test_commands_compete_for_the_budget_by_score(
    db: Database, fake_embedder: HashingEmbedder, alpha: int, prompt: str, loser: str
) -> None:
    shell(db, alpha, "python scripts/mail.py --send-invoice-email", return_code=1, stderr="error: no smtp")
    full = build_context(db, fake_embedder, prompt, project="alpha", record=False)
    command = next(i for i in full.items if i.kind == "command")
    others = [i for i in full.items if i is not command]
    assert others
    # room for everything but the lowest-scored item: that one is left out, whichever kind it is
    lowest = min(full.items, key=lambda i: i.score)
    assert lowest.kind == loser
    budget = full.token_count - lowest.tokens - 1
    pack = build_context(db, fake_embedder, prompt, project="alpha", budget=budget, record=False)
    assert pack.token_count <= budget
    kept = [(i.kind, i.id) for i in pack.items]
    assert (lowest.kind, lowest.id) not in kept or next(i for i in pack.items if i.id == lowest.id).truncated
    assert all((i.kind, i.id) in kept for i in full.items if i.score > lowest.score)


def test_commands_of_another_project_and_without_relevance_stay_out(
    db: Database, fake_embedder: HashingEmbedder, alpha: int
) -> None:
    with db.connection() as conn:
        beta = store.ensure_project(conn, "beta").id
    shell(db, beta, "pytest tests/", return_code=1, stdout=TRACEBACK)
    shell(db, alpha, "docker compose up -d")
    pack = build_context(db, fake_embedder, "pytest tests ImportError", project="alpha", record=False)
    assert "pytest tests/" not in pack.text and "docker" not in pack.text
    off = build_context(db, fake_embedder, "pytest tests", project="alpha", record=False, commands=False)
    assert HEADING not in off.text


def test_recent_failures_lists_failures_newest_first_with_pairs(db: Database, fake_embedder: HashingEmbedder) -> None:
    with db.connection() as conn:
        pid = store.ensure_project(conn, "alpha").id
    assert recent_failures(db, fake_embedder, project="alpha") == []
    first = shell(db, pid, "npm test", return_code=1, stderr="npm ERR! missing script: test")
    shell(db, pid, "npm ci")
    second = shell(db, pid, "make lint", return_code=2, agent_id=None)
    found = recent_failures(db, fake_embedder, project="alpha", limit=5)
    assert [f.id for f in found] == [second, first]
    assert found[1].error_line == "npm ERR! missing script: test"
    assert found[1].then_worked is not None and found[1].then_worked.command == "npm ci"
    assert found[0].then_worked is None and found[0].agent_id is None and found[0].error_line is None


def test_the_relevant_command_is_chosen_by_meaning(db: Database, real_embedder: Any) -> None:
    with db.connection() as conn:
        pid = index_files(conn, real_embedder, "alpha", SOURCES).id
    failed = shell(db, pid, "pytest tests/", return_code=1, stdout=TRACEBACK)
    shell(db, pid, "make test", stdout="12 passed")
    for unrelated in ("git status", "ls -la", "docker compose up -d", "du -sh node_modules"):
        shell(db, pid, unrelated)
    pack = build_context(db, real_embedder, "why do the unit tests fail?", project="alpha", record=False)
    assert f"command #{failed}" in pack.text and "then worked: `make test`" in pack.text
    for unrelated in ("git status", "ls -la", "docker compose", "du -sh"):
        assert unrelated not in pack.text


def test_a_command_naming_a_file_of_the_retrieved_chunks_gets_the_identifier_bonus(
    db: Database, fake_embedder: HashingEmbedder, alpha: int
) -> None:
    mail = shell(db, alpha, "python -m pytest src/mail.py", return_code=1, stderr="error: boom")
    text = shell(db, alpha, "python -m pytest src/text.py", return_code=1, stderr="error: boom")
    every = DEFAULT_WEIGHTS.with_(min_score=0.0)
    found = past_command_hits(db, fake_embedder, "send invoice", project="alpha", paths=["src/mail.py"], weights=every)
    parts = {h.id: h.parts for h in found}
    assert parts[mail].identifier_match and not parts[text].identifier_match
    assert parts[mail].similarity == pytest.approx(parts[text].similarity)  # the bonus alone sets them apart
    assert [h.id for h in found].index(mail) < [h.id for h in found].index(text)
    plain = past_command_hits(db, fake_embedder, "send invoice", project="alpha", weights=every)
    assert not any(h.parts.identifier_match for h in plain)


class CountingEmbedder(HashingEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.queries: list[str] = []

    def embed_query(self, text: str) -> Any:
        self.queries.append(text)
        return super().embed_query(text)


def test_the_prompt_is_embedded_once_per_block(db: Database, fake_embedder: HashingEmbedder, alpha: int) -> None:
    from knowledgebase.coordination import taskqueue
    from knowledgebase.search.activity import active_work

    shell(db, alpha, "pytest tests/", return_code=1, stdout=TRACEBACK)
    with db.connection() as conn:
        taskqueue.open_task(conn, "other", owner="agent-b", project_id=alpha, title="fix the pytest ImportError")
    counting = CountingEmbedder()
    work = active_work(db, "alpha", exclude_task_id="mine")
    assert work.tasks
    pack = build_context(db, counting, "  pytest tests ImportError  ", project="alpha", activity=work, record=False)
    assert HEADING in pack.text and counting.queries == ["pytest tests ImportError"]
