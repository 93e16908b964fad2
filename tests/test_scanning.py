"""Scanning a project directory: ignore rules, skipped files with reasons, safe reads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from knowledgebase.config import Settings
from knowledgebase.errors import ProjectPathError
from knowledgebase.index.scanning import (
    FileText,
    ScannedFile,
    SkippedFile,
    SkipReason,
    read_scanned,
    resolve_root,
    scan_project,
)


def _settings(tmp_path: Path, **changes: object) -> Settings:
    return Settings(home=tmp_path / "home").with_overrides(**changes)


def _write(root: Path, rel: str, content: str | bytes = "x = 1\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _scan(root: Path, settings: Settings) -> tuple[dict[str, ScannedFile], dict[str, SkippedFile]]:
    scanned: dict[str, ScannedFile] = {}
    skipped: dict[str, SkippedFile] = {}
    for entry in scan_project(resolve_root(root), settings):
        if isinstance(entry, ScannedFile):
            scanned[entry.rel_path] = entry
        else:
            skipped[entry.rel_path] = entry
    return scanned, skipped


def test_gitignore_nested_negation_and_kbignore(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    _write(root, ".gitignore", "*.log\n/out/\n!keep.log\n")
    _write(root, "app.log", "noise\n")
    _write(root, "keep.log", "kept\n")
    _write(root, "out/result.txt", "generated\n")
    _write(root, "src/out/real.py")  # /out/ is anchored to the root
    _write(root, "src/.gitignore", "secret_*.py\n!keep.log\n")
    _write(root, "src/secret_a.py")
    _write(root, "src/main.py")
    _write(root, "src/deep/.kbignore", "*.py\n")
    _write(root, "src/deep/.gitignore", "!*.py\n")  # .kbignore wins over .gitignore in the same directory
    _write(root, "src/deep/x.py")
    _write(root, "src/deep/notes.md", "# notes\n")
    _write(root, ".kbignore", "docs/\n")
    _write(root, "docs/guide.md", "# guide\n")
    scanned, skipped = _scan(root, _settings(tmp_path))
    assert set(scanned) == {
        ".gitignore",
        ".kbignore",
        "keep.log",
        "src/.gitignore",
        "src/deep/.gitignore",
        "src/deep/.kbignore",
        "src/deep/notes.md",
        "src/main.py",
        "src/out/real.py",
    }
    for rel in ("app.log", "out/", "src/secret_a.py", "src/deep/x.py", "docs/"):
        assert skipped[rel].reason is SkipReason.IGNORED, rel
    assert "docs/guide.md" not in skipped  # an ignored directory is not entered


def test_git_info_exclude_is_honoured(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    _write(root, ".git/info/exclude", "local_*.py\n")
    _write(root, "local_tool.py")
    _write(root, "main.py")
    scanned, skipped = _scan(root, _settings(tmp_path))
    assert set(scanned) == {"main.py"}
    assert skipped["local_tool.py"].reason is SkipReason.IGNORED
    assert skipped[".git/"].reason is SkipReason.VENDORED


def test_vendored_lock_secret_generated_and_binary_files_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    for rel in ("node_modules/pkg/index.js", "build/out.py", "__pycache__/m.py", "target/x.rs", "pkg.egg-info/PKG"):
        _write(root, rel)
    _write(root, "myenv/pyvenv.cfg", "home = /usr\n")  # a virtualenv under an unusual name
    _write(root, "myenv/lib/site.py")
    _write(root, "package-lock.json", "{}\n")
    _write(root, "Cargo.lock", "x\n")
    _write(root, "deps.lock", "x\n")
    _write(root, ".env", "API_KEY=abc\n")
    _write(root, ".env.production", "API_KEY=abc\n")
    _write(root, ".env.example", "API_KEY=\n")
    _write(root, "server.pem", "-----BEGIN PRIVATE KEY-----\n")
    _write(root, "id_rsa", "key\n")
    _write(root, "app.min.js", "var a=1;\n")
    _write(root, "logo.png", b"\x89PNG\r\n")
    _write(root, "main.py")
    scanned, skipped = _scan(root, _settings(tmp_path))
    assert set(scanned) == {".env.example", "main.py"}
    expected = {
        "node_modules/": SkipReason.VENDORED,
        "build/": SkipReason.VENDORED,
        "__pycache__/": SkipReason.VENDORED,
        "target/": SkipReason.VENDORED,
        "pkg.egg-info/": SkipReason.VENDORED,
        "myenv/": SkipReason.VENDORED,
        "package-lock.json": SkipReason.LOCK_FILE,
        "Cargo.lock": SkipReason.LOCK_FILE,
        "deps.lock": SkipReason.LOCK_FILE,
        ".env": SkipReason.SECRET_FILE,
        ".env.production": SkipReason.SECRET_FILE,
        "server.pem": SkipReason.SECRET_FILE,
        "id_rsa": SkipReason.SECRET_FILE,
        "app.min.js": SkipReason.GENERATED,
        "logo.png": SkipReason.BINARY,
    }
    assert {rel: skip.reason for rel, skip in skipped.items()} == expected


def test_files_over_the_size_limit_are_skipped_with_the_limit_named(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    _write(root, "big.py", "x = 1\n" * 100)
    _write(root, "small.py", "x = 1\n")
    scanned, skipped = _scan(root, _settings(tmp_path, max_file_bytes=100))
    assert set(scanned) == {"small.py"}
    assert skipped["big.py"].reason is SkipReason.TOO_LARGE
    assert "KB_MAX_FILE_BYTES=100" in skipped["big.py"].detail


def test_symlinks_are_never_followed_and_loops_are_survived(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    outside = tmp_path / "outside"
    _write(outside, "secret.py", "password = 'x'\n")
    _write(root, "src/a.py")
    (root / "inside_link.py").symlink_to(root / "src" / "a.py")
    (root / "src_link").symlink_to(root / "src", target_is_directory=True)
    (root / "out_link").symlink_to(outside, target_is_directory=True)
    (root / "out_file.py").symlink_to(outside / "secret.py")
    (root / "self_loop").symlink_to(root / "self_loop")
    (root / "loop_a").symlink_to(root / "loop_b")
    (root / "loop_b").symlink_to(root / "loop_a")
    (root / "src" / "parent").symlink_to(root, target_is_directory=True)  # a cycle through a directory
    (root / "dangling.py").symlink_to(root / "missing.py")
    scanned, skipped = _scan(root, _settings(tmp_path))
    assert set(scanned) == {"src/a.py"}
    assert skipped["inside_link.py"].reason is SkipReason.SYMLINK
    assert skipped["src_link"].reason is SkipReason.SYMLINK
    assert skipped["src/parent"].reason is SkipReason.SYMLINK
    assert skipped["out_link"].reason is SkipReason.SYMLINK_OUTSIDE
    assert skipped["out_file.py"].reason is SkipReason.SYMLINK_OUTSIDE
    for rel in ("self_loop", "loop_a", "loop_b"):
        assert skipped[rel].reason is SkipReason.BROKEN_SYMLINK
        assert skipped[rel].detail == "symlink loop"
    assert skipped["dangling.py"].reason is SkipReason.BROKEN_SYMLINK


def test_a_fifo_is_not_read(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    _write(root, "main.py")
    os.mkfifo(root / "pipe")
    scanned, skipped = _scan(root, _settings(tmp_path))
    assert set(scanned) == {"main.py"}
    assert skipped["pipe"].reason is SkipReason.NOT_REGULAR


def test_root_must_be_an_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(ProjectPathError, match="no such file or directory"):
        resolve_root(tmp_path / "missing")
    _write(tmp_path, "file.txt", "x\n")
    with pytest.raises(ProjectPathError, match="not a directory"):
        resolve_root(tmp_path / "file.txt")


def _scanned(root: Path, rel: str) -> ScannedFile:
    scanned, _ = _scan(root, Settings(home=root / "home"))
    return scanned[rel]


def test_read_decodes_utf8_and_normalises_line_endings(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    _write(root, "a.py", b"\xef\xbb\xbfs = '\xc3\xa9'\r\nt = 2\r\n")
    result = read_scanned(_scanned(root, "a.py"), max_bytes=1000)
    assert isinstance(result, FileText)
    assert result.text == "s = 'é'\nt = 2\n"
    assert not result.lossy_decode
    assert len(result.content_hash) == 64


def test_read_undecodable_text_is_lossy_and_flagged(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    _write(root, "latin1.txt", "café = 'crème brûlée'\n".encode("latin-1"))
    result = read_scanned(_scanned(root, "latin1.txt"), max_bytes=1000)
    assert isinstance(result, FileText)
    assert result.lossy_decode
    assert "caf\ufffd" in result.text


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"ELF\x00\x01\x02" + b"x" * 100, "NUL"),
        (bytes(range(128, 256)) * 20, "undecodable"),
        (bytes([1, 2, 3, 4, 5, 6, 14, 15, 16]) * 50, "control"),
    ],
)
def test_read_refuses_binary_content(tmp_path: Path, content: bytes, detail: str) -> None:
    root = tmp_path / "proj"
    _write(root, "blob.dat", content)
    result = read_scanned(_scanned(root, "blob.dat"), max_bytes=100_000)
    assert isinstance(result, SkippedFile)
    assert result.reason is SkipReason.BINARY
    assert detail in result.detail


def test_read_empty_file_gives_empty_text(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    _write(root, "empty.py", "")
    result = read_scanned(_scanned(root, "empty.py"), max_bytes=1000)
    assert isinstance(result, FileText)
    assert result.text == ""


def test_read_a_file_that_vanished_since_the_scan(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    path = _write(root, "gone.py")
    scanned = _scanned(root, "gone.py")
    path.unlink()
    result = read_scanned(scanned, max_bytes=1000)
    assert isinstance(result, SkippedFile)
    assert result.reason is SkipReason.VANISHED


def test_read_a_file_that_changed_since_the_scan_reports_the_new_stat(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    path = _write(root, "a.py", "x = 1\n")
    scanned = _scanned(root, "a.py")
    path.write_text("x = 1\ny = 2\n")
    result = read_scanned(scanned, max_bytes=1000)
    assert isinstance(result, FileText)
    assert result.text == "x = 1\ny = 2\n"
    assert result.file.size == len("x = 1\ny = 2\n") != scanned.size


def test_read_a_file_that_keeps_changing_while_read_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import knowledgebase.index.scanning as scanning

    root = tmp_path / "proj"
    path = _write(root, "log.txt", "line\n")
    scanned = _scanned(root, "log.txt")
    real_read_all = scanning.read_at_most

    def read_while_a_writer_appends(fd: int, limit: int) -> bytes:
        data = real_read_all(fd, limit)
        with path.open("a") as fh:  # another process appends as we read
            fh.write("more\n")
        return data

    monkeypatch.setattr(scanning, "read_at_most", read_while_a_writer_appends)
    result = read_scanned(scanned, max_bytes=10_000)
    assert isinstance(result, SkippedFile)
    assert result.reason is SkipReason.CHANGING
    assert "next run" in result.detail


def test_read_a_file_that_grew_past_the_limit(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    path = _write(root, "a.py", "x = 1\n")
    scanned = _scanned(root, "a.py")
    path.write_text("x = 1\n" * 1000)
    result = read_scanned(scanned, max_bytes=100)
    assert isinstance(result, SkippedFile)
    assert result.reason is SkipReason.TOO_LARGE


def test_languages_come_from_file_names(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    for rel in ("a.py", "b.ts", "c.tsx", "d.go", "e.rs", "f.java", "g.md", "h.rst", "Makefile", "notes"):
        _write(root, rel)
    scanned, _ = _scan(root, _settings(tmp_path))
    languages = {rel: f.language for rel, f in scanned.items()}
    assert languages == {
        "a.py": "python",
        "b.ts": "typescript",
        "c.tsx": "tsx",
        "d.go": "go",
        "e.rs": "rust",
        "f.java": "java",
        "g.md": "markdown",
        "h.rst": "rst",
        "Makefile": "make",
        "notes": None,
    }
