"""Who is asking, and whether they may: sessions from cookies, sign-in redirects (401 for
what is not a page), roles, CSRF checks on every state change, and security headers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from factorflow.web.ui.rendering import PREFIX
from factorflow.web.ui.sessions import OPERATOR, Session, Signer, tokens_match

MAX_FORM_BYTES = 16_384


@dataclass(frozen=True)
class Cookies:
    """Cookie names and attributes: HttpOnly, SameSite=Lax, Secure (then ``__Host-``)."""

    secure: bool

    def name(self, base: str) -> str:
        return f"__Host-{base}" if self.secure else base

    def set(self, response: Response, base: str, value: str, max_age: int) -> None:
        response.set_cookie(self.name(base), value, max_age=max_age, path="/",
                            secure=self.secure, httponly=True, samesite="lax")

    def clear(self, response: Response, base: str) -> None:
        response.delete_cookie(self.name(base), path="/", secure=self.secure, httponly=True,
                               samesite="lax")


SESSION = "factorflow_session"
SIGNIN = "factorflow_signin"
OIDC = "factorflow_oidc"

Handler = Callable[[Request, Session], Awaitable[Response]]


class Guard:
    def __init__(self, signer: Signer, cookies: Cookies, public_url: str | None) -> None:
        self.signer = signer
        self.cookies = cookies
        self.public_origin = _origin(public_url) if public_url else None

    def session_of(self, request: Request) -> Session | None:
        return self.signer.session(request.cookies.get(self.cookies.name(SESSION)))

    def page(self, handler: Handler, *, role: str | None = None) -> Callable[[Request], Any]:
        """A handler for signed-in people (``role``: operators only). GET/HEAD without a
        session redirect to the sign-in page; anything else answers 401. Any other method
        must carry the session's CSRF token and come from this origin (else 403)."""

        async def endpoint(request: Request) -> Response:
            session = self.session_of(request)
            if session is None:
                return self.unauthenticated(request)
            if role == OPERATOR and not session.can_operate:
                return PlainTextResponse(
                    "403 Forbidden: your role may view the dashboard but not change anything",
                    status_code=403,
                )
            if request.method not in ("GET", "HEAD"):
                problem = await self.check_form(request, session.csrf)
                if problem is not None:
                    return problem
            return await handler(request, session)

        return endpoint

    def unauthenticated(self, request: Request) -> Response:
        path = request.url.path
        if request.method in ("GET", "HEAD") and not path.endswith((".csv", ".json")):
            target = path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{PREFIX}/signin?next={quote(target, safe='')}",
                                    status_code=303)
        return PlainTextResponse("401 Unauthorized: sign in at /ui/signin", status_code=401,
                                 headers={"WWW-Authenticate": 'Cookie realm="factorflow"'})

    async def check_form(self, request: Request, expected: str) -> Response | None:
        """Read the form (into ``request.state.form``) and check its CSRF token and the
        request's origin; a 403 response if either is wrong."""
        if not self.same_origin(request):
            return PlainTextResponse("403 Forbidden: cross-origin request refused",
                                     status_code=403)
        form = await read_form(request)
        if form is None:
            return PlainTextResponse("400 Bad Request: expected a form", status_code=400)
        request.state.form = form
        if not tokens_match(expected, form.get("csrf_token")):
            return PlainTextResponse(
                "403 Forbidden: the form's security token is missing or stale; reload the "
                "page and try again", status_code=403,
            )
        return None

    def same_origin(self, request: Request) -> bool:
        """The Origin (or, without it, the Referer) names this site; browsers send one of them
        with every form post. A request with neither is not from a browser form."""
        source = request.headers.get("origin") or request.headers.get("referer")
        if source is None:
            return True  # no browser context: the CSRF token alone decides
        own = self.public_origin or _origin(str(request.base_url))
        return _origin(source) == own


async def read_form(request: Request) -> dict[str, str] | None:
    """An application/x-www-form-urlencoded body as a dict (last value wins), or None."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        return dict(parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=50))
    except (UnicodeDecodeError, ValueError):
        return None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def safe_next(target: str | None) -> str:
    """Where to go after signing in: only a path of the dashboard (no open redirect)."""
    if target and target.startswith(f"{PREFIX}/") and not target.startswith("//") and (
        "\\" not in target
    ):
        return target
    return f"{PREFIX}/"


_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class SecurityHeaders:
    """Headers on every dashboard response; pages are never cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith(f"{PREFIX}/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", _CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                ]
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
