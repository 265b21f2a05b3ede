"""MLflow basic-auth for MLEDGE: identities, generated secrets, and the least-privilege permission matrix.

The tracking server runs MLflow's basic-auth app with ``default_permission = NO_PERMISSIONS`` and workspaces on
(``auth_server_args``/``auth_server_env``), so a request without credentials gets 401 and one without a grant
gets 403. Identities and grants are configuration, ``mlflow/permissions.toml``: ``admin`` (MLflow admin),
``platform`` (Airflow tasks and the Flower ServerApp; the only identity that may create experiments and
registered models) and one user per site.

Passwords are generated (``secrets``) on first use into ``$MLEDGE_HOME/secrets/mlflow_users.json`` (file 0600,
folder 0700) together with the Flask secret key; the server's auth config, rendered from
``mlflow/basic_auth.ini.template``, lies beside it (0600). The admin password is shown once at first setup (on
an interactive terminal only, so that it never reaches a log) and afterwards on request (``show_password``).

``apply_permissions`` makes a running server match the matrix through MLflow's REST API, as ``admin``: users,
the creators role, the experiments and registered models (created as ``platform``, which then owns them), and
every grant. It is idempotent and converges (grants the matrix does not list are revoked).

Standard library only, like ``mledge.ops.stack``: the orchestrator environment and a container can run it as well.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import ssl
import string
import sys
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mledge.contracts import REPO, SITES
from mledge.security.files import locked, private_dir, tighten, write_private

if TYPE_CHECKING:  # a type only: callers hand the settings in (security sits below operations)
    from mledge.ops.settings import Settings

PERMISSIONS_FILE = REPO / "mlflow" / "permissions.toml"
AUTH_CONFIG_TEMPLATE = REPO / "mlflow" / "basic_auth.ini.template"
USERS_FILE = "mlflow_users.json"
AUTH_CONFIG_NAME = "mlflow_basic_auth.ini"
AUTH_DB_ENV = "MLEDGE_MLFLOW_AUTH_DB_URL"
# How a person sees the admin password after first setup (the CLI command calls show_password).
SHOW_COMMAND = "mledge secrets show mlflow-admin"

EXPERIMENT = "experiment"
REGISTERED_MODEL = "registered_model"
KINDS = (EXPERIMENT, REGISTERED_MODEL)
# Grantable levels, weakest first. DENY is not needed: nothing is granted by default.
LEVELS = ("READ", "USE", "EDIT", "MANAGE")
SITE = "{site}"

# MLflow's workspace when none is named; grants and roles of a single-workspace server live there.
WORKSPACE = "default"
# The role carrying the workspace-wide USE grant: the right to create experiments and registered models.
CREATORS_ROLE = "mledge-creators"

# Inherited variables the server must not see: MLFLOW_AUTH_ADMIN_* would override the generated config,
# MLFLOW_WORKSPACE makes `mlflow server` refuse to start, and the server needs no client identity.
SERVER_ENV_DROP = (
    "MLFLOW_AUTH_ADMIN_USERNAME",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_WORKSPACE",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


class MatrixError(ValueError):
    """permissions.toml is malformed; the message names the file and the entry."""


class MlflowAuthError(RuntimeError):
    """Secrets or the server disagree with what setup expects; the message says which and how to fix it."""


# --- the matrix -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    name: str
    admin: bool = False
    create: bool = False
    purpose: str = ""


@dataclass(frozen=True, order=True)
class Resource:
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class Matrix:
    """The expanded matrix: every identity, every resource, and (identity, resource) -> permission."""

    identities: tuple[Identity, ...]
    resources: tuple[Resource, ...]
    grants: Mapping[tuple[str, Resource], str] = field(default_factory=dict)
    source: Path = PERMISSIONS_FILE

    @property
    def admin(self) -> Identity:
        return next(i for i in self.identities if i.admin)

    @property
    def creators(self) -> tuple[Identity, ...]:
        return tuple(i for i in self.identities if i.create)

    def identity(self, name: str) -> Identity:
        for candidate in self.identities:
            if candidate.name == name:
                return candidate
        raise MlflowAuthError(f"{self.source}: no identity {name!r}; known: {[i.name for i in self.identities]}")

    def granted(self, identity: str, resource: Resource) -> str | None:
        """The permission the matrix grants ``identity`` on ``resource`` (None: nothing)."""
        return self.grants.get((identity, resource))

    def effective(self, identity: str, resource: Resource) -> str | None:
        """What the server should enforce: the admin may do everything, everyone else what is granted."""
        return "MANAGE" if self.identity(identity).admin else self.granted(identity, resource)


def _expand(text: str, site: str | None) -> str:
    return text.replace(SITE, site) if site is not None else text


def _check_template(text: str, where: str) -> None:
    leftover = re.findall(r"\{[^}]*\}", text.replace(SITE, ""))
    if leftover:
        raise MatrixError(f"{where}: unknown template {leftover[0]!r} in {text!r}; only {SITE} is known")


def load_matrix(path: Path = PERMISSIONS_FILE, sites: Iterable[str] | None = None) -> Matrix:
    """Read and expand ``permissions.toml``; every mistake is a ``MatrixError`` naming the file and entry."""
    sites = tuple(SITES if sites is None else sites)
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MatrixError(f"{path}: cannot read the permission matrix: {exc}") from exc
    unknown = set(raw) - {"identities", *KINDS}
    if unknown:
        raise MatrixError(f"{path}: unknown section(s) {sorted(unknown)}; expected identities, {', '.join(KINDS)}")

    identities: dict[str, Identity] = {}
    for name, spec in (raw.get("identities") or {}).items():
        where = f"{path}: identities.{name}"
        if not isinstance(spec, dict):
            raise MatrixError(f"{where}: must be a table")
        extra = set(spec) - {"admin", "create", "purpose"}
        if extra:
            raise MatrixError(f"{where}: unknown field(s) {sorted(extra)}; expected admin, create, purpose")
        for flag in ("admin", "create"):
            if not isinstance(spec.get(flag, False), bool):
                raise MatrixError(f"{where}.{flag}: must be true or false, not {spec[flag]!r}")
        _check_template(name, where)
        if SITE in name and spec.get("admin"):
            raise MatrixError(f"{where}: the admin identity cannot be a per-site template")
        for site in sites if SITE in name else [None]:
            expanded = _expand(name, site)
            if expanded in identities:
                raise MatrixError(f"{where}: identity {expanded!r} is defined twice")
            identities[expanded] = Identity(
                expanded, bool(spec.get("admin")), bool(spec.get("create")), str(spec.get("purpose", ""))
            )
    admins = [i.name for i in identities.values() if i.admin]
    if len(admins) != 1:
        raise MatrixError(f"{path}: identities: exactly one identity must have admin = true, found {admins}")

    resources: dict[Resource, None] = {}
    grants: dict[tuple[str, Resource], str] = {}
    for kind in KINDS:
        entries = raw.get(kind) or []
        if not isinstance(entries, list):
            raise MatrixError(f"{path}: {kind} must be an array of tables ([[{kind}]])")
        for index, entry in enumerate(entries):
            where = f"{path}: {kind}[{index}]"
            extra = set(entry) - {"name", "grants", "purpose"}
            if extra:
                raise MatrixError(f"{where}: unknown field(s) {sorted(extra)}; expected name, grants, purpose")
            name = entry.get("name")
            if not isinstance(name, str) or not name.strip():
                raise MatrixError(f"{where}.name: a non-empty string is required")
            where = f"{path}: {kind}[{index}] ({name})"
            entry_grants = entry.get("grants") or {}
            if not isinstance(entry_grants, dict):
                raise MatrixError(f"{where}.grants: must be a table identity = permission")
            _check_template(name, where)
            templated = SITE in name or any(SITE in grantee for grantee in entry_grants)
            for site in sites if templated else [None]:
                resource = Resource(kind, _expand(name, site))
                resources.setdefault(resource)
                for grantee, level in entry_grants.items():
                    _check_template(grantee, f"{where}.grants")
                    who = _expand(grantee, site)
                    if who not in identities:
                        raise MatrixError(f"{where}.grants.{grantee}: unknown identity {who!r}")
                    if identities[who].admin:
                        raise MatrixError(f"{where}.grants.{grantee}: the admin may do everything; grant it nothing")
                    if level not in LEVELS:
                        raise MatrixError(f"{where}.grants.{grantee}: permission {level!r} is not one of {LEVELS}")
                    previous = grants.setdefault((who, resource), level)
                    if previous != level:
                        raise MatrixError(
                            f"{where}.grants.{grantee}: {who} gets both {previous} and {level} on {resource}"
                        )
    return Matrix(tuple(identities.values()), tuple(resources), grants, Path(path))


# --- secrets ----------------------------------------------------------------------------------------------


def secrets_file(settings: Settings) -> Path:
    return settings.secrets / USERS_FILE


def auth_config_file(settings: Settings) -> Path:
    return settings.secrets / AUTH_CONFIG_NAME


def auth_db_uri(settings: Settings) -> str:
    """The auth app's own database: ``$MLEDGE_MLFLOW_AUTH_DB_URL``, else SQLite under MLEDGE_HOME."""
    return os.environ.get(AUTH_DB_ENV) or f"sqlite:///{settings.platform_home / 'mlflow' / 'basic_auth.db'}"


