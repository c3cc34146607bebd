"""The keyless default's "does any key exist?" answer (`server/auth.py`): a key minted while the answer
was being read from the database is never hidden behind a stale "no keys yet"."""

from __future__ import annotations

import pytest

from spanlake.server.auth import Authenticator, AuthError


def test_a_key_minted_during_the_read_is_required_at_the_next_request() -> None:
    keys_in_database: list[bool] = [False]
    authenticator: Authenticator

    def database_has_keys() -> bool:
        answer = keys_in_database[0]
        # A key is minted (and its change announced) while this read is in flight.
        keys_in_database[0] = True
        authenticator.forget_lookups()
        return answer

    authenticator = Authenticator({}, lookup_hash=lambda digest: None, database_has_keys=database_has_keys)
    assert authenticator.authenticate(None) is None  # no key yet: keyless
    with pytest.raises(AuthError, match="invalid API key"):
        authenticator.authenticate("Bearer not-a-key")


def test_an_unchanged_answer_is_kept_between_requests() -> None:
    reads: list[int] = []

    def database_has_keys() -> bool:
        reads.append(1)
        return False

    authenticator = Authenticator({}, lookup_hash=lambda digest: None, database_has_keys=database_has_keys)
    assert [authenticator.authenticate(None) for _ in range(3)] == [None, None, None]
    assert len(reads) == 1
