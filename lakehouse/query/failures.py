"""A query's failure, classified: a status code (gRPC's names; each door maps it to its own status:
Flight SQL in server/flightsql/errors.py, HTTP in server/web/queries.py) and the client's message.

The message follows micromegas: `"{what failed}: {root error} (query_id=…)"`. It never carries a
Python traceback, a physical plan, an object-store URL or an absolute filesystem path.

DataFusion's Python binding raises plain `Exception`/`ValueError` whose text is the Rust error
(`"DataFusion error: …"`, `"Error during planning: …"`, chains joined by `"\\ncaused by\\n"`), so
errors are classified by content, on the root of the chain, like micromegas's `find_root()`.
Python exceptions raised inside a UDF or table function come back as
`"Execution error: PyErr { type: <class '…'>, value: …, traceback: … }"`; the inner message is
extracted and the traceback dropped. A storage failure (the catalog database or the object store not
answering, `lakehouse.errors.is_storage_failure`), raised directly or inside a table function, is
UNAVAILABLE: retry later.
"""

from __future__ import annotations

import ast
import enum
import logging
import re
import sys

from spanlake.lakehouse.errors import ClusterFailure, QueryError, is_storage_failure

MAX_MESSAGE_CHARS = 1500  # the message travels in gRPC trailers twice; keep well under 8 KiB

_log = logging.getLogger("spanlake.flightsql")


# A problem with the caller's request, raised by lakehouse code (e.g. inside a table function): the
# client receives INVALID_ARGUMENT with the exception's message (after path scrubbing).
UserError = QueryError


class Code(enum.Enum):
    """A failure's status, named as gRPC's."""

    INVALID_ARGUMENT = "invalid_argument"
    UNIMPLEMENTED = "unimplemented"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    UNAVAILABLE = "unavailable"  # a part of the service failed or stops: retrying may succeed
    PERMISSION_DENIED = "permission_denied"
    INTERNAL = "internal"


def error_class(code: Code) -> str:
    """The audit bucket of a status code, as micromegas's `error_class`."""
    if code in (Code.INVALID_ARGUMENT, Code.UNIMPLEMENTED, Code.PERMISSION_DENIED, Code.CANCELLED):
        return "user"
    if code in (Code.RESOURCE_EXHAUSTED, Code.DEADLINE_EXCEEDED, Code.UNAVAILABLE):
        return "resource"
    return "internal"


class Failure(Exception):
    """A classified failure: its code and the client-facing message (already scrubbed). `storage`: the
    catalog database or the object store did not answer."""

    def __init__(self, code: Code, message: str, audit_class: str | None = None, storage: bool = False) -> None:
        """`audit_class` overrides the code's bucket (a denial is "denied")."""
        super().__init__(message)
        self.code = code
        self.message = message
        self._audit_class = audit_class
        self.storage = storage

    @property
    def error_class(self) -> str:
        """The audit's bucket: user, resource, internal or denied."""
        return self._audit_class or error_class(self.code)


def log_failure(failure: Failure) -> Failure:
    """Logs a failure for operators (ERROR if internal, else WARNING) and returns it, to be raised."""
    _log.log(logging.ERROR if failure.error_class == "internal" else logging.WARNING, "%s", failure.message)
    return failure


def invalid_argument(message: str, query_id: str | None = None) -> Failure:
    """The caller's SQL or request is wrong."""
    return Failure(Code.INVALID_ARGUMENT, client_message(message, query_id))


def permission_denied(message: str) -> Failure:
    """The caller may not do this."""
    return Failure(Code.PERMISSION_DENIED, client_message(message, None))


def unimplemented(message: str, query_id: str | None = None) -> Failure:
    """The request asks for something spanlake does not do."""
    return Failure(Code.UNIMPLEMENTED, client_message(message, query_id))


def deadline_exceeded(message: str, query_id: str | None = None) -> Failure:
    """The query ran past its time limit."""
    return Failure(Code.DEADLINE_EXCEEDED, client_message(message, query_id))


def cancelled(message: str, query_id: str | None = None) -> Failure:
    """The client cancelled the query or went away."""
    return Failure(Code.CANCELLED, client_message(message, query_id))


def unavailable(message: str, query_id: str | None = None) -> Failure:
    """A part of the service failed or stops: retrying may succeed."""
    return Failure(Code.UNAVAILABLE, client_message(message, query_id))


def internal(message: str, query_id: str | None = None) -> Failure:
    """A bug or an unexpected failure of the server."""
    return Failure(Code.INTERNAL, client_message(message, query_id))


def denied(message: str) -> Failure:
    """A query refused by the deny list, audited as "denied"; the message names the rule and the query id.

    micromegas sends RESOURCE_EXHAUSTED, which Arrow Flight clients raise as `ArrowInvalid`; pyarrow's
    server cannot send that code, and INVALID_ARGUMENT is the one clients raise the same way."""
    return Failure(Code.INVALID_ARGUMENT, scrub(message), audit_class="denied")


def classify(what: str, exc: BaseException, query_id: str | None) -> Failure:
    """`exc` raised while doing `what` ("error building dataframe", …) → the client's Failure."""
    code, root = root_error(exc)
    if is_storage_failure(exc):
        return Failure(Code.UNAVAILABLE, client_message(f"{what}: {root}", query_id), storage=True)
    return Failure(code, client_message(f"{what}: {root}", query_id))


def client_message(message: str, query_id: str | None) -> str:
    """`message` scrubbed and cut, with the query's id."""
    text = scrub(message)
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + " …"
    return f"{text} (query_id={query_id})" if query_id else text


