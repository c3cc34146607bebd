"""A small OpenID Connect issuer on loopback for the tests: its own RSA keys, a discovery document, a JWKS,
an authorization endpoint (signing in whoever `user` names, no form) and a token endpoint that checks
the code, the redirect URI and the PKCE verifier before it issues a signed ID token, or gives a service
account (`SERVICE_ID`/`SERVICE_SECRET`, in `SERVICE_GROUPS`) an access token. (No tests here.)"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from harness import free_port
from yarl import URL

CLIENT_ID = "spanlake-tests"
SERVICE_ID = "ci-bot"
SERVICE_SECRET = "ci-bot-secret"
SERVICE_GROUPS = ["ops"]


@dataclass
class SigningKey:
    """An RSA key and the id the JWKS names it by."""

    kid: str
    private: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))

    def public_jwk(self) -> dict[str, Any]:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}


@dataclass
class User:
    """Who the authorization endpoint signs in."""

    email: str
    groups: list[str]


class Issuer:
    """The issuer, serving on a loopback port from its own thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.keys = [SigningKey("key-1")]
        self.user = User("nobody@example.com", [])
        self.id_token_claims: dict[str, Any] = {}  # claims the token endpoint's next ID tokens override
        self.jwks_reads = 0
        self.codes: dict[str, dict[str, Any]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def current(self) -> SigningKey:
        return self.keys[-1]

    def rotate(self) -> SigningKey:
        """A new signing key, published beside the old one and used from now on."""
        self.keys.append(SigningKey(f"key-{len(self.keys) + 1}"))
        return self.current

    def token(self, email: str, groups: list[str], key: SigningKey | None = None, **claims: Any) -> str:
        """A token for `email` in `groups`, valid for an hour unless `claims` say otherwise."""
        now = int(time.time())
        body = {"iss": self.url, "aud": CLIENT_ID, "sub": f"sub-{email}", "email": email, "groups": groups}
        body |= {"iat": now, "exp": now + 3600, **claims}
        signer = key or self.current
        return jwt.encode(body, signer.private, algorithm="RS256", headers={"kid": signer.kid})

    # -- the server ------------------------------------------------------------------------------

    def start(self) -> Issuer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.url,
                "jwks_uri": self.url + "/jwks",
                "authorization_endpoint": self.url + "/authorize",
                "token_endpoint": self.url + "/token",
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_reads += 1
        return web.json_response({"keys": [key.public_jwk() for key in self.keys]})

    async def _authorize(self, request: web.Request) -> web.Response:
        query = request.query
        if query.get("client_id") != CLIENT_ID or query.get("code_challenge_method") != "S256":
            return web.Response(status=400, text="bad authorization request")
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"user": self.user, **query}
        target = URL(query["redirect_uri"]).update_query(code=code, state=query["state"])
        return web.Response(status=302, headers={"Location": str(target)})

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") == "client_credentials":
            return self._service_token(form)
        grant = self.codes.pop(str(form.get("code")), None)
        verifier = str(form.get("code_verifier", ""))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if (
            grant is None
            or form.get("redirect_uri") != grant["redirect_uri"]
            or form.get("client_id") != CLIENT_ID
            or challenge != grant["code_challenge"]
        ):
            return web.json_response({"error": "invalid_grant"}, status=400)
        user: User = grant["user"]
        id_token = self.token(user.email, user.groups, **{"nonce": grant["nonce"], **self.id_token_claims})
        return web.json_response({"id_token": id_token, "access_token": id_token, "token_type": "Bearer"})

    def _service_token(self, form: Any) -> web.Response:
        """Client credentials: an access token for spanlake's audience naming the service account."""
        if form.get("client_id") != SERVICE_ID or form.get("client_secret") != SERVICE_SECRET:
            return web.json_response({"error": "invalid_client"}, status=401)
        access_token = self.token(SERVICE_ID, SERVICE_GROUPS, sub=SERVICE_ID)
        return web.json_response({"access_token": access_token, "token_type": "Bearer", "expires_in": 3600})
