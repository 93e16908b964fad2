"""The warm process behind the hooks (``kb serve``): the embedding model and a connection pool, kept loaded.

One process per store (KB_HOME, database, model) listens on a Unix socket (see
``warm_protocol.server_address``). The first hook that finds none starts it detached; it exits after
``KB_SERVE_IDLE_TIMEOUT`` seconds without a request, on ``kb serve --stop`` or ``kb db stop``, or
within 5 seconds once its KB_HOME is deleted. A lock file makes
sure two hooks starting it at once end up with one process.

Requests are one JSON header line followed by a body: for ``hook``, the hook's stdin verbatim (the
answer is ``{"ok": bool, "output": {...}, "error": str, "note": str}``); for ``embed``, a JSON list of
texts (the answer carries their ``vectors``: the MCP server borrows the model instead of loading its own);
for ``search`` and ``context``, a JSON object of the command's arguments (``kb search`` and ``kb context``
as new processes ask here first, so they import neither the model nor psycopg: the answer carries the
hits, ``hits.hit_to_wire``, or the pack, ``ContextPack.to_json``); ``status`` and ``shutdown`` have no
body. The database is opened lazily and, after a failure, not retried for a few seconds, so a database
that is down costs each hook milliseconds, not a connection timeout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from knowledgebase.config import Settings
from knowledgebase.errors import DatabaseUnavailable, KnowledgebaseError, UnsafeSocket, first_line
from knowledgebase.gemini.freshness import Freshener
from knowledgebase.gemini.warm_protocol import PROTOCOL, check_peer, private_socket_dir, server_address

if TYPE_CHECKING:
    from knowledgebase.db import Database
    from knowledgebase.embedding import Embedder

log = logging.getLogger("knowledgebase.gemini.serve")

DB_RETRY_AFTER_S = 5.0  # after a failed connection, answer "unavailable" at once for this long
POOL_TIMEOUT_S = 3.0
MODEL_WAIT_S = 120.0

# per request thread: how long the request waited for the model to load (a cold model)
_request_notes = threading.local()


@dataclass(frozen=True)
class ServerStatus:
    """What ``kb serve --status`` reports."""

    pid: int
    address: str
    started_at: float
    requests: int
    model_ready: bool
    database_ready: bool
    idle_timeout_s: float


class WarmStore:
    """The database pool and the embedding model, opened once and shared by every request.

    Also what the hook handlers receive (``hooks.HookServices``).
    """

    def __init__(self, settings: Settings, embedder: Embedder | None = None) -> None:
        self.settings = settings
        self._db: Database | None = None
        self._db_error: tuple[float, str] | None = None
        self._db_lock = threading.Lock()
        self._embedder = embedder
        self._model_ready = threading.Event()
        self._model_error: str | None = None
        self._model_lock = threading.Lock()
        if embedder is not None:
            self._model_ready.set()
        # re-indexes what the agents write, on its own thread (``hooks`` queue work and return)
        self.freshener = Freshener(self)

    def warm_up(self) -> None:
        """Load the model in the background; requests that need it wait for it."""
        if not self._model_ready.is_set():
            threading.Thread(target=self._load_model, name="kb-model", daemon=True).start()

    def _load_model(self) -> None:
        from knowledgebase.embedding import embedder_from_settings

        started = time.monotonic()
        try:
            embedder = embedder_from_settings(self.settings)
            embedder.embed_query("warm up")
            self._embedder = embedder
            log.info("model %s loaded in %.1fs", embedder.name, time.monotonic() - started)
        except Exception as exc:  # reported to every request that needs the model
            self._model_error = str(exc)
            log.error("cannot load the embedding model: %s", exc)
        finally:
            self._model_ready.set()

    @property
    def model_ready(self) -> bool:
        return self._model_ready.is_set() and self._embedder is not None

    def embedder(self) -> Embedder:
        """The loaded model (waits for the warm-up); embedding calls are serialised."""
        if not self._model_ready.is_set():
            started = time.monotonic()
            self._model_ready.wait(MODEL_WAIT_S)
            _request_notes.model_wait_s = time.monotonic() - started
        if not self._model_ready.is_set():
            raise KnowledgebaseError(f"the embedding model did not load within {MODEL_WAIT_S:.0f}s")
        if self._embedder is None:
            raise KnowledgebaseError(f"the embedding model could not be loaded: {self._model_error}")
        return _LockedEmbedder(self._embedder, self._model_lock)

    def database(self) -> Database:
        """The pool, opened on first use; fails fast for a while after the database was found down."""
        with self._db_lock:
            if self._db is not None:
                return self._db
            if self._db_error is not None and time.monotonic() - self._db_error[0] < DB_RETRY_AFTER_S:
                raise DatabaseUnavailable(f"database unavailable (retrying shortly): {self._db_error[1]}")
            from knowledgebase.db import open_database

            try:
                self._db = open_database(self.settings, pool_timeout=POOL_TIMEOUT_S, check_connections=True)
            except KnowledgebaseError as exc:
                self._db_error = (time.monotonic(), str(exc))
                raise
            self._db_error = None
            if self.settings.spool_dir.is_dir():
                threading.Thread(target=self._flush_spool, args=(self._db,), name="kb-spool", daemon=True).start()
            return self._db

    def _flush_spool(self, db: Database) -> None:
        """Write what was spooled while the database was unreachable (by the hooks or `kb exec`)."""
        from knowledgebase.coordination.spool import flush_spool

        report = flush_spool(db, self.settings.spool_dir)
        for task_id in report.closed:  # sessions that ended during the outage: as SessionEnd would have
            log.info("spool: %s closed, %s", task_id, self.propose_trail_facts(task_id))
        if report.flushed or report.rejected or report.error:
            log.info(
                "spool: %d written, %d set aside, %d waiting (%s)",
                report.flushed,
                report.rejected,
                report.remaining,
                report.error or "ok",
            )

    def propose_trail_facts(self, task_id: str) -> str:
        """Propose the facts of a closed session's trail (``search.trail_facts``); a note of what came of
        it. A failure is returned, not raised: the session is closed all the same and its trail stays."""
        from knowledgebase.search.trail_facts import propose_session_facts

        try:
            return f"proposed={len(propose_session_facts(self.database(), self.embedder(), task_id))}"
        except KnowledgebaseError as exc:
            return f"proposed=none ({first_line(exc)})"

    @property
    def database_ready(self) -> bool:
        return self._db is not None

    def database_failed(self, exc: BaseException) -> None:
        """Drop the pool after it lost the database so the next request reconnects (after a pause);
        nothing to do when no pool is open (the failure to open it is recorded already)."""
        with self._db_lock:
            if self._db is None:
                return
            self._db.close()
            self._db = None
            self._db_error = (time.monotonic(), first_line(exc))

    def close(self) -> None:
        self.freshener.close()
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class _LockedEmbedder:
    """An embedder whose model calls run one at a time (requests arrive on several threads)."""

    def __init__(self, inner: Embedder, lock: threading.Lock) -> None:
        self._inner = inner
        self._lock = lock

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    def embed_documents(self, texts: Any) -> Any:
        with self._lock:
            return self._inner.embed_documents(texts)

    def embed_query(self, text: str) -> Any:
        with self._lock:
            return self._inner.embed_query(text)

    def count_tokens(self, text: str) -> int:
        return self._inner.count_tokens(text)


class _Handler(socketserver.StreamRequestHandler):
    server: WarmServer

    def handle(self) -> None:
        self.server.touch()
        try:
            check_peer(self.request)
        except UnsafeSocket as exc:  # another user reached the socket: it learns nothing, not even the error
            log.warning("refused a connection: %s", exc)
            return
        try:
            header = json.loads(self.rfile.readline())
            body = self.rfile.read()
            answer = self.server.answer(header, body)
        except Exception as exc:  # a bad request gets an error answer, never a dead server
            log.exception("request failed")
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        with contextlib.suppress(OSError):
            self.wfile.write(json.dumps(answer, default=str).encode())
        self.server.touch()


class WarmServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves hook requests from the warm store until idle for ``idle_timeout_s``."""

    daemon_threads = True

    def __init__(self, address: str, store: WarmStore, idle_timeout_s: float) -> None:
        self.store = store
        self.idle_timeout_s = idle_timeout_s
        self.started_at = time.time()
        self.requests = 0
        self._last_activity = time.monotonic()
        self._active = 0
        self._lock = threading.Lock()
        # a store under a KB_HOME that exists now: once it is deleted, nobody can reach this process again
        self.watch_home = store.settings.home.is_dir()
        super().__init__(address, _Handler)

    def touch(self) -> None:
        with self._lock:
            self._last_activity = time.monotonic()

    def idle_for(self) -> float:
        with self._lock:
            return 0.0 if self._active else time.monotonic() - self._last_activity

    def answer(self, header: dict[str, Any], body: bytes) -> dict[str, Any]:
        op = header.get("op")
        if op == "status":
            return {"ok": True, "status": self.status().__dict__}
        if op == "shutdown":
            threading.Thread(target=self.shutdown, daemon=True).start()
            return {"ok": True}
        if op not in ("hook", "embed", "search", "context"):
            return {"ok": False, "error": f"unknown request {op!r}"}
        if header.get("protocol") != PROTOCOL:
            return {
                "ok": False,
                "error": "kb-hook and kb serve differ in version: stop the old one with kb serve --stop",
            }
        with self._lock:
            self._active += 1
            self.requests += 1
        try:
            if op == "embed":
                return self._answer_embed(header, body)
            if op in ("search", "context"):
                return self._answer_query(op, body)
            return self._answer_hook(header, body)
        finally:
            with self._lock:
                self._active -= 1

    def _answer_embed(self, header: dict[str, Any], body: bytes) -> dict[str, Any]:
        """Vectors for other processes of this store (the MCP server), so they need not load the model."""
        texts = json.loads(body)
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return {"ok": False, "error": "an embed request carries a JSON list of strings"}
        embedder = self.store.embedder()
        if header.get("kind") == "query":
            vectors = [embedder.embed_query(t) for t in texts]
        else:
            vectors = list(embedder.embed_documents(texts))
        return {
            "ok": True,
            "model": embedder.name,
            "dimension": embedder.dimension,
            "vectors": [[float(x) for x in v] for v in vectors],
        }

    def _answer_query(self, op: str, body: bytes) -> dict[str, Any]:
        """``kb search`` or ``kb context`` for a command-line process (arguments as its options)."""
        from datetime import timedelta

        from knowledgebase import store
        from knowledgebase.search.context import build_context
        from knowledgebase.search.hits import hit_to_wire
        from knowledgebase.search.retrieval import search

        args = json.loads(body)
        try:
            db = self.store.database()
            project = args.get("project")
            if project is None and args.get("cwd"):
                with db.connection() as conn:
                    found = store.project_for_path(conn, str(args["cwd"]))
                project = found.name if found is not None else None
            if op == "context":
                pack = build_context(
                    db,
                    self.store.embedder(),
                    str(args["prompt"]),
                    project=project,
                    task_id=args.get("task_id"),
                    budget=args.get("budget"),
                    record=bool(args.get("record", True)),
                )
                return {"ok": True, "project": project, "pack": pack.to_json()}
            since = args.get("since_s")
            hits = search(
                db,
                self.store.embedder(),
                str(args["query"]),
                project=project,
                task_id=args.get("task_id"),
                kinds=tuple(args["kinds"]),
                path_glob=args.get("path_glob"),
                since=timedelta(seconds=since) if since is not None else None,
                limit=int(args["limit"]),
                roles=args.get("roles"),
            )
            with db.connection() as conn:  # the command shows paths relative to where it runs
                roots = {p.name: p.root_path for p in store.list_projects(conn)}
        except KnowledgebaseError as exc:  # the command then runs in its own process and reports it
            if isinstance(exc, DatabaseUnavailable):
                self.store.database_failed(exc)
            return {"ok": False, "error": first_line(exc)}
        return {"ok": True, "project": project, "roots": roots, "hits": [hit_to_wire(hit) for hit in hits]}

    def _answer_hook(self, header: dict[str, Any], body: bytes) -> dict[str, Any]:
        from knowledgebase.gemini.hooks import HookCall, handle_hook

        started = time.monotonic()
        payload = json.loads(body)
        call = HookCall(
            event=str(header.get("event")),
            payload=payload,
            gemini_pid=header.get("gemini_pid"),
            project=header.get("project"),
            project_dir=header.get("project_dir"),
            agent_id=header.get("agent_id") if isinstance(header.get("agent_id"), str) else None,
        )
        _request_notes.model_wait_s = None
        try:
            result = handle_hook(self.store, call)
        except KnowledgebaseError as exc:  # expected trouble (database down, bad input): one line, no traceback
            if isinstance(exc, DatabaseUnavailable):
                self.store.database_failed(exc)
            return {"ok": False, "error": str(exc)}
        elapsed = (time.monotonic() - started) * 1000
        note = f"{result.note} server={elapsed:.0f}ms"
        if _request_notes.model_wait_s is not None:
            note += f" cold-model(waited {_request_notes.model_wait_s:.1f}s for it to load)"
        return {"ok": True, "output": result.output, "note": note.strip()}

    def status(self) -> ServerStatus:
        return ServerStatus(
            pid=os.getpid(),
            address=str(self.server_address),
            started_at=self.started_at,
            requests=self.requests,
            model_ready=self.store.model_ready,
            database_ready=self.store.database_ready,
            idle_timeout_s=self.idle_timeout_s,
        )


