"""`kb gemini install|uninstall`: merging into settings.json, backups, exact removal, refusing bad files."""

from __future__ import annotations

import json
import shlex
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from knowledgebase.cli import cli
from knowledgebase.config import Settings
from knowledgebase.errors import GeminiSettingsError
from knowledgebase.gemini.hook_client import HOOK_EVENTS
from knowledgebase.gemini.settings import (
    HOOK_NAME_PREFIX,
    MCP_SERVER_NAME,
    Wiring,
    install_gemini,
    settings_path,
    uninstall_gemini,
    wiring_for,
)

USER_SETTINGS = {
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "general": {"vimMode": True},
    "hooks": {
        "BeforeAgent": [{"matcher": "", "hooks": [{"type": "command", "command": "echo mine", "name": "mine"}]}],
        "BeforeTool": [{"matcher": "write_file", "hooks": [{"type": "command", "command": "lint"}]}],
    },
    "mcpServers": {"github": {"command": "gh-mcp", "args": []}},
}


@pytest.fixture
def wiring(tmp_path: Path) -> Wiring:
    settings = Settings(home=tmp_path / "kbhome", database_url="postgresql://kb:s3cret@db.internal:5432/kb")
    return wiring_for(settings)


def _write(path: Path, document: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2))
    return path


def test_install_merges_hooks_and_mcp_server_keeping_everything_else(tmp_path: Path, wiring: Wiring) -> None:
    path = _write(tmp_path / ".gemini" / "settings.json", USER_SETTINGS)
    change = install_gemini(path, wiring)
    assert change.changed and change.backup is not None
    assert json.loads(change.backup.read_text()) == USER_SETTINGS
    doc = json.loads(path.read_text())
    assert doc["general"] == {"vimMode": True} and doc["security"] == USER_SETTINGS["security"]
    assert doc["mcpServers"]["github"] == USER_SETTINGS["mcpServers"]["github"]
    assert doc["hooks"]["BeforeTool"] == USER_SETTINGS["hooks"]["BeforeTool"]
    # the user's own BeforeAgent hook stays first; ours is added after it
    assert doc["hooks"]["BeforeAgent"][0] == USER_SETTINGS["hooks"]["BeforeAgent"][0]
    for event in HOOK_EVENTS:
        ours = [h for g in doc["hooks"][event] for h in g["hooks"] if h.get("name", "").startswith(HOOK_NAME_PREFIX)]
        assert len(ours) == 1
        hook = ours[0]
        python, *args = shlex.split(hook["command"])
        assert args == ["-S", "-P", "-m", "knowledgebase.gemini.hook_client", event]
        assert Path(python).is_absolute() and Path(python) == Path(sys.executable).absolute()
        assert (Path(hook["env"]["PYTHONPATH"]) / "knowledgebase" / "gemini" / "hook_client.py").is_file()
        assert hook["env"]["KB_DATABASE_URL"] == "postgresql://kb@db.internal:5432/kb"  # the password: PGPASSFILE
        assert hook["env"]["PGPASSFILE"] == str(tmp_path / "kbhome" / "pgpass")
        assert hook["env"]["KB_HOME"] == str(tmp_path / "kbhome")
        assert hook["timeout"] >= 10_000
    server = doc["mcpServers"][MCP_SERVER_NAME]
    assert Path(server["command"]).is_absolute() and server["args"] == ["mcp"]
    assert server["env"]["KB_DATABASE_URL"] == "postgresql://kb@db.internal:5432/kb"
    assert "_" not in MCP_SERVER_NAME  # Gemini CLI names tools mcp_<server>_<tool>


def test_install_twice_is_idempotent_and_uninstall_restores_the_original(tmp_path: Path, wiring: Wiring) -> None:
    path = _write(tmp_path / ".gemini" / "settings.json", USER_SETTINGS)
    install_gemini(path, wiring)
    once = json.loads(path.read_text())
    second = install_gemini(path, wiring)
    assert not second.changed and second.backup is None
    assert json.loads(path.read_text()) == once
    removed = uninstall_gemini(path)
    assert removed.changed and set(removed.hooks) == set(HOOK_EVENTS) and removed.mcp_server == MCP_SERVER_NAME
    assert json.loads(path.read_text()) == USER_SETTINGS


def test_uninstall_of_a_fresh_install_leaves_an_empty_document(tmp_path: Path, wiring: Wiring) -> None:
    path = tmp_path / "home" / ".gemini" / "settings.json"
    change = install_gemini(path, wiring)
    assert change.changed and change.backup is None
    assert path.stat().st_mode & 0o077 == 0  # it holds the database URL: owner only
    uninstall_gemini(path)
    assert json.loads(path.read_text()) == {}