def _locked(settings: Settings):
    # Two processes starting at once must not each generate (and announce) different passwords.
    return locked(private_dir(settings.secrets) / ".mlflow_users.lock")


def _read_secrets(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MlflowAuthError(f"{path}: not readable as JSON ({exc}); restore it from a backup") from exc
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict) or not all(isinstance(v, str) and v for v in users.values()):
        raise MlflowAuthError(f"{path}: field 'users' must map each identity to a non-empty password")
    if not isinstance(data.get("flask_secret_key", ""), str):
        raise MlflowAuthError(f"{path}: field 'flask_secret_key' must be a string")
    tighten(path)
    return data


def _auth_db_exists(settings: Settings) -> bool:
    uri = auth_db_uri(settings)
    return uri.startswith("sqlite:///") and Path(uri.removeprefix("sqlite:///")).exists()


def _announce(path: Path, admin: str, password: str) -> None:
    # A password on stderr ends up in any log that captures it: show it only to a person at a terminal.
    if sys.stderr.isatty():
        print(f"MLflow: generated the password of {admin!r} (shown once): {password}", file=sys.stderr)
    print(f"MLflow: passwords generated in {path} (mode 0600); `{SHOW_COMMAND}` shows the admin's", file=sys.stderr)


def password_from_env(identity: str) -> str | None:
    """An identity's password given by the deployment (``MLEDGE_MLFLOW_PASSWORD_<IDENTITY>``, e.g. from compose's
    .env): it wins over the secrets file, and nothing is generated for it."""
    return os.environ.get(f"MLEDGE_MLFLOW_PASSWORD_{identity.upper()}") or None