@contextlib.contextmanager
def _single_instance(address: str) -> Iterator[bool]:
    """Hold the lock of ``address``; yields False when another process holds it."""
    import fcntl

    with open(address + ".lock", "a+") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def serve(settings: Settings, env: Mapping[str, str], *, idle_timeout_s: float | None = None) -> bool:
    """Run the warm process in the foreground until idle or stopped. Returns False if one runs already."""
    address = server_address(env)
    idle = settings.serve_idle_timeout if idle_timeout_s is None else idle_timeout_s
    private_socket_dir(os.path.dirname(address), create=True)  # UnsafeSocket if someone else holds it
    with _single_instance(address) as acquired:
        if not acquired:
            log.info("a warm process for %s runs already", address)
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
        # one prompt is embedded at a time: a single thread is fastest for that and leaves the other
        # cores to Gemini CLI and PostgreSQL (torch's default of one thread per core is 5x slower on a busy box)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        store = WarmStore(settings)
        store.warm_up()
        server = WarmServer(address, store, idle)
        os.chmod(address, 0o600)
        stop = threading.Event()
        threading.Thread(target=_watch_idle, args=(server, stop), name="kb-idle", daemon=True).start()
        previous = signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
        log.info("kb serve (pid %d) listening on %s, idle timeout %.0fs", os.getpid(), address, idle)
        try:
            server.serve_forever(poll_interval=0.5)
        finally:
            stop.set()
            signal.signal(signal.SIGTERM, previous)
            server.server_close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)
            store.close()
            log.info("kb serve (pid %d) stopped after %d requests", os.getpid(), server.requests)
    return True


def _watch_idle(server: WarmServer, stop: threading.Event) -> None:
    home = server.store.settings.home
    while not stop.wait(min(5.0, max(server.idle_timeout_s / 4, 0.1))):
        if server.idle_for() >= server.idle_timeout_s:
            log.info("idle for %.0fs: stopping", server.idle_timeout_s)
            server.shutdown()
            return
        if server.watch_home and not home.is_dir():
            log.info("KB_HOME %s is gone: stopping", home)
            server.shutdown()
            return


def request(env: Mapping[str, str], op: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """Send a control request (``status``, ``shutdown``) to the warm process; None if none runs."""
    address = server_address(env)
    private_socket_dir(os.path.dirname(address), create=False)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        return None
    with sock:
        check_peer(sock)
        sock.sendall(json.dumps({"op": op}).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if not data:  # it closed without answering: it is shutting down
        return None
    answer: dict[str, Any] = json.loads(data)
    return answer


def stop_server(env: Mapping[str, str], wait_s: float = 10.0) -> bool:
    """Ask the warm process to exit and wait until its socket is gone. Returns False if none ran."""
    if request(env, "shutdown") is None:
        return False
    address = server_address(env)
    deadline = time.monotonic() + wait_s
    while os.path.exists(address) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True
