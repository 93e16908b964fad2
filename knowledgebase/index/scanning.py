"""Walking a project directory: which files to index, and reading them safely.

``scan_project(root, settings)`` walks ``root`` and yields a ``ScannedFile`` (path, size, mtime,
language, role: one ``lstat`` each, no read) for every file worth indexing, and a ``SkippedFile`` with a
``SkipReason`` for everything it leaves out:

- paths matched by ``.gitignore`` files (nested ones too, deeper files winning, ``!`` negations),
  ``.git/info/exclude`` and ``.kbignore`` files (same syntax; they win over ``.gitignore`` in the same
  directory). An ignored directory is reported once and not entered.
- vendored or generated directories (``node_modules``, ``.git``, virtualenvs, ``dist``, ``build``,
  ``__pycache__``, ``target``, ``vendor``...), lock files, secret files (``.env``, private keys),
  minified bundles, known binary formats, files over ``settings.max_file_bytes``, and anything that is
  not a regular file (FIFOs, sockets, devices).
- symlinks, which are never followed: a link whose target is inside the root is skipped because the
  target is indexed under its own path; a link out of the root, a dangling link and a link loop are
  reported as such. Following nothing makes loops harmless and keeps every file indexed once.

``read_scanned(file, max_bytes=...)`` then reads one file (only needed for new or changed files): it
refuses binary content, decodes UTF-8 leniently (undecodable bytes become U+FFFD and the file is
flagged ``lossy_decode``), normalises CRLF to LF, and re-reads a file that changes while being read.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from pathspec import GitIgnoreSpec

from knowledgebase.config import Settings
from knowledgebase.errors import ProjectPathError
from knowledgebase.util.fileio import read_at_most
from knowledgebase.util.redact import redact_text
from knowledgebase.util.roles import file_role

# Directory names never entered: dependencies, build output, caches, VCS metadata.
VENDORED_DIRS = frozenset(
    {
        ".git", ".hg", ".svn", ".bzr", "node_modules", "bower_components", "jspm_packages", ".venv", "venv",
        ".tox", ".nox", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis",
        ".ipynb_checkpoints", "dist", "build", "target", "vendor", "site-packages", ".eggs", ".gradle",
        ".next", ".nuxt", ".svelte-kit", ".parcel-cache", ".turbo", ".cache", ".terraform", ".serverless",
        "coverage", "htmlcov", ".idea", ".vs", "Pods", "DerivedData", ".dart_tool", ".pub-cache", "_build",
        ".stack-work", "zig-cache", "zig-out",
    }
)  # fmt: skip
VENDORED_DIR_SUFFIXES = (".egg-info", ".dist-info")
LOCK_FILES = frozenset(
    {
        "package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml", "bun.lockb", "bun.lock",
        "poetry.lock", "Pipfile.lock", "pdm.lock", "uv.lock", "Cargo.lock", "go.sum", "composer.lock",
        "Gemfile.lock", "mix.lock", "flake.lock", "packages.lock.json", "pubspec.lock", "Podfile.lock",
        "conda-lock.yml", "gradle.lockfile",
    }
)  # fmt: skip
SECRET_FILES = frozenset(
    {
        ".env", ".envrc", ".netrc", "_netrc", ".pgpass", ".pypirc", ".npmrc", ".yarnrc", ".git-credentials",
        ".htpasswd", ".my.cnf", ".mylogin.cnf", ".s3cfg", ".boto", ".dockercfg", ".vault-token", ".terraformrc",
        "terraform.tfstate", "credentials.json", "service-account.json", "client_secret.json", "secrets.json",
        "kubeconfig",
    }
)  # fmt: skip
# Files secret by the folder they sit in: ~/.aws/credentials, ~/.docker/config.json, ~/.kube/config...
SECRET_FOLDER_FILES = frozenset(
    {
        (".aws", "credentials"), (".docker", "config.json"), (".kube", "config"),
        (".gem", "credentials"), (".cargo", "credentials"), (".cargo", "credentials.toml"),
        (".config/gh", "hosts.yml"), (".gnupg", "secring.gpg"),
    }
)  # fmt: skip
# SSH keys: id_rsa, id_ed25519, id_ecdsa_sk, id_anything (not id_rsa.pub, not id_utils.py)
SSH_KEY_NAME = re.compile(r"id_[a-z0-9_]+|.*_(?:rsa|dsa|ecdsa|ed25519)")
# ``.env.local``, ``.env.production``... are secret; these conventional templates are not (and are redacted anyway).
ENV_TEMPLATES = frozenset({".env.example", ".env.sample", ".env.template", ".env.dist", ".env.defaults"})
SECRET_SUFFIXES = (".pem", ".key", ".p12", ".pfx", ".jks", ".keystore", ".kdbx", ".gpg", ".age", ".ovpn")
GENERATED_SUFFIXES = (".min.js", ".min.css", ".min.mjs", ".map", ".bundle.js", ".chunk.js")
BINARY_SUFFIXES = frozenset(
    {
        ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ico", ".icns", ".webp", ".tif", ".tiff", ".psd", ".heic",
        ".pdf", ".doc", ".docx", ".xls", ".xlsx", ".ppt", ".pptx", ".odt", ".ods", ".zip", ".gz", ".tgz",
        ".bz2", ".xz", ".zst", ".7z", ".rar", ".tar", ".jar", ".war", ".whl", ".egg", ".so", ".dylib", ".dll",
        ".exe", ".bin", ".o", ".a", ".lib", ".obj", ".class", ".pyc", ".pyo", ".pyd", ".wasm", ".mp3", ".mp4",
        ".wav", ".flac", ".ogg", ".mov", ".avi", ".mkv", ".webm", ".ttf", ".otf", ".woff", ".woff2", ".eot",
        ".sqlite", ".sqlite3", ".db", ".parquet", ".feather", ".arrow", ".npy", ".npz", ".pkl", ".pickle",
        ".pt", ".pth", ".onnx", ".safetensors", ".h5", ".hdf5", ".tflite", ".iso", ".dmg", ".deb", ".rpm",
    }
)  # fmt: skip
IGNORE_FILES = (".gitignore", ".kbignore")  # lowest to highest precedence within one directory

LANGUAGES = {
    ".py": "python", ".pyi": "python", ".pyw": "python", ".js": "javascript", ".mjs": "javascript",
    ".cjs": "javascript", ".jsx": "javascript", ".ts": "typescript", ".mts": "typescript",
    ".cts": "typescript", ".tsx": "tsx", ".go": "go", ".rs": "rust", ".java": "java", ".md": "markdown",
    ".markdown": "markdown", ".mdx": "markdown", ".rst": "rst", ".rest": "rst", ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".cs": "csharp", ".kt": "kotlin",
    ".kts": "kotlin", ".scala": "scala", ".swift": "swift", ".rb": "ruby", ".php": "php", ".lua": "lua",
    ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".fish": "shell", ".ps1": "powershell", ".sql": "sql",
    ".html": "html", ".htm": "html", ".css": "css", ".scss": "scss", ".vue": "vue", ".svelte": "svelte",
    ".json": "json", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".ini": "ini", ".cfg": "ini",
    ".xml": "xml", ".txt": "text", ".tex": "latex", ".r": "r", ".jl": "julia", ".ex": "elixir",
    ".exs": "elixir", ".erl": "erlang", ".hs": "haskell", ".ml": "ocaml", ".clj": "clojure", ".dart": "dart",
    ".zig": "zig", ".nim": "nim", ".proto": "protobuf", ".graphql": "graphql", ".tf": "terraform",
    ".mako": "mako", ".jinja": "jinja", ".j2": "jinja", ".ipynb": "json",
}  # fmt: skip
LANGUAGE_BY_NAME = {"Makefile": "make", "Dockerfile": "dockerfile", "CMakeLists.txt": "cmake", "Justfile": "just"}

SNIFF_BYTES = 8192
# Longest relative path indexed, in UTF-8 bytes: PostgreSQL cannot index a btree key over 2704 bytes
# (``project_files (project_id, file_path)``), and deeper paths near PATH_MAX cannot be opened anyway.
MAX_PATH_BYTES = 2048
_Spec = tuple[str, GitIgnoreSpec]  # an ignore file's patterns and the directory (relative) it sits in
READ_ATTEMPTS = 3


class SkipReason(StrEnum):
    """Why a path was left out of the index."""

    IGNORED = "ignored (.gitignore/.kbignore)"
    VENDORED = "vendored or generated directory"
    LOCK_FILE = "lock file"
    SECRET_FILE = "secret file"
    GENERATED = "minified or generated file"
    BINARY = "binary"
    TOO_LARGE = "too large"
    NOT_REGULAR = "not a regular file"
    SYMLINK = "symlink (target indexed under its own path)"
    SYMLINK_OUTSIDE = "symlink out of the project root"
    BROKEN_SYMLINK = "dangling symlink or symlink loop"
    UNREADABLE = "unreadable"
    BAD_NAME = "name is not valid UTF-8"
    PATH_TOO_LONG = "path too long"
    VANISHED = "vanished while scanning"
    CHANGING = "kept changing while being read"


@dataclass(frozen=True)
class ScannedFile:
    """A file to index, as seen by one ``lstat`` (not read yet)."""

    path: Path
    rel_path: str
    size: int
    mtime_ns: int
    language: str | None
    role: str = "source"  # knowledgebase.util.roles.file_role of ``rel_path``


@dataclass(frozen=True)
class SkippedFile:
    """A path left out, with the reason and (for people) a detail."""

    rel_path: str
    reason: SkipReason
    detail: str = ""


@dataclass(frozen=True)
class FileText:
    """The decoded text of a file and what is known about it after reading."""

    file: ScannedFile
    text: str
    content_hash: str
    lossy_decode: bool


def resolve_root(root: Path | str) -> Path:
    """``root`` as an absolute, symlink-free directory path; ProjectPathError if it is not one."""
    path = Path(root).expanduser()
    if not path.exists():
        raise ProjectPathError(f"cannot index {str(root)!r}: no such file or directory")
    if not path.is_dir():
        raise ProjectPathError(f"cannot index {str(root)!r}: not a directory (give the project's root folder)")
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise ProjectPathError(f"cannot index {str(root)!r}: {exc}") from None
    if _name_problem(str(resolved)) is not None:
        raise ProjectPathError(
            f"cannot index {printable_path(str(resolved))!r}: its path is not valid UTF-8 (rename the folder)"
        )
    return resolved


def printable_path(path: str) -> str:
    """``path`` safe to print and store: bytes that are not UTF-8 (surrogate escapes) shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def _name_problem(rel: str) -> SkipReason | None:
    """Why ``rel`` cannot be stored as a path: not valid UTF-8, or longer than ``MAX_PATH_BYTES``."""
    try:
        size = len(rel.encode("utf-8"))
    except UnicodeEncodeError:
        return SkipReason.BAD_NAME
    return SkipReason.PATH_TOO_LONG if size > MAX_PATH_BYTES else None