def test_uninstall_keeps_other_hooks_in_a_group_we_share(tmp_path: Path, wiring: Wiring) -> None:
    path = tmp_path / "settings.json"
    install_gemini(path, wiring)
    doc = json.loads(path.read_text())
    doc["hooks"]["AfterTool"][0]["hooks"].append({"type": "command", "command": "audit-more", "name": "theirs"})
    path.write_text(json.dumps(doc))
    uninstall_gemini(path)
    after = json.loads(path.read_text())
    assert after["hooks"] == {
        "AfterTool": [{"matcher": ".*", "hooks": [{"type": "command", "command": "audit-more", "name": "theirs"}]}]
    }
    assert "mcpServers" not in after


@pytest.mark.parametrize("content", ['{"general": {"vimMode": true},', "// comment\n{}", "[1, 2]", "\x00\x01"])
def test_install_refuses_a_file_that_is_not_a_json_object(tmp_path: Path, wiring: Wiring, content: str) -> None:
    path = tmp_path / ".gemini" / "settings.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(GeminiSettingsError, match="nothing was changed"):
        install_gemini(path, wiring)
    with pytest.raises(GeminiSettingsError, match="nothing was changed"):
        uninstall_gemini(path)
    assert path.read_text() == content
    assert sorted(p.name for p in path.parent.iterdir()) == ["settings.json"]  # no backup, no temp file


def test_install_refuses_a_foreign_mcp_server_of_the_same_name(tmp_path: Path, wiring: Wiring) -> None:
    original = {"mcpServers": {MCP_SERVER_NAME: {"command": "/opt/other/server", "args": []}}}
    path = _write(tmp_path / "settings.json", original)
    with pytest.raises(GeminiSettingsError, match="did not add"):
        install_gemini(path, wiring)
    assert json.loads(path.read_text()) == original
    uninstall_gemini(path)
    assert json.loads(path.read_text()) == original


def test_dry_run_writes_nothing(tmp_path: Path, wiring: Wiring) -> None:
    path = _write(tmp_path / "settings.json", USER_SETTINGS)
    change = install_gemini(path, wiring, dry_run=True)
    assert change.changed and change.dry_run and change.backup is None
    assert MCP_SERVER_NAME in change.document["mcpServers"]
    assert json.loads(path.read_text()) == USER_SETTINGS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]


def test_settings_path_scopes(tmp_path: Path) -> None:
    expected = tmp_path.resolve() / ".gemini" / "settings.json"
    assert settings_path("user", env={"GEMINI_CLI_HOME": str(tmp_path)}) == expected
    assert settings_path("project", project_dir=tmp_path) == expected
    with pytest.raises(GeminiSettingsError, match="unknown scope"):
        settings_path("global")


