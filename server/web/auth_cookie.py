"""Signing in to the UI: a login page takes an API key and keeps it in an HttpOnly cookie.

The cookie holds the key itself and every request is authenticated with it exactly as a bearer
header would be (`Authenticator.authenticate`), so revoking a key signs its sessions out at once.
SameSite=Strict keeps other sites from sending it (no cross-site request carries it) and HttpOnly
keeps page scripts from reading it. Tools may send `Authorization: Bearer <key>` instead.
The forms carry the CSRF token `server.site_guard` checks; wrong keys are throttled (`login_throttle`).
With OIDC configured the page also offers the issuer's sign-in (`oidc_signin`), whose validated ID token
lives in `SESSION_COOKIE` and is checked on every request the same way.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from spanlake.server.auth import ANALYTICS, Authenticator, AuthError, Principal
from spanlake.server.site_guard import csrf_token
from spanlake.server.web import html
from spanlake.server.web.login_throttle import LoginThrottle

COOKIE = "spanlake_key"
SESSION_COOKIE = "spanlake_oidc"
COOKIE_MAX_AGE = 7 * 86_400


async def authenticate(request: web.Request, authenticator: Authenticator) -> Principal | None:
    """The principal of the request's cookie or bearer header (None while the server has no key at
    all: the loopback default); AuthError if neither is valid."""
    key = request.cookies.get(COOKIE) or request.cookies.get(SESSION_COOKIE)
    header = f"Bearer {key}" if key else request.headers.get("Authorization")
    try:
        # May look the key up in PostgreSQL through the loop: off the loop thread.
        return await asyncio.to_thread(authenticator.authenticate, header, ANALYTICS, request.remote)
    except AuthError:
        if header is None:
            raise AuthError("sign in with an API key") from None
        raise


def login_redirect(request: web.Request) -> web.Response:
    """To the login page, coming back to this request's page once signed in."""
    target = html.url("/login", {"next": request.path_qs})
    return web.Response(status=303, headers={"Location": target})


def safe_next(value: str | None) -> str:
    """Only a path of this site (never `//host` or a full URL): no open redirect."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    return value


def login_page(
    request: web.Request, next_path: str, message: str = "", status: int = 200, sso: bool = False
) -> web.Response:
    """The sign-in form (and the issuer's sign-in when `sso`), with why the last attempt was refused if it was."""
    return html.page(
        "login.html",
        title="Sign in",
        status=status,
        csrf_token=csrf_token(request),
        next_path=next_path,
        message=message,
        sso_url=html.url("/auth/login", {"next": next_path}) if sso else None,
    )


def _throttled(request: web.Request, next_path: str, retry_after: int, sso: bool) -> web.Response:
    """The sign-in form saying how long to wait, as a 429."""
    response = login_page(request, next_path, f"Too many wrong keys: retry in {retry_after} s.", 429, sso)
    response.headers["Retry-After"] = str(retry_after)
    return response


def login_handlers(authenticator: Authenticator | None, throttle: LoginThrottle) -> tuple[web.RouteDef, ...]:
    """`GET /login` (the form), `POST /login` (sign in, wrong keys throttled), `POST /logout`."""
    sso = authenticator is not None and authenticator.tokens is not None

    async def show(request: web.Request) -> web.Response:
        if authenticator is None:
            return web.Response(status=303, headers={"Location": "/"})
        return login_page(request, safe_next(request.query.get("next")), sso=sso)

    async def sign_in(request: web.Request) -> web.Response:
        form = await request.post()
        next_path = safe_next(str(form.get("next", "")))
        key = str(form.get("key", "")).strip()
        if authenticator is None:
            return web.Response(status=303, headers={"Location": next_path})
        client = request.remote or ""
        retry_after = throttle.admit(client)
        if retry_after is not None:
            return _throttled(request, next_path, retry_after, sso)
        try:
            await asyncio.to_thread(authenticator.authenticate, f"Bearer {key}", ANALYTICS, request.remote)
        except AuthError as err:
            return login_page(request, next_path, f"Sign-in refused: {err}", 401, sso)
        throttle.succeeded(client)
        response = web.Response(status=303, headers={"Location": next_path})
        response.set_cookie(COOKIE, key, max_age=COOKIE_MAX_AGE, httponly=True, samesite="Strict", path="/")
        return response

    async def sign_out(request: web.Request) -> web.Response:
        response = web.Response(status=303, headers={"Location": "/login"})
        response.del_cookie(COOKIE, path="/")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    return (web.get("/login", show), web.post("/login", sign_in), web.post("/logout", sign_out))


def principal_of(request: web.Request) -> Principal | None:
    """Who signed in; None when the server runs without keys."""
    return request.get("principal")