def language_for(rel_path: str) -> str | None:
    """The language of a file from its name (None when unknown)."""
    name = rel_path.rsplit("/", 1)[-1]
    if name in LANGUAGE_BY_NAME:
        return LANGUAGE_BY_NAME[name]
    _, dot, ext = name.rpartition(".")
    return LANGUAGES.get("." + ext.lower()) if dot else None


def scan_project(root: Path, settings: Settings) -> Iterator[ScannedFile | SkippedFile]:
    """Walk ``root`` (already resolved) and yield every file to index or skip, in path order."""
    exclude = root / ".git" / "info" / "exclude"
    base_specs: list[_Spec] = []
    if exclude.is_file():
        base_specs.append(("", GitIgnoreSpec.from_lines(_read_lines(exclude))))
    stack: list[tuple[Path, str, list[_Spec]]] = [(root, "", base_specs)]
    while stack:
        directory, rel_dir, inherited = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except FileNotFoundError:
            yield SkippedFile(rel_dir or ".", SkipReason.VANISHED)
            continue
        except OSError as exc:
            yield SkippedFile(rel_dir or ".", SkipReason.UNREADABLE, exc.strerror or str(exc))
            continue
        specs = inherited + _ignore_specs(directory, rel_dir, {e.name for e in entries})
        subdirs: list[tuple[Path, str, list[_Spec]]] = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            problem = _name_problem(rel)
            if problem is not None:  # reported, never stored: the database could not hold it
                yield _bad_path_skip(entry, rel, problem)
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                yield SkippedFile(rel, SkipReason.VANISHED)
                continue
            except OSError as exc:
                yield SkippedFile(rel, SkipReason.UNREADABLE, exc.strerror or str(exc))
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if _ignored(specs, rel + "/" if is_dir else rel):
                yield SkippedFile(rel + "/" if is_dir else rel, SkipReason.IGNORED)
            elif stat.S_ISLNK(st.st_mode):
                yield _symlink_skip(root, Path(entry.path), rel)
            elif is_dir:
                if _vendored_dir(Path(entry.path), entry.name):
                    yield SkippedFile(rel + "/", SkipReason.VENDORED)
                else:
                    subdirs.append((Path(entry.path), rel, specs))
            elif not stat.S_ISREG(st.st_mode):
                yield SkippedFile(rel, SkipReason.NOT_REGULAR)
            else:
                yield _classify_file(Path(entry.path), rel, st, settings.max_file_bytes)
        # depth-first in name order: push in reverse so the first name is walked first
        stack.extend(reversed(subdirs))


