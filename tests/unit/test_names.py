"""Domain names: normalised to A-labels, hostile input refused before it can become a path."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mamoru.config.names import NameError_, _normalize, check_site_name, normalize_domain


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Clinic.Example", "clinic.example"),
        ("clinic.example.", "clinic.example"),
        ("*.clinic.example", "*.clinic.example"),
        ("クリニック.example", "xn--pcka3d5a7l.example"),
        ("病院.jp", "xn--0rys90e.jp"),
        ("xn--0rys90e.jp", "xn--0rys90e.jp"),
        ("東京クリニック.jp", "xn--pcka3d5a7l514pgiyb.jp"),
        ("a-b.c1.example", "a-b.c1.example"),
    ],
)
def test_valid_names(raw: str, expected: str) -> None:
    assert normalize_domain(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("../etc/passwd", "looks like a URL or path"),
        ("..", "empty label"),
        ("a/b.example", "looks like a URL or path"),
        ("clinic..example", "empty label"),
        (".clinic.example", "empty label"),
        ("x\x00y.example", "control characters"),
        ("a b.example", "control characters"),
        ("a" * 64 + ".example", "at most 63"),
        ("a" * 300 + ".example", "at most 63"),
        (".".join(["a" * 60] * 5), "at most 253"),
        ("*.*.example", "wildcard"),
        ("foo*.example", "wildcard"),
        ("www.*.example", "wildcard"),
        ("localhost", "at least two labels"),
        ("127.0.0.1", "IP address"),
        ("-bad.example", "hyphen"),
        ("bad-.example", "hyphen"),
        ("under_score.example", "letters, digits and hyphens"),
        ("p\u0430ypal.com", "mixes scripts"),  # Cyrillic a
        ("xn--zz.example", "invalid"),
        ("clinic.123", "all digits"),
        ("", "empty"),
        ("http://clinic.example", "URL or path"),
    ],
)
def test_hostile_or_invalid_names(raw: str, reason: str) -> None:
    with pytest.raises(NameError_) as info:
        normalize_domain(raw)
    assert reason in str(info.value)


def test_non_string_name() -> None:
    with pytest.raises(NameError_):
        normalize_domain(42)


@pytest.mark.parametrize("name", ["clinic", "a", "clinic-2", "0day"])
def test_site_names_ok(name: str) -> None:
    assert check_site_name(name) == name


@pytest.mark.parametrize("name", ["Clinic", "-x", "a_b", "../x", "a/b", "", "a" * 64, 5])
def test_site_names_refused(name: object) -> None:
    with pytest.raises(NameError_):
        check_site_name(name)


# The fast path of normalize_domain (a name that is already lower-case LDH labels) must give
# exactly what the full checks give, and leave every other name to them.
_LABEL_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-"


@given(st.lists(st.text(alphabet=_LABEL_CHARS + "X.*", min_size=1, max_size=70),
                min_size=1, max_size=5).map(".".join))
@settings(max_examples=600, deadline=None)
def test_fast_path_agrees_with_the_full_checks(raw: str) -> None:
    try:
        slow: str | Exception = _normalize(raw)
    except NameError_ as error:
        slow = error
    try:
        fast: str | Exception = normalize_domain(raw)
    except NameError_ as error:
        fast = error
    if isinstance(slow, Exception):
        assert isinstance(fast, NameError_) and str(fast) == str(slow)
    else:
        assert fast == slow


@pytest.mark.parametrize("raw", ["1.2.3.4", "clinic.123", "xn--zz.example", "Clinic.Example",
                                 "clinic.example.", "a" * 64 + ".example",
                                 ".".join(["a" * 63] * 4) + ".example"])
def test_names_the_fast_path_leaves_to_the_full_checks(raw: str) -> None:
    try:
        expected: str | None = _normalize(raw)
    except NameError_:
        expected = None
    if expected is None:
        with pytest.raises(NameError_):
            normalize_domain(raw)
    else:
        assert normalize_domain(raw) == expected
