"""The control operations over HTTP: the CLI's ``--api URL`` mode.

:class:`ApiClient` has the same methods as :class:`~services.admin.control.ControlPlane`
and returns the same data, so each CLI command is written once and works against either.
The admin service does the work and records the audit trail under the token's name.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import quote

import httpx

from services.admin.control import BadRequestError, NoSuchAppError, ProvisionFailedError
from services.runtime.config_store import DefinitionError, Problem
from services.runtime.errors import ScimflowError

__all__ = ["ApiClient", "ApiError"]


class ApiError(ScimflowError):
    """The admin API answered with an error (its message), or could not be reached."""


class ApiClient:
    """A synchronous client of the admin API (one per CLI invocation)."""

    def __init__(self, url: str, token: str, *, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                 headers={"Authorization": f"Bearer {token}"})

    def __repr__(self) -> str:
        return f"ApiClient(url={self.url!r})"  # never the token

    def close(self) -> None:
        self.http.close()

    def status(self, app: str | None = None) -> list[dict[str, Any]]:
        if app is None:
            result: list[dict[str, Any]] = self._call("GET", "/apps")
            return result
        return [self._obj("GET", f"/apps/{app}")]

    def set_status(self, app: str, status: Literal["on", "off"]) -> dict[str, Any]:
        return self._obj("POST", f"/apps/{app}/{'start' if status == 'on' else 'stop'}")

    def restart(self, app: str, *, reset_links: bool) -> dict[str, Any]:
        return self._obj("POST", f"/apps/{app}/restart", json={"reset_links": reset_links})

    def allow_deletes(self, app: str) -> dict[str, Any]:
        return self._obj("POST", f"/apps/{app}/allow-deletes")

    def provision(self, app: str, object_id: str, object_type: Literal["user", "group"], *,
                  timeout: float | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": object_id, "type": object_type}
        if timeout is not None:
            body["timeout"] = timeout
        return self._obj("POST", f"/apps/{app}/provision", json=body)

    def test_connection(self, app: str) -> dict[str, Any]:
        return self._obj("POST", f"/apps/{app}/test-connection")

    def records(self, kind: str, *, app: str | None = None, status: str | None = None,
                limit: int = 100) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"app": app, "status": status, "limit": str(limit)}.items() if v}
        result: list[dict[str, Any]] = self._call("GET", f"/{kind}", params=params)
        return result

    # -- applications as data -------------------------------------------------------------

    def config_get(self, app: str, version: int | None = None) -> dict[str, Any]:
        params = {} if version is None else {"version": str(version)}
        return self._obj("GET", f"/apps/{_seg(app)}/config", params=params)

    def config_history(self, app: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", f"/apps/{_seg(app)}/config/history")
        return result

    def config_put(self, app: str, definition: Any, *, expected: int | None,
                   comment: str = "") -> dict[str, Any]:
        return self._obj("PUT", f"/apps/{_seg(app)}/config", headers=_if_match(expected),
                         json={"definition": definition, "comment": comment})

    def config_remove(self, app: str, *, expected: int | None, comment: str = "") -> dict[str, Any]:
        return self._obj("DELETE", f"/apps/{_seg(app)}/config", headers=_if_match(expected),
                         params={"comment": comment} if comment else {})

    def assignments(self, app: str) -> dict[str, Any]:
        return self._obj("GET", f"/apps/{_seg(app)}/assignments")

    def assign(self, app: str, kind: Literal["user", "group"], object_id: str, *,
               expected: int | None = None, comment: str = "") -> dict[str, Any]:
        return self._obj("POST", f"/apps/{_seg(app)}/assignments", headers=_if_match(expected),
                         json={"type": kind, "id": object_id, "comment": comment})

    def unassign(self, app: str, kind: Literal["user", "group"], object_id: str, *,
                 expected: int | None = None, comment: str = "") -> dict[str, Any]:
        return self._obj("DELETE", f"/apps/{_seg(app)}/assignments/{kind}/{_seg(object_id)}",
                         headers=_if_match(expected), params={"comment": comment} if comment else {})

    def _obj(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body = self._call(method, path, **kwargs)
        if not isinstance(body, dict):
            raise ApiError(f"admin API: expected a JSON object from {method} {path}")
        return body

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach the admin API at {self.url}: {type(exc).__name__}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:200]}
        if response.is_success:
            return body
        raise _error(response.status_code, body, self.url)


def _seg(value: str) -> str:
    """One path segment: an object id may hold ``/``, ``?`` or ``#`` (a DN, an email)."""
    return quote(value, safe="")


def _if_match(expected: int | None) -> dict[str, str]:
    """The version a change is based on, as the API's ETag (0: the app must not exist yet)."""
    if expected is None:
        return {}
    return {"If-None-Match": "*"} if expected == 0 else {"If-Match": f'"{expected}"'}


def _error(status: int, body: Any, url: str) -> ScimflowError:
    message = body.get("error", f"HTTP {status}") if isinstance(body, dict) else f"HTTP {status}"
    if status == 401:
        return ApiError(f"the admin API at {url} refused the token (401): check --token-file "
                        "or SCIMFLOW_ADMIN_TOKEN")
    if isinstance(body, dict) and isinstance(body.get("trace"), dict):
        return ProvisionFailedError(message, body["trace"], not_found=status == 404)
    if status == 404:
        return NoSuchAppError(message)
    if status == 400 and isinstance(body, dict) and isinstance(body.get("problems"), list):
        return DefinitionError([Problem(str(p.get("path", "$")), str(p.get("message", "")))
                                for p in body["problems"] if isinstance(p, dict)])
    if status == 400:
        return BadRequestError(message)
    return ApiError(f"admin API: {message} (HTTP {status})")
