"""Keeps other sites from driving the HTTP server through a visitor's browser.

Four checks, one middleware (`SiteGuard.middleware`) over every route of the HTTP server:

- `Host` (DNS rebinding): the browser-facing routes (the web UI and its `/api/…`) answer only to
  loopback names, IP literals (an address involves no DNS, so nothing to rebind), the
  host of `SPANLAKE_PUBLIC_URL` and the names of `SPANLAKE_ALLOWED_HOSTS`; anything else gets 421.
  The ingestion routes (`/ingestion/…`) take any `Host`: SDKs, sinks, exporters and Firehose call them
  by whatever name reaches the server; so do `/health` and `/ready` (probes; they read nothing).
- `Origin` / `Sec-Fetch-Site`: a state-changing request (any method but GET/HEAD/OPTIONS), on every
  route, and any request to an `/api/…` route that runs SQL, is refused (403) when a browser sent it
  from another origin (another scheme, host or port). Programs send neither header and pass.
- CSRF token (double-submit cookie): a browser's state-changing request to the UI (`/login`,
  `/logout`, `/api/sql`, `/api/query-stream`) must carry the `spanlake_csrf` cookie's value in the
  form field `csrf` or the `X-CSRF-Token` header. Every UI GET answer sets the cookie when missing;
  the pages write it in their forms and in `<meta name=csrf-token>`.
- Security headers on every answer: a CSP allowing scripts, styles and connections to this origin
  only, no framing, `nosniff`, no referrer across origins, no cross-origin reads of any answer.

A request is "from a browser" when it carries `Origin` or `Sec-Fetch-Site` (every current browser
sends `Origin` on a POST, same-origin included); programs send neither.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web
from yarl import URL

from spanlake.lakehouse.settings import Settings, SettingsError

log = logging.getLogger(__name__)

CSRF_COOKIE = "spanlake_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PROGRAM_PREFIX = "/ingestion/"  # called by programs from anywhere, by any host name
PROBE_PATHS = frozenset({"/health", "/ready"})  # any host name too: probes, and nothing to read
SQL_API_PREFIX = "/api/"
SQL_FREE_API_PATHS = frozenset({"/api/health"})
SAME_ORIGIN_FETCH_SITES = frozenset({"same-origin", "none"})  # "none": typed in, bookmarked
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
SECURITY_HEADERS = {
    # Perfetto's "Open in Perfetto" opens ui.perfetto.dev with window.open and talks to it with
    # postMessage: neither is governed by CSP, so nothing here names Perfetto.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:;"
        " connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def host_name(netloc: str) -> str | None:
    """The host name of a `host[:port]` (IPv6 in brackets), lower case; None when it is not one."""
    try:
        name = URL(f"http://{netloc}").raw_host
    except ValueError:
        return None
    return name.lower().rstrip(".") if name else None


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def csrf_token(request: web.Request) -> str:
    """The CSRF token the request's page writes in its forms (the cookie's, or a new one set with the answer)."""
    return request["csrf_token"]


class SiteGuard:
    """The host names the UI answers to, the origins allowed to change state, and the middleware checking both."""

    def __init__(self, settings: Settings) -> None:
        """Allowed: loopback names, IP literals, the public URL's host and the allowed hosts of `settings`."""
        public = URL(settings.public_url) if settings.public_url else None
        if public is not None and (public.scheme not in ("http", "https") or not public.host):
            raise SettingsError(f"SPANLAKE_PUBLIC_URL (--public-url): not an http(s) URL with a host: {public}")
        self.public_origin = str(public.origin()) if public is not None else None
        named = {name.strip().lower() for name in settings.allowed_hosts.split(",") if name.strip()}
        if public is not None:
            named.add(public.host.lower())
        self.host_names = LOOPBACK_NAMES | named

    def allows_host(self, netloc: str) -> bool:
        """Whether the UI answers to a request sent to `netloc` (the `Host` header)."""
        name = host_name(netloc)
        return name is not None and (name in self.host_names or _is_ip_literal(name))

    def allows_origin(self, origin: str, netloc: str) -> bool:
        """Whether a browser request from `origin` to `netloc` comes from this site: the origin of the
        configured public URL, or the very host and port it was sent to (a name this server answers to)."""
        if origin == self.public_origin:
            return True
        try:
            sent_from = URL(origin)
        except ValueError:
            return False
        same_place = sent_from.scheme in ("http", "https") and sent_from.raw_authority.lower() == netloc.lower()
        return same_place and self.allows_host(netloc)

    def is_cross_origin(self, request: web.Request) -> bool:
        """Whether a browser sent the request from another origin (a program, sending neither header, is not)."""
        origin = request.headers.get("Origin")
        if origin is not None:
            return not self.allows_origin(origin, request.headers.get("Host", ""))
        fetch_site = request.headers.get("Sec-Fetch-Site")
        return fetch_site is not None and fetch_site not in SAME_ORIGIN_FETCH_SITES

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuses a request another site drives; runs the others, a UI request with the CSRF token of
        its page in `request["csrf_token"]`."""
        refusal = await self._refusal(request)
        if refusal is None:
            return await handler(request)
        log.info(
            "refused %s %s (Host %s, Origin %s): %s",
            request.method,
            request.path,
            request.headers.get("Host"),
            request.headers.get("Origin"),
            refusal.text,
        )
        return refusal

    async def _refusal(self, request: web.Request) -> web.Response | None:
        """421 for a foreign `Host`, 403 for a cross-origin request or a browser's missing CSRF token; else None."""
        for_programs = request.path.startswith(PROGRAM_PREFIX)
        host = request.headers.get("Host")  # absent: not a browser (every browser sends it)
        any_host = for_programs or request.path in PROBE_PATHS
        if not any_host and host is not None and not self.allows_host(host):
            return web.Response(status=421, text=_foreign_host_text(host))
        changes_state = request.method not in SAFE_METHODS
        runs_sql = request.path.startswith(SQL_API_PREFIX) and request.path not in SQL_FREE_API_PATHS
        if (changes_state or runs_sql) and self.is_cross_origin(request):
            return web.Response(
                status=403, text="refused: a request from another site (its origin is not this server's)"
            )
        if any_host:  # programs and probes: no page, no token
            return None
        cookie = request.cookies.get(CSRF_COOKIE, "")
        request["csrf_token"] = cookie or secrets.token_urlsafe(32)
        if changes_state and _from_browser(request) and not await _carries_token(request, cookie):
            return web.Response(status=403, text="refused: missing or wrong CSRF token (reload the page and retry)")
        return None


