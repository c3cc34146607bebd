"""OpenID Connect bearer tokens: JWTs validated against the issuer's published keys (PyJWT).

The issuer's discovery document (`/.well-known/openid-configuration`) names its `jwks_uri`; the keys are
fetched on first use and again every hour, and a token signed with a key id not seen yet refetches them
at once (key rotation), at most once every `REFETCH_SECONDS` (a client sending made-up key ids cannot
make the server hammer the issuer). A token is valid when its signature checks with the issuer's key
named by its `kid`, its `iss` is the issuer, its `aud` holds the configured audience (the client id),
and `exp`/`nbf` allow now (`LEEWAY_SECONDS` of clock skew). Its groups claim maps to audiences through
`SPANLAKE_OIDC_GROUP_AUDIENCES`; the grants of its name (`user:<name>`) in the database add to them.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt

from spanlake.lakehouse.settings import SettingsError

if TYPE_CHECKING:
    from spanlake.lakehouse.settings import Settings

# Asymmetric algorithms only: an HMAC "signature" made with the public key proves nothing.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
REFETCH_SECONDS = 5.0
KEYS_MAX_AGE_SECONDS = 3600.0
LEEWAY_SECONDS = 30
FETCH_TIMEOUT_SECONDS = 5.0
# Name claims, most specific first (micromegas's order, less its provider-specific ones).
NAME_CLAIMS = ("email", "preferred_username", "sub")

FetchJson = Callable[[str], dict[str, Any]]


class TokenError(Exception):
    """The token is not valid (the message is safe to show to the caller)."""


class IssuerUnavailable(Exception):
    """The issuer's discovery document or keys could not be read: no token can be checked now."""


@dataclass(frozen=True)
class OidcConfig:
    """Who issues the tokens spanlake accepts, for whom, and what their groups give."""

    issuer: str
    audience: str
    groups_claim: str
    group_audiences: dict[str, frozenset[str]]
    admin_group: str | None
    client_secret: str | None

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcConfig | None:
        """The configuration of `settings`, or None when no issuer is set (OIDC off)."""
        if not settings.oidc_issuer:
            return None
        if not settings.oidc_audience:
            raise SettingsError("SPANLAKE_OIDC_AUDIENCE (--oidc-audience) is required with SPANLAKE_OIDC_ISSUER")
        return cls(
            issuer=settings.oidc_issuer.rstrip("/"),
            audience=settings.oidc_audience,
            groups_claim=settings.oidc_groups_claim,
            group_audiences=parse_group_audiences(settings.oidc_group_audiences),
            admin_group=settings.oidc_admin_group or None,
            client_secret=settings.oidc_client_secret or None,
        )


def parse_group_audiences(text: str) -> dict[str, frozenset[str]]:
    """`group=audience,group=audience,…` (a group may repeat) → {group: audiences}; SettingsError if malformed."""
    mapping: dict[str, set[str]] = {}
    for pair in filter(None, (part.strip() for part in text.split(","))):
        group, equals, audience = pair.partition("=")
        if not equals or not group.strip() or not audience.strip():
            raise SettingsError(
                f"SPANLAKE_OIDC_GROUP_AUDIENCES (--oidc-group-audiences): {pair!r} is not group=audience"
            )
        mapping.setdefault(group.strip(), set()).add(audience.strip())
    return {group: frozenset(audiences) for group, audiences in mapping.items()}


def fetch_json(url: str) -> dict[str, Any]:
    """The JSON object at `url` (IssuerUnavailable when it cannot be read)."""
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_SECONDS) as response:
            document = json.load(response)
    except (OSError, ValueError) as err:  # URLError and timeouts are OSErrors; bad JSON a ValueError
        raise IssuerUnavailable(f"cannot read {url}: {err}") from None
    if not isinstance(document, dict):
        raise IssuerUnavailable(f"{url} is not a JSON object")
    return document


@dataclass(frozen=True)
class Identity:
    """A validated token's subject: its name, its groups and all its claims."""

    name: str
    groups: frozenset[str]
    claims: dict[str, Any]


