"""Signing in (local admin form, OIDC round trip) and out."""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from factorflow.web.ui.guard import OIDC, SESSION, SIGNIN, read_form, safe_next
from factorflow.web.ui.rendering import PREFIX
from factorflow.web.ui.sessions import OPERATOR, Session, tokens_match
from factorflow.web.ui.signin import AuthorizationRequest, SignInFailed, role_for

if TYPE_CHECKING:
    from factorflow.web.ui.dashboard import Dashboard

log = logging.getLogger(__name__)

SIGNIN_SECONDS = 600  # how long a sign-in form or an OIDC round trip stays valid


def routes(dash: Dashboard) -> list[BaseRoute]:
    pages = _AuthPages(dash)
    return [
        Route("/signin", pages.form, methods=["GET"]),
        Route("/signin", pages.submit, methods=["POST"]),
        Route("/signout", dash.guard.page(pages.signout), methods=["POST"]),
        Route("/auth/oidc/start", pages.oidc_start, methods=["GET"]),
        Route("/auth/oidc/callback", pages.oidc_callback, methods=["GET"]),
    ]


class _AuthPages:
    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash

    def _form(self, request: Request, *, error: str | None = None, status: int = 200,
              next_path: str | None = None) -> Response:
        dash = self.dash
        token = secrets.token_urlsafe(24)
        response = dash.render(
            request, "signin.html", None, status_code=status, error=error,
            signin_token=token, next_path=safe_next(next_path or request.query_params.get("next")),
            local=dash.credentials.admin is not None,
            admin_username=dash.settings.ui.admin_username,
            provider_label=dash.provider.label if dash.provider else None,
            signed_out=request.query_params.get("signed_out") == "1",
        )
        dash.cookies.set(response, SIGNIN, dash.signer.sign("signin", {"t": token},
                                                            SIGNIN_SECONDS), SIGNIN_SECONDS)
        return response

    async def form(self, request: Request) -> Response:
        if self.dash.guard.session_of(request) is not None:
            return RedirectResponse(safe_next(request.query_params.get("next")), status_code=303)
        return self._form(request)

    async def submit(self, request: Request) -> Response:
        dash = self.dash
        address = request.client.host if request.client else "unknown"
        if not dash.guard.same_origin(request):
            return self._form(request, error="The sign-in came from another site.", status=403)
        form = await read_form(request)
        if form is None:
            return self._form(request, error="Expected the sign-in form.", status=400)
        next_path = form.get("next")
        if dash.credentials.admin is None:
            return self._form(request, error="Local sign-in is turned off.", status=403)
        expected = dash.signer.unsign("signin", request.cookies.get(dash.cookies.name(SIGNIN)))
        if expected is None or not tokens_match(str(expected.get("t", "")),
                                                form.get("signin_token")):
            return self._form(request, error="The sign-in form expired. Please try again.",
                              status=403, next_path=next_path)
        wait = dash.throttle.wait_seconds(address)
        if wait > 0:
            return self._form(request, status=429, next_path=next_path, error=(
                f"Too many failed sign-ins. Try again in {int(wait) + 1} seconds."))
        username = form.get("username", "")
        password = form.get("password", "")
        admin = dash.credentials.admin
        if not await dash.run(admin.check, username, password):
            dash.throttle.failed(address)
            log.warning("ui.signin_failed", extra={"fields": {
                "method": "local", "username": username[:64], "client": address,
            }})
            return self._form(request, error="Wrong name or password.", status=401,
                              next_path=next_path)
        dash.throttle.succeeded(address)
        return self._signed_in(admin.username, admin.username, OPERATOR, "local",
                               safe_next(next_path))

    def _signed_in(self, user: str, name: str, role: str, method: str, target: str) -> Response:
        dash = self.dash
        max_age = dash.settings.ui.session_max_age_seconds
        _session, value = dash.signer.new_session(user=user, name=name, role=role,
                                                  method=method, max_age=max_age)
        log.info("ui.signed_in", extra={"fields": {"user": user, "method": method,
                                                   "role": role}})
        response = RedirectResponse(target, status_code=303)
        dash.cookies.set(response, SESSION, value, max_age)
        dash.cookies.clear(response, SIGNIN)
        dash.cookies.clear(response, OIDC)
        return response

    async def signout(self, _request: Request, session: Session) -> Response:
        log.info("ui.signed_out", extra={"fields": {"user": session.user}})
        response = RedirectResponse(f"{PREFIX}/signin?signed_out=1", status_code=303)
        self.dash.cookies.clear(response, SESSION)
        return response

    # -- OIDC -------------------------------------------------------------------------------

    def _redirect_uri(self, request: Request) -> str:
        base = self.dash.settings.ui.public_url
        if base is None:
            base = f"{request.url.scheme}://{request.url.netloc}"
        return f"{base.rstrip('/')}{PREFIX}/auth/oidc/callback"

    async def oidc_start(self, request: Request) -> Response:
        dash = self.dash
        if dash.provider is None:
            return self._form(request, error="No identity provider is configured.", status=404)
        try:
            started = await dash.run(dash.provider.start, self._redirect_uri(request))
        except SignInFailed as exc:
            return self._form(request, error=str(exc), status=502)
        state = {"s": started.state, "n": started.nonce, "v": started.code_verifier,
                 "next": safe_next(request.query_params.get("next"))}
        response = RedirectResponse(started.url, status_code=303)
        dash.cookies.set(response, OIDC, dash.signer.sign("oidc", state, SIGNIN_SECONDS),
                         SIGNIN_SECONDS)
        return response

    async def oidc_callback(self, request: Request) -> Response:
        dash = self.dash
        if dash.provider is None:
            return self._form(request, error="No identity provider is configured.", status=404)
        held = dash.signer.unsign("oidc", request.cookies.get(dash.cookies.name(OIDC)))
        params = request.query_params
        if held is None or not tokens_match(str(held.get("s", "")), params.get("state")):
            return self._form(request, status=400, error=(
                "This sign-in was not started here or has expired. Please start again."))
        if params.get("error"):
            return self._form(request, status=401, error=(
                f"The identity provider did not sign you in: {params['error'][:100]}"))
        code = params.get("code")
        if not code:
            return self._form(request, error="The identity provider sent no code.", status=400)
        started = AuthorizationRequest("", str(held["s"]), str(held["n"]), str(held["v"]))
        try:
            identity = await dash.run(dash.provider.finish, code, self._redirect_uri(request),
                                      started)
        except SignInFailed as exc:
            return self._form(request, error=str(exc), status=401)
        oidc = dash.settings.ui.oidc
        role = role_for(identity.groups, oidc.viewer_groups, oidc.operator_groups)
        if role is None:
            log.warning("ui.signin_refused", extra={"fields": {
                "method": "oidc", "user": identity.username, "reason": "no allowed group",
            }})
            return self._form(request, status=403, error=(
                f"{identity.username} is not in a group allowed to use this dashboard."))
        return self._signed_in(identity.username, identity.name, role, "oidc",
                               safe_next(str(held.get("next"))))
