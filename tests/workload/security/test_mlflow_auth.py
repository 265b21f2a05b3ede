"""MLflow basic-auth: the permission matrix of mlflow/permissions.toml, enforced by a real tracking server.

A real ``mlflow server`` with the basic-auth app starts on a free port under a temporary MLEDGE_HOME (started and
stopped by its PID); ``apply_permissions`` sets it up; then, for every (identity, resource) pair of the matrix and
for anonymous requests, each action is tried through MLflow's REST API: what the matrix allows answers 200, the
rest 403 (401 without credentials). The pairs and the expected answers come from permissions.toml, so the test
follows the matrix.
"""

from __future__ import annotations

import configparser
import ctypes
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import pytest

from mledge.ops.settings import Settings
from mledge.security import mlflow_auth
from mledge.security.mlflow_auth import (
    LEVELS,
    MatrixError,
    MlflowAuthError,
    Resource,
    Rest,
    apply_permissions,
    auth_server_args,
    auth_server_env,
    client_env,
    ensure_users,
    load_matrix,
    show_password,
)

MATRIX = load_matrix()
ANONYMOUS = "anonymous"
IDENTITIES = [i.name for i in MATRIX.identities]
PROBE_USER = "probe"  # a user outside the matrix: the target of the grant/revoke that tests MANAGE
ARTIFACT = "report.txt"
START_TIMEOUT = 150.0


def _settings(home: Path, port: int = 5000) -> Settings:
    return Settings(home=home, mlflow_port=port)


# --- the matrix and the secrets, without a server ---------------------------------------------------------


def test_matrix_names_are_the_ones_the_code_uses():
    from mledge.contracts import (
        EXPERIMENT,
        GLOBAL_MODEL,
        GLOBAL_MODELS_EXPERIMENT,
        SITES,
        site_model_name,
        site_models_experiment,
    )
    from mledge.contracts import drift_experiment as experiment_name

    names = {str(r) for r in MATRIX.resources}
    expected = {
        f"experiment:{EXPERIMENT}", f"experiment:{GLOBAL_MODELS_EXPERIMENT}", f"registered_model:{GLOBAL_MODEL}"
    }
    for site in SITES:
        expected |= {f"experiment:{experiment_name(site)}", f"registered_model:{site_model_name(site)}",
                     f"experiment:{site_models_experiment(site)}"}
    assert names == expected
    assert set(IDENTITIES) == {"admin", "platform", *SITES}


def test_matrix_is_least_privilege():
    from mledge.contracts import GLOBAL_MODELS_EXPERIMENT, SITES, drift_experiment, site_models_experiment

    assert [i.name for i in MATRIX.creators] == ["platform"]
    for site in SITES:
        held = {str(r): MATRIX.granted(site, r) for r in MATRIX.resources if MATRIX.granted(site, r)}
        # Read-only but for writing its own drift runs (at the site), and nothing that names another site.
        assert held == {
            "registered_model:global-axis_failures-federated": "READ",
            f"registered_model:{site}-axis_failures-federated": "READ",
            f"experiment:{GLOBAL_MODELS_EXPERIMENT}": "READ",
            f"experiment:{site_models_experiment(site)}": "READ",
            f"experiment:{drift_experiment(site)}": "EDIT",
        }
        assert not [name for name in held if any(other in name for other in SITES if other != site)]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[identities.admin]\nadmin = true\n[[experiment]]\nname = "e"\ngrants = { nobody = "READ" }\n',
         "experiment[0] (e).grants.nobody: unknown identity 'nobody'"),
        ('[identities.admin]\nadmin = true\n[identities.p]\n[[registered_model]]\nname = "m"\n'
         'grants = { p = "WRITE" }\n', "registered_model[0] (m).grants.p: permission 'WRITE' is not one of"),
        ('[identities.p]\n', "exactly one identity must have admin = true"),
        ('[identities.admin]\nadmin = true\n[[experiment]]\nname = "drift-{plant}"\n',
         "unknown template '{plant}'"),
        ('[identities.admin]\nadmin = true\nowner = "x"\n', "identities.admin: unknown field(s) ['owner']"),
        ('[identities.admin]\nadmin = true\n[identities."{site}"]\n[[experiment]]\nname = "shared"\n'
         'grants = { "{site}" = "READ", plant_a = "EDIT" }\n', "plant_a gets both READ and EDIT"),
        ('[identities.admin]\nadmin = true\n[[experiment]]\nname = "e"\ngrants = { admin = "READ" }\n',
         "the admin may do everything"),
        ('[identities.admin]\nadmin = true\n[[model]]\nname = "m"\n', "unknown section(s) ['model']"),
        ("[identities.admin\n", "cannot read the permission matrix"),
    ],
)
def test_a_bad_matrix_is_refused_naming_the_entry(tmp_path, toml, message):
    path = tmp_path / "permissions.toml"
    path.write_text(toml)
    with pytest.raises(MatrixError) as caught:
        load_matrix(path, sites=("plant_a", "plant_b"))
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_site_templates_expand_to_each_site_alone(tmp_path):
    path = tmp_path / "permissions.toml"
    path.write_text(
        '[identities.admin]\nadmin = true\n[identities.platform]\ncreate = true\n[identities."{site}"]\n'
        '[[experiment]]\nname = "own-{site}"\ngrants = { platform = "MANAGE", "{site}" = "READ" }\n'
        '[[registered_model]]\nname = "shared"\ngrants = { "{site}" = "READ" }\n'
    )
    matrix = load_matrix(path, sites=("x", "y"))
    own_x, own_y, shared = Resource("experiment", "own-x"), Resource("experiment", "own-y"), Resource(
        "registered_model", "shared")
    assert matrix.resources == (own_x, own_y, shared)
    granted = (matrix.granted("x", own_x), matrix.granted("x", own_y), matrix.granted("y", own_y))
    assert granted == ("READ", None, "READ")
    assert matrix.granted("x", shared) == matrix.granted("y", shared) == "READ"
    assert matrix.effective("admin", own_x) == "MANAGE" and matrix.granted("platform", shared) is None


