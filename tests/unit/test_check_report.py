"""The parts of mamoru check that need no network: URL normalisation, browser name matching,
HSTS parsing, exit codes, the table and the JSON."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.unit.check_sites import DAY, HOST, NOW, URL, make_leaf

from mamoru.check.certificate import dns_name_matches, hostname_matches
from mamoru.check.hsts import parse_hsts
from mamoru.check.report import (
    Finding,
    Status,
    TargetReport,
    exit_code,
    render_table,
    to_json,
)
from mamoru.check.target import normalize_url


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("clinic.test", "https://clinic.test/"),
        ("Clinic.Test.", "https://clinic.test/"),
        ("http://clinic.test/a?b=c", "https://clinic.test/a?b=c"),
        ("http://clinic.test:8080/", "https://clinic.test/"),
        ("https://clinic.test:8443/x y", "https://clinic.test:8443/x%20y"),
        ("https://bücher.example/", "https://xn--bcher-kva.example/"),
        ("https://[::1]:8443/", "https://[::1]:8443/"),
    ],
)
def test_normalize_url(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("clinic.test", "clinic.test", True),
        ("CLINIC.test.", "clinic.TEST", True),
        ("*.clinic.test", "www.clinic.test", True),
        ("*.clinic.test", "clinic.test", False),
        ("*.clinic.test", "a.b.clinic.test", False),
        ("*.test", "clinic.test", False),
        ("w*.clinic.test", "www.clinic.test", False),
        ("www.*.test", "www.clinic.test", False),
        ("clinic.test", "127.0.0.1", False),
        ("other.test", "clinic.test", False),
    ],
)
def test_dns_name_matches(pattern: str, host: str, matches: bool) -> None:
    assert dns_name_matches(pattern, host) is matches


def test_hostname_matches_uses_san_only() -> None:
    good = make_leaf([HOST, f"www.{HOST}"], None)
    assert hostname_matches("www.clinic.test", good.cert)
    assert not hostname_matches("other.test", good.cert)
    # A certificate whose only name is the subject CN: browsers refuse it.
    key = ec.generate_private_key(ec.SECP256R1())
    cn_only = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .sign(key, hashes.SHA256())
    )
    assert not hostname_matches(HOST, cn_only)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            "max-age=31536000; includeSubDomains; preload",
            {"max_age": 31536000, "include_subdomains": True, "preload": True},
        ),
        ('MAX-AGE="600"', {"max_age": 600, "include_subdomains": False, "preload": False}),
        ("includeSubDomains", {"max_age": None, "include_subdomains": True, "preload": False}),
        ("max-age=soon", {"max_age": None, "include_subdomains": False, "preload": False}),
    ],
)
def test_parse_hsts(header: str, expected: dict[str, object]) -> None:
    assert parse_hsts(header) == expected


def _report(*pairs: tuple[str, Status]) -> TargetReport:
    return TargetReport(
        URL,
        HOST,
        [
            Finding(check, status, f"{check} says {status}", "" if status == "ok" else "do it")
            for check, status in pairs
        ],
    )


def test_exit_code() -> None:
    ok = _report(("hsts", "ok"))
    warn = _report(("hsts", "warning"))
    bad = _report(("cert.expiry", "problem"), ("hsts", "warning"))
    assert exit_code([ok], strict=True) == 0
    assert exit_code([ok, warn], strict=False) == 0
    assert exit_code([ok, warn], strict=True) == 1
    assert exit_code([warn, bad], strict=False) == 2
    assert exit_code([], strict=True) == 0
    assert (ok.worst, warn.worst, bad.worst) == ("ok", "warning", "problem")
    assert TargetReport(URL, HOST).worst == "ok"


def test_render_table_marks_and_fixes() -> None:
    text = render_table(
        [_report(("https.reachable", "ok"), ("hsts", "warning"), ("cert.expiry", "problem"))]
    )
    lines = text.splitlines()
    assert lines[0] == f"{URL}  [1 problem, 1 warning]"
    assert lines[1].startswith("  ✓ https.reachable")
    assert lines[2].startswith("  ! hsts")
    assert lines[3].strip() == "Fix: do it"
    assert lines[4].startswith("  ✗ cert.expiry")
    assert text.endswith("\n")
    assert all(len(line) <= 100 for line in lines)


def test_to_json_worst_over_targets() -> None:
    data = to_json([_report(("hsts", "ok")), _report(("hsts", "warning"))])
    assert data["worst"] == "warning"
    targets = data["targets"]
    assert isinstance(targets, list)
    assert [t["worst"] for t in targets] == ["ok", "warning"]
    assert targets[1]["findings"] == [
        {
            "check": "hsts",
            "status": "warning",
            "message": "hsts says warning",
            "fix": "do it",
            "details": {},
        }
    ]
