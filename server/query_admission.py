"""The deny-list check in front of every Flight SQL statement: the query's attribution, as
micromegas's match context, checked against the lake's rules before its session is built."""

from __future__ import annotations

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query_denials import admin_recovery, denial_message
from spanlake.server.flightsql.session import QueryContext, QueryDenied


def client_ip(peer: str) -> str:
    """gRPC's peer ('ipv4:127.0.0.1:39078', 'ipv6:[::1]:39078') → the address alone."""
    _, _, address = peer.partition(":")
    host = address.rpartition(":")[0] or address
    return host.strip("[]")


def attribution(query: QueryContext) -> dict[str, str | None]:
    """The match context a deny rule is evaluated over ("unknown" where micromegas says so)."""
    client = query.client
    return {
        "user_id": query.principal.name if query.principal is not None else "",
        "email": "",
        "service_account": None,
        "client": client.get("type") or "unknown",
        "agent": client.get("agent") or "unknown",
        "entrypoint": client.get("entrypoint") or "unknown",
        "session": client.get("session") or None,
        "notebook": client.get("notebook") or None,
        "cell": client.get("cell") or None,
        "client_ip": client_ip(client.get("peer", "")),
        "sql": query.sql,
        "sql_hash": query.sql_hash,
    }


def admit(lake: Lake, query: QueryContext, is_admin: bool) -> None:
    """Raises QueryDenied, with micromegas's message, if a deny rule matches the statement."""
    if not query.sql:
        return  # metadata requests carry no statement
    rule = lake.deny_list.check(attribution(query))
    if rule is not None and not admin_recovery(query.sql, is_admin):
        raise QueryDenied(denial_message(rule, query.query_id))