def _foreign_host_text(netloc: str) -> str:
    return (
        f"this server does not answer to the host name '{netloc}' (DNS rebinding guard): use a loopback name,"
        " an IP address, the host of SPANLAKE_PUBLIC_URL or one of SPANLAKE_ALLOWED_HOSTS"
    )


def _from_browser(request: web.Request) -> bool:
    return "Origin" in request.headers or "Sec-Fetch-Site" in request.headers


async def _carries_token(request: web.Request, cookie: str) -> bool:
    """Whether the request carries the cookie's token in its header or its form's field (the form is parsed
    once: the handler reads it from aiohttp's cache)."""
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.content_type in _FORM_TYPES:
        sent = str((await request.post()).get(CSRF_FIELD, ""))
    return bool(cookie) and sent is not None and hmac.compare_digest(sent.encode(), cookie.encode())


async def add_site_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The security headers on every answer, and the CSRF cookie on a UI page read without one (a GET:
    a browser's POST that passed the check had the cookie already)."""
    response.headers.update(SECURITY_HEADERS)
    token = request.get("csrf_token")
    if token is not None and request.method in SAFE_METHODS and request.cookies.get(CSRF_COOKIE) != token:
        # A header, not set_cookie: aiohttp has written the response's cookies by the time this runs.
        response.headers.add("Set-Cookie", f"{CSRF_COOKIE}={token}; HttpOnly; Path=/; SameSite=Strict")


def install_site_guard(app: web.Application, settings: Settings) -> None:
    """The guard as `app`'s first middleware and its headers on every answer (call before the app starts)."""
    app.middlewares.insert(0, SiteGuard(settings).middleware)
    app.on_response_prepare.append(add_site_headers)
