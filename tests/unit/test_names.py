"""Domain names: normalised to A-labels, hostile input refused before it can become a path."""

from __future__ import annotations

import pytest

from mamoru.config.names import NameError_, check_site_name, normalize_domain


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