def ensure_users(settings: Settings, matrix: Matrix | None = None) -> dict[str, str]:
    """Every identity's password (and the Flask secret key), generated once and then loaded; identity -> password.

    A password the deployment gives in the environment (``password_from_env``) is used as it is.

    Raises ``MlflowAuthError`` when the admin password would be generated anew although the auth database
    already exists: its admin has the old password, which only the lost secrets file knew.
    """
    matrix = matrix or load_matrix(sites=settings.sites)
    path = secrets_file(settings)
    with _locked(settings):
        data = _read_secrets(path) if path.exists() else {"users": {}, "flask_secret_key": ""}
        users = data["users"]
        admin = matrix.admin.name
        given = {i.name: p for i in matrix.identities if (p := password_from_env(i.name))}
        changed = [name for name, p in given.items() if users.get(name) != p]
        users.update(given)
        new = [i.name for i in matrix.identities if i.name not in users]
        if admin in new and _auth_db_exists(settings):
            raise MlflowAuthError(
                f"{path} has no password for {admin!r}, but the auth database {auth_db_uri(settings)} exists and "
                f"its admin keeps the old one: restore {path}, or remove that database to recreate every user"
            )
        for name in new:
            users[name] = secrets.token_urlsafe(24)
        if not data.get("flask_secret_key"):
            data["flask_secret_key"] = secrets.token_urlsafe(48)
            new.append("flask_secret_key")
        if new or changed:
            write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
            if admin in new:
                _announce(path, admin, users[admin])
    return {i.name: users[i.name] for i in matrix.identities}


