"""No page of another site drives a running `spanlake serve` (issue 28, item 2).

Each attack of the issue runs in Chromium from a page served by a second HTTP server on another
loopback port (another origin, same site: the harder case), against a keyless server (every request
is admin) and a server with keys: a no-cors `fetch` POST to `/api/sql` running `retire_partitions`, a
navigation to `/sql?run=1&q=…`, a no-cors POST to `/ingestion/insert_process`, form POSTs to `/login`
and `/logout`. Then: a foreign `Host` (DNS rebinding), 300 fast wrong sign-ins, the security headers.
Each test asserts that nothing changed (partitions, processes, the session's cookie), and the programs'
doors (no `Origin`) still work.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http import client as http_client
from http import server as http_server

import pytest
from harness import PostgresServer, SpanlakeServer, free_port, http, post, running_server, wait_until
from web_support import RUST_PROCESS_ID, Browser, off_loop, upload_rust_fixture, watched_page

from spanlake.lakehouse.settings import Settings, SettingsError
from spanlake.server.site_guard import SECURITY_HEADERS, SiteGuard
from spanlake.tracing.process_info import make_process_info

ADMIN_KEY = "admin-key-for-the-crosssite-tests"
VICTIM_KEY = ADMIN_KEY
ATTACKER_KEY = "attacker-key-for-the-crosssite-tests"
KEYS = json.dumps([{"name": "admin", "key": ADMIN_KEY}, {"name": "attacker", "key": ATTACKER_KEY}])
RETIRE = "SELECT * FROM retire_partitions('processes', 'global', TIMESTAMP '2000-01-01T00:00:00Z', now())"
PARTITIONS = (
    "SELECT file_path FROM lakehouse_partitions WHERE view_set_name = 'processes' AND view_instance_id = 'global'"
)


# -- the other site ------------------------------------------------------------------------------


class OtherSite:
    """A tiny HTTP server on another loopback port serving the attacker's pages (by path)."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        pages = self.pages

        class Handler(http_server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(self.path, "not found").encode()
                self.send_response(200 if self.path in pages else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.server = http_server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def page(self, name: str, script: str, body: str = "") -> str:
        """Serves `<body>` then `<script>` at `/name`; returns its URL."""
        self.pages[f"/{name}"] = (
            f"<!doctype html><title>{name}</title><link rel=icon href='data:,'>"
            f"<body>{body}<script>{script}</script></body>"
        )
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def no_cors_post(target: str, body_js: str) -> str:
    """A script POSTing `body_js` to `target` the way a page of another site may: no-cors, a simple body."""
    return (
        f"fetch({json.dumps(target)}, {{method: 'POST', mode: 'no-cors', body: {body_js}}})"
        ".then(() => { document.title = 'sent'; }, () => { document.title = 'refused'; });"
    )


def auto_form(target: str, fields: dict[str, str]) -> tuple[str, str]:
    """(body, script) of a form that POSTs `fields` to `target` as soon as the page loads."""
    inputs = "".join(f'<input type=hidden name="{name}" value="{value}">' for name, value in fields.items())
    return f'<form id=f method=post action="{target}">{inputs}</form>', "document.getElementById('f').submit();"


@pytest.fixture(scope="module")
def other_site() -> Iterator[OtherSite]:
    site = OtherSite()
    yield site
    site.close()


class ServerAnswers:
    """The statuses a server answered the page's requests with, read from Chromium's network events:
    Cross-Origin-Resource-Policy hides the answers of no-cors requests from playwright's own events."""

    def __init__(self, page: object, target: str) -> None:
        self.page = page
        self.target = target
        self.requests: dict[str, tuple[str, str]] = {}
        self.statuses: dict[str, int] = {}
        session = page.context.new_cdp_session(page)
        session.send("Network.enable")
        session.on("Network.requestWillBeSent", self._sent)
        session.on("Network.responseReceivedExtraInfo", self._answered)

    def _sent(self, event: dict) -> None:
        self.requests[event["requestId"]] = (event["request"]["method"], event["request"]["url"])

    def _answered(self, event: dict) -> None:
        self.statuses[event["requestId"]] = event["statusCode"]

    def seen(self) -> list[tuple[str, str, int | None]]:
        """(method, path, status) of each request to the target, in the order sent."""
        return [
            (method, urllib.parse.urlsplit(url).path, self.statuses.get(request_id))
            for request_id, (method, url) in self.requests.items()
            if url.startswith(self.target)
        ]

    def wait_for(self, count: int) -> list[tuple[str, str, int | None]]:
        """`seen()` once `count` requests to the target have their answers (events arrive while playwright waits)."""
        for _ in range(200):
            seen = self.seen()
            if len(seen) >= count and all(status is not None for _, _, status in seen):
                return seen
            self.page.wait_for_timeout(50)
        return self.seen()


# -- a keyless server: every request is admin ----------------------------------------------------


@pytest.fixture(scope="module")
def keyless(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    with running_server(postgres, tmp_path_factory.mktemp("crosssite-keyless")) as server:
        upload_rust_fixture(server.http_url)
        wait_until(lambda: len(server.sql(PARTITIONS)) > 0, 60, "the processes view's global partitions")
        yield server


def partitions(server: SpanlakeServer) -> set[str]:
    return {row["file_path"] for row in off_loop(server.sql, PARTITIONS)}


def sql_api(server: SpanlakeServer, sql: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    status, body = post(server.http_url + "/api/sql", json.dumps({"sql": sql}).encode(), headers)
    return status, json.loads(body) if body.startswith(b"{") else {"text": body.decode()}


def test_no_cors_fetch_to_the_sql_api_runs_nothing(keyless: SpanlakeServer, other_site: OtherSite, chrome: Browser):
    before = partitions(keyless)
    url = other_site.page(
        "sql-fetch", no_cors_post(keyless.http_url + "/api/sql", json.dumps(json.dumps({"sql": RETIRE})))
    )
    with watched_page(chrome) as watched:
        watched.expect_error("ERR_BLOCKED_BY_RESPONSE")
        watched.expect_error("403")
        answers = ServerAnswers(watched.page, keyless.http_url)
        watched.page.goto(url)
        assert answers.wait_for(1) == [("POST", "/api/sql", 403)]
    # The refused statement would retire partitions; the daemon may meanwhile add one (it did in one run).
    assert before and before <= partitions(keyless)
    assert sql_api(keyless, "SELECT count(*) AS n FROM processes")[1]["rows"] == [[1]]


def test_navigation_to_sql_with_run_fills_the_editor_only(
    keyless: SpanlakeServer, other_site: OtherSite, chrome: Browser
) -> None:
    before = partitions(keyless)
    target = keyless.http_url + "/sql?" + urllib.parse.urlencode({"run": "1", "q": RETIRE})
    url = other_site.page("navigate", f"location.href = {json.dumps(target)};")
    with watched_page(chrome) as watched:
        page = watched.page
        answers = ServerAnswers(page, keyless.http_url)
        page.goto(url)
        page.wait_for_url(keyless.http_url + "/sql?**")
        page.wait_for_load_state("networkidle")
        assert page.input_value("#sql-text") == RETIRE
        assert answers.wait_for(4)[0] == ("GET", "/sql", 200)
        assert [path for _, path, _ in answers.seen() if not path.startswith("/static/")] == ["/sql"]
    assert before <= partitions(keyless)  # nothing retired (the daemon may add)


def test_cross_site_post_to_insert_process_stores_nothing(
    keyless: SpanlakeServer, other_site: OtherSite, chrome: Browser
) -> None:
    forged = make_process_info("forged-by-another-site")
    bytes_js = f"Uint8Array.from(atob('{base64.b64encode(forged.to_wire()).decode()}'), c => c.charCodeAt(0))"
    url = other_site.page("ingest", no_cors_post(keyless.http_url + "/ingestion/insert_process", bytes_js))
    with watched_page(chrome) as watched:
        watched.expect_error("ERR_BLOCKED_BY_RESPONSE")
        watched.expect_error("403")
        answers = ServerAnswers(watched.page, keyless.http_url)
        watched.page.goto(url)
        assert answers.wait_for(1) == [("POST", "/ingestion/insert_process", 403)]
    assert off_loop(keyless.process_row, forged.process_id) is None
    # A program (no Origin), from any host name, still ingests.
    program = make_process_info("sent-by-a-program")
    status, _ = post(keyless.http_url + "/ingestion/insert_process", program.to_wire(), {"Host": "ingest.example"})
    assert status == 200 and off_loop(keyless.process_row, program.process_id)["exe"] == "sent-by-a-program"


def test_the_pages_own_script_needs_the_csrf_token(keyless: SpanlakeServer, chrome: Browser) -> None:
    with watched_page(chrome) as watched:
        watched.expect_error("403")
        page = watched.page
        page.goto(keyless.http_url + "/sql?" + urllib.parse.urlencode({"q": "SELECT 41 + 1 AS answer"}))
        page.click("#run")
        page.locator("#sql-status[data-rows='1']").wait_for()
        assert page.inner_text("#result-table td") == "42"
        tokenless = "fetch('/api/sql', {method: 'POST', body: JSON.stringify({sql: 'SELECT 1'})}).then(r => r.status)"
        assert page.evaluate(tokenless) == 403


def test_foreign_host_names_are_refused_on_the_ui_only(keyless: SpanlakeServer) -> None:
    for method, path in [("GET", "/"), ("GET", "/sql"), ("GET", "/login"), ("GET", "/api/health")]:
        status, body = http(method, keyless.http_url + path, headers={"Host": f"attacker.example:{keyless.http_port}"})
        assert status == 421 and b"does not answer to the host name 'attacker.example:" in body, path
    status, _ = sql_api(keyless, RETIRE, {"Host": "attacker.example"})
    assert status == 421
    assert http("GET", keyless.http_url + "/ready", headers={"Host": "probe.example"}) == (200, b"ready")
    for host in ("localhost", f"localhost:{keyless.http_port}", "[::1]:80", "127.0.0.1", "10.1.2.3:9000"):
        assert http("GET", keyless.http_url + "/api/health", headers={"Host": host})[0] == 200, host


def test_origin_checks_spare_programs_and_refuse_other_origins(keyless: SpanlakeServer) -> None:
    own = {"Origin": keyless.http_url}
    for origin in ("http://attacker.example", f"http://127.0.0.1:{keyless.http_port + 1}", "null"):
        assert sql_api(keyless, RETIRE, {"Origin": origin})[0] == 403, origin
        forged = make_process_info("forged")
        assert post(keyless.http_url + "/ingestion/insert_process", forged.to_wire(), {"Origin": origin})[0] == 403
    assert sql_api(keyless, "SELECT 1 AS one", {"Sec-Fetch-Site": "same-site"})[0] == 403
    status, _ = http(
        "GET", f"{keyless.http_url}/api/process/{RUST_PROCESS_ID}/async-spans", headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert status == 403
    # Same origin but no token: refused too (the token is the page's, in its meta tag).
    assert sql_api(keyless, "SELECT 1 AS one", own)[0] == 403
    assert sql_api(keyless, "SELECT 1 AS one")[1]["rows"] == [[1]]  # a program: no Origin


def test_security_headers_on_every_answer(keyless: SpanlakeServer) -> None:
    for method, path in [
        ("GET", "/"),
        ("GET", "/sql"),
        ("GET", "/login"),
        ("GET", "/process/not-a-uuid"),
        ("GET", "/static/app.js"),
        ("GET", "/api/health"),
        ("GET", "/health"),
        ("POST", "/ingestion/insert_process"),
    ]:
        request = urllib.request.Request(keyless.http_url + path, method=method, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                headers = response.headers
        except urllib.error.HTTPError as err:
            headers = err.headers
        assert {name: headers[name] for name in SECURITY_HEADERS} == SECURITY_HEADERS, path
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp


def test_the_retire_request_itself_works_for_a_program(keyless: SpanlakeServer) -> None:
    """The attacks' payload is potent: sent by a program on loopback it retires the partitions (so the
    tests above, which found them all still there, would have seen it work). Runs last on this server."""
    status, answer = sql_api(keyless, RETIRE)
    assert status == 200 and answer["row_count"] >= 1
    assert partitions(keyless) == set()


# -- a server with keys: the session's cookie --------------------------------------------------


@pytest.fixture(scope="module")
def keyed(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    env = {
        "SPANLAKE_API_KEYS": KEYS,
        "SPANLAKE_ADMINS": "admin",
        "SPANLAKE_LOGIN_FAILURES_PER_IP": "10",
        "SPANLAKE_LOGIN_FAILURES": "40",
    }
    # Started off this thread: the browser's loop runs on it by now, where the harness's asyncio.run cannot.
    with contextlib.ExitStack() as stack:
        server_context = running_server(postgres, tmp_path_factory.mktemp("crosssite-keyed"), extra_env=env)
        yield off_loop(stack.enter_context, server_context)
        off_loop(stack.close)


def session_key(chrome: Browser) -> str | None:
    keys = [cookie["value"] for cookie in chrome.context.cookies() if cookie["name"] == "spanlake_key"]
    return keys[0] if keys else None


def test_cross_site_login_and_logout_forms_leave_the_session_alone(
    keyed: SpanlakeServer, other_site: OtherSite, chrome: Browser
) -> None:
    with watched_page(chrome) as watched:
        watched.expect_error("403")
        watched.expect_error("status of 404")  # the favicon of the plain-text 403 answer
        page = watched.page
        page.goto(keyed.http_url + "/")
        page.fill("input[name=key]", VICTIM_KEY)
        page.click("form.login button")
        page.wait_for_url(keyed.http_url + "/")
        assert session_key(chrome) == VICTIM_KEY

        for name, target, fields in [
            ("login-form", "/login", {"key": ATTACKER_KEY, "next": "/"}),
            ("logout-form", "/logout", {}),
        ]:
            body, script = auto_form(keyed.http_url + target, fields)
            answers = ServerAnswers(page, keyed.http_url)
            page.goto(other_site.page(name, script, body))
            posts = [answer for answer in answers.wait_for(1) if answer[0] == "POST"]
            assert posts == [("POST", target, 403)], name
            assert session_key(chrome) == VICTIM_KEY, name

        page.goto(keyed.http_url + "/")
        page.click("form.logout button")
        page.wait_for_url("**/login")
        assert session_key(chrome) is None


def login_status(server: SpanlakeServer, key: str, client_address: str) -> tuple[int, str | None]:
    """(status, Retry-After) of a sign-in from `client_address` (a loopback address of 127/8)."""
    connection = http_client.HTTPConnection(
        "127.0.0.1", server.http_port, timeout=30, source_address=(client_address, 0)
    )
    try:
        form = urllib.parse.urlencode({"key": key, "next": "/"})
        connection.request("POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"})
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Retry-After")
    finally:
        connection.close()


def test_wrong_keys_are_throttled_per_client_and_in_total(keyed: SpanlakeServer) -> None:
    """Runs last on its server: it spends the server's whole budget of wrong keys for a minute."""
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: login_status(keyed, "wrong", "127.0.0.3"), range(300)))
    elapsed = time.monotonic() - started
    statuses = [status for status, _ in answers]
    assert (statuses.count(401), statuses.count(429)) == (10, 290), elapsed
    assert all(0 < int(retry) <= 60 for status, retry in answers if status == 429)
    assert login_status(keyed, ADMIN_KEY, "127.0.0.3")[0] == 429  # this client waits, right key or not
    assert login_status(keyed, ADMIN_KEY, "127.0.0.4")[0] == 303  # others sign in
    for client in ("127.0.0.5", "127.0.0.6", "127.0.0.7"):
        assert [login_status(keyed, f"wrong-{n}", client)[0] for n in range(10)] == [401] * 10
    # 40 wrong keys in the minute, from four clients: the total limit throttles everyone.
    assert login_status(keyed, ADMIN_KEY, "127.0.0.8")[0] == 429


def test_the_public_url_and_the_allowed_hosts_are_this_site() -> None:
    guard = SiteGuard(
        Settings(public_url="https://Spanlake.Example.com/ui", allowed_hosts="ops.example, lake.internal")
    )
    for netloc in ("spanlake.example.com", "SPANLAKE.example.com:8443", "ops.example", "lake.internal:9000", "[::1]"):
        assert guard.allows_host(netloc), netloc
    for netloc in ("attacker.example", "spanlake.example.com.attacker.example", "example.com", "", "bad host"):
        assert not guard.allows_host(netloc), netloc
    # Behind a TLS proxy that sends the request on as http://127.0.0.1:9000: the public origin is this site's.
    assert guard.allows_origin("https://spanlake.example.com", "127.0.0.1:9000")
    assert guard.allows_origin("http://ops.example:9000", "ops.example:9000")
    assert not guard.allows_origin("http://ops.example:9001", "ops.example:9000")
    assert not guard.allows_origin("http://attacker.example:9000", "attacker.example:9000")  # rebinding
    assert not guard.allows_origin("null", "127.0.0.1:9000")
    with pytest.raises(SettingsError, match="SPANLAKE_PUBLIC_URL"):
        SiteGuard(Settings(public_url="spanlake.example.com"))