def scan_path(root: Path, rel: str, settings: Settings) -> ScannedFile | SkippedFile | None:
    """What ``scan_project`` would yield for the one file ``rel`` (relative to the resolved ``root``):
    the same ignore files, vendored directories and skip rules; None when no such file exists."""
    problem = _name_problem(rel)
    if problem is not None:
        return SkippedFile(printable_path(rel), problem)
    exclude = root / ".git" / "info" / "exclude"
    specs: list[_Spec] = []
    if exclude.is_file():
        specs.append(("", GitIgnoreSpec.from_lines(_read_lines(exclude))))
    parts = rel.split("/")
    directory, rel_dir = root, ""
    for index, name in enumerate(parts):
        try:
            names = set(os.listdir(directory))
        except OSError:
            return None
        specs = specs + _ignore_specs(directory, rel_dir, names)
        here = f"{rel_dir}/{name}" if rel_dir else name
        path = directory / name
        last = index == len(parts) - 1
        try:
            st = path.lstat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return SkippedFile(here, SkipReason.UNREADABLE, exc.strerror or str(exc))
        if _ignored(specs, here if last else here + "/"):
            return SkippedFile(here if last else here + "/", SkipReason.IGNORED)
        if stat.S_ISLNK(st.st_mode):
            return _symlink_skip(root, path, here)
        if not last:
            if not stat.S_ISDIR(st.st_mode):
                return None
            if _vendored_dir(path, name):
                return SkippedFile(here + "/", SkipReason.VENDORED)
            directory, rel_dir = path, here
            continue
        if stat.S_ISDIR(st.st_mode):
            return None
        if not stat.S_ISREG(st.st_mode):
            return SkippedFile(here, SkipReason.NOT_REGULAR)
        return _classify_file(path, here, st, settings.max_file_bytes)
    return None