def test_secrets_are_generated_once_and_private(tmp_path, capsys):
    settings = _settings(tmp_path / "home")
    first = ensure_users(settings)
    path = mlflow_auth.secrets_file(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.secrets.stat().st_mode) == 0o700
    assert set(first) == set(IDENTITIES) and len(set(first.values())) == len(first)
    assert all(len(p) >= 24 for p in first.values())  # MLflow wants >= 12 for the admin
    err = capsys.readouterr().err
    # Not a terminal here: the password is not printed (it would land in a log), the way to see it is.
    assert str(path) in err and first["admin"] not in err
    os.chmod(path, 0o644)
    assert ensure_users(settings) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert capsys.readouterr().err == ""
    assert show_password(settings) == first["admin"]
    assert client_env(settings, "plant_b") == {
        "MLFLOW_TRACKING_USERNAME": "plant_b", "MLFLOW_TRACKING_PASSWORD": first["plant_b"]}
    with pytest.raises(MlflowAuthError, match="no identity 'plant_z'"):
        client_env(settings, "plant_z")


def test_first_setup_on_a_terminal_shows_the_admin_password_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    settings = _settings(tmp_path / "home")
    password = ensure_users(settings)["admin"]
    assert password in capsys.readouterr().err
    ensure_users(settings)
    assert password not in capsys.readouterr().err


def test_lost_secrets_with_an_existing_auth_db_are_refused(tmp_path):
    settings = _settings(tmp_path / "home")
    db = Path(mlflow_auth.auth_db_uri(settings).removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True)
    db.write_bytes(b"")
    with pytest.raises(MlflowAuthError, match="no password for 'admin'.*remove that database"):
        ensure_users(settings)


def test_a_damaged_secrets_file_is_refused_naming_the_field(tmp_path):
    settings = _settings(tmp_path / "home")
    settings.secrets.mkdir(parents=True)
    mlflow_auth.secrets_file(settings).write_text(json.dumps({"users": {"admin": ""}}))
    with pytest.raises(MlflowAuthError, match="mlflow_users.json: field 'users'"):
        ensure_users(settings)


def test_show_password_never_generates(tmp_path):
    with pytest.raises(MlflowAuthError, match="does not exist yet"):
        show_password(_settings(tmp_path / "home"))


def test_server_config_and_environment(tmp_path, monkeypatch):
    settings = _settings(tmp_path / "home")
    # A '%' (URL-encoded in a DB password) must survive configparser's interpolation.
    url = f"postgresql://mlflow:{quote('@' + secrets.token_urlsafe(8))}@db/auth"  # holds a '%40'
    monkeypatch.setenv(mlflow_auth.AUTH_DB_ENV, url)
    base = {"PATH": "/bin", "MLFLOW_AUTH_ADMIN_PASSWORD": "x" * 16, "MLFLOW_WORKSPACE": "w"}
    env = auth_server_env(settings, base)
    path = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert path.parent == settings.secrets and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] and env["PATH"] == "/bin"
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" not in env and "MLFLOW_WORKSPACE" not in env
    config = configparser.ConfigParser()
    config.read(path)
    section = config["mlflow"]
    assert section["default_permission"] == "NO_PERMISSIONS"
    assert section["database_uri"] == url
    assert section["admin_username"] == "admin" and section["admin_password"] == show_password(settings)
    assert auth_server_args(settings)[:2] == ["--app-name", "basic-auth"]


