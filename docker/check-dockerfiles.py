#!/usr/bin/env python3
"""MLEDGE's own Dockerfile rules, the ones hadolint does not enforce (run by .ci/lint-docker after hadolint).

    pinned-base      every FROM names an exact release (a tag with a full version like 3.11.13, or an @sha256
                     digest), after ARG defaults are substituted; a previous stage's name is fine
    non-root         the final stage switches to a user that is not root (name or uid 0)
    healthcheck      the final stage declares a HEALTHCHECK (not NONE)
    no-remote-add    no ADD from a URL (unverified downloads); fetch with a checksum in RUN instead
    no-secret-build  no ENV or ARG whose name says it holds a secret (it would stay in the image or its history)
    pip-no-cache     every `pip install` runs with --no-cache-dir (no wheel cache left in a layer)

    check-dockerfiles.py [DOCKERFILE ...]   (default: docker/*.Dockerfile); prints FILE:LINE: rule: problem

Needs ``dockerfile-parse`` (docker/requirements-lint.txt).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[1]
# A tag with a full version (3.11.13-slim-bookworm): "3.11-slim" or "latest" move under us.
EXACT_TAG = re.compile(r":[^:/@]*\d+\.\d+\.\d+[^:/@]*$")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|CREDENTIAL)", re.IGNORECASE)
ROOT_USERS = {"root", "0", "root:root", "0:0"}


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        try:
            shown = self.path.resolve().relative_to(ROOT)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}: {self.rule}: {self.message}"


def _names(value: str) -> list[str]:
    """Variable names of an ENV/ARG instruction: `A=1 B=2`, `A 1` (legacy ENV), `A`."""
    parts = value.split()
    if parts and "=" not in parts[0]:
        return [parts[0]]
    return [p.split("=", 1)[0] for p in parts if "=" in p]


def _substitute(text: str, args: dict[str, str]) -> str:
    """``$NAME`` and ``${NAME}`` replaced by the ARG defaults known; unknown ones are left as they are."""
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def check(path: Path) -> list[Problem]:
    parser = DockerfileParser(path=str(path))
    structure = parser.structure
    problems: list[Problem] = []
    stages: list[str] = []
    resolved = iter(parser.parent_images)  # FROM images with ARG defaults substituted, in order
    final_user: tuple[int, str] | None = None
    final_healthcheck: tuple[int, str] | None = None
    stage_args: dict[str, str] = {}  # ARG defaults of the current stage, to read e.g. `USER ${MLEDGE_UID}`
    for item in structure:
        instruction, line, value = item["instruction"], item["startline"] + 1, item["value"]
        if instruction == "FROM":
            image = next(resolved, value.split()[0])
            alias = re.search(r"\s+AS\s+(\S+)\s*$", value, re.IGNORECASE)
            if image not in stages and not (DIGEST.search(image) or EXACT_TAG.search(image.split("@")[0])):
                problems.append(Problem(path, line, "pinned-base", f"base image {image!r} is not an exact release"))
            if alias:
                stages.append(alias.group(1))
            final_user, final_healthcheck, stage_args = None, None, {}  # only the last stage's matter
        elif instruction == "USER":
            final_user = (line, _substitute(value.strip(), stage_args))
        elif instruction == "HEALTHCHECK":
            final_healthcheck = (line, value.strip())
        elif instruction == "ADD" and re.search(r"(^|\s)(https?|ftp)://", value):
            problems.append(Problem(path, line, "no-remote-add", "ADD from a URL; download with a checksum in RUN"))
        elif instruction in ("ENV", "ARG"):
            if instruction == "ARG" and "=" in value:
                name, default = value.strip().split("=", 1)
                stage_args[name] = default.strip().strip('"')
            for name in _names(value):
                if SECRET_NAME.search(name):
                    problems.append(
                        Problem(path, line, "no-secret-build", f"{instruction} {name}: secrets come at run time")
                    )
        elif instruction == "RUN":
            for command in re.split(r"&&|\|\||;", value):
                if re.search(r"\bpip3?\s+install\b", command) and "--no-cache-dir" not in command:
                    problems.append(Problem(path, line, "pip-no-cache", "`pip install` without --no-cache-dir"))
    last = len(Path(path).read_text().splitlines())
    if final_user is None:
        problems.append(Problem(path, last, "non-root", "the final stage has no USER: it would run as root"))
    elif "$" in final_user[1]:
        problems.append(Problem(path, final_user[0], "non-root", f"USER {final_user[1]!r}: an ARG without default"))
    elif final_user[1].split()[0] in ROOT_USERS or final_user[1].split(":")[0] in ROOT_USERS:
        problems.append(Problem(path, final_user[0], "non-root", f"the final stage runs as {final_user[1]!r}"))
    if final_healthcheck is None or final_healthcheck[1].upper() == "NONE":
        problems.append(Problem(path, last, "healthcheck", "the final stage declares no HEALTHCHECK"))
    return problems


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted((ROOT / "docker").glob("*.Dockerfile"))
    if not paths:
        print("check-dockerfiles: no Dockerfile found", file=sys.stderr)
        return 2
    problems = [p for path in paths for p in check(path)]
    for problem in problems:
        print(problem)
    print(f"check-dockerfiles: {len(paths)} Dockerfile(s), {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
