"""The seam between the query runner and whatever provides tables: a per-query session factory.

For every query (and every Flight SQL metadata request) the runner builds a `QueryContext` from the
request and asks the `SessionFactory` for a fresh DataFusion `SessionContext`, then plans and runs
the SQL in it. The lakehouse's factory is `admission.LakeSessions`, which also takes back
the sessions of queries that ended cleanly (`give_back`, `session_pool.py`); tests plug in others.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

import datafusion

# Large batches: with DataFusion's default 8192 rows the per-message cost of Flight eats ~30% of
# the throughput; at 64Ki rows streaming costs nothing measurable (python-stack-facts.md §5.1).
BATCH_SIZE = 65536


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Principal:
    """Who asks: an API key's name, whether it may call admin functions, the audiences it reads
    (None: every one, as admins and legacy keys), the audience its ingestion is stamped with
    (None: none, as legacy keys) and the networks it may be used from (empty: anywhere)."""

    name: str
    is_admin: bool = False
    read_audiences: frozenset[str] | None = None
    write_audience: str | None = None
    allowed_networks: tuple[Network, ...] = ()

    def allows_peer(self, address: str) -> bool:
        """Whether the key may be used from this address (a bare IP; False for anything unparsable)."""
        if not self.allowed_networks:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # an IPv4 client of a dual-stack socket
        return any(ip in network for network in self.allowed_networks)


@dataclass(frozen=True)
class QueryContext:
    """What a session factory knows about the query it builds a session for."""

    query_id: str
    query_range: tuple[int, int] | None  # (begin, end) in ns since the epoch, UTC; None: no range given
    limit: int | None
    principal: Principal | None  # None when auth is disabled
    client: dict[str, str] = field(default_factory=dict)  # x-client-* headers (prefix dropped) + "peer"
    sql: str = ""  # the statement the session is for; empty for metadata requests
    sql_hash: str = ""  # its fingerprint, as the audit log writes it


class QueryDenied(Exception):
    """Raised by a session factory to refuse a query (the deny list): the client receives the
    message as is, and the audit log records the query as "denied"."""


SessionFactory = Callable[[QueryContext], datafusion.SessionContext]


def default_session_config() -> datafusion.SessionConfig:
    """The session settings the server expects from a factory: 64Ki-row batches (streaming speed)
    and `information_schema` (SHOW TABLES, information_schema.columns, …)."""
    return datafusion.SessionConfig().with_batch_size(BATCH_SIZE).with_information_schema(True)
