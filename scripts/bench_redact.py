#!/usr/bin/env python
"""Redaction: recall and false positives on the corpus, and throughput of ``redact`` on realistic text.

    .venv/bin/python scripts/bench_redact.py [--log-mb 8] [--repeat 3] [--scan DIR] [--json]

- Corpus (``tests/redaction_corpus.py``): recall = positive cases with every secret gone / positive
  cases; false positives = negative cases (ordinary code and config) changed at all; precision =
  true positives / (true positives + false positives), counting a case as one.
- Throughput, in MB of UTF-8 per second by the wall clock and per CPU second (best of ``--repeat``;
  the CPU figure is the steadier one on a shared machine), of ``redact`` over: the package's own
  source concatenated (Python full of ``token``/``password``/``key`` names); the Markdown docs; and a
  synthetic command log of ``--log-mb`` MB (pytest, pip, HTTP access and shell lines, one secret per
  500 lines), redacted as one text and as 64 KB pieces, the size of one stored command output.
- Worst cases: MB/s on inputs built to make regular expressions backtrack (a keyword repeated on one
  line, base64 lines with no END, thousands of URLs without a space), so one can see that no rule
  is quadratic.
- ``--scan DIR``: every ``*.py`` file under DIR (say, a virtualenv's site-packages) redacted, and the
  number of lines changed, with the first ``--show`` of them: a false-positive check on real code
  (what it flags there is mostly example passwords in docs, ``password="tiger"``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from knowledgebase.util.redact import redact  # noqa: E402
from tests.redaction_corpus import AWS_SECRET, NEGATIVE, NPM, POSITIVE, Case  # noqa: E402

_LOG_LINES = [
    "tests/test_store.py::test_insert_and_fetch[{n}] PASSED                                    [ {p}%]",
    "Collecting requests>=2.{n} (from -r requirements.txt (line {p}))",
    '10.0.{p}.{n} - - [01/Dec/2026:12:{p:02d}:07 +0000] "GET /api/v1/items/{n}?page={p} HTTP/1.1" 200 {n} "-" "curl"',
    "+ make -C build -j{p} target_{n}",
    "2026-12-01T12:00:{p:02d}.{n:06d}Z INFO worker[{p}] processed batch {n} in {p}.{n}ms (token_count={n})",
    "  File \"/usr/lib/python3.11/site-packages/pkg/mod_{p}.py\", line {n}, in handle",
    "commit {sha} Merge pull request #{n} from feature/branch-{p}",
    "integrity sha512-{b64}==",
]
_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_SECRET_LINES = [
    "export API_TOKEN=tok-{n}-EXAMPLE && ./deploy.sh",
    f"aws_secret_access_key = {AWS_SECRET}",
    f"//registry.npmjs.org/:_authToken={NPM}",
    "curl -u deploy:pw{n}EXAMPLE https://ci.example/api",
    "postgresql://app:s3cr/et{n}@db.example:5432/app",
]


def _leaks(case: Case) -> bool:
    out = redact(case.text) or ""
    if not case.secrets:
        return out != case.text
    return any(s in out for s in case.secrets) or "[REDACTED:" not in out


def corpus_scores() -> dict[str, float | int]:
    true_positives = sum(not _leaks(c) for c in POSITIVE)
    false_positives = sum(_leaks(c) for c in NEGATIVE)
    return {
        "positive_cases": len(POSITIVE),
        "negative_cases": len(NEGATIVE),
        "true_positives": true_positives,
        "false_positives": false_positives,
        "recall": true_positives / len(POSITIVE),
        "precision": true_positives / max(1, true_positives + false_positives),
    }


def synthetic_log(megabytes: float, seed: int = 13) -> str:
    rng = random.Random(seed)
    lines: list[str] = []
    size = 0
    while size < megabytes * 1_000_000:
        n, p = rng.randrange(1, 99999), rng.randrange(0, 60)
        if len(lines) % 500 == 499:
            line = rng.choice(_SECRET_LINES).format(n=n)
        else:
            sha = f"{rng.getrandbits(160):040x}"
            b64 = "".join(rng.choice(_BASE64) for _ in range(86))
            line = rng.choice(_LOG_LINES).format(n=n, p=p, sha=sha, b64=b64)
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines) + "\n"


def throughput(text: str, repeat: int, fn: Callable[[str], object] = redact) -> tuple[float, float]:
    """MB/s by the wall clock and per CPU second (the best of ``repeat`` runs each)."""
    mb = len(text.encode("utf-8", "surrogatepass")) / 1_000_000
    wall = cpu = float("inf")
    for _ in range(repeat):
        started, started_cpu = time.perf_counter(), time.process_time()
        fn(text)
        wall, cpu = min(wall, time.perf_counter() - started), min(cpu, time.process_time() - started_cpu)
    return mb / wall, mb / max(cpu, 1e-9)


def adversarial_inputs() -> dict[str, str]:
    base64_lines = "\n".join(["QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx"] * 3000)
    return {
        "base64 lines, no END": "the private key:\n" + base64_lines + "\n",
        "BEGIN, no END": "-----BEGIN PRIVATE KEY-----\n" + base64_lines,
        "'curl -u ' x 20k": "curl -u " * 20_000,
        "'mysql ' x 20k, -p": "mysql " * 20_000 + " -p",
        "'docker login ' x 20k": "docker login " * 20_000,
        "'http://a:b' x 20k": "http://a:b" * 20_000,
        "'password=' x 100k": "password=" * 100_000,
        "'X-Api-Key:' x 100k": " ".join(["X-Api-Key:"] * 100_000),
        "'token=abcN' x 50k": " ".join(f"token=abc{i}" for i in range(50_000)),
        "one 1 MB word": "a" * 1_000_000,
    }


def _in_pieces(text: str, size: int = 65_536) -> None:
    for start in range(0, len(text), size):
        redact(text[start : start + size])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-mb", type=float, default=8.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scan", type=Path, help="a folder of Python code to count changed lines in")
    parser.add_argument("--show", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    scores = corpus_scores()
    source = "".join(p.read_text() for p in sorted((ROOT / "knowledgebase").rglob("*.py")))
    docs = "".join(p.read_text() for p in sorted(ROOT.glob("*.md")) + sorted((ROOT / "docs").rglob("*.md")))
    log = synthetic_log(args.log_mb)
    texts = {"package source": source, "markdown docs": docs, "command log": log}
    measured = {name: throughput(text, args.repeat) for name, text in texts.items()}
    measured["command log, 64 KB pieces"] = throughput(log, args.repeat, _in_pieces)
    speeds = {name: wall for name, (wall, _) in measured.items()}
    cpu_speeds = {name: cpu for name, (_, cpu) in measured.items()}
    sizes = {name: len(text.encode()) / 1_000_000 for name, text in texts.items()}
    sizes["command log, 64 KB pieces"] = sizes["command log"]
    worst = {name: throughput(text, 1)[1] for name, text in adversarial_inputs().items()}
    scan = scan_code(args.scan) if args.scan else None
    if args.json:
        report = {
            "corpus": scores, "mb_per_s": speeds, "mb_per_cpu_s": cpu_speeds, "mb": sizes,
            "worst_case_mb_per_cpu_s": worst, "scan": scan,
        }  # fmt: skip
        print(json.dumps(report, indent=2))
        return
    print(
        f"corpus: recall {scores['true_positives']}/{scores['positive_cases']} ({scores['recall']:.1%}), "
        f"false positives {scores['false_positives']}/{scores['negative_cases']}, "
        f"precision {scores['precision']:.1%}"
    )
    for name, speed in speeds.items():
        cpu = cpu_speeds[name]
        print(f"redact on {name:28s} {sizes[name]:6.2f} MB  {speed:7.2f} MB/s  ({cpu:.2f} MB per CPU second)")
    print("worst cases (MB per CPU second): " + ", ".join(f"{name} {speed:.2f}" for name, speed in worst.items()))
    if scan:
        print(
            f"scan of {args.scan}: {scan['files']} files, {scan['mb']:.1f} MB, {scan['lines']} lines, "
            f"{scan['changed']} changed, {scan['mb'] / scan['seconds']:.2f} MB/s"
        )
        for path, before, after in scan["samples"][: args.show]:
            print(f"  {path}: {before.strip()[:100]}\n    -> {after.strip()[:100]}")


def scan_code(folder: Path) -> dict[str, Any]:
    files = lines = changed = size = 0
    seconds = 0.0
    samples: list[tuple[str, str, str]] = []
    for path in sorted(folder.rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        started = time.perf_counter()
        cleaned = redact(text) or ""
        seconds += time.perf_counter() - started
        files, size = files + 1, size + len(text.encode())
        before, after = text.split("\n"), cleaned.split("\n")
        lines += len(before)
        for old, new in zip(before, after, strict=False):
            if old != new:
                changed += 1
                samples.append((str(path.relative_to(folder)), old, new))
    return {"files": files, "mb": size / 1e6, "lines": lines, "changed": changed, "seconds": max(seconds, 1e-9),
            "samples": samples}  # fmt: skip


if __name__ == "__main__":
    main()
