"""CA problem documents map to errors typed by what the caller should do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mamoru.errors import (
    AccountError,
    CAUnavailable,
    ChallengeFailed,
    OrderFailed,
    RateLimited,
)
from mamoru.protocol.errors import parse_retry_after, problem_error

P = "urn:ietf:params:acme:error:"


@pytest.mark.parametrize(
    ("ptype", "status", "cls", "retryable"),
    [
        (P + "rateLimited", 429, RateLimited, True),
        (P + "serverInternal", 500, CAUnavailable, True),
        (None, 503, CAUnavailable, True),
        (None, 502, CAUnavailable, True),
        (None, 429, RateLimited, True),
        (P + "unauthorized", 403, ChallengeFailed, True),
        (P + "connection", None, ChallengeFailed, True),
        (P + "dns", None, ChallengeFailed, True),
        (P + "caa", 403, OrderFailed, False),
        (P + "rejectedIdentifier", 400, OrderFailed, False),
        (P + "externalAccountRequired", 401, AccountError, False),
        (P + "invalidContact", 400, AccountError, False),
        ("about:blank", 400, OrderFailed, False),
    ],
)
def test_problem_types_map_to_classes(ptype: str | None, status: int | None, cls: type,
                                      retryable: bool) -> None:
    problem = {"type": ptype, "detail": "the detail"} if ptype else None
    error = problem_error(problem, status=status, retry_after=None, url="https://ca/x")
    assert type(error) is cls
    assert error.retryable is retryable
    if ptype:
        assert "the detail" in str(error)
        assert error.problem_type == ptype
    assert "https://ca/x" in str(error)


def test_subproblems_name_each_identifier() -> None:
    error = problem_error({"type": P + "rejectedIdentifier", "detail": "some names refused",
                           "subproblems": [{"type": P + "rejectedIdentifier", "detail": "no",
                                            "identifier": {"type": "dns",
                                                           "value": "bad.example"}}]},
                          status=400, retry_after=None, url="u")
    assert "bad.example: no" in str(error)


def test_retry_after_seconds_and_dates() -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == now + timedelta(seconds=120)
    assert parse_retry_after("Sun, 29 Nov 2026 13:00:00 GMT", now) == now + timedelta(hours=1)
    assert parse_retry_after("garbage", now) is None
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("999999999", now) == now + timedelta(days=30)  # bounded
