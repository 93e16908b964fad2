"""The agents of ``scripts/bench_fleet.py``: what a run does (``FleetPlan``), the vectors computed once for it
(``PrecomputedEmbedder``), and one agent's Gemini CLI session (``run_agent``, top level so that spawn can
import it). See bench_fleet.py's docstring for the whole."""

from __future__ import annotations

import json
import os
import re
import resource
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PROJECT = "kb-fleet-bench"
CALLS_PER_TURN = 2  # model calls in each turn's transcript: usage rows per AfterAgent
ESTIMATED_TOKENS = 1200  # asked of the key pool per turn; the turn then uses less
FAIL_EVERY = 5  # every fifth shell command fails (failures are read differently by retrieval)


# ----- what one run does, the same in the parent and in every agent -------------------------------


@dataclass(frozen=True)
class FleetPlan:
    """Every text and name of one run, derived from its id: the agents act it, the checks count it."""

    run: str
    agents: int
    rounds: int
    keys: int
    key_rpm: int
    questions: tuple[str, ...]

    @property
    def provider(self) -> str:  # the run's keys only: no other key of the store is handed out
        return f"fleet-{self.run}"

    @property
    def key_tpm(self) -> int:
        return self.key_rpm * ESTIMATED_TOKENS

    @property
    def marker_pattern(self) -> re.Pattern[str]:
        return re.compile(rf"fleet-{self.run}-a(\d+)-r(\d+)\b")

    def marker(self, agent: int, turn: int) -> str:
        return f"fleet-{self.run}-a{agent:02d}-r{turn:03d}"

    def markers(self) -> list[str]:
        return [self.marker(a, t) for a in range(self.agents) for t in range(self.rounds)]

    def session_id(self, agent: int) -> str:
        return f"fleet-{self.run}-s{agent:02d}"

    def task_ids(self) -> list[str]:
        return [f"fleet-{self.run}-t{n:05d}" for n in range(self.agents * self.rounds)]

    def task_title(self, n: int) -> str:
        return f"fleet task {n}: {self.questions[(n * 7) % len(self.questions)]}"

    def key_names(self) -> list[str]:
        return [f"fleet-{self.run}-k{k}" for k in range(self.keys)]

    def key_env(self) -> dict[str, str]:
        return {f"KB_FLEET_KEY_{k}": f"fleet-key-{self.run}-{k}-not-a-real-secret" for k in range(self.keys)}

    def prompt(self, agent: int, turn: int) -> str:
        question = self.questions[(agent * self.rounds + turn) % len(self.questions)]
        return f"{question} ({self.marker(agent, turn)})"

    def command(self, agent: int, turn: int) -> str:
        return f"pytest tests/ -q -k {self.marker(agent, turn).replace('-', '_')} # {self.marker(agent, turn)}"

    def failed(self, turn: int) -> bool:
        return turn % FAIL_EVERY == FAIL_EVERY - 1

    def output(self, agent: int, turn: int) -> str:
        if self.failed(turn):
            return f"F\nE   AssertionError: expected 3, got 4 in {self.marker(agent, turn)}\n1 failed in 0.21s\n"
        return f"....\n4 passed in 0.18s ({self.marker(agent, turn)})\n"

    def response(self, agent: int, turn: int) -> str:
        return f"I ran the tests and read the code; turn {self.marker(agent, turn)} is done."


def shell_output(plan: FleetPlan, agent: int, turn: int) -> str:
    """The run_shell_command result as Gemini CLI hands it to AfterTool."""
    trailer = "\nExit Code: 1" if plan.failed(turn) else ""
    return f"Output: {plan.output(agent, turn)}{trailer}\nProcess Group PGID: {4000 + agent}"


# ----- the embedding, done once ------------------------------------------------------------------


def texts_to_embed(plan: FleetPlan, cwd: str) -> tuple[list[str], list[str]]:
    """(queries, documents) the agents' hook calls will ask the model for, of this run's own making."""
    from knowledgebase.search.commands import first_error_line
    from knowledgebase.search.retrieval import embedded_query

    queries, documents = [], [""]  # a session task is untitled for a moment between its two statements
    for agent in range(plan.agents):
        documents.append(f"Gemini CLI session {plan.session_id(agent)[:8]} in {cwd}")
        for turn in range(plan.rounds):
            prompt, command = plan.prompt(agent, turn), plan.command(agent, turn)
            queries.append(embedded_query(prompt))
            documents += [prompt, command]
            if plan.failed(turn):
                output = plan.output(agent, turn)
                documents += [f"failed: {command}", f"{command}\n{first_error_line(None, None, output, output)}"]
    documents += [plan.task_title(n) for n in range(len(plan.task_ids()))]
    return queries, documents


