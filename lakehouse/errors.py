"""The lakehouse's exceptions: errors it reports to whoever asked (a SQL user, through Flight SQL, or a
client of the ingestion API) and stored data it cannot read."""

from __future__ import annotations

import re
import sys

import asyncpg

from spanlake.lakehouse.object_store import ObjectStoreError

SHOWN_VALUE_LIMIT = 120
MESSAGE_LIMIT = 1000


class QueryError(ValueError):
    """A problem with the query's arguments (unknown view set, bad id, bad timestamp...).

    Raised inside table functions; the Flight SQL server answers INVALID_ARGUMENT with the message.
    """


class IngestRejected(ValueError):
    """A message refused at ingestion for what it is (never retried): HTTP 400 with this reason."""


class BadBlockError(Exception):
    """A stored block that cannot be read (bad payload, inflation past the limits, times that contradict
    its ticks or its process): that block alone is skipped with a warning.

    Not a ValueError on purpose: the decoders raise it for bad data only, so a programming error
    (`pa.ArrowInvalid`, a numpy shape error) still fails the partition instead of passing as a skip.
    """


class OtlpBlockError(BadBlockError):
    """A stored OTLP block that cannot be read (bad envelope or protobuf)."""


def shown(value: object, limit: int = SHOWN_VALUE_LIMIT) -> str:
    """`repr(value)` cut to about `limit` characters, for error messages and logs: a 10 MB id must not
    come back as a 10 MB answer, and a huge integer must not fail its own formatting."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, str | bytes) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value)} long)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def cut(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """An error message (from a parser, from PostgreSQL) cut to `limit` characters: such messages may
    quote the whole offending input."""
    return message if len(message) <= limit else f"{message[:limit]}… ({len(message)} characters)"


class ClusterUnsupported(Exception):
    """The cluster engine cannot run this query as DataFusion would: it runs on DataFusion instead."""


class ClusterFailure(Exception):
    """The query cluster failed after results began to stream (a worker lost, say): retry the query."""


# What the catalog database or the object store raise when they do not answer: every door answers
# "retry later" (HTTP 503, Flight SQL UNAVAILABLE). asyncpg's InternalClientError comes from a
# connection whose backend was terminated mid-operation. (Values PostgreSQL refuses for what they are,
# asyncpg.DataError and the like, are PostgresErrors too: ingestion answers those 400 first.)
STORAGE_FAILURES: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    ObjectStoreError,
    OSError,
    TimeoutError,
)
STORAGE_UNAVAILABLE = "the catalog database or the object store is not answering; retry shortly"
# DataFusion's own reads (parquet partitions through its object store) fail with the Rust object_store
# crate's error, as is when listing, wrapped by the parquet reader when reading; its Generic variant is
# the transport's (HTTP errors, connections refused, retries exhausted), unlike NotFound and the like,
# which say what is stored.
_OBJECT_STORE_TRANSPORT = re.compile(r"(Object Store error|Parquet error: External): Generic \w+ error")
# How DataFusion names a Python exception raised in a table function it called (`PyErr { type: <class …>`).
_PY_ERR_TYPE = re.compile(r"<class '(?P<module>[\w.]+)\.(?P<name>\w+)'>")


def is_storage_failure(exc: BaseException) -> bool:
    """`exc` is a storage failure, itself, wrapped by DataFusion around a table function's (nested
    when a table function wraps another's), or DataFusion's own object store failing to reach it."""
    if isinstance(exc, STORAGE_FAILURES):
        return True
    if _OBJECT_STORE_TRANSPORT.search(str(exc)):
        return True
    for raised in _PY_ERR_TYPE.finditer(str(exc)):
        cls = getattr(sys.modules.get(raised["module"]), raised["name"], None)
        if isinstance(cls, type) and issubclass(cls, STORAGE_FAILURES):
            return True
    return False