def _bad_path_skip(entry: os.DirEntry[str], rel: str, problem: SkipReason) -> SkippedFile:
    try:
        is_dir = entry.is_dir(follow_symlinks=False)
    except OSError:
        is_dir = False
    shown = printable_path(rel) + ("/" if is_dir else "")
    if problem is SkipReason.BAD_NAME:
        return SkippedFile(shown, problem, "rename it to index it")
    return SkippedFile(shown[:200] + "...", problem, f"more than {MAX_PATH_BYTES} bytes")


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def _ignore_specs(directory: Path, rel_dir: str, names: set[str]) -> list[_Spec]:
    specs: list[_Spec] = []
    for name in IGNORE_FILES:
        if name in names:
            lines = _read_lines(directory / name)
            if any(line.strip() and not line.lstrip().startswith("#") for line in lines):
                specs.append((rel_dir, GitIgnoreSpec.from_lines(lines)))
    return specs


def _ignored(specs: list[_Spec], rel: str) -> bool:
    """Whether ``rel`` (``dir/`` for directories) is ignored; the deepest deciding pattern wins."""
    for spec_dir, spec in reversed(specs):
        local = rel[len(spec_dir) + 1 :] if spec_dir else rel
        include = spec.check_file(local).include
        if include is not None:
            return bool(include)
    return False


def _vendored_dir(path: Path, name: str) -> bool:
    if name in VENDORED_DIRS or name.endswith(VENDORED_DIR_SUFFIXES):
        return True
    return os.path.exists(path / "pyvenv.cfg")  # a virtualenv under any name (False when unreachable)


def _symlink_skip(root: Path, link: Path, rel: str) -> SkippedFile:
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        loop = isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP
        return SkippedFile(rel, SkipReason.BROKEN_SYMLINK, "symlink loop" if loop else "target does not exist")
    if target == root or root in target.parents:
        return SkippedFile(rel, SkipReason.SYMLINK, f"-> {target.relative_to(root).as_posix() or '.'}")
    return SkippedFile(rel, SkipReason.SYMLINK_OUTSIDE, f"-> {target}")


def is_secret_file(rel: str) -> bool:
    """Whether the file at ``rel`` (relative, ``/``-separated) holds credentials by its name or folder."""
    folder, _, name = rel.rpartition("/")
    lower = name.lower()
    return (
        name in SECRET_FILES
        or (lower.startswith(".env.") and lower not in ENV_TEMPLATES)
        or lower.endswith(SECRET_SUFFIXES)
        or SSH_KEY_NAME.fullmatch(lower) is not None
        or any(folder == f or folder.endswith("/" + f) for f, n in SECRET_FOLDER_FILES if n == name)
    )


