"""Bearer API keys, shared by the ingestion API and the Flight SQL API.

Keys come from `SPANLAKE_API_KEYS` (JSON list of `{"name", "key"}`) and from the `api_keys` table,
where only the SHA-256 of a key is stored. Comparisons of configured keys are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from spanlake.lakehouse.query.context import Principal

if TYPE_CHECKING:
    from spanlake.lakehouse.lake import Lake
    from spanlake.lakehouse.settings import Settings


class AuthError(Exception):
    """The request carries no valid credential. The message is safe to show to the caller."""


# Looks a key hash up in the database; returns the key's name and admin flag, or None.
KeyHashLookup = Callable[[bytes], "Principal | None"]

# Keys added or removed in the api_keys table take effect within these many seconds, on every role.
_CACHE_SECONDS = 5.0
_UNKNOWN_CACHE_SECONDS = 2.0
_KEYS_EXIST_SECONDS = 2.0
# Any client may send any number of made-up keys: the cache keeps at most this many, oldest out first.
MAX_CACHED_KEYS = 10_000


def parse_api_keys(text: str | None) -> dict[str, str]:
    """`SPANLAKE_API_KEYS` JSON → {key: name}. Raises ValueError with a readable message."""
    if not text:
        return {}
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"SPANLAKE_API_KEYS is not valid JSON: {err.msg}") from None
    if not isinstance(entries, list):
        raise ValueError('SPANLAKE_API_KEYS must be a JSON list of {"name": ..., "key": ...}')
    keys: dict[str, str] = {}
    for entry in entries:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("name"), str)
            and isinstance(entry.get("key"), str)
            and entry["key"]
        ):
            raise ValueError('each SPANLAKE_API_KEYS entry needs a string "name" and a non-empty "key"')
        keys[entry["key"]] = entry["name"]
    return keys


def hash_key(key: str) -> bytes:
    """SHA-256 digest of an API key, as the database stores it."""
    return hashlib.sha256(key.encode()).digest()


class Authenticator:
    """Validates `Authorization: Bearer <key>` headers. Thread-safe; callable from any thread."""

    def __init__(
        self,
        keys: dict[str, str],
        lookup_hash: KeyHashLookup | None = None,
        admins: frozenset[str] = frozenset(),
        database_has_keys: Callable[[], bool] | None = None,
    ) -> None:
        self._keys = [(k.encode(), name) for k, name in keys.items()]
        self._lookup_hash = lookup_hash
        self._admins = admins
        self._cache: OrderedDict[bytes, tuple[float, Principal | None]] = OrderedDict()
        self._lock = threading.Lock()
        # Given: with no configured key, requests need one only while the api_keys table has some.
        self._database_has_keys = database_has_keys
        self._keys_exist_until = 0.0
        self._keys_exist = True

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The caller's principal; None when no key exists at all (auth is then off, loopback only)."""
        if not self._keys and not self._any_database_key():
            return None
        token = bearer_token(authorization)
        for key, name in self._keys:
            if hmac.compare_digest(key, token.encode()):
                return Principal(name, name in self._admins)
        principal = self._lookup_database(hash_key(token))
        if principal is None:
            raise AuthError("invalid API key")
        return principal

    def _any_database_key(self) -> bool:
        if self._database_has_keys is None:
            return True
        now = time.monotonic()
        if now >= self._keys_exist_until:  # racing threads may both ask: harmless, the answer is the same
            self._keys_exist = self._database_has_keys()
            self._keys_exist_until = now + _KEYS_EXIST_SECONDS
        return self._keys_exist

    def _lookup_database(self, digest: bytes) -> Principal | None:
        if self._lookup_hash is None:
            return None
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        principal = self._lookup_hash(digest)
        ttl = _CACHE_SECONDS if principal is not None else _UNKNOWN_CACHE_SECONDS
        with self._lock:
            self._cache[digest] = (now + ttl, principal)
            self._cache.move_to_end(digest)
            while len(self._cache) > MAX_CACHED_KEYS:
                self._cache.popitem(last=False)
        return principal

    @property
    def cached_keys(self) -> int:
        """Number of database key lookups cached now (found or not)."""
        with self._lock:
            return len(self._cache)


def bearer_token(authorization: str | None) -> str:
    """The API key of an `Authorization: Bearer <key>` header (AuthError if missing or malformed)."""
    if not authorization:
        raise AuthError("missing Authorization header (expected 'Bearer <api key>')")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization header must be 'Bearer <api key>'")
    return token.strip()


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IP addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_authenticator(settings: Settings, lake: Lake) -> Authenticator | None:
    """The authenticator both APIs use, or None when requests need no key (--disable-auth).

    Keys are required as soon as any exist (in SPANLAKE_API_KEYS or the api_keys table, checked every
    few seconds, so `spanlake api-key NAME` turns auth on in running servers). Without any, spanlake
    serves unauthenticated only on a loopback address.
    """
    if settings.disable_auth:
        return None
    keys = parse_api_keys(settings.api_keys)

    def database_has_keys() -> bool:
        return lake.loop.run(lake.catalog.count_api_keys()) > 0

    if not keys and not is_loopback(settings.host) and not database_has_keys():
        raise AuthConfigError(
            f"refusing to listen on {settings.host} without API keys: set SPANLAKE_API_KEYS "
            "(or add a key with 'spanlake api-key NAME'), or pass --disable-auth"
        )

    def lookup(digest: bytes) -> Principal | None:
        found = lake.loop.run(lake.catalog.find_api_key(digest))
        return Principal(found[0], found[1] or found[0] in settings.admin_names) if found else None

    # Off a loopback address the keys were there at start: removing them all must not open the server.
    open_when_keyless = database_has_keys if is_loopback(settings.host) else None
    return Authenticator(keys, lookup, settings.admin_names, open_when_keyless)


class AuthConfigError(Exception):
    """Authentication is configured in a way spanlake refuses to start with."""
