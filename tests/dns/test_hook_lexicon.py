"""The hook solver (a script calling nsupdate) and the lexicon solver (lexicon's own `ddns`
provider, which speaks RFC 2136) writing into a real BIND; lexicon's adapter contract with a
recording client."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest

from mamoru.challenges.dns.base import DnsFailed, DnsTask, publish
from mamoru.challenges.dns.hook import HookSolver
from mamoru.challenges.dns.lexicon import LexiconSolver, load_credentials
from mamoru.challenges.dns.propagation import PropagationWaiter
from tests.servers.authdns import TestKey, Zone

pytestmark = pytest.mark.e2e

APEX = DnsTask.for_key_authorization("clinic.test", "token-apex.thumb")
WILDCARD = DnsTask.for_key_authorization("*.clinic.test", "token-wild.thumb")
RECORD = "_acme-challenge.clinic.test"

NSUPDATE_HOOK = """#!/bin/sh
# $1 = add | delete. Writes the dns-01 record into the test BIND with nsupdate and its key.
set -e
echo "hook $1 for $MAMORU_DOMAIN ($MAMORU_IDENTIFIER)"
nsupdate -k "$KEY_FILE" <<END
server 127.0.0.1 $DNS_PORT
update $1 $MAMORU_RECORD. 60 TXT "$MAMORU_VALUE"
send
END
"""


def _hook(tmp_path: Path, bind: Any, **kwargs: Any) -> HookSolver:
    key_file = tmp_path / "tsig.key"
    key_file.write_text(bind.key.bind_clause())
    key_file.chmod(0o600)
    script = tmp_path / "dns-hook.sh"
    script.write_text(NSUPDATE_HOOK)
    script.chmod(0o700)
    return HookSolver([str(script), "add"], [str(script), "delete"],
                      env={"KEY_FILE": str(key_file), "DNS_PORT": str(bind.port)}, **kwargs)


def test_hook_writes_both_values_and_removes_only_them(bind_factory, tmp_path: Path) -> None:
    bind = bind_factory()
    bind.update("clinic.test", add=[(RECORD + ".", "someone-else")])
    solver = _hook(tmp_path, bind)
    with contextlib.ExitStack() as cleanup:
        publish(solver, PropagationWaiter([bind.address]), [APEX, WILDCARD], 10, cleanup)
        assert bind.txt(RECORD) == {APEX.value, WILDCARD.value, "someone-else"}
    assert bind.zone_txt("clinic.test") == {RECORD: {"someone-else"}}


def test_the_waiter_finds_the_nameservers_through_the_resolver(bind_factory,
                                                              tmp_path: Path) -> None:
    """No nameserver list: the zone, its NS set and their addresses come from the resolver
    (the test BIND stands in for it), then the record is asked of each found server."""
    bind = bind_factory()
    waiter = PropagationWaiter(resolver=bind.address, port=bind.port)
    assert waiter._zone("_acme-challenge.www.clinic.test") == "clinic.test"
    assert [(s.name, s.address) for s in waiter._discover("clinic.test")] == [
        ("ns1.clinic.test", "127.0.0.1")]
    with contextlib.ExitStack() as cleanup:
        publish(_hook(tmp_path, bind), waiter, [APEX, WILDCARD], 10, cleanup)
        assert bind.txt(RECORD) == {APEX.value, WILDCARD.value}
    waiter.wait([APEX, WILDCARD], 5, gone=True)


def test_a_failing_hook_shows_its_output_and_is_cleaned_up(bind_factory,
                                                           tmp_path: Path) -> None:
    bind = bind_factory()
    solver = _hook(tmp_path, bind)
    zone_refused = DnsTask.for_key_authorization("refused.test", "t.thumb")
    with pytest.raises(DnsFailed) as caught, contextlib.ExitStack() as cleanup:
        publish(solver, PropagationWaiter([bind.address]), [APEX, zone_refused], 10, cleanup)
    message = str(caught.value)
    assert "present hook" in message and "exit status" in message
    assert "hook add for refused.test" in message and "REFUSED" in message  # nsupdate's words
    assert bind.zone_txt("clinic.test") == {}  # the first record was removed again


def test_a_hook_past_its_timeout_is_killed() -> None:
    solver = HookSolver([sys.executable, "-c",
                         "import time; print('working', flush=True); time.sleep(30)"],
                        timeout=0.5)
    with pytest.raises(DnsFailed, match=r"did not finish within 0\.5 s") as caught:
        solver.present([APEX])
    assert "working" in str(caught.value)


def test_a_hook_that_is_not_a_program(tmp_path: Path) -> None:
    with pytest.raises(DnsFailed, match="cannot run the dns-01 present hook") as caught:
        HookSolver([str(tmp_path / "missing")]).present([APEX])
    assert "argv list" in caught.value.hint
    with pytest.raises(ValueError, match="argv list"):
        HookSolver("nsupdate -k key")


def test_the_hook_environment(tmp_path: Path) -> None:
    out = tmp_path / "env"
    solver = HookSolver([sys.executable, "-c", f"""