def _classify_file(path: Path, rel: str, st: os.stat_result, max_bytes: int) -> ScannedFile | SkippedFile:
    name = path.name
    lower = name.lower()
    if name in LOCK_FILES or lower.endswith(".lock"):
        return SkippedFile(rel, SkipReason.LOCK_FILE)
    if is_secret_file(rel):
        return SkippedFile(rel, SkipReason.SECRET_FILE)
    if redact_text(rel).count:
        return SkippedFile(redact_text(rel).text, SkipReason.SECRET_FILE, "a secret in its name")
    if lower.endswith(GENERATED_SUFFIXES):
        return SkippedFile(rel, SkipReason.GENERATED)
    if os.path.splitext(lower)[1] in BINARY_SUFFIXES:
        return SkippedFile(rel, SkipReason.BINARY, "by extension")
    if st.st_size > max_bytes:
        return SkippedFile(rel, SkipReason.TOO_LARGE, f"{st.st_size} bytes > KB_MAX_FILE_BYTES={max_bytes}")
    return ScannedFile(
        path=path,
        rel_path=rel,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        language=language_for(rel),
        role=file_role(rel),
    )


def read_scanned(file: ScannedFile, *, max_bytes: int) -> FileText | SkippedFile:
    """Read and decode ``file``; a SkippedFile says why it cannot be indexed (binary, vanished...).

    The returned ``FileText.file`` carries the size and mtime the content was read at, which may be
    newer than the scan's if the file changed in between. A file still changing after a few attempts
    is skipped (and picked up by the next run).
    """
    for _ in range(READ_ATTEMPTS):
        try:
            fd = os.open(file.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            return SkippedFile(file.rel_path, SkipReason.VANISHED)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # replaced by a symlink since the scan
                return SkippedFile(file.rel_path, SkipReason.SYMLINK, "became a symlink")
            return SkippedFile(file.rel_path, SkipReason.UNREADABLE, exc.strerror or str(exc))
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                return SkippedFile(file.rel_path, SkipReason.NOT_REGULAR)
            if before.st_size > max_bytes:
                return SkippedFile(file.rel_path, SkipReason.TOO_LARGE, f"{before.st_size} bytes")
            data = read_at_most(fd, max_bytes + 1)
        except OSError as exc:
            return SkippedFile(file.rel_path, SkipReason.UNREADABLE, exc.strerror or str(exc))
        finally:
            os.close(fd)
        try:
            after = os.stat(file.path, follow_symlinks=False)
        except FileNotFoundError:
            return SkippedFile(file.rel_path, SkipReason.VANISHED)
        stable = (
            after.st_ino == before.st_ino
            and after.st_size == before.st_size == len(data)
            and after.st_mtime_ns == before.st_mtime_ns
        )
        if stable:
            current = replace(file, size=before.st_size, mtime_ns=before.st_mtime_ns)
            return _decode(current, data)
        if len(data) > max_bytes:
            return SkippedFile(file.rel_path, SkipReason.TOO_LARGE, f"more than {max_bytes} bytes")
    return SkippedFile(file.rel_path, SkipReason.CHANGING, "it will be read again on the next run")




def _decode(file: ScannedFile, data: bytes) -> FileText | SkippedFile:
    if b"\x00" in data:
        return SkippedFile(file.rel_path, SkipReason.BINARY, "contains NUL bytes")
    content_hash = hashlib.sha256(data).hexdigest()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text, lossy = data.decode("utf-8"), False
    except UnicodeDecodeError:
        text, lossy = data.decode("utf-8", errors="replace"), True
        if text.count("\ufffd") > max(8, len(text) // 10):
            return SkippedFile(file.rel_path, SkipReason.BINARY, "mostly undecodable bytes")
    if mostly_control(text[:SNIFF_BYTES]):
        return SkippedFile(file.rel_path, SkipReason.BINARY, "control characters")
    return FileText(file=file, text=text.replace("\r\n", "\n"), content_hash=content_hash, lossy_decode=lossy)


def mostly_control(sample: str) -> bool:
    """True when over a tenth of ``sample`` is control characters (other than whitespace and ESC): binary."""
    if not sample:
        return False
    control = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\t\n\r\f\v\x1b")
    return control > len(sample) // 10
