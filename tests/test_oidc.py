"""OIDC through a running `spanlake serve` and a real issuer on loopback (`oidc_issuer`): bearer JWTs on
Flight SQL read their groups' audiences only, bad tokens are UNAUTHENTICATED, a rotated key works, and
the web UI's sign-in (authorization code with PKCE) works in Chromium. One server, one issuer."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from harness import (
    RUST_FIXTURES,
    PostgresServer,
    SpanlakeServer,
    free_port,
    http,
    post,
    running_server,
    wait_until,
)
from micromegas.auth import OidcClientCredentialsProvider
from micromegas.cli import grants as grants_cli
from micromegas.flightsql.client import FlightSQLClient
from micromegas.web_client import WebClient
from oidc_issuer import CLIENT_ID, SERVICE_ID, SERVICE_SECRET, Issuer, SigningKey, User
from served_support import ADMIN_KEY, EXPECTED, adbc_connect, flight_options, micromegas_client
from test_access_control import REVOCATION_SECONDS, StaticToken, TeamProcess, api
from web_support import Browser, WatchedPage

from spanlake.server.oidc import REFETCH_SECONDS, IssuerKeys, IssuerUnavailable, OidcConfig, TokenValidator

TEAM_A_PROCESS = EXPECTED["process"]["process_info"]["process_id"]


class Lab:
    """The module's issuer, server and the two teams' process ids."""

    def __init__(self, issuer: Issuer, server: SpanlakeServer, team_b: str) -> None:
        self.issuer, self.server, self.team_b = issuer, server, team_b


def _mint_ingestion(server: SpanlakeServer, name: str, audience: str) -> str:
    status, minted = api(server, "POST", "/api/ingestion-api-keys", ADMIN_KEY, {"name": name, "audience": audience})
    assert status == 201, minted
    return minted["key"]


@pytest.fixture(scope="module")
def lab(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    issuer = Issuer().start()
    extra_env = {
        "SPANLAKE_API_KEYS": json.dumps([{"name": "admin", "key": ADMIN_KEY}]),
        "SPANLAKE_ADMINS": "admin",
        "SPANLAKE_OIDC_ISSUER": issuer.url,
        "SPANLAKE_OIDC_AUDIENCE": CLIENT_ID,
        "SPANLAKE_OIDC_GROUP_AUDIENCES": "team-a=team-a,team-b=team-b,both=team-a,both=team-b",
        "SPANLAKE_OIDC_ADMIN_GROUP": "ops",
    }
    try:
        with running_server(postgres, tmp_path_factory.mktemp("oidc"), extra_env=extra_env) as server:
            key_a, key_b = _mint_ingestion(server, "a-ingest", "team-a"), _mint_ingestion(server, "b-ingest", "team-b")
            for step in EXPECTED["upload_sequence"]:
                body = (RUST_FIXTURES / step["file"]).read_bytes()
                status, text = post(server.http_url + step["endpoint"], body, {"Authorization": f"Bearer {key_a}"})
                assert status == 200, (step, text)
            team_b = TeamProcess(server.http_url, key=key_b)
            team_b.announce()
            team_b.post_block(0)
            client = micromegas_client(server)
            wait_until(
                lambda: client.query("SELECT count(*) AS n FROM processes")["n"][0] == 2,
                60,
                "the daemon to materialize both teams' processes",
            )
            yield Lab(issuer, server, team_b.process_id)
    finally:
        issuer.stop()


def processes_seen(server: SpanlakeServer, token: str) -> set[str]:
    return set(micromegas_client(server, token).query("SELECT process_id FROM processes")["process_id"])


def refusal(server: SpanlakeServer, token: str) -> str:
    """The UNAUTHENTICATED message a Flight SQL call with `token` gets."""
    client = flight.FlightClient(server.flightsql_url)
    with pytest.raises(flight.FlightUnauthenticatedError) as raised:
        list(client.list_actions(options=flight_options(token)))
    return str(raised.value)


def test_a_bearer_token_reads_its_groups_audiences_only(lab: Lab) -> None:
    issuer, server = lab.issuer, lab.server
    assert processes_seen(server, issuer.token("alice@example.com", ["team-a"])) == {TEAM_A_PROCESS}
    assert processes_seen(server, issuer.token("bob@example.com", ["team-b", "unmapped"])) == {lab.team_b}
    both = {TEAM_A_PROCESS, lab.team_b}
    assert processes_seen(server, issuer.token("carol@example.com", ["both"])) == both
    assert processes_seen(server, issuer.token("dan@example.com", [])) == set()  # `public` only: nothing there
    assert processes_seen(server, issuer.token("root@example.com", ["ops"])) == both  # the admin group
    assert processes_seen(server, ADMIN_KEY) == both  # API keys keep working beside tokens
    with adbc_connect(server, issuer.token("bob@example.com", ["team-b"])) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT DISTINCT process_id FROM blocks")
        assert {row[0] for row in cursor.fetchall()} == {lab.team_b}


def test_admin_functions_follow_the_admin_group(lab: Lab) -> None:
    admin_sql = "SELECT count(*) AS n FROM list_query_denials()"
    assert micromegas_client(lab.server, lab.issuer.token("root@example.com", ["ops"])).query(admin_sql)["n"][0] == 0
    with pytest.raises(pa.ArrowException, match="list_query_denials"):
        micromegas_client(lab.server, lab.issuer.token("alice@example.com", ["team-a"])).query(admin_sql)


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"nbf": int(time.time()) + 3600}, "not yet valid"),
        ({"aud": "another-client"}, "audience"),
        ({"iss": "http://127.0.0.1:1"}, "issuer"),
    ],
    ids=["expired", "not-yet-valid", "wrong-audience", "wrong-issuer"],
)
def test_a_token_with_wrong_claims_is_unauthenticated(lab: Lab, claims: dict[str, Any], expected: str) -> None:
    assert expected in refusal(lab.server, lab.issuer.token("alice@example.com", ["team-a"], **claims)).lower()


def test_a_token_signed_by_another_key_is_unauthenticated(lab: Lab) -> None:
    impostor = SigningKey(lab.issuer.current.kid)  # the issuer's key id, someone else's key
    forged = lab.issuer.token("root@example.com", ["ops"], key=impostor)
    assert "signature" in refusal(lab.server, forged).lower()
    assert "unknown key" in refusal(lab.server, lab.issuer.token("root@example.com", ["ops"], key=SigningKey("nope")))
    header, body, _ = lab.issuer.token("alice@example.com", ["team-a"]).split(".")
    assert "invalid" in refusal(lab.server, f"{header}.{body}.").lower()  # a token stripped of its signature


def test_a_rotated_key_is_fetched_once_and_accepted(lab: Lab) -> None:
    old = lab.issuer.current
    rotated = lab.issuer.rotate()
    token = lab.issuer.token("alice@example.com", ["team-a"], key=rotated)
    reads = lab.issuer.jwks_reads
    seen: list[set[str]] = []

    def accepted() -> bool:
        try:
            seen.append(processes_seen(lab.server, token))
        except flight.FlightUnauthenticatedError:
            return False
        return True

    # At most one refetch per REFETCH_SECONDS: an earlier test's unknown key ids may have just used it.
    wait_until(accepted, REFETCH_SECONDS + 5, "the rotated key to be fetched")
    assert seen[-1] == {TEAM_A_PROCESS}
    assert lab.issuer.jwks_reads == reads + 1
    for n in range(5):  # made-up key ids right after a read: refused, and the issuer is not asked again
        made_up = lab.issuer.token("eve@example.com", ["ops"], key=SigningKey(f"made-up-{n}"))
        assert "unknown key" in refusal(lab.server, made_up)
    assert lab.issuer.jwks_reads == reads + 1
    assert processes_seen(lab.server, lab.issuer.token("bob@example.com", ["team-b"], key=old)) == {lab.team_b}


def test_a_bearer_token_works_on_the_web_api(lab: Lab) -> None:
    token = lab.issuer.token("bob@example.com", ["team-b"])
    status, answer = api(lab.server, "POST", "/api/sql", token, {"sql": "SELECT process_id FROM processes"})
    assert status == 200 and answer["row_count"] == 1 and lab.team_b in json.dumps(answer["rows"])
    expired = lab.issuer.token("bob@example.com", ["team-b"], exp=int(time.time()) - 3600)
    assert api(lab.server, "POST", "/api/sql", expired, {"sql": "SELECT 1"})[0] == 401


def test_a_callback_without_its_sign_in_is_refused(lab: Lab) -> None:
    status, body = http("GET", lab.server.http_url + "/auth/callback?code=stolen&state=guessed")
    assert status == 400 and b"not started here" in body


def test_signing_in_with_chromium_shows_the_groups_processes(lab: Lab, chrome: Browser, watched: WatchedPage) -> None:
    page, url = watched.page, lab.server.http_url
    lab.issuer.user = User("bob@example.com", ["team-b"])
    page.goto(url + "/")
    chrome.shot(page, "oidc-login")
    page.click("#sso")  # the login page's single sign-on: to the issuer and back
    page.wait_for_url(url + "/")
    listed = set(page.locator("a.pid").all_inner_texts())
    assert listed == {lab.team_b}
    cookies = {cookie["name"]: cookie for cookie in page.context.cookies()}
    assert cookies["spanlake_oidc"]["httpOnly"] and "spanlake_oidc_flow" not in cookies
    page.click("form[action='/logout'] button")
    page.wait_for_url(url + "/login")
    assert page.goto(url + "/").url.startswith(url + "/login")


def test_grants_in_the_database_add_to_a_tokens_groups(lab: Lab) -> None:
    token = lab.issuer.token("dan@example.com", ["team-a"])
    assert processes_seen(lab.server, token) == {TEAM_A_PROCESS}
    admin = WebClient(lab.server.http_url, auth_provider=StaticToken(lab.issuer.token("root@example.com", ["ops"])))
    admin.create_audience_grant("team-b", "read", "user:dan@example.com")  # an admin by its token's group
    wait_until(
        lambda: processes_seen(lab.server, token) == {TEAM_A_PROCESS, lab.team_b},
        REVOCATION_SECONDS + 2,
        "the grant to reach the token's principal",
    )
    admin.delete_audience_grant("team-b", "read", "user:dan@example.com")
    wait_until(
        lambda: processes_seen(lab.server, token) == {TEAM_A_PROCESS},
        REVOCATION_SECONDS + 2,
        "the removed grant to stop working",
    )
    reader_token = lab.issuer.token("alice@example.com", ["team-a"])
    assert http("GET", lab.server.http_url + "/api/groups", None, {"Authorization": f"Bearer {reader_token}"})[0] == 403


def test_a_token_does_not_write(lab: Lab) -> None:
    body = (RUST_FIXTURES / "process.cbor").read_bytes()
    token = lab.issuer.token("root@example.com", ["ops"])
    status, _ = post(lab.server.http_url + "/ingestion/insert_process", body, {"Authorization": f"Bearer {token}"})
    assert status == 401


@pytest.mark.parametrize(
    ("claims", "expected"),
    [({"nonce": "another-sign-in"}, "nonce"), ({"aud": "another-client"}, "audience")],
    ids=["replayed-nonce", "wrong-audience"],
)
def test_a_bad_id_token_at_the_callback_signs_nobody_in(
    lab: Lab, watched: WatchedPage, claims: dict[str, Any], expected: str
) -> None:
    page, url = watched.page, lab.server.http_url
    watched.expect_error("401")
    lab.issuer.user, lab.issuer.id_token_claims = User("root@example.com", ["ops"]), claims
    try:
        answer = page.goto(url + "/auth/login?next=/sql")
    finally:
        lab.issuer.id_token_claims = {}
    assert answer.status == 401 and expected in page.inner_text("main").lower()
    assert "spanlake_oidc" not in {cookie["name"] for cookie in page.context.cookies()}
    assert page.goto(url + "/sql").url.startswith(url + "/login")


def test_micromegas_service_account_queries_and_grants_through_its_oidc_provider(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # micromegas 0.32's own client-credentials provider and `micromegas-grants`, unchanged (in-process).
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MICROMEGAS_OIDC_ISSUER", lab.issuer.url)
    monkeypatch.setenv("MICROMEGAS_OIDC_CLIENT_ID", SERVICE_ID)
    monkeypatch.setenv("MICROMEGAS_OIDC_CLIENT_SECRET", SERVICE_SECRET)
    client = FlightSQLClient(lab.server.flightsql_url, auth_provider=OidcClientCredentialsProvider.from_env())
    assert set(client.query("SELECT process_id FROM processes")["process_id"]) == {TEAM_A_PROCESS, lab.team_b}

    def grants(*args: str) -> str:
        monkeypatch.setattr(sys, "argv", ["micromegas-grants", "--url", lab.server.http_url, *args])
        grants_cli.main()
        return capsys.readouterr().out.strip()

    erin = lab.issuer.token("erin@example.com", [])
    assert grants("create", "team-b", "read", "user:erin@example.com").startswith("team-b read user:erin@example.com")
    wait_until(lambda: processes_seen(lab.server, erin) == {lab.team_b}, REVOCATION_SECONDS + 2, "erin's grant")
    assert grants("delete", "team-b", "read", "user:erin@example.com") == "Deleted: team-b read user:erin@example.com"
    wait_until(lambda: processes_seen(lab.server, erin) == set(), REVOCATION_SECONDS + 2, "the grant's removal")


def test_an_issuer_that_does_not_answer_checks_no_token(lab: Lab) -> None:
    silent = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = OidcConfig(silent, CLIENT_ID, "groups", {}, None, None)
    validator = TokenValidator(config, IssuerKeys(silent))
    token = lab.issuer.token("alice@example.com", ["team-a"], iss=silent)
    for _ in range(2):  # UNAVAILABLE on the doors (503 on HTTP), never accepted nor UNAUTHENTICATED
        with pytest.raises(IssuerUnavailable):
            validator.identity(token)
