"""The Gemini CLI home the runner hands the CLI: the user's settings plus `general.maxAttempts: 1`.

The end-to-end proof (the real CLI moving to another key after a 429 with KB_HOME under /tmp) is
``test_gemini_runner.py::test_cli_way_moves_to_another_key_after_a_429``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from knowledgebase.config import Settings
from knowledgebase.gemini.cli_home import cli_home, user_gemini_dir


def _user_home(tmp_path: Path, settings: dict | str | None) -> Path:
    home = tmp_path / "user"
    gemini = home / ".gemini"
    gemini.mkdir(parents=True)
    if settings is not None:
        (gemini / "settings.json").write_text(settings if isinstance(settings, str) else json.dumps(settings))
    (gemini / "oauth_creds.json").write_text("{}")
    (gemini / "extensions").mkdir()
    return home


def test_the_overlay_is_the_users_settings_with_one_attempt_and_links_the_rest(tmp_path: Path) -> None:
    user = _user_home(tmp_path, {"security": {"auth": {"selectedType": "gemini-api-key"}}, "general": {"vim": True}})
    settings = Settings(home=tmp_path / "kbhome")
    home = cli_home(settings, {"HOME": str(user)})
    assert home.warning is None
    overlay = Path(home.env["GEMINI_CLI_HOME"])
    assert overlay.is_relative_to(settings.home)  # under /tmp here: the user layer has no ownership check
    document = json.loads((overlay / ".gemini" / "settings.json").read_text())
    assert document == {
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "general": {"vim": True, "maxAttempts": 1},
    }
    assert os.stat(overlay / ".gemini" / "settings.json").st_mode & 0o077 == 0
    for name in ("oauth_creds.json", "extensions"):
        assert os.readlink(overlay / ".gemini" / name) == str(user / ".gemini" / name)
    # the user's later changes reach the next call; GEMINI_CLI_HOME is the source when set
    (user / ".gemini" / "settings.json").write_text(json.dumps({"ui": {"theme": "x"}}))
    (user / ".gemini" / "trustedFolders.json").write_text("{}")
    again = cli_home(settings, {"HOME": "/nonexistent", "GEMINI_CLI_HOME": str(user)})
    assert again.env == home.env
    assert json.loads((overlay / ".gemini" / "settings.json").read_text()) == {
        "ui": {"theme": "x"},
        "general": {"maxAttempts": 1},
    }
    assert (overlay / ".gemini" / "trustedFolders.json").is_symlink()


def test_a_user_with_no_gemini_folder_gets_an_overlay_too(tmp_path: Path) -> None:
    home = cli_home(Settings(home=tmp_path / "kbhome"), {"HOME": str(tmp_path / "nobody")})
    settings_file = Path(home.env["GEMINI_CLI_HOME"]) / ".gemini" / "settings.json"
    assert json.loads(settings_file.read_text()) == {"general": {"maxAttempts": 1}}


def test_the_users_own_max_attempts_is_kept(tmp_path: Path) -> None:
    user = _user_home(tmp_path, {"general": {"maxAttempts": 4}})
    assert cli_home(Settings(home=tmp_path / "kbhome"), {"HOME": str(user)}).env == {}


def test_settings_that_cannot_be_merged_are_left_alone_and_said_so(tmp_path: Path) -> None:
    user = _user_home(tmp_path, '{// a comment Gemini CLI accepts\n"general": {}}')
    home = cli_home(Settings(home=tmp_path / "kbhome"), {"HOME": str(user)})
    assert home.env == {}
    assert (
        home.warning is not None and "not plain JSON" in home.warning and "retry a 429 on the same key" in home.warning
    )
    assert user_gemini_dir({"HOME": str(user)}) == user / ".gemini"