def show_password(settings: Settings, identity: str = "admin") -> str:
    """The stored password of ``identity`` (for ``mledge secrets show``); never generates one."""
    path = secrets_file(settings)
    if not path.exists():
        raise MlflowAuthError(f"{path} does not exist yet: MLflow's users are created by `mledge stack up`")
    users = _read_secrets(path)["users"]
    if identity not in users:
        raise MlflowAuthError(f"{path}: no identity {identity!r}; known: {sorted(users)}")
    return users[identity]


def client_env(settings: Settings, identity: str) -> dict[str, str]:
    """The variables a process needs to act as ``identity`` against the tracking server."""
    matrix = load_matrix(sites=settings.sites)
    matrix.identity(identity)  # a clear error for a name the matrix does not know
    password = password_from_env(identity) or ensure_users(settings, matrix)[identity]
    return {"MLFLOW_TRACKING_USERNAME": identity, "MLFLOW_TRACKING_PASSWORD": password}


# --- the server's side ------------------------------------------------------------------------------------


def write_auth_config(settings: Settings, matrix: Matrix | None = None) -> Path:
    """Render ``mlflow/basic_auth.ini.template`` into the secrets folder (0600); rewritten only when it changes."""
    matrix = matrix or load_matrix(sites=settings.sites)
    passwords = ensure_users(settings, matrix)
    values = {
        "database_uri": auth_db_uri(settings),
        "admin_username": matrix.admin.name,
        "admin_password": passwords[matrix.admin.name],
    }
    # MLflow reads the file with configparser, whose interpolation gives '%' a meaning (e.g. in a DB URL).
    text = string.Template(AUTH_CONFIG_TEMPLATE.read_text()).substitute(
        {k: v.replace("%", "%%") for k, v in values.items()}
    )
    path = auth_config_file(settings)
    if not path.exists() or path.read_text() != text:
        write_private(path, text)
    if values["database_uri"].startswith("sqlite:///"):  # SQLite creates the file, not its folder
        Path(values["database_uri"].removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return path


def auth_server_args(settings: Settings) -> list[str]:
    """What ``mlflow server`` needs on its command line: the basic-auth app, and workspaces, without which any
    authenticated user could create experiments and registered models."""
    return ["--app-name", "basic-auth", "--enable-workspaces"]


def auth_server_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's auth variables; with ``base``, the whole environment: ``base`` less ``SERVER_ENV_DROP``."""
    path = write_auth_config(settings)
    key = json.loads(secrets_file(settings).read_text())["flask_secret_key"]
    env = {k: v for k, v in (base or {}).items() if k not in SERVER_ENV_DROP}
    env.update(MLFLOW_AUTH_CONFIG_PATH=str(path), MLFLOW_FLASK_SERVER_SECRET_KEY=key)
    return env


# --- the REST API -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rest:
    """A JSON call to the tracking server as one identity (urllib: the orchestrator env has no requests)."""

    base_url: str
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0

    def call(self, method: str, path: str, params: Mapping | None = None, body: Mapping | None = None,
             ok: Iterable[int] = (200,)) -> tuple[int, dict]:
        """(status, decoded body); a status outside ``ok`` raises ``MlflowAuthError`` naming the call."""
        url = f"{self.base_url.rstrip('/')}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.username is not None:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            context = None
            if url.startswith("https:"):  # verify our CA (the stack's environment names it)
                context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))
            with urllib.request.urlopen(request, timeout=self.timeout, context=context) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise MlflowAuthError(f"MLflow at {self.base_url} is not reachable ({method} {path}): {exc}") from exc
        try:
            decoded = json.loads(raw) if raw.strip() else {}
        except ValueError:
            decoded = {"message": raw.decode(errors="replace").strip()}
        if not isinstance(decoded, dict):
            decoded = {"value": decoded}
        if status not in tuple(ok):
            raise MlflowAuthError(
                f"MLflow {method} {path} as {self.username or 'anonymous'} answered {status}: "
                f"{decoded.get('message') or decoded}"
            )
        return status, decoded


