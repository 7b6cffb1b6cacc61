"""No secret leaks: scan every file the suite produced and every output of a run that uses them
all, for private keys, the account key, the EAB HMAC and ACME tokens. (Named test_zz_ so it
runs after the end-to-end and reliability tests whose files it scans.)

What is searched, and where:
* every private key mamoru made (each site's privkey.pem in every version, each account's
  key.pem), by four fingerprints (PEM body, DER in base64 and base64url, the raw private value
  as in a JWK): in every file of the session's temporary directory, except files named
  privkey.pem / key.pem (a key's home, or a copy under the same name);
* any PEM private-key block, each EAB HMAC key (from Pebble's configs) and each ACME token
  (from Pebble's logs of the http-01 fetches): in mamoru's own outputs, i.e. the files under
  every config's paths.state / paths.live / event log directory / server conf_dir, and the
  stdout and stderr of this test's runs (default, -v and -vv). A failed validation names the
  URL the CA tried as ".../acme-challenge/[token]".
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers import run_mamoru, write_config
from tests.reliability.checks import (
    PEBBLE_TOKEN,
    Finding,
    key_fingerprints,
    scan,
    walk_files,
)
from tests.reliability.conftest import standalone_site
from tests.servers.pebble import Pebble
from tests.servers.webroot_http import WebrootServer

pytestmark = pytest.mark.e2e

HMAC = "bWFtb3J1LXNlY3JldC1zY2FuLWhtYWMta2V5LW5vdC1mb3ItdXNl"  # base64url, only for this test


def run_everything(tmp_path: Path, pebble: Pebble) -> dict[str, bytes]:
    """A run that touches every secret: EAB registration, issuance by standalone and webroot,
    a failed validation, renewal, revocation, status and the log, at every verbosity."""
    key_file = tmp_path / "eab.key"
    key_file.write_text(HMAC + "\n")
    key_file.chmod(0o600)
    webroot, elsewhere = tmp_path / "webroot", tmp_path / "elsewhere"
    webroot.mkdir()
    elsewhere.mkdir()
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        "alpha": standalone_site(["alpha.example", "www.alpha.example"], pebble.http_port),
        "beta": {"domains": ["beta.example"], "key": "rsa-2048",
                 "challenge": {"webroot": str(webroot)}},
        "gamma": {"domains": ["gamma.example"], "challenge": {"webroot": str(elsewhere / "no")}},
    }, acme={"eab": {"kid": "kid-scan", "hmac_key_file": str(key_file)}})
    outputs: dict[str, bytes] = {}

    def mamoru(name: str, *args: str) -> None:
        result = run_mamoru(*args, "-c", str(config))
        outputs[f"<{name} stdout>"] = result.stdout.encode()
        outputs[f"<{name} stderr>"] = result.stderr.encode()

    verbs = run_mamoru("--help").stdout
    mamoru("check-config", "check-config")
    # alpha answers by itself on the port Pebble dials; then the webroot server takes it.
    mamoru("provision alpha", "provision", "--json", "alpha")
    mamoru("provision alpha -vv", "provision", "-vv", "--force", "alpha")
    with WebrootServer(webroot, pebble.http_port):
        mamoru("provision", "provision", "--json", "beta", "gamma")
        mamoru("provision -vv", "provision", "-vv", "--force", "beta", "gamma")
        mamoru("provision -v", "provision", "-v", "--force", "beta")
        mamoru("renew", "renew", "--json")
    mamoru("revoke", "revoke", "alpha", "--reason", "superseded", "-vv")
    for verb in ("status", "log"):
        if re.search(rf"[{{,\s]{verb}[,}}\s]", verbs):
            mamoru(verb, verb)
            mamoru(f"{verb} --json", verb, "--json")
    assert b'"issued"' in outputs["<provision alpha stdout>"]
    assert b'"issued"' in outputs["<provision stdout>"]
    assert b"ChallengeFailed" in outputs["<provision stdout>"]  # gamma failed validation
    return outputs


def mamoru_trees(base: Path) -> Iterator[Path]:
    """The directories mamoru writes, as named by every mamoru config under `base`."""
    for config in base.rglob("*.yaml"):
        try:
            data = yaml.safe_load(config.read_text())
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            continue
        if not isinstance(data, dict) or not isinstance(data.get("paths"), dict):
            continue
        paths = data["paths"]
        candidates = [paths.get("state"), paths.get("live")]
        if isinstance(paths.get("event_log"), str):
            candidates.append(os.path.dirname(paths["event_log"]))
        sites = data.get("sites")
        for site in sites.values() if isinstance(sites, dict) else ():
            server = site.get("server") if isinstance(site, dict) else None
            if isinstance(server, dict):
                candidates.append(server.get("conf_dir"))
        for candidate in candidates:
            if isinstance(candidate, str) and candidate.startswith(str(base)) \
                    and os.path.isdir(candidate):
                yield Path(candidate)


def collect_secrets(base: Path) -> tuple[dict[bytes, str], set[bytes], set[bytes]]:
    """(key fingerprints -> label, EAB HMAC keys, ACME tokens) from the session's files."""
    fingerprints: dict[bytes, str] = {}
    for pattern, kind in (("**/versions/*/privkey.pem", "site key"),
                          ("**/accounts/*/*/key.pem", "account key")):
        for path in base.glob(pattern):
            try:
                prints = key_fingerprints(path.read_bytes())
            except (ValueError, TypeError, OSError):
                continue  # a key a test damaged on purpose
            for label, value in prints.items():
                fingerprints[value] = f"{kind} {path.relative_to(base)} ({label})"
    hmacs = {HMAC.encode()}
    for path in base.rglob("pebble-config.json"):
        keys = json.loads(path.read_text())["pebble"].get("externalAccountMACKeys") or {}
        hmacs.update(value.encode() for value in keys.values())
    tokens: set[bytes] = set()
    for path in base.rglob("pebble.log"):
        tokens.update(PEBBLE_TOKEN.findall(path.read_bytes()))
    return fingerprints, hmacs, tokens