import os
with open({str(out)!r}, "a") as f:
    f.write(" ".join(os.environ[k] for k in ("MAMORU_DOMAIN", "MAMORU_IDENTIFIER",
        "MAMORU_RECORD", "MAMORU_VALUE", "CERTBOT_DOMAIN", "CERTBOT_VALIDATION")) + "\\n")
"""])
    solver.present([WILDCARD])
    assert out.read_text().split() == ["clinic.test", "*.clinic.test", RECORD, WILDCARD.value,
                                       "clinic.test", WILDCARD.value]


# ---- lexicon -------------------------------------------------------------------------------

LEXICON_ZONE = "clinic-test.jp"  # a name under a public suffix lexicon's tldextract knows


def test_lexicon_ddns_provider_against_bind(bind_factory, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Lexicon's own Client and `ddns` provider end to end against BIND. Only its
    `_run_query` is replaced, by the same TCP query to the test BIND's free port: lexicon
    always dials port 53. The update and delete messages, TSIG and the Client are lexicon's."""
    from lexicon._private.providers import ddns

    key = TestKey(name="lexicon-key")
    bind = bind_factory(zones=[Zone(LEXICON_ZONE)], key=key)

    def run_query(self: Any, message: dns.message.Message) -> dns.message.Message:
        return dns.query.tcp(message, self.endpoint, port=bind.port, timeout=10)

    monkeypatch.setattr(ddns.Provider, "_run_query", run_query)
    credentials = tmp_path / "lexicon.yaml"
    credentials.write_text(f"auth_token: hmac-sha256:{key.name}:{key.secret}\n"
                           "ddns_server: 127.0.0.1\n")
    credentials.chmod(0o600)
    solver = LexiconSolver("ddns", load_credentials(str(credentials)), zone=LEXICON_ZONE)
    tasks = [DnsTask.for_key_authorization(LEXICON_ZONE, "a.thumb"),
             DnsTask.for_key_authorization(f"*.{LEXICON_ZONE}", "b.thumb")]
    record = f"_acme-challenge.{LEXICON_ZONE}"
    with contextlib.ExitStack() as cleanup:
        publish(solver, PropagationWaiter([bind.address]), tasks, 10, cleanup)
        assert bind.txt(record) == {t.value for t in tasks}
    assert bind.zone_txt(LEXICON_ZONE) == {}


class RecordingClient:
    """Stands in for lexicon's Client: records each call and the config it was built with."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.configs: list[dict[str, Any]] = []
        self.fail_on = fail_on

    @contextmanager
    def __call__(self, config: dict[str, Any]) -> Iterator[RecordingClient]:
        self.configs.append(config)
        yield self

    def create_record(self, rtype: str, name: str, content: str) -> bool:
        self.calls.append(("create", {"rtype": rtype, "name": name, "content": content}))
        if self.fail_on == content:
            raise RuntimeError(f"HTTP 403 for https://api.example/zones?token=s3cret-token {name}")
        return True

    def delete_record(self, identifier: str | None = None, rtype: str | None = None,
                      name: str | None = None, content: str | None = None) -> bool:
        self.calls.append(("delete", {"rtype": rtype, "name": name, "content": content}))
        return True


def test_lexicon_adapter_contract() -> None:
    client = RecordingClient(fail_on=WILDCARD.value)
    solver = LexiconSolver("cloudflare", {"auth_token": "s3cret-token"},
                           client_factory=client)
    with pytest.raises(DnsFailed) as caught, contextlib.ExitStack() as cleanup:
        publish(solver, None, [APEX, WILDCARD], 10, cleanup)
    assert "s3cret-token" not in str(caught.value) and "***" in str(caught.value)
    assert "cloudflare" in str(caught.value)
    assert client.configs[0] == {"provider_name": "cloudflare", "domain": "clinic.test",
                                 "ttl": 60, "cloudflare": {"auth_token": "s3cret-token",
                                                           "domain": "clinic.test"}}
    # each value added, then each removed by its content only (never the whole TXT set)
    assert client.calls == [
        ("create", {"rtype": "TXT", "name": RECORD, "content": APEX.value}),
        ("create", {"rtype": "TXT", "name": RECORD, "content": WILDCARD.value}),
        ("delete", {"rtype": "TXT", "name": RECORD, "content": APEX.value}),
        ("delete", {"rtype": "TXT", "name": RECORD, "content": WILDCARD.value}),
    ]


def test_lexicon_credentials_file(tmp_path: Path) -> None:
    path = tmp_path / "creds"
    path.write_text('{"auth-token": "abc", "auth_username": "clinic"}')
    assert load_credentials(str(path)) == {"auth_token": "abc", "auth_username": "clinic"}
    path.write_text("- not a mapping\n")
    with pytest.raises(DnsFailed, match="not a mapping of provider options"):
        load_credentials(str(path))
    with pytest.raises(DnsFailed, match="cannot read the DNS provider credentials file"):
        load_credentials(str(tmp_path / "missing"))