def _ensure_user(admin: Rest, me: Rest, report: dict) -> int:
    """Create ``me``'s user, or put its password and admin flag back to what setup expects; its user id."""
    status, found = admin.call("GET", "/api/2.0/mlflow/users/get", {"username": me.username}, ok=(200, 404))
    if status == 404:
        _, made = admin.call("POST", "/api/2.0/mlflow/users/create",
                             body={"username": me.username, "password": me.password})
        report["users_created"].append(me.username)
        return int(made["user"]["id"])
    if me.call("GET", "/api/2.0/mlflow/users/current", ok=(200, 401))[0] == 401:
        admin.call("PATCH", "/api/2.0/mlflow/users/update-password",
                   body={"username": me.username, "password": me.password})
        report["passwords_reset"].append(me.username)
    if found["user"].get("is_admin"):
        admin.call("PATCH", "/api/2.0/mlflow/users/update-admin", body={"username": me.username, "is_admin": False})
        report["admin_flags_cleared"].append(me.username)
    return int(found["user"]["id"])


def _creators_role(admin: Rest) -> int:
    _, listed = admin.call("GET", "/api/3.0/mlflow/roles/list", {"workspace": WORKSPACE})
    role = next((r for r in listed.get("roles", []) if r["name"] == CREATORS_ROLE), None)
    if role is None:
        _, made = admin.call("POST", "/api/3.0/mlflow/roles/create", body={
            "workspace": WORKSPACE, "name": CREATORS_ROLE,
            "description": "may create experiments and registered models (mlflow/permissions.toml: create = true)",
        })
        role = made["role"]
    wanted = {"resource_type": "workspace", "resource_pattern": "*", "permission": "USE"}
    held = [{k: p[k] for k in wanted} for p in role.get("permissions", [])]
    if wanted not in held:
        admin.call("POST", "/api/3.0/mlflow/roles/permissions/add", body={"role_id": role["id"], **wanted})
    for extra in (p for p in role.get("permissions", []) if {k: p[k] for k in wanted} != wanted):
        admin.call("DELETE", "/api/3.0/mlflow/roles/permissions/remove", body={"role_permission_id": extra["id"]})
    return int(role["id"])


def _ensure_resources(admin: Rest, creator: Rest | None, matrix: Matrix, report: dict) -> dict[Resource, str]:
    """Each resource's id in grants (an experiment's id, a model's name), created by the creator if missing."""
    ids: dict[Resource, str] = {}
    for resource in matrix.resources:
        if resource.kind == EXPERIMENT:
            status, found = admin.call("GET", "/api/2.0/mlflow/experiments/get-by-name",
                                       {"experiment_name": resource.name}, ok=(200, 404))
            if status == 200:
                experiment = found["experiment"]
                if experiment.get("lifecycle_stage") == "deleted":
                    admin.call("POST", "/api/2.0/mlflow/experiments/restore",
                               body={"experiment_id": experiment["experiment_id"]})
                    report["resources_restored"].append(str(resource))
                ids[resource] = str(experiment["experiment_id"])
                continue
        else:
            status, _ = admin.call("GET", "/api/2.0/mlflow/registered-models/get", {"name": resource.name},
                                   ok=(200, 404))
            if status == 200:
                ids[resource] = resource.name
                continue
        if creator is None:
            raise MlflowAuthError(f"{matrix.source}: {resource} does not exist and no identity has create = true")
        if resource.kind == EXPERIMENT:
            _, made = creator.call("POST", "/api/2.0/mlflow/experiments/create", body={"name": resource.name})
            ids[resource] = str(made["experiment_id"])
        else:
            creator.call("POST", "/api/2.0/mlflow/registered-models/create", body={"name": resource.name})
            ids[resource] = resource.name
        report["resources_created"].append(str(resource))
    return ids