def test_no_secret_outside_the_key_files(
        tmp_path: Path, pebble_factory: Callable[..., Pebble],
        tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]) -> None:
    pebble = pebble_factory(eab_keys={"kid-scan": HMAC}, nonce_reject=10)
    outputs = run_everything(tmp_path, pebble)
    base = tmp_path_factory.getbasetemp()

    fingerprints, hmacs, tokens = collect_secrets(base)
    keys = {label.split(" (")[0] for label in fingerprints.values()}
    assert len([k for k in keys if k.startswith("site key")]) >= 5  # alpha 2, beta 3 versions
    assert any(k.startswith("account key") for k in keys)
    assert len(tokens) >= 4, "no tokens found in Pebble's logs: the scan would be blind"

    # 1. Every file of the session: no copy of any key mamoru made, except under a key's name.
    everything = [p for p in walk_files([base]) if p.name not in ("privkey.pem", "key.pem")]
    findings: list[Finding] = scan(everything, fingerprints, texts=outputs)
    findings = [f for f in findings if f.what != "PEM private key block"]  # test servers' keys

    # 2. mamoru's own files and outputs: no key block, no HMAC, no token outside a failure.
    trees = sorted(set(mamoru_trees(base)))
    assert any(t.name == "state" for t in trees) and any(t.name == "log" for t in trees)
    # Account keys moved aside (a damaged one, or one the CA forgot: key.pem.gone-<time>)
    # are keys in their own home, 0600 like key.pem.
    aside = [p for p in walk_files(trees) if p.name.startswith(("key.pem.corrupt-",
                                                                "key.pem.gone-"))]
    assert all(p.stat().st_mode & 0o077 == 0 for p in aside), aside
    own = [p for p in walk_files(trees) if p not in aside]
    findings += scan(own, {h: "EAB HMAC key" for h in hmacs}, tokens=tokens, texts=outputs)

    report = (f"secret scan: {len(everything)} files in the session, {len(own)} of them "
              f"mamoru's ({len(trees)} directories), {len(outputs)} captured outputs; "
              f"searched {len(keys)} private keys ({len(fingerprints)} fingerprints), "
              f"{len(hmacs)} HMAC keys, "
              f"{len(tokens)} tokens; {len(findings)} findings")
    with capsys.disabled():
        print("\n" + report)
    assert findings == [], report + "\n" + "\n".join(map(str, findings[:20]))

    # The failed validation named the URL the CA tried, without its token.
    failure = outputs["<provision stdout>"].decode()
    assert "the CA fetched http://gamma.example/.well-known/acme-challenge/[token]" in failure


def test_debug_output_redacts_challenge_tokens(tmp_path: Path, pebble: Pebble) -> None:
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle,
                          {"alpha": standalone_site(["alpha.example"], pebble.http_port)})
    result = run_mamoru("provision", "-vv", "-c", str(config), check=0)
    tokens = set(PEBBLE_TOKEN.findall(pebble.log_path.read_bytes()))
    assert tokens
    assert "standalone 127.0.0.1:" in result.stderr  # the responder's lines are there...
    assert "/acme-challenge/…" in result.stderr
    for token in tokens:  # ...without the token
        assert token.decode() not in result.stderr + result.stdout


def test_the_scanner_finds_planted_leaks(tmp_path: Path) -> None:
    """The scan is not blind: a key, an HMAC and a token planted where they do not belong are
    each found, and a key in its own file is not."""
    from mamoru.protocol.keys import generate_key, key_pem

    pem = key_pem(generate_key("ec-p256"))
    rsa = key_pem(generate_key("rsa-2048"))
    token = b"Xy3_tokenTOKENtoken-0123456789abcdef"
    (tmp_path / "privkey.pem").write_bytes(pem)
    (tmp_path / "events.jsonl").write_bytes(b'{"message": "' + token + b'.thumbprint"}\n')
    (tmp_path / "debug.log").write_bytes(b"loaded " + rsa.replace(b"\n", b"\\n"))
    (tmp_path / "state.json").write_bytes(b'{"hmac": "' + HMAC.encode() + b'"}')
    (tmp_path / "backup.txt").write_bytes(b"".join(pem.splitlines()[1:-1]))  # base64 only
    prints = {**{v: "ec" for v in key_fingerprints(pem).values()},
              **{v: "rsa" for v in key_fingerprints(rsa).values()},
              HMAC.encode(): "EAB HMAC key"}
    found = scan(walk_files([tmp_path]), prints, tokens=[token])
    where = sorted({(Path(f.path).name, f.what) for f in found})
    assert ("events.jsonl", "ACME token Xy3_toke...") in where
    assert ("debug.log", "PEM private key block") in where and ("debug.log", "rsa") in where
    assert ("state.json", "EAB HMAC key") in where
    assert ("backup.txt", "ec") in where
    assert not [w for w in where if w[0] == "privkey.pem"]
