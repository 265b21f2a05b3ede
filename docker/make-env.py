#!/usr/bin/env python3
"""Write the compose stack's ``.env`` from ``.env.example``, generating every secret: the setup step of the stack.

Every ``NAME=`` line of the example is copied; a variable whose comment carries ``[generated]`` gets a fresh
random value (``secrets.token_urlsafe``: URL-safe, so it can stand in a database URL unquoted), one tagged
``[generated:fernet]`` a Fernet key. Values already in the output file are kept, so running it again only fills
what is missing (a variable new in the example, a secret someone emptied). The file is written with mode 0600 from
its first byte, and no value is ever printed: only the names of the variables generated.

    python3 docker/make-env.py                      # .env in the repository root
    python3 docker/make-env.py --output /tmp/x.env  # elsewhere (CI writes a throwaway one)

Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$")
TAG = re.compile(r"\[generated(?::(?P<kind>[a-z]+))?\]")
GENERATORS = {
    None: lambda: secrets.token_urlsafe(32),
    # Airflow's Fernet key: 32 random bytes, URL-safe base64 (what cryptography's Fernet.generate_key returns).
    "fernet": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
}


class EnvTemplateError(ValueError):
    """The example file is malformed; the message names the file, the line and what is wrong."""


def parse_example(path: Path) -> list[tuple[str, str, str | None]]:
    """``(name, example value, generator kind or "")`` per variable; kind None means not generated."""
    variables: list[tuple[str, str, str | None]] = []
    comment: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            comment = []
        elif stripped.startswith("#"):
            comment.append(stripped)
        else:
            match = ASSIGNMENT.match(stripped)
            if not match:
                raise EnvTemplateError(f"{path}:{number}: not a NAME=value line: {stripped!r}")
            name = match["name"]
            if name in seen:
                raise EnvTemplateError(f"{path}:{number}: {name} is defined twice")
            seen.add(name)
            tag = next((m for m in map(TAG.search, comment) if m), None)
            kind = None if tag is None else (tag["kind"] or "")
            if kind and kind not in GENERATORS:
                raise EnvTemplateError(f"{path}:{number}: {name}: unknown generator [generated:{kind}]")
            variables.append((name, match["value"], kind))
            comment = []
    return variables


def read_env(path: Path) -> dict[str, str]:
    """The NAME=value assignments of an existing env file (comments and blank lines ignored)."""
    values = {}
    for line in path.read_text().splitlines():
        match = ASSIGNMENT.match(line.strip())
        if match:
            values[match["name"]] = match["value"]
    return values


def render(example: Path, existing: dict[str, str]) -> tuple[str, list[str]]:
    """The new file's text and the names of the variables generated now."""
    generated: list[str] = []
    lines = []
    by_name = {name: (value, kind) for name, value, kind in parse_example(example)}
    for line in example.read_text().splitlines():
        match = ASSIGNMENT.match(line.strip())
        if not match:
            lines.append(line)
            continue
        name = match["name"]
        value, kind = by_name[name]
        if existing.get(name):
            value = existing[name]
        elif kind is not None:
            value = GENERATORS[kind or None]()
            generated.append(name)
        lines.append(f"{name}={value}")
    # Variables the example no longer lists are kept (someone set them on purpose), below the rest.
    extra = {k: v for k, v in existing.items() if k not in by_name}
    if extra:
        lines += ["", "# Not in .env.example: kept as found."] + [f"{k}={v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n", generated


def write_private(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``, mode 0600 from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", type=Path, default=ROOT / ".env.example", help="template (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=ROOT / ".env", help="file to write (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        existing = read_env(args.output) if args.output.exists() else {}
        text, generated = render(args.example, existing)
    except (OSError, EnvTemplateError) as exc:
        print(f"make-env: {exc}", file=sys.stderr)
        return 1
    write_private(args.output, text)
    what = ", ".join(generated) if generated else "nothing (every secret was already set)"
    print(f"make-env: wrote {args.output} (mode 0600); generated {what}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
