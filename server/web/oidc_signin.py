"""Signing in to the UI with OpenID Connect: the authorization-code flow with PKCE.

`GET /auth/login?next=…` sends the browser to the issuer's authorization endpoint with a fresh `state`,
`nonce` and PKCE challenge, which it keeps in a short-lived HttpOnly cookie on `/auth/`. `GET
/auth/callback` checks the returned `state` against that cookie, trades the code and the PKCE verifier
for tokens at the token endpoint, validates the ID token (signature, issuer, audience, expiry and the
nonce) and keeps it in the session cookie `auth_cookie.SESSION_COOKIE`: each request is then
authenticated with it as with a bearer token, until it expires. Both cookies are SameSite=Lax: the
callback is a navigation from the issuer's site, which a Strict cookie would not follow. `POST /logout`
drops the session.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time

import aiohttp
from aiohttp import web
from yarl import URL

from spanlake.server.auth import TokenPrincipals
from spanlake.server.oidc import IssuerUnavailable, TokenError
from spanlake.server.web.auth_cookie import SESSION_COOKIE, login_page, safe_next

FLOW_COOKIE = "spanlake_oidc_flow"
FLOW_SECONDS = 600
CALLBACK_PATH = "/auth/callback"
SCOPES = "openid email profile"
TOKEN_TIMEOUT = aiohttp.ClientTimeout(total=10)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE verifier (RFC 7636)."""
    return _b64(hashlib.sha256(verifier.encode()).digest())


class SignInRefused(Exception):
    """The sign-in cannot go on; the message and status are shown on the login page."""

    def __init__(self, message: str, status: int = 401) -> None:
        """`status`: 400 for a flow this browser did not start, 401 refused, 502 the issuer failed."""
        super().__init__(message)
        self.status = status


class OidcSignIn:
    """The `/auth/login` and `/auth/callback` routes of a server that accepts the issuer's tokens."""

    def __init__(self, tokens: TokenPrincipals, public_url: str | None) -> None:
        """`public_url`: where browsers reach the UI (the callback URL's base); None: the request's own."""
        self.validator = tokens.validator
        self.config = tokens.validator.config
        self.public_url = public_url.rstrip("/") if public_url else None
        self.secure = bool(public_url and public_url.startswith("https:"))

    def routes(self) -> tuple[web.RouteDef, ...]:
        """The two routes of the flow."""
        return (web.get("/auth/login", self.start), web.get(CALLBACK_PATH, self.callback))

    def _redirect_uri(self, request: web.Request) -> str:
        # The Host was checked by the site guard: it is a name this server answers to.
        return (self.public_url or f"{request.scheme}://{request.host}") + CALLBACK_PATH

    async def _discovery(self) -> dict:
        return await asyncio.to_thread(self.validator.keys.discovery)

    async def start(self, request: web.Request) -> web.StreamResponse:
        """To the issuer's authorization endpoint, the flow's secrets kept in the flow cookie."""
        next_path = safe_next(request.query.get("next"))
        try:
            discovery = await self._discovery()
        except IssuerUnavailable:
            return login_page(request, next_path, "The sign-in provider does not answer: retry later.", 502, True)
        state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48)
        target = URL(discovery["authorization_endpoint"]).update_query(
            response_type="code",
            client_id=self.config.audience,
            redirect_uri=self._redirect_uri(request),
            scope=SCOPES,
            state=state,
            nonce=nonce,
            code_challenge=pkce_challenge(verifier),
            code_challenge_method="S256",
        )
        flow = {"state": state, "nonce": nonce, "verifier": verifier, "next": next_path}
        response = web.Response(status=303, headers={"Location": str(target)})
        response.set_cookie(
            FLOW_COOKIE,
            _b64(json.dumps(flow).encode()),
            max_age=FLOW_SECONDS,
            httponly=True,
            samesite="Lax",
            path="/auth/",
            secure=self.secure,
        )
        return response

    async def callback(self, request: web.Request) -> web.StreamResponse:
        """Back from the issuer: checks the state, trades the code, keeps the validated ID token."""
        flow = _read_flow(request.cookies.get(FLOW_COOKIE, ""))
        next_path = safe_next(flow.get("next"))
        try:
            id_token, expires = await self._signed_in(request, flow)
        except SignInRefused as err:
            response = login_page(request, next_path, f"Sign-in refused: {err}", err.status, True)
            response.del_cookie(FLOW_COOKIE, path="/auth/")
            return response
        response = web.Response(status=303, headers={"Location": next_path})
        response.del_cookie(FLOW_COOKIE, path="/auth/")
        response.set_cookie(
            SESSION_COOKIE,
            id_token,
            max_age=max(1, int(expires - time.time())),
            httponly=True,
            samesite="Lax",
            path="/",
            secure=self.secure,
        )
        return response

    async def _signed_in(self, request: web.Request, flow: dict[str, str]) -> tuple[str, float]:
        """(the validated ID token, its expiry) of the callback's code; SignInRefused otherwise."""
        sent_state = request.query.get("state", "")
        if not flow or not hmac.compare_digest(sent_state.encode(), flow.get("state", "").encode()):
            raise SignInRefused("this sign-in was not started here or has expired: sign in again", 400)
        if "error" in request.query:
            raise SignInRefused(f"the provider answered {request.query['error']}")
        tokens = await self._exchange(request, request.query.get("code", ""), flow["verifier"])
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise SignInRefused("the provider sent no ID token")
        try:
            identity = await asyncio.to_thread(self.validator.identity, id_token, flow["nonce"])
        except TokenError as err:
            raise SignInRefused(str(err)) from None
        except IssuerUnavailable:
            raise SignInRefused("the sign-in provider's keys cannot be read: retry later", 502) from None
        return id_token, float(identity.claims["exp"])

    async def _exchange(self, request: web.Request, code: str, verifier: str) -> dict:
        """The token endpoint's answer to the code and its PKCE verifier."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self._redirect_uri(request),
            "client_id": self.config.audience,
            "code_verifier": verifier,
        }
        auth = aiohttp.BasicAuth(self.config.audience, self.config.client_secret) if self.config.client_secret else None
        try:
            endpoint = (await self._discovery())["token_endpoint"]
            async with (
                aiohttp.ClientSession(timeout=TOKEN_TIMEOUT) as session,
                session.post(endpoint, data=form, auth=auth) as answer,
            ):
                body = await answer.json(content_type=None)
        except (IssuerUnavailable, aiohttp.ClientError, TimeoutError, ValueError):
            raise SignInRefused("the sign-in provider does not answer: retry later", 502) from None
        if answer.status != 200 or not isinstance(body, dict):
            error = body.get("error", answer.status) if isinstance(body, dict) else answer.status
            raise SignInRefused(f"the provider refused the code ({error})")
        return body


def _read_flow(cookie: str) -> dict[str, str]:
    """The flow cookie's fields ({} when missing or not ours)."""
    try:
        flow = json.loads(base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4)))
    except (binascii.Error, ValueError):
        return {}
    if not isinstance(flow, dict) or not all(isinstance(flow.get(k), str) for k in ("state", "nonce", "verifier")):
        return {}
    return flow
