"""Errors the lakehouse reports to whoever asked (a SQL user, through Flight SQL)."""


class QueryError(ValueError):
    """A problem with the query's arguments (unknown view set, bad id, bad timestamp...).

    Raised inside table functions; the Flight SQL server answers INVALID_ARGUMENT with the message.
    """