class IssuerKeys:
    """The issuer's discovery document and signing keys, fetched when needed. Thread-safe."""

    def __init__(self, issuer: str, fetch: FetchJson = fetch_json) -> None:
        """Nothing is fetched until a token is checked."""
        self.issuer = issuer
        self._fetch = fetch
        self._lock = threading.Lock()
        self._discovery: dict[str, Any] | None = None
        self._discovery_failed_at = float("-inf")
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._read_at = float("-inf")  # the last read that succeeded
        self._tried_at = float("-inf")  # the last read, failed or not

    def discovery(self) -> dict[str, Any]:
        """The issuer's OpenID configuration (its `issuer` must be the configured one)."""
        with self._lock:
            if self._discovery is None:
                self._discovery = self._fetch_discovery()
            return self._discovery

    def _fetch_discovery(self) -> dict[str, Any]:
        """The discovery document, read now (the caller holds the lock); after a failure, not again for a while."""
        now = time.monotonic()
        if now - self._discovery_failed_at < REFETCH_SECONDS:
            raise IssuerUnavailable(f"the issuer {self.issuer} did not answer a moment ago")
        try:
            document = self._fetch(self.issuer + "/.well-known/openid-configuration")
        except IssuerUnavailable:
            self._discovery_failed_at = now
            raise
        if str(document.get("issuer", "")).rstrip("/") != self.issuer or "jwks_uri" not in document:
            raise IssuerUnavailable(f"the discovery document of {self.issuer} names another issuer or no jwks_uri")
        return document

    def key(self, kid: str | None) -> jwt.PyJWK:
        """The signing key named `kid` (TokenError when the issuer publishes none by that id)."""
        uri = self.discovery()["jwks_uri"]
        with self._lock:
            now = time.monotonic()
            wanted = now - self._read_at > KEYS_MAX_AGE_SECONDS or kid not in self._keys
            if wanted and now - self._tried_at >= REFETCH_SECONDS:
                self._refetch(uri, now)
            found = self._keys.get(kid)
            if not self._keys:  # the issuer did not answer a moment ago: no token can be checked
                raise IssuerUnavailable(f"no signing keys read from {self.issuer} yet")
        if found is None:
            raise TokenError("token signed with an unknown key")
        return found

    def _refetch(self, uri: str, now: float) -> None:
        """Reads the JWKS again (the caller holds the lock); a failed read keeps the keys it had, if any."""
        self._tried_at = now  # a failed read counts too: an issuer that is down is not asked on every call
        try:
            self._keys = _signing_keys(self._fetch(uri))
        except IssuerUnavailable:
            if not self._keys:
                raise
            return
        self._read_at = now


def _signing_keys(document: dict[str, Any]) -> dict[str | None, jwt.PyJWK]:
    """{kid: key} of a JWKS (a lone key without `kid` also answers a token without one)."""
    keys: dict[str | None, jwt.PyJWK] = {}
    for entry in document.get("keys", []):
        if entry.get("use", "sig") != "sig":
            continue
        try:
            keys[entry.get("kid")] = jwt.PyJWK(entry)
        except jwt.PyJWTError:  # a key type or algorithm this library does not know: not one of ours to use
            continue
    return keys


class TokenValidator:
    """Checks a JWT's signature and claims against the configured issuer and audience."""

    def __init__(self, config: OidcConfig, keys: IssuerKeys) -> None:
        """`keys`: the issuer's published keys."""
        self.config = config
        self.keys = keys

    def identity(self, token: str, nonce: str | None = None) -> Identity:
        """The identity of a valid token (TokenError otherwise); `nonce`, when given, must be its `nonce`."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed token") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise TokenError(f"token algorithm {algorithm!r} is not accepted")
        key = self.keys.key(header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as err:
            raise TokenError(f"invalid token: {err}") from None
        if nonce is not None and claims.get("nonce") != nonce:
            raise TokenError("invalid token: its nonce is not this sign-in's")
        return Identity(_name(claims), self._groups(claims), claims)

    def _groups(self, claims: dict[str, Any]) -> frozenset[str]:
        groups = claims.get(self.config.groups_claim, [])
        if isinstance(groups, str):
            groups = [groups]
        return frozenset(group for group in groups if isinstance(group, str))

    def audiences(self, identity: Identity) -> frozenset[str]:
        """The audiences the identity's groups map to."""
        mapped = self.config.group_audiences
        return frozenset().union(*(mapped.get(group, frozenset()) for group in identity.groups))

    def is_admin(self, identity: Identity) -> bool:
        """Whether the identity is in the configured admin group."""
        return self.config.admin_group is not None and self.config.admin_group in identity.groups


def _name(claims: dict[str, Any]) -> str:
    return next(str(claims[claim]) for claim in NAME_CLAIMS if claims.get(claim))


def looks_like_jwt(token: str) -> bool:
    """Whether a bearer token has a JWT's three dot-separated parts (API keys have no dot)."""
    return token.count(".") == 2