def _converge_grants(admin: Rest, identity: Identity, user_id: int, matrix: Matrix, ids: Mapping[Resource, str],
                     report: dict) -> None:
    """Make ``identity``'s own grants exactly the matrix's. Creators keep MANAGE on what they created since."""
    _, listed = admin.call("GET", "/api/3.0/mlflow/users/permissions/list", {"username": identity.name})
    own_role = f"__user_{user_id}__"  # MLflow's per-user role, where the grant/revoke API writes
    current: dict[tuple[str, str], str] = {}
    for row in listed.get("permissions", []):
        if row["role_name"] == own_role:
            current[(row["resource_type"], row["resource_pattern"])] = row["permission"]
        elif row["role_name"] != CREATORS_ROLE:
            raise MlflowAuthError(
                f"{identity.name} holds {row['permission']} on {row['resource_type']}:{row['resource_pattern']} "
                f"through role {row['role_name']!r}, which {matrix.source} does not know: unassign the role "
                f"(MLflow admin UI or /api/3.0/mlflow/roles/unassign) or describe the access in the matrix"
            )
    wanted = {
        (r.kind, ids[r]): level for r in matrix.resources if (level := matrix.granted(identity.name, r)) is not None
    }
    managed = {(r.kind, ids[r]) for r in matrix.resources}
    for key, level in sorted(current.items()):
        # A creator keeps MANAGE on what it made since (one resource each, never a "*" wildcard).
        created = identity.create and key not in managed and key[1] != "*" and level == "MANAGE"
        keep = key in wanted or created
        if not keep or wanted.get(key, level) != level:
            admin.call("POST", "/api/3.0/mlflow/users/permissions/revoke", body={
                "username": identity.name, "resource_type": key[0], "resource_id": key[1]})
            report["revoked"].append(f"{identity.name} {level} {key[0]}:{key[1]}")
    for key, level in sorted(wanted.items()):
        if current.get(key) != level:
            admin.call("POST", "/api/3.0/mlflow/users/permissions/grant", body={
                "username": identity.name, "resource_type": key[0], "resource_id": key[1], "permission": level})
            report["granted"].append(f"{identity.name} {level} {key[0]}:{key[1]}")


def apply_permissions(settings: Settings, matrix: Matrix | None = None, timeout: float = 30.0) -> dict:
    """Make the running tracking server match the matrix; returns what it changed.

    Order: check the admin's password, users (create, reset password, clear admin flag), the creators role,
    the resources (created by the first creator identity, which then holds MANAGE), then every grant.

    Returns ``{"changed": bool, "server": uri, "matrix": path, "ids": {"experiment:<name>": "<id>",
    "registered_model:<name>": "<name>"}, "users_created", "passwords_reset", "admin_flags_cleared",
    "creators_assigned", "creators_unassigned": [identity], "resources_created", "resources_restored":
    ["<kind>:<name>"], "granted", "revoked": ["<identity> <PERMISSION> <kind>:<id>"]}``.
    """
    matrix = matrix or load_matrix(sites=settings.sites)
    passwords = ensure_users(settings, matrix)
    uri = settings.mlflow_uri

    def rest(name: str) -> Rest:
        return Rest(uri, name, passwords[name], timeout)

    report: dict = {key: [] for key in (
        "users_created", "passwords_reset", "admin_flags_cleared", "creators_assigned", "creators_unassigned",
        "resources_created", "resources_restored", "granted", "revoked")}
    admin = rest(matrix.admin.name)
    status, me = admin.call("GET", "/api/2.0/mlflow/users/current", ok=(200, 401))
    if status == 401 or not me.get("user", {}).get("is_admin"):
        raise MlflowAuthError(
            f"MLflow at {uri} refuses {matrix.admin.name!r} as admin with the password in {secrets_file(settings)}: "
            f"the auth database {auth_db_uri(settings)} was set up with other secrets; restore them, or remove "
            f"that database to recreate every user"
        )
    others = [i for i in matrix.identities if not i.admin]
    user_ids = {i.name: _ensure_user(admin, rest(i.name), report) for i in others}

    role_id = _creators_role(admin)
    for identity in others:
        _, roles = admin.call("GET", "/api/3.0/mlflow/users/roles/list", {"username": identity.name})
        member = any(r["id"] == role_id for r in roles.get("roles", []))
        if identity.create and not member:
            admin.call("POST", "/api/3.0/mlflow/roles/assign", body={"username": identity.name, "role_id": role_id})
            report["creators_assigned"].append(identity.name)
        elif member and not identity.create:
            admin.call("DELETE", "/api/3.0/mlflow/roles/unassign",
                       body={"username": identity.name, "role_id": role_id})
            report["creators_unassigned"].append(identity.name)

    creators = matrix.creators
    ids = _ensure_resources(admin, rest(creators[0].name) if creators else None, matrix, report)
    for identity in others:
        _converge_grants(admin, identity, user_ids[identity.name], matrix, ids, report)
    report["changed"] = any(report.values())
    report["server"] = uri
    report["matrix"] = str(matrix.source)
    report["ids"] = {str(r): i for r, i in ids.items()}
    return report
