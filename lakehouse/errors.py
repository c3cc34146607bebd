"""The lakehouse's exceptions: errors it reports to whoever asked (a SQL user, through Flight SQL) and
stored data it cannot read."""


class QueryError(ValueError):
    """A problem with the query's arguments (unknown view set, bad id, bad timestamp...).

    Raised inside table functions; the Flight SQL server answers INVALID_ARGUMENT with the message.
    """


class OtlpBlockError(ValueError):
    """A stored OTLP block that cannot be read (bad envelope or protobuf)."""


class ClusterUnsupported(Exception):
    """The cluster engine cannot run this query as DataFusion would: it runs on DataFusion instead."""


class ClusterFailure(Exception):
    """The query cluster failed after results began to stream (a worker lost, say): retry the query."""