# --- a real server ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_http():
    """This server has no certificate (no CA in its home): its clients speak plain HTTP on loopback."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLEDGE_TLS", "off")
        yield


@pytest.fixture(scope="module")
def server(tmp_path_factory, free_port, plain_http):
    home = tmp_path_factory.mktemp("mledge-home")
    settings = _settings(home, free_port())
    bin_dir = Path(sys.executable).parent
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env = auth_server_env(settings, {**base, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    argv = [
        str(bin_dir / "mlflow"), "server", *auth_server_args(settings),
        "--backend-store-uri", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        "--artifacts-destination", str(home / "mlflow" / "artifacts"),
        "--host", "127.0.0.1", "--port", str(settings.mlflow_port), "--workers", "1",
    ]
    log_path = home / "mlflow-server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_pytest)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"mlflow server exited {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{settings.mlflow_uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy in {START_TIMEOUT:.0f}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield settings
    finally:
        # SIGINT stops uvicorn and its workers cleanly; the whole process group goes, by the server's PID.
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _die_with_pytest() -> None:
    # Should pytest be killed before its teardown runs, the server gets SIGINT rather than living on.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT)  # 1: PR_SET_PDEATHSIG


def _rest(settings: Settings, identity: str) -> Rest:
    if identity == ANONYMOUS:
        return Rest(settings.mlflow_uri)
    return Rest(settings.mlflow_uri, identity, ensure_users(settings)[identity])


@pytest.fixture(scope="module")
def applied(server):
    return apply_permissions(server)


@pytest.fixture(scope="module")
def world(server, applied):
    """What the actions work on, made by the platform: a run with an artifact in every experiment, and version 1
    with alias ``champion`` of every registered model (its source an artifact of a federated training run)."""
    platform, admin = _rest(server, "platform"), _rest(server, "admin")
    probe = {"username": PROBE_USER, "password": secrets.token_urlsafe(16)}
    admin.call("POST", "/api/2.0/mlflow/users/create", body=probe)
    runs = {}
    for resource in (r for r in MATRIX.resources if r.kind == "experiment"):
        _, made = platform.call("POST", "/api/2.0/mlflow/runs/create",
                                body={"experiment_id": applied["ids"][str(resource)]})
        info = made["run"]["info"]
        path = info["artifact_uri"].removeprefix("mlflow-artifacts:/")
        platform.call("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{path}/{ARTIFACT}", body={"of": resource.name})
        platform.call("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{path}/model/MLmodel", body={"flavors": {}})
        runs[resource] = info
    source = next(info for r, info in runs.items() if r.name == "axis_failures-federated")
    for resource in (r for r in MATRIX.resources if r.kind == "registered_model"):
        platform.call("POST", "/api/2.0/mlflow/model-versions/create", body={
            "name": resource.name, "source": f"{source['artifact_uri']}/model", "run_id": source["run_id"]})
        platform.call("POST", "/api/2.0/mlflow/registered-models/alias",
                      body={"name": resource.name, "alias": "champion", "version": "1"})
    return {"runs": runs, "source": source}


def _manage(me: Rest, resource_type: str, resource_id: str) -> int:
    """Grant the probe user READ and take it back: what only MANAGE on the resource permits."""
    body = {"username": PROBE_USER, "resource_type": resource_type, "resource_id": resource_id}
    status, _ = me.call("POST", "/api/3.0/mlflow/users/permissions/grant", body={**body, "permission": "READ"},
                        ok=range(600))
    if status == 200:
        status, _ = me.call("POST", "/api/3.0/mlflow/users/permissions/revoke", body=body, ok=range(600))
    return status


def _experiment_actions(me: Rest, experiment_id: str, run: dict) -> dict[str, tuple[str, int]]:
    """action -> (level it needs, HTTP status it got)."""
    any_status = range(600)
    path = run["artifact_uri"].removeprefix("mlflow-artifacts:/")
    return {
        "get experiment": ("READ", me.call("GET", "/api/2.0/mlflow/experiments/get",
                                           {"experiment_id": experiment_id}, ok=any_status)[0]),
        "get run": ("READ", me.call("GET", "/api/2.0/mlflow/runs/get", {"run_id": run["run_id"]}, ok=any_status)[0]),
        "download artifact": ("READ", me.call("GET", f"/api/2.0/mlflow-artifacts/artifacts/{path}/{ARTIFACT}",
                                              ok=any_status)[0]),
        "create run": ("EDIT", me.call("POST", "/api/2.0/mlflow/runs/create", body={"experiment_id": experiment_id},
                                       ok=any_status)[0]),
        "log metric": ("EDIT", me.call("POST", "/api/2.0/mlflow/runs/log-metric", body={
            "run_id": run["run_id"], "key": "probe", "value": 1.0, "timestamp": 0}, ok=any_status)[0]),
        "grant others": ("MANAGE", _manage(me, "experiment", experiment_id)),
    }


def _model_actions(me: Rest, name: str, source: dict) -> dict[str, tuple[str, int]]:
    any_status = range(600)
    version = {"name": name, "version": "1"}
    return {
        "get model": ("READ", me.call("GET", "/api/2.0/mlflow/registered-models/get", {"name": name},
                                      ok=any_status)[0]),
        "get version": ("READ", me.call("GET", "/api/2.0/mlflow/model-versions/get", version, ok=any_status)[0]),
        "get champion": ("READ", me.call("GET", "/api/2.0/mlflow/registered-models/alias",
                                         {"name": name, "alias": "champion"}, ok=any_status)[0]),
        "download version": ("READ", me.call("GET", "/model-versions/get-artifact", {**version, "path": "MLmodel"},
                                             ok=any_status)[0]),
        "register version": ("EDIT", me.call("POST", "/api/2.0/mlflow/model-versions/create", body={
            "name": name, "source": f"{source['artifact_uri']}/model", "run_id": source["run_id"]},
            ok=any_status)[0]),
        "move alias": ("EDIT", me.call("POST", "/api/2.0/mlflow/registered-models/alias",
                                       body={**version, "alias": "champion"}, ok=any_status)[0]),
        "grant others": ("MANAGE", _manage(me, "registered_model", name)),
    }


def _expected(identity: str, resource: Resource, needs: str) -> int:
    if identity == ANONYMOUS:
        return 401
    held = MATRIX.effective(identity, resource)
    return 200 if held is not None and LEVELS.index(held) >= LEVELS.index(needs) else 403


@pytest.mark.parametrize("resource", MATRIX.resources, ids=str)
@pytest.mark.parametrize("identity", [*IDENTITIES, ANONYMOUS])
def test_every_pair_of_the_matrix(server, applied, world, identity, resource):
    me = _rest(server, identity)
    if resource.kind == "experiment":
        got = _experiment_actions(me, applied["ids"][str(resource)], world["runs"][resource])
    else:
        got = _model_actions(me, resource.name, world["source"])
    wrong = {action: f"got {status}, expected {_expected(identity, resource, needs)} (needs {needs})"
             for action, (needs, status) in got.items() if status != _expected(identity, resource, needs)}
    assert wrong == {}, f"{identity} on {resource} (matrix: {MATRIX.effective(identity, resource)})"


def test_a_site_lists_only_what_it_may_read(server, world):
    from mledge.contracts import SITES

    for site in SITES:
        me = _rest(server, site)
        _, experiments = me.call("GET", "/api/2.0/mlflow/experiments/search", {"max_results": 100})
        _, models = me.call("GET", "/api/2.0/mlflow/registered-models/search", {"max_results": 100})
        readable = [r for r in MATRIX.resources if MATRIX.granted(site, r)]
        assert {e["name"] for e in experiments.get("experiments", [])} == {
            r.name for r in readable if r.kind == "experiment"}
        assert {m["name"] for m in models.get("registered_models", [])} == {
            r.name for r in readable if r.kind == "registered_model"}


def test_only_the_platform_creates_experiments_and_models(server, applied):
    from mledge.contracts import SITES

    for site in SITES:
        me = _rest(server, site)
        assert me.call("POST", "/api/2.0/mlflow/experiments/create", body={"name": f"{site}-own"},
                       ok=range(600))[0] == 403
        assert me.call("POST", "/api/2.0/mlflow/registered-models/create", body={"name": f"{site}-own"},
                       ok=range(600))[0] == 403
    platform = _rest(server, "platform")
    _, made = platform.call("POST", "/api/2.0/mlflow/experiments/create", body={"name": "platform-scratch"})
    # The creator manages what it created, and a later apply leaves that grant alone.
    assert platform.call("GET", "/api/2.0/mlflow/experiments/get", {"experiment_id": made["experiment_id"]})[0] == 200
    assert apply_permissions(server)["changed"] is False
    assert platform.call("GET", "/api/2.0/mlflow/experiments/get", {"experiment_id": made["experiment_id"]})[0] == 200


def test_the_mlflow_client_acts_as_the_identity_of_client_env(server, world, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    from mledge.contracts import GLOBAL_MODEL, site_model_name

    client = mlflow.MlflowClient(server.mlflow_uri)
    for key, value in client_env(server, "plant_a").items():
        monkeypatch.setenv(key, value)
    assert client.get_model_version_by_alias(GLOBAL_MODEL, "champion").version == "1"
    with pytest.raises(MlflowException, match="error code 403"):
        client.get_registered_model(site_model_name("plant_b"))
    with pytest.raises(MlflowException, match="error code 403"):
        client.set_registered_model_alias(site_model_name("plant_a"), "challenger", "1")
    for key, value in client_env(server, "platform").items():
        monkeypatch.setenv(key, value)
    client.set_registered_model_alias(site_model_name("plant_a"), "challenger", "1")
    assert client.get_model_version_by_alias(site_model_name("plant_a"), "challenger").version == "1"


def test_apply_is_idempotent_and_undoes_drift_from_the_matrix(server, applied, world):
    assert applied["changed"] is True and "platform" in applied["creators_assigned"]
    assert sorted(applied["users_created"]) == sorted(i for i in IDENTITIES if i != "admin")
    assert apply_permissions(server)["changed"] is False

    admin = _rest(server, "admin")
    foreign = "plant_b-axis_failures-federated"
    admin.call("POST", "/api/3.0/mlflow/users/permissions/grant", body={
        "username": "plant_a", "resource_type": "registered_model", "resource_id": foreign, "permission": "READ"})
    admin.call("PATCH", "/api/2.0/mlflow/users/update-password", body={
        "username": "plant_b", "password": secrets.token_urlsafe(16)})
    admin.call("PATCH", "/api/2.0/mlflow/users/update-admin", body={"username": "plant_c", "is_admin": True})
    _, roles = admin.call("GET", "/api/3.0/mlflow/roles/list", {"workspace": mlflow_auth.WORKSPACE})
    creators = next(r["id"] for r in roles["roles"] if r["name"] == mlflow_auth.CREATORS_ROLE)
    admin.call("POST", "/api/3.0/mlflow/roles/assign", body={"username": "plant_a", "role_id": creators})
    plant_a = _rest(server, "plant_a")
    assert plant_a.call("GET", "/api/2.0/mlflow/registered-models/get", {"name": foreign})[0] == 200

    report = apply_permissions(server)
    assert report["revoked"] == [f"plant_a READ registered_model:{foreign}"]
    assert (report["passwords_reset"], report["admin_flags_cleared"]) == (["plant_b"], ["plant_c"])
    assert report["creators_unassigned"] == ["plant_a"] and report["granted"] == []
    assert plant_a.call("GET", "/api/2.0/mlflow/registered-models/get", {"name": foreign}, ok=(403,))
    assert plant_a.call("POST", "/api/2.0/mlflow/experiments/create", body={"name": "again"}, ok=(403,))
    assert _rest(server, "plant_b").call("GET", "/api/2.0/mlflow/users/current")[1]["user"]["username"] == "plant_b"
    assert _rest(server, "plant_c").call("GET", "/api/2.0/mlflow/experiments/get",
                                         {"experiment_id": applied["ids"]["experiment:axis_failures-federated"]},
                                         ok=(403,))
    assert apply_permissions(server)["changed"] is False


def test_other_secrets_than_the_auth_db_holds_are_refused(server, tmp_path):
    other = replace(server, home=tmp_path / "home")
    stored = json.loads(mlflow_auth.secrets_file(server).read_text())
    stored["users"]["admin"] = secrets.token_urlsafe(16)
    other.secrets.mkdir(parents=True)
    mlflow_auth.secrets_file(other).write_text(json.dumps(stored))
    with pytest.raises(MlflowAuthError, match="refuses 'admin' as admin"):
        apply_permissions(other)
    assert Rest(server.mlflow_uri).call("GET", "/api/2.0/mlflow/experiments/search", ok=(401,))
