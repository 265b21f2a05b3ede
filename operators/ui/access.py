"""Who is asking and what they may do, decided by Airflow's own auth manager (SimpleAuthManager now, FAB later).

The user comes from the JWT the UI holds after login (the ``_token`` cookie) or an ``Authorization: Bearer``
header, through Airflow's ``get_user`` dependency. Permissions are mapped onto Airflow resources that every auth
manager knows, so the standard roles work unchanged:

| permission        | Airflow check                                             | SimpleAuthManager / FAB roles |
|-------------------|-----------------------------------------------------------|-------------------------------|
| view federation   | read the federated training DAG                           | Viewer and up                 |
| view drift alerts | read the drift evaluation DAG                             | Viewer and up                 |
| view costs        | read the billing ingestion DAG                            | Viewer and up                 |
| acknowledge/dismiss | edit the drift evaluation DAG                           | User, Op, Admin               |
| approve retraining| create a run of the federated training DAG and create     | Op, Admin (FAB: a role that   |
|                   | Asset events                                              | may also create Asset events) |

Approving needs both because the page records the drift Asset event through Airflow's REST API with the user's
own token (``request_token``): Airflow applies that user's permissions, so the page checks them first and refuses
before anything is recorded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import AssetDetails, DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import get_user
from fastapi import Depends, HTTPException, Request, status

from mledge import contracts

DRIFT_DAG_ID = os.environ.get("MLEDGE_DRIFT_DAG_ID", contracts.DRIFT_DAG_ID)
TRAINING_DAG_ID = os.environ.get("MLEDGE_TRAINING_DAG_ID", contracts.TRAINING_DAG_ID)
BILLING_DAG_ID = os.environ.get("MLEDGE_BILLING_DAG_ID", contracts.BILLING_DAG_ID)

UserDep = Annotated[BaseUser, Depends(get_user)]


@dataclass(frozen=True)
class Permission:
    name: str
    description: str  # completes "<user> may not ..."
    dag_id: str
    method: str
    entity: DagAccessEntity | None = None
    asset_method: str | None = None  # also needs this on Assets (an approval records an Asset event as the user)

    def allows(self, user: BaseUser) -> bool:
        manager = get_auth_manager()
        if not manager.is_authorized_dag(
            method=self.method, access_entity=self.entity, details=DagDetails(id=self.dag_id), user=user
        ):
            return False
        return self.asset_method is None or manager.is_authorized_asset(
            method=self.asset_method, details=AssetDetails(), user=user
        )

    @property
    def needs(self) -> str:
        needs = f"{self.method} on DAG {self.dag_id!r}"
        return f"{needs} and {self.asset_method} on Assets" if self.asset_method else needs


VIEW_FEDERATION = Permission("view_federation", "see the federation", TRAINING_DAG_ID, "GET")
VIEW_DRIFT = Permission("view_drift", "see drift alerts", DRIFT_DAG_ID, "GET")
VIEW_COSTS = Permission("view_costs", "see costs", BILLING_DAG_ID, "GET")
REVIEW = Permission("review", "acknowledge or dismiss drift alerts", DRIFT_DAG_ID, "PUT")
APPROVE = Permission("approve", "approve retraining", TRAINING_DAG_ID, "POST", DagAccessEntity.RUN, asset_method="POST")

ACTION_PERMISSIONS = {"acknowledge": REVIEW, "dismiss": REVIEW, "approve": APPROVE}


def permissions(user: BaseUser) -> dict[str, bool]:
    """What the pages may offer this user (buttons are disabled, never the only guard)."""
    return {p.name: p.allows(user) for p in (VIEW_FEDERATION, VIEW_DRIFT, VIEW_COSTS, REVIEW, APPROVE)}


def require(user: BaseUser, permission: Permission) -> None:
    if not permission.allows(user):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"{user.get_name()} may not {permission.description} (needs {permission.needs})",
        )


def request_token(request: Request) -> str:
    """The JWT this request was authenticated with: an explicit ``Authorization: Bearer`` header wins over the
    UI's ``_token`` cookie, as in Airflow's own ``get_user``. Forwarded to Airflow's REST API, never logged."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.cookies.get(COOKIE_NAME_JWT_TOKEN, "")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


def check_same_origin(request: Request) -> None:
    """Refuse a cookie-authenticated POST sent by another origin (cross-site request forgery).

    The session cookie is SameSite=Lax, but another port on the same host (the MLflow UI, say) is the same site;
    an explicit ``Authorization`` header cannot be forged by another page, so such requests pass.
    """
    if request.headers.get("authorization", "").lower().startswith("bearer "):
        return
    sent = request.headers.get("origin") or _origin(request.headers.get("referer", ""))
    allowed = {_origin(str(request.base_url))}
    from airflow.configuration import conf

    if base_url := conf.get("api", "base_url", fallback=None):
        allowed.add(_origin(base_url))
    if not sent or sent.lower() not in allowed:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"refused a form post from origin {sent or '(none)'}: it must come from this Airflow UI",
        )


def login_url(request: Request) -> str:
    return get_auth_manager().get_url_login(next_url=str(request.url))