def logged_readings(url: str) -> list[str]:
    """How past-command retrieval reads the project's newest logged shell commands (earlier runs' too)."""
    from knowledgebase import store
    from knowledgebase.db import Database
    from knowledgebase.search import commands

    with Database(url, max_size=1) as db, db.connection() as conn:
        rows = store.list_past_commands(
            conn,
            project_id=store.get_project(conn, PROJECT).id,
            tsquery=None,
            scan=commands.COMMAND_SCAN,
            limit=0,
            recent=commands.COMMAND_SCAN,
            head_chars=commands.OUTPUT_CHARS,
            tail_chars=commands.OUTPUT_CHARS,
        )
    errors = [
        commands.first_error_line(r.stderr_head, r.stderr_tail, r.stdout_head, r.stdout_tail, r.error) for r in rows
    ]
    return [text for row, error in zip(rows, errors, strict=True) for text in commands._readings(row, error)]


def precompute(embedder: Any, plan: FleetPlan, cwd: str, url: str, path: Path) -> int:
    """Embed every text the run will embed with the real model into ``path``; how many."""
    queries, documents = texts_to_embed(plan, cwd)
    documents = list(dict.fromkeys(documents + logged_readings(url)))
    query_vectors = np.stack([embedder.embed_query(q) for q in queries])
    document_vectors = embedder.embed_documents(documents)
    np.savez(
        path,
        queries=np.array(queries),
        query_vectors=query_vectors,
        documents=np.array(documents),
        document_vectors=document_vectors,
        model=np.array(embedder.name),
    )
    return len(queries) + len(documents)


