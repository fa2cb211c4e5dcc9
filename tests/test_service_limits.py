"""Per-member rate limits and strict body parsing, without a server (fast)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.service.bodies import MAX_NESTING, parse_json
from sandbox.service.errors import Problem, counts_as_refusal, escaped
from sandbox.service.limits import Rate, RateLimiter, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=200, deadline=None)
@given(count=st.integers(1, 50), window=st.sampled_from([1.0, 60.0, 3600.0]),
       gaps=st.lists(st.floats(0, 5, allow_nan=False), min_size=1, max_size=300))
def test_a_bucket_never_admits_more_than_its_burst_plus_its_rate(
        count: int, window: float, gaps: list[float]) -> None:
    clock, rate = Clock(), Rate("queries_per_minute", count, window)
    limiter = RateLimiter(clock)
    admitted: list[float] = []
    for gap in gaps:
        clock.now += gap
        if limiter.wait("m", rate) == 0:
            limiter.take("m", rate)
            admitted.append(clock.now)
    for i, start in enumerate(admitted):  # every window of admissions, from each start
        for end in admitted[i:]:
            inside = sum(1 for t in admitted if start <= t <= end)
            assert inside <= count + (end - start) * rate.per_second + 1e-9


def test_a_spent_bucket_says_how_long_to_wait_and_refills() -> None:
    clock, rate = Clock(), Rate("exports_per_hour", 2, 3600.0)
    limiter = RateLimiter(clock)
    for _ in range(2):
        assert limiter.wait("ana", rate) == 0
        limiter.take("ana", rate)
    assert limiter.wait("ana", rate) == pytest.approx(1800)
    assert limiter.wait("bo", rate) == 0  # per member
    clock.now += 1800
    assert limiter.wait("ana", rate) == 0
    assert retry_after(0.2) == "1" and retry_after(1800) == "1800" and retry_after(1.5) == "2"


def test_limit_hits_are_recorded_at_powers_of_two_per_window() -> None:
    clock, rate = Clock(), Rate("refusals_per_minute", 5, 60.0)
    limiter = RateLimiter(clock)
    counts = [limiter.refused("ana", rate) for _ in range(40)]
    assert [c for c in counts if c is not None] == [1, 2, 4, 8, 16, 32]
    clock.now += 60
    assert limiter.refused("ana", rate) == 1  # a new window starts over


def test_refusals_that_count() -> None:
    for code in ("gate.unknown_column", "input.invalid", "budget.exhausted",
                 "workspace.not_found", "request.conflict", "limits.body_too_large"):
        assert counts_as_refusal(code), code
    for code in ("engine.timeout", "limits.rate", "request.in_progress", "auth.invalid"):
        assert not counts_as_refusal(code), code


@pytest.mark.parametrize(("raw", "words"), [
    (b"[" * 5000 + b"]" * 5000, "nested"),
    (b"[" * (MAX_NESTING + 2) + b"]" * (MAX_NESTING + 2), "nested"),
    (b'{"sql": "\\ud800"}', "Unicode"),
    (b'{"\\udfff": 1}', "Unicode"),
    (b'{"epsilon": 1e400}', "double"),
    (b'{"epsilon": NaN}', "not valid JSON"),
    (b'{"epsilon": -Infinity}', "not valid JSON"),
    (b"\xff\xfe{", "not valid JSON"),
    (b'{"a": 1' , "not valid JSON"),
])
def test_bodies_that_are_refused(raw: bytes, words: str) -> None:
    with pytest.raises(Problem) as info:
        parse_json(raw)
    assert info.value.code == "input.invalid" and words in info.value.message


def test_bodies_that_pass() -> None:
    deep: object = 1
    for _ in range(MAX_NESTING):
        deep = [deep]
    assert parse_json(json.dumps(deep).encode()) == deep
    assert parse_json('{"sql": "SELECT 1 -- 人口"}'.encode()) == {"sql": "SELECT 1 -- 人口"}
    assert parse_json(b"") is None


@given(st.binary(max_size=2000))
def test_escaped_input_is_printable_ascii_and_bounded(raw: bytes) -> None:
    text = escaped(raw)
    assert (text.isascii() and text.isprintable()) or text.endswith("…")
    assert len(text) <= 512 * 4 + 1
