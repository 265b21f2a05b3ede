"""No secret in the repository: every tracked file passes detect-secrets' default plugins.

(The demo's and the end-to-end run's logs are scanned in tests/e2e, where the generated secrets are known.)
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

from detect_secrets import SecretsCollection
from detect_secrets.settings import default_settings

REPO = Path(__file__).resolve().parents[3]


def tracked_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    return [f for f in listed.stdout.splitlines() if (REPO / f).is_file()]


def scan(paths: list[str], root: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    secrets = SecretsCollection(root=str(root))
    with default_settings():
        for path in paths:
            secrets.scan_file(path)
    for filename, secret in secrets:
        found.setdefault(filename, []).append(f"{secret.type} at line {secret.line_number}")
    return found


def test_the_scanner_finds_a_planted_secret(tmp_path):
    # Built at run time, so that this file itself holds no secret-shaped literal.
    keyword = "pass" + "word"
    planted = tmp_path / "settings.py"
    planted.write_text(f'db_{keyword} = "{secrets.token_urlsafe(24)}"\n')
    found = scan(["settings.py"], tmp_path)
    assert list(found) == ["settings.py"] and len(found["settings.py"]) >= 1


def test_no_secret_in_the_repository():
    assert scan(tracked_files(), REPO) == {}