class PrecomputedEmbedder:
    """The real model's vectors, computed once by the parent; a stand-in (counted) for any other text."""

    def __init__(self, path: Path) -> None:
        with np.load(path) as saved:
            self.name = str(saved["model"])
            self.queries = dict(zip(saved["queries"].tolist(), saved["query_vectors"], strict=True))
            self.documents = dict(zip(saved["documents"].tolist(), saved["document_vectors"], strict=True))
            self.dimension = int(saved["query_vectors"].shape[1])
        self.misses: list[str] = []

    def _stand_in(self, text: str) -> np.ndarray:
        self.misses.append(text[:80])
        vector = np.random.default_rng(abs(hash(text)) % 2**32).standard_normal(self.dimension).astype(np.float32)
        return vector / np.linalg.norm(vector)

    def embed_query(self, text: str) -> np.ndarray:
        vector = self.queries.get(text)
        return vector if vector is not None else self._stand_in(text)

    def embed_documents(self, texts: Any) -> np.ndarray:
        rows = [self.documents.get(t) for t in texts]
        rows = [r if r is not None else self._stand_in(t) for r, t in zip(rows, texts, strict=True)]
        return np.stack(rows) if rows else np.zeros((0, self.dimension), dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        from knowledgebase.embedding import count_tokens

        return count_tokens(self.name, text)


# ----- one agent (top level, so that spawn can import it) -----------------------------------------


def transcript(path: Path, plan: FleetPlan, agent: int, turn: int) -> Path:
    """The session transcript after the turn, as Gemini CLI writes it: the prompt and two model calls."""
    records = [{"id": f"u{turn}", "type": "user", "content": [{"text": plan.prompt(agent, turn)}]}]
    for call in range(CALLS_PER_TURN):
        tokens = {"input": 400 + turn, "output": 40 + call, "thoughts": 10, "total": 450 + turn + call}
        records.append(
            {"id": f"g{turn}.{call}", "type": "gemini", "content": "", "tokens": tokens, "model": "gemini-2.5-flash"}
        )
    with path.open("a") as out:
        out.writelines(json.dumps(r) + "\n" for r in records)
    return path


def run_agent(plan: FleetPlan, agent: int, env: dict[str, str], vectors: str, ready: Any, start: Any, out: Any) -> None:
    """Act agent ``agent`` of ``plan``; put its timings, completions and errors on ``out``."""
    report: dict[str, Any] = {
        "agent": agent,
        "timings": defaultdict(list),
        "errors": [],
        "done": [],
        "grants": 0,
        "contexts": 0,
        "spooled": 0,
        "misses": [],
    }
    try:
        _act(plan, agent, env, Path(vectors), report, ready, start)
    except BaseException as exc:  # the parent must hear of it, not wait for a report that never comes
        report["errors"].append(f"agent {agent} stopped: {type(exc).__name__}: {exc}")
        ready.put(agent)
    report["timings"] = dict(report["timings"])
    out.put(report)


def _act(
    plan: FleetPlan, agent: int, env: dict[str, str], vectors: Path, report: dict[str, Any], ready: Any, start: Any
) -> None:
    os.environ.update(env)
    from knowledgebase import store
    from knowledgebase.config import Settings
    from knowledgebase.coordination.keypool import acquire_key, release
    from knowledgebase.coordination.spool import flush_spool, pending_files
    from knowledgebase.coordination.taskqueue import claim_next_task, complete_task, heartbeat
    from knowledgebase.errors import first_line
    from knowledgebase.gemini.hooks import HookCall, handle_hook
    from knowledgebase.gemini.serve import WarmStore

    settings = Settings.from_env()
    embedder = PrecomputedEmbedder(vectors)
    services = WarmStore(settings, embedder=embedder)
    services.freshener.close()  # no background re-index of a checkout (module docstring)
    home = settings.home
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    cwd = env["KB_FLEET_CWD"]
    owner = f"fleet-agent-{agent}@{os.getpid()}"
    base = {"session_id": plan.session_id(agent), "transcript_path": str(home / "transcript.jsonl"), "cwd": cwd}
    key_env = plan.key_env()
    timings, errors = report["timings"], report["errors"]

    def timed(operation: str, action: Any, *args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return action(*args, **kwargs)
        except Exception as exc:
            errors.append(f"{operation}: {type(exc).__name__}: {first_line(exc)}")
            return None
        finally:
            timings[operation].append((time.perf_counter() - began) * 1000)

    def hook(event: str, **payload: Any) -> Any:
        call = HookCall(event, {**base, "hook_event_name": event, **payload}, gemini_pid=os.getpid(), project=PROJECT)
        result = handle_hook(services, call)
        report["spooled"] += "spooled" in result.note
        return result

    db = services.database()  # connected before the start, as a warm process is
    with db.connection() as conn:
        project_id = store.get_project(conn, PROJECT).id
    embedder.count_tokens("warm up")
    lease_s = settings.task_lease_seconds
    ready.put(agent)
    start.wait()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    timed("SessionStart", hook, "SessionStart", source="startup")
    for turn in range(plan.rounds):
        answer = timed("BeforeAgent", hook, "BeforeAgent", prompt=plan.prompt(agent, turn))
        report["contexts"] += bool(answer and answer.output)
        lease = timed(
            "key acquire",
            acquire_key,
            db,
            ESTIMATED_TOKENS,
            timeout=settings.key_wait_seconds,
            provider=plan.provider,
            environ=key_env,
        )
        timed(
            "AfterTool",
            hook,
            "AfterTool",
            tool_name="run_shell_command",
            tool_input={"command": plan.command(agent, turn)},
            tool_response={"llmContent": shell_output(plan, agent, turn)},
        )
        path = str(transcript(home / "transcript.jsonl", plan, agent, turn))
        timed("AfterAgent", hook, "AfterAgent", prompt_response=plan.response(agent, turn), transcript_path=path)
        if lease is not None:
            timed("key release", release, db, lease, tokens_used=CALLS_PER_TURN * 450 + turn)
            report["grants"] += 1
        task = timed("task claim", claim_next_task, db, owner=owner, lease_seconds=lease_s, project_id=project_id)
        if task is None:
            errors.append(f"round {turn}: no task to claim")
            continue
        timed("task heartbeat", heartbeat, db, task.id, owner=owner, lease_seconds=lease_s)
        if timed("task done", complete_task, db, task.id, owner=owner, result=f"done by {owner}"):
            report["done"].append(task.id)
    asked = len(embedder.misses)
    timed("SessionEnd", hook, "SessionEnd", reason="exit")
    # facts SessionEnd proposes from the trail are texts no plan can foresee: stand-ins, counted apart
    report["session_end_stand_ins"] = len(embedder.misses) - asked
    del embedder.misses[asked:]
    if pending_files(settings.spool_dir):  # written during an outage: stored now, as the warm process does
        flush_spool(db, settings.spool_dir)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    report["cpu_s"] = cpu.ru_utime + cpu.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    report["misses"] = embedder.misses
    services.close()