# ---------------------------------------------------------------------------------------------
# Root-error classification

# The DataFusionError variants' Display prefixes, and where micromegas files each one.
_PREFIX_CODES: tuple[tuple[str, Code], ...] = (
    ("SQL error: ", Code.INVALID_ARGUMENT),
    ("Error during planning: ", Code.INVALID_ARGUMENT),
    ("Schema error: ", Code.INVALID_ARGUMENT),
    ("Execution error: ", Code.INVALID_ARGUMENT),
    ("Invalid or Unsupported Configuration: ", Code.INVALID_ARGUMENT),
    ("Resources exhausted: ", Code.RESOURCE_EXHAUSTED),
    ("This feature is not implemented: ", Code.UNIMPLEMENTED),
    # Arrow kernels failing on the values the SQL asked for: the caller's doing, not the server's.
    # (micromegas files every ArrowError as internal; spanlake keeps only these apart.)
    ("Arrow error: Cast error: ", Code.INVALID_ARGUMENT),
    ("Arrow error: Divide by zero error", Code.INVALID_ARGUMENT),
    ("Arrow error: Arithmetic overflow: ", Code.INVALID_ARGUMENT),
    ("Arrow error: Parser error: ", Code.INVALID_ARGUMENT),
    (
        "Arrow error: Invalid argument error: Encountered non UTF-8 data",
        Code.INVALID_ARGUMENT,
    ),  # CAST(X'FF' AS VARCHAR)
)
_WRAPPER_PREFIXES = ("DataFusion error: ", "External error: ")
_INTERNAL_PREFIXES = (
    "Internal error: ",
    "Arrow error: ",
    "IO error: ",
    "Object Store error: ",
    "Parquet error: ",
    "Join Error: ",
)
_CAUSED_BY = re.compile(r"\n?caused by\n")
_PY_ERR = re.compile(
    r"PyErr \{ type: <class '(?P<type>[\w.]+)'>, value: (?P<value>.*), traceback: (?:None|Some\(.*\)) \}", re.DOTALL
)
_EXCEPTION_REPR = re.compile(r"(?P<name>\w+)\((?P<args>.*)\)", re.DOTALL)


def root_error(exc: BaseException) -> tuple[Code, str]:
    """The status code and root-cause text of an exception from DataFusion, a UDF/UDTF or Python."""
    if isinstance(exc, UserError):
        return Code.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, MemoryError):
        return Code.RESOURCE_EXHAUSTED, f"out of memory: {exc}"
    if isinstance(exc, ClusterFailure):
        return Code.UNAVAILABLE, str(exc)
    text = str(exc)
    py_err = _PY_ERR.search(text)
    if py_err is not None:
        return _python_error(py_err.group("type"), py_err.group("value"))
    root = _CAUSED_BY.split(text)[-1].strip()
    while root.startswith(_WRAPPER_PREFIXES):
        root = root.split(": ", 1)[1]
    for prefix, code in _PREFIX_CODES:
        if root.startswith(prefix):
            return code, root
    if text.startswith(_WRAPPER_PREFIXES) or root.startswith(_INTERNAL_PREFIXES):
        return Code.INTERNAL, root
    return Code.INTERNAL, f"{type(exc).__name__}: {root}"  # a Python exception, not DataFusion's


def _python_error(type_path: str, value_repr: str) -> tuple[Code, str]:
    """An exception raised in Python code that DataFusion called (UDTF, UDF)."""
    message = _exception_message(value_repr)
    cls = _loaded_class(type_path)
    if isinstance(cls, type) and issubclass(cls, UserError):
        return Code.INVALID_ARGUMENT, message
    if isinstance(cls, type) and issubclass(cls, MemoryError):
        return Code.RESOURCE_EXHAUSTED, f"out of memory: {message}"
    return Code.INTERNAL, f"{type_path.rpartition('.')[2]}: {message}"


def _exception_message(value_repr: str) -> str:
    """`ValueError("bad id 'x'")` → `bad id 'x'`; anything unparsable is returned as is."""
    match = _EXCEPTION_REPR.fullmatch(value_repr.strip())
    if match is None:
        return value_repr
    try:
        args = ast.literal_eval(f"({match.group('args')},)") if match.group("args") else ()
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return match.group("args")
    return ", ".join(str(a) for a in args)


def _loaded_class(type_path: str) -> object | None:
    """The class named `module.Qual.Name`, looked up among loaded modules only (no imports)."""
    parts = type_path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:split]))
        if module is None:
            continue
        obj: object | None = module
        for attr in parts[split:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


# ---------------------------------------------------------------------------------------------
# Scrubbing

_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"`()\[\]{}<>,;]*")
# An absolute path: a '/' that does not continue a word, number or path, followed by a component
# with a letter in it (so "x / 2" and "2024/01/02" are left alone).
_ABSOLUTE_PATH = re.compile(r"(?<![\w./~:-])/(?=[^\s'\"`]*[A-Za-z])[^\s'\"`()\[\]{}<>,;]+")
_TRACEBACK_MARKER = "Traceback (most recent call last)"


def scrub(text: str) -> str:
    """Removes URLs, absolute paths and any traceback from a message meant for a client."""
    if _TRACEBACK_MARKER in text:
        text = text.split(_TRACEBACK_MARKER, 1)[0].rstrip(" \n:(\"'")
    text = _URL.sub("<url>", text)
    return _ABSOLUTE_PATH.sub("<path>", text)
