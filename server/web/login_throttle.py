"""Throttles key guessing at the login form: wrong-key sign-ins are counted over the last minute, per
client address and for all clients together; past either limit, sign-ins get 429 with Retry-After.

The client address is the connection's peer (`X-Forwarded-For` is not trusted: anyone can send it),
so behind a reverse proxy every client shares the proxy's count.
"""

from __future__ import annotations

import collections
import math
import time

WINDOW_SECONDS = 60.0


class LoginThrottle:
    """The wrong-key sign-ins of the last minute (a deque of at most `total`), per client address and in total."""

    def __init__(self, per_client: int, total: int) -> None:
        """At most `per_client` failures per address and `total` failures overall in any minute."""
        self.per_client = max(1, per_client)
        self.total = max(1, total)
        self._failures: collections.deque[tuple[float, str]] = collections.deque()
        self._per_client: collections.Counter[str] = collections.Counter()

    def admit(self, client: str) -> int | None:
        """Counts a sign-in of `client` as failed until `succeeded` says otherwise (so sign-ins checked
        at the same time count too) and returns None; or, past a limit, the seconds to wait."""
        now = time.monotonic()
        self._forget_before(now - WINDOW_SECONDS)
        if len(self._failures) >= self.total:
            return self._wait(now, self._failures[-self.total][0])
        if self._per_client[client] >= self.per_client:
            mine = [at for at, who in self._failures if who == client]
            return self._wait(now, mine[-self.per_client])
        self._failures.append((now, client))
        self._per_client[client] += 1
        return None

    def succeeded(self, client: str) -> None:
        """Takes back the count of `client`'s latest sign-in: its key was right."""
        for index in range(len(self._failures) - 1, -1, -1):
            if self._failures[index][1] == client:
                del self._failures[index]
                self._drop(client)
                return

    def _forget_before(self, start: float) -> None:
        while self._failures and self._failures[0][0] < start:
            self._drop(self._failures.popleft()[1])

    def _drop(self, client: str) -> None:
        self._per_client[client] -= 1
        if not self._per_client[client]:
            del self._per_client[client]

    @staticmethod
    def _wait(now: float, oldest_counted: float) -> int:
        """Whole seconds until the failure at `oldest_counted` leaves the window."""
        return max(1, math.ceil(oldest_counted + WINDOW_SECONDS - now))
