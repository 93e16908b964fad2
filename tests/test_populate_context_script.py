"""scripts/populate_context.py: refresh a project's index, then print the ranked context for a prompt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli_store import _env
from tests.test_ingest import function

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "populate_context.py"


def run_script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_prints_the_chunks_nearest_the_prompt_after_refreshing(db_url: str, tmp_path: Path) -> None:
    root = tmp_path / "shop"
    (root / "src").mkdir(parents=True)
    (root / "src" / "mail.py").write_text(
        'def send_receipt_email(order):\n    """E-mail the customer a receipt for their order."""\n'
        "    smtp.send(order.customer.email, render_receipt(order))\n"
    )
    (root / "src" / "geo.py").write_text(function("distance_between_coordinates"))
    env = _env(KB_HOME=str(tmp_path / "home"), KB_DATABASE_URL=db_url)
    proc = run_script(str(root), "mail the buyer a confirmation of the purchase", "--budget", "300", env=env)
    assert proc.returncode == 0, proc.stderr
    summary = proc.stderr.strip().splitlines()[-1]
    assert summary.startswith("shop: 2 added, 0 changed") and "/300 tokens" in summary
    lines = proc.stdout.splitlines()
    assert lines[0] == "# Context from the knowledgebase"
    headings = [line for line in lines if line.startswith("### ")]
    assert headings[0] == "### src/mail.py:1-3 `send_receipt_email`"
    assert "def send_receipt_email(order):" in proc.stdout
    again = run_script(str(root), "distance", "--project", "shop", env=env)
    assert "0 added, 0 changed, 2 unchanged" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/definitely/missing", "a prompt"], "cannot index '/definitely/missing': no such file or directory"),
        ([".", "   "], "the prompt must not be empty"),
        ([".", "a prompt", "--budget", "0"], "--budget must be a positive number of tokens"),
    ],
)
def test_bad_input_is_one_line_on_stderr(tmp_path: Path, args: list[str], message: str) -> None:
    proc = run_script(*args, env=_env(KB_HOME=str(tmp_path / "home")))
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("populate_context: error: ") and message in lines[0]