def test_cli_install_uninstall_and_bad_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_CLI_HOME", str(tmp_path / "gh"))
    monkeypatch.setenv("KB_HOME", str(tmp_path / "kb"))
    monkeypatch.setenv("KB_DATABASE_URL", "postgresql://kb:pw123456@localhost/kb")
    runner = CliRunner()
    dry = runner.invoke(cli, ["gemini", "install", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "pw123456" not in dry.output and "knowledgebase.gemini.hook_client" in dry.output
    assert not (tmp_path / "gh" / ".gemini" / "settings.json").exists()
    result = runner.invoke(cli, ["gemini", "install", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["changed"] and set(report["hooks"]) == set(HOOK_EVENTS)
    assert runner.invoke(cli, ["gemini", "uninstall"]).exit_code == 0
    assert json.loads((tmp_path / "gh" / ".gemini" / "settings.json").read_text()) == {}

    project = tmp_path / "proj"
    bad = project / ".gemini" / "settings.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{ not json")
    refused = runner.invoke(cli, ["gemini", "install", "--scope", "project", "--project-dir", str(project)])
    assert refused.exit_code != 0 and isinstance(refused.exception, GeminiSettingsError)
    assert "not valid JSON" in str(refused.exception)
    assert bad.read_text() == "{ not json"


def test_the_installed_hook_command_runs_and_fails_open(tmp_path: Path, wiring: Wiring) -> None:
    """The command exactly as written into settings.json, run the way Gemini CLI runs it (sh -c)."""
    path = tmp_path / "settings.json"
    install_gemini(path, wiring)
    hook = json.loads(path.read_text())["hooks"]["BeforeAgent"][-1]["hooks"][0]
    env = {"PATH": "/usr/bin:/bin", **hook["env"], "KB_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    project = tmp_path / "project"
    project.mkdir()
    (project / "json.py").write_text("raise SystemExit('the project shadowed the standard library')\n")
    proc = subprocess.run(
        ["/bin/sh", "-c", hook["command"]], input=b"{truncated", capture_output=True, env=env, cwd=project
    )
    assert proc.returncode == 0 and json.loads(proc.stdout) == {}
    assert b"not valid JSON" in proc.stderr


# --- the database password stays out of settings.json and its backups ---


def _fake_server_capturing_the_password() -> tuple[socket.socket, list[str]]:
    """A listener that speaks just enough of the PostgreSQL protocol to ask for a cleartext password."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[str] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            while True:  # SSLRequest / GSSENCRequest first: refuse them, then the startup message
                (length,) = struct.unpack("!i", conn.recv(4, socket.MSG_WAITALL))
                body = conn.recv(length - 4, socket.MSG_WAITALL)
                if struct.unpack("!i", body[:4])[0] in (80877103, 80877104):
                    conn.sendall(b"N")
                    continue
                break
            conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
            kind = conn.recv(1, socket.MSG_WAITALL)
            (length,) = struct.unpack("!i", conn.recv(4, socket.MSG_WAITALL))
            password = conn.recv(length - 4, socket.MSG_WAITALL)
            received.append(kind.decode() + password.rstrip(b"\0").decode())
            message = b"SFATAL\0C28P01\0Mpassword captured by the test\0\0"
            conn.sendall(b"E" + struct.pack("!i", len(message) + 4) + message)

    threading.Thread(target=serve, daemon=True).start()
    return listener, received


def test_the_password_goes_to_a_private_password_file_never_into_settings_or_backups(tmp_path: Path) -> None:
    listener, received = _fake_server_capturing_the_password()
    port = listener.getsockname()[1]
    url = f"postgresql://kb:s3cr%3At@127.0.0.1:{port}/kb?sslmode=disable"
    wiring = wiring_for(Settings(home=tmp_path / "kbhome", database_url=url))
    # a world-readable settings.json that an older install filled with the password
    old = {
        **USER_SETTINGS,
        "mcpServers": {MCP_SERVER_NAME: {"command": "/x/kb", "args": ["mcp"], "env": {"KB_DATABASE_URL": url}}},
    }
    path = _write(tmp_path / ".gemini" / "settings.json", old)
    path.chmod(0o644)
    change = install_gemini(path, wiring)
    assert "s3cr" not in path.read_text()
    assert change.backup is not None and change.backup.stat().st_mode & 0o777 == 0o600  # it holds the old password
    pgpass = tmp_path / "kbhome" / "pgpass"
    assert pgpass.stat().st_mode & 0o777 == 0o600
    assert pgpass.read_text() == f"127.0.0.1:{port}:kb:kb:s3cr\\:t\n"
    install_gemini(path, wiring)  # again: one line per server, database and user
    assert pgpass.read_text().count("\n") == 1
    # libpq finds the password with what settings.json hands the hooks
    env = json.loads(path.read_text())["mcpServers"][MCP_SERVER_NAME]["env"]
    import psycopg

    with pytest.raises(psycopg.OperationalError, match="password captured by the test"):
        psycopg.connect(env["KB_DATABASE_URL"], connect_timeout=5, passfile=env["PGPASSFILE"])
    assert received == ["ps3cr:t"]
    listener.close()


@pytest.mark.parametrize(
    ("url", "bare", "line"),
    [
        ("postgresql://kb@db/kb", "postgresql://kb@db/kb", None),
        ("postgresql://kb:pw@db/kb?sslmode=require", "postgresql://kb@db/kb?sslmode=require", "db:*:kb:kb:pw"),
        (
            "postgresql://kb@db/kb?password=pw&application_name=a",
            "postgresql://kb@db/kb?application_name=a",
            "db:*:kb:kb:pw",
        ),
        ("host=db user=kb password=pw dbname=kb", "host=db user=kb dbname=kb", "db:*:kb:kb:pw"),
    ],
    ids=["no-password", "in-userinfo", "in-query", "keyword-string"],
)
def test_split_password(url: str, bare: str, line: str | None) -> None:
    from psycopg.conninfo import conninfo_to_dict

    from knowledgebase.db.connect import split_password

    stripped, entry = split_password(url)
    assert entry == line and conninfo_to_dict(stripped) == conninfo_to_dict(bare)
    assert stripped.startswith("postgresql://") == url.startswith("postgresql://")  # a URL stays a URL


def test_read_replicas_reach_the_hooks_without_their_passwords_in_settings(tmp_path: Path) -> None:
    """KB_READ_DATABASE_URL is handed to the hooks too; a replica takes the primary's password (the same
    roles), written as its own password-file line; a replica's own password goes there as well."""
    primary = "postgresql://kb:pw1@db.internal:5432/kb"
    replicas = "postgresql://kb@replica1:5433/kb postgresql://kb:pw2@replica2:5434/kb"
    settings = Settings.from_env(
        {"KB_HOME": str(tmp_path / "kbhome"), "KB_DATABASE_URL": primary, "KB_READ_DATABASE_URL": replicas}
    )
    wiring = wiring_for(settings)
    assert wiring.env["KB_READ_DATABASE_URL"] == "postgresql://kb@replica1:5433/kb postgresql://kb@replica2:5434/kb"
    path = _write(tmp_path / ".gemini" / "settings.json", USER_SETTINGS)
    install_gemini(path, wiring)
    install_gemini(path, wiring)  # again: still one line per server
    assert "pw1" not in path.read_text() and "pw2" not in path.read_text()
    lines = sorted((tmp_path / "kbhome" / "pgpass").read_text().splitlines())
    assert lines == ["db.internal:5432:kb:kb:pw1", "replica1:5433:kb:kb:pw1", "replica2:5434:kb:kb:pw2"]
