"""Bearer API keys, shared by the ingestion API and the query doors (Flight SQL, web).

Keys come from `SPANLAKE_API_KEYS` (JSON list of `{"name", "key"}`) and from the database, where only
the SHA-256 of a key is stored: legacy `api_keys` (both surfaces, reading everything), ingestion keys
(one audience stamped on what they write) and analytics keys (the audiences they read, with the
grants of their name and groups). Comparisons of configured keys are constant-time. With an OIDC
issuer configured (`server.oidc`), a bearer JWT from it is accepted on the query doors beside the keys.

Database lookups are cached for a few seconds, and forgotten as soon as PostgreSQL announces a change of
keys, grants or groups (`KeyChanges`, migration 0010's triggers), whoever made it: a key revoked on the
web UI is refused by every process (the ingestion workers too) once the notification reaches it.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncpg

from spanlake.lakehouse.catalog.api_keys import StoredKey, hash_key
from spanlake.lakehouse.catalog.audience_grants import ADMINS_GROUP
from spanlake.lakehouse.query.context import Principal
from spanlake.server.oidc import Identity, IssuerKeys, OidcConfig, TokenError, TokenValidator, looks_like_jwt

if TYPE_CHECKING:
    from spanlake.lakehouse.lake import Lake
    from spanlake.lakehouse.settings import Settings


log = logging.getLogger(__name__)


class AuthError(Exception):
    """The request carries no valid credential. The message is safe to show to the caller."""


class LookupNeeded(Exception):
    """Authenticating without the database: the answer is not cached, the database must be asked."""


# The two surfaces a key is presented to: ingestion keys write, analytics keys read.
INGESTION = "ingestion"
ANALYTICS = "analytics"
# Every reader reads this audience (micromegas's one built-in read grant).
PUBLIC_AUDIENCE = "public"

# Looks a key hash up in the database for one surface; returns the key's principal, or None.
KeyHashLookup = Callable[[bytes], "Principal | None"]

# Keys added or removed in the api_keys table take effect within these many seconds, on every role.
_CACHE_SECONDS = 5.0
_UNKNOWN_CACHE_SECONDS = 2.0
_KEYS_EXIST_SECONDS = 2.0
# Any client may send any number of made-up keys: the cache keeps at most this many, oldest out first.
MAX_CACHED_KEYS = 10_000
# Migration 0010 announces every change of keys, grants and groups on this channel.
KEYS_CHANNEL = "spanlake_keys"
# A listener whose connection failed waits this long before connecting again (PostgreSQL restarting).
_LISTEN_RETRY_SECONDS = 1.0


class TtlCache:
    """At most `size` values, each kept for the seconds its `ttl` gives; oldest out first. Thread-safe."""

    def __init__(self, size: int, ttl: Callable[[Any], float]) -> None:
        """`ttl(value)`: how long a value is kept."""
        self._size = size
        self._ttl = ttl
        self._entries: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0  # forgettings so far: a value made before one is not kept

    def get(self, key: Any, make: Callable[[], Any], keep: bool = True) -> Any:
        """The cached value of `key`, or `make()`'s, kept unless `keep` is false (then nothing cached is used)."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key) if keep else None
            generation = self._generation
        if entry is not None and entry[0] > now:
            return entry[1]
        value = make()
        with self._lock:
            if not keep or generation != self._generation:  # forgotten meanwhile: `make` may have read the old
                return value
            self._entries[key] = (now + self._ttl(value), value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return value

    def cached(self, key: Any) -> tuple[bool, Any]:
        """Whether `key`'s value is kept (unexpired), and the value."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry[0] > time.monotonic():
            return True, entry[1]
        return False, None

    def forget(self) -> None:
        """Forgets every value, and those being made now."""
        with self._lock:
            self._entries.clear()
            self._generation += 1

    def __len__(self) -> int:
        """Number of values kept now (expired ones included until replaced or pushed out)."""
        with self._lock:
            return len(self._entries)


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


class Authenticator:
    """Validates `Authorization: Bearer <key>` headers. Thread-safe; callable from any thread."""

    def __init__(
        self,
        keys: dict[str, str],
        lookup_hash: KeyHashLookup | None = None,
        admins: frozenset[str] = frozenset(),
        database_has_keys: Callable[[], bool] | None = None,
        ingestion_lookup: KeyHashLookup | None = None,
        tokens: TokenPrincipals | None = None,
    ) -> None:
        """`lookup_hash` finds the database keys of the query doors, `ingestion_lookup` those of
        ingestion (`lookup_hash` serves both when None); `tokens` reads OIDC bearer tokens (None: off)."""
        self.tokens = tokens
        self._keys = [(k.encode(), name) for k, name in keys.items()]
        self._lookups = {ANALYTICS: lookup_hash, INGESTION: ingestion_lookup or lookup_hash}
        self._admins = admins
        self._cache = TtlCache(MAX_CACHED_KEYS, lambda found: _CACHE_SECONDS if found else _UNKNOWN_CACHE_SECONDS)
        # Given: with no configured key, requests need one only while the api_keys table has some.
        self._database_has_keys = database_has_keys
        self._keys_exist_until = 0.0
        self._keys_exist = True
        self._forgotten = 0  # counts forget_lookups calls: an answer read across one is not kept
        # Forgets the cached lookups on every announced change (None: they expire on their own).
        self.key_changes: KeyChanges | None = None

    def forget_lookups(self) -> None:
        """Forgets every cached database lookup (keys, whether any exist, tokens' grants)."""
        self._cache.forget()
        self._forgotten += 1
        self._keys_exist_until = 0.0
        if self.tokens is not None:
            self.tokens.forget()

    def close(self) -> None:
        """Stops following key changes."""
        if self.key_changes is not None:
            self.key_changes.close()

    def authenticate(
        self, authorization: str | None, surface: str = ANALYTICS, peer: str | None = None, database: bool = True
    ) -> Principal | None:
        """The caller's principal on `surface` (INGESTION or ANALYTICS), presented from `peer` (an IP
        address; None: not checked here, the caller checks `allows_peer`); None when no key exists at
        all (auth is then off, loopback only). A key refused from that address is an invalid key.
        With `database` false, only what is cached answers (LookupNeeded otherwise): a caller on an event
        loop answers a known key at once and asks the database off the loop only when it must."""
        if self.tokens is None and not self._keys and not self._any_database_key(database):
            return None
        token = bearer_token(authorization)
        for key, name in self._keys:
            if hmac.compare_digest(key, token.encode()):
                return Principal(name, name in self._admins)
        if self.tokens is not None and surface == ANALYTICS and looks_like_jwt(token):
            return self.tokens.principal(token)
        principal = self._lookup_database(hash_key(token), surface, database)
        if principal is None or (peer is not None and not principal.allows_peer(peer)):
            raise AuthError("invalid API key")
        return principal

    def _any_database_key(self, database: bool) -> bool:
        if self._database_has_keys is None:
            return True
        now = time.monotonic()
        if now >= self._keys_exist_until:  # racing threads may both ask: harmless, the answer is the same
            if not database:
                raise LookupNeeded
            forgotten = self._forgotten
            keys_exist = self._database_has_keys()
            if forgotten == self._forgotten:  # else a change came during the read: ask again next time
                self._keys_exist, self._keys_exist_until = keys_exist, now + _KEYS_EXIST_SECONDS
            return keys_exist
        return self._keys_exist

    def _lookup_database(self, digest: bytes, surface: str, database: bool) -> Principal | None:
        lookup = self._lookups[surface]
        if lookup is None:
            return None
        if not database:
            found, principal = self._cache.cached((digest, surface)) if self._caching else (False, None)
            if not found:
                raise LookupNeeded
            return principal
        return self._cache.get((digest, surface), lambda: lookup(digest), self._caching)

    @property
    def _caching(self) -> bool:
        """Whether lookups may be cached: always without a listener, else only while it listens (a change
        announced while not listening would be missed)."""
        return self.key_changes is None or self.key_changes.listening

    @property
    def cached_keys(self) -> int:
        """Number of database key lookups cached now (found or not)."""
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

    oidc = OidcConfig.from_settings(settings)
    if oidc is None and not keys and not is_loopback(settings.host) and not database_has_keys():
        raise AuthConfigError(
            f"refusing to listen on {settings.host} without API keys: set SPANLAKE_API_KEYS "
            "(or add a key with 'spanlake api-key NAME'), or pass --disable-auth"
        )

    def lookup(surface: str) -> KeyHashLookup:
        return lambda digest: lake.loop.run(database_principal(lake, digest, surface, settings.admin_names))

    # Off a loopback address the keys were there at start: removing them all must not open the server.
    open_when_keyless = database_has_keys if is_loopback(settings.host) else None
    tokens = None
    if oidc is not None:

        def grants(name: str) -> tuple[list[str], list[str]]:
            return lake.loop.run(lake.catalog.principal_grants(name, "read"))

        tokens = TokenPrincipals(TokenValidator(oidc, IssuerKeys(oidc.issuer)), settings.admin_names, grants)
    authenticator = Authenticator(
        keys, lookup(ANALYTICS), settings.admin_names, open_when_keyless, lookup(INGESTION), tokens
    )
    authenticator.key_changes = KeyChanges(lake, authenticator.forget_lookups)
    lake.loop.run(authenticator.key_changes.start())
    return authenticator


class KeyChanges:
    """Follows the changes of keys, grants and groups PostgreSQL announces (`KEYS_CHANNEL`) on a connection
    of its own, on the lake's loop, calling `forget` on each (and when it starts listening again after its
    connection dropped: a change may have been missed meanwhile)."""

    def __init__(self, lake: Lake, forget: Callable[[], None]) -> None:
        """`forget` runs on the lake's loop thread."""
        self.lake = lake
        self._forget = forget
        self._connection: asyncpg.Connection | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def listening(self) -> bool:
        """Whether every change announced now will reach this process."""
        return self._connection is not None

    async def start(self) -> None:
        """Listens; on failure, tries again every second in the background (nothing is cached meanwhile)."""
        if not await self._listen():
            self._reconnect()

    def close(self) -> None:
        """Stops listening and closes the connection."""
        self.lake.loop.run(self._close(), timeout=10)

    async def _listen(self) -> bool:
        try:
            # Named as the lake's connections: not another writer (`catalog_changes.py`).
            connection = await asyncpg.connect(
                self.lake.database_url, server_settings=self.lake.catalog_changes.server_settings
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
            log.warning("not following key changes yet (no key lookup cached meanwhile): %s", err)
            return False
        await connection.add_listener(KEYS_CHANNEL, self._announced)
        connection.add_termination_listener(self._terminated)
        self._connection = connection
        self._forget()  # a change may have come before the listening began
        return True

    def _announced(self, _connection: object, _pid: int, _channel: str, _payload: str) -> None:
        self._forget()

    def _terminated(self, _connection: object) -> None:
        self._connection = None
        if not self._closed:
            self._reconnect()

    def _reconnect(self) -> None:
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect_until_listening())

    async def _reconnect_until_listening(self) -> None:
        while not self._closed:
            await asyncio.sleep(_LISTEN_RETRY_SECONDS)
            if not self._closed and await self._listen():
                return

    async def _close(self) -> None:
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()


async def database_principal(lake: Lake, digest: bytes, surface: str, admin_names: frozenset[str]) -> Principal | None:
    """The principal of a database key on a surface, its grants resolved now, or None.

    An analytics key reads `public`, its own `read_audiences` and what grants give its name and groups;
    a key in the `admins` group (or flagged admin, or named in SPANLAKE_ADMINS) and a legacy key read
    everything. Any error here propagates: the caller refuses the request (fail closed)."""
    find = lake.catalog.find_ingestion_key if surface == INGESTION else lake.catalog.find_analytics_key
    key = await find(digest)
    if key is None:
        return None
    groups, granted = await lake.catalog.principal_grants(key.name, "read")
    is_admin = key.is_admin or key.name in admin_names or ADMINS_GROUP in groups
    return Principal(key.name, is_admin, _read_audiences(key, is_admin, granted), key.write_audience, key.allowed_cidrs)


def _read_audiences(key: StoredKey, is_admin: bool, granted: list[str]) -> frozenset[str] | None:
    if is_admin or key.read_audiences is None:
        return None
    return frozenset({PUBLIC_AUDIENCE, *key.read_audiences, *granted})


# Looks up a name's groups (transitively) and the audiences granted to it on the read axis.
GrantLookup = Callable[[str], tuple[list[str], list[str]]]


class TokenPrincipals:
    """OIDC bearer tokens as principals: validated on every call, their grants resolved at most every 5 s."""

    def __init__(self, validator: TokenValidator, admin_names: frozenset[str], grants: GrantLookup) -> None:
        """`grants` resolves a signed-in name's database groups and read grants."""
        self.validator = validator
        self._admin_names = admin_names
        self._grants = grants
        self._principals = TtlCache(MAX_CACHED_KEYS, lambda _: _CACHE_SECONDS)

    def principal(self, token: str) -> Principal:
        """The principal of a valid token (AuthError otherwise; IssuerUnavailable when it cannot be checked)."""
        try:
            identity = self.validator.identity(token)
        except TokenError as err:
            raise AuthError(str(err)) from None
        return self._principals.get((identity.name, identity.groups), lambda: self.identity_principal(identity))

    def forget(self) -> None:
        """Forgets the principals resolved (their grants may have changed)."""
        self._principals.forget()

    def identity_principal(self, identity: Identity) -> Principal:
        """A validated identity as a principal: admin through the admin group (of the token or the
        database) or SPANLAKE_ADMINS; else it reads `public`, its groups' mapped audiences and its grants."""
        groups, granted = self._grants(identity.name)
        is_admin = self.validator.is_admin(identity) or identity.name in self._admin_names or ADMINS_GROUP in groups
        if is_admin:
            return Principal(identity.name, True)
        audiences = frozenset({PUBLIC_AUDIENCE, *self.validator.audiences(identity), *granted})
        return Principal(identity.name, False, audiences)


class AuthConfigError(Exception):
    """Authentication is configured in a way spanlake refuses to start with."""
