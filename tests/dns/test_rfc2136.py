"""RFC 2136 dns-01 against real BIND 9 and Knot DNS (each test runs on both)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mamoru.challenges.dns.base import (
    DnsFailed,
    DnsSolver,
    DnsTask,
    Journal,
    Waiter,
    publish,
)
from mamoru.challenges.dns.rfc2136 import Rfc2136Solver, load_tsig_key, parse_tsig_key
from tests.dns.conftest import solver_for
from tests.servers.authdns import AuthoritativeServer, TestKey

pytestmark = pytest.mark.e2e

APEX = DnsTask.for_key_authorization("clinic.test", "token-apex.thumb")
WILDCARD = DnsTask.for_key_authorization("*.clinic.test", "token-wild.thumb")
RECORD = "_acme-challenge.clinic.test"


def test_the_solver_meets_both_protocols(dns_server: AuthoritativeServer) -> None:
    solver = solver_for(dns_server)
    assert isinstance(solver, DnsSolver) and isinstance(solver, Waiter)


def test_apex_and_wildcard_values_live_together_and_others_survive(
        dns_server: AuthoritativeServer) -> None:
    dns_server.update("clinic.test", add=[(RECORD + ".", "placed-by-someone-else")])
    solver = solver_for(dns_server)
    tasks = [APEX, WILDCARD]
    assert APEX.record_name == WILDCARD.record_name == RECORD
    with contextlib.ExitStack() as cleanup:
        publish(solver, solver, tasks, 10, cleanup)
        assert dns_server.txt(RECORD) == {APEX.value, WILDCARD.value, "placed-by-someone-else"}
    assert dns_server.zone_txt("clinic.test") == {RECORD: {"placed-by-someone-else"}}


def test_a_cname_delegated_challenge_is_written_where_it_points(
        dns_server: AuthoritativeServer) -> None:
    task = DnsTask.for_key_authorization("delegated.clinic.test", "token-cname.thumb")
    solver = solver_for(dns_server)
    with contextlib.ExitStack() as cleanup:
        publish(solver, solver, [task], 10, cleanup)
        assert dns_server.zone_txt("challenges.test") == {
            "delegated.challenges.test": {task.value}}
        assert dns_server.zone_txt("clinic.test") == {}
    assert dns_server.zone_txt("challenges.test") == {}


def test_an_explicit_zone_skips_the_soa_lookup(dns_server: AuthoritativeServer) -> None:
    solver = solver_for(dns_server, zone="clinic.test.")
    with contextlib.ExitStack() as cleanup:
        publish(solver, solver, [APEX], 10, cleanup)
        assert dns_server.txt(RECORD) == {APEX.value}
    assert dns_server.zone_txt("clinic.test") == {}


def test_a_wrong_secret_says_badsig_and_leaves_nothing(dns_server: AuthoritativeServer,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    wrong = TestKey(name=dns_server.key.name)  # same name, other secret
    solver = solver_for(dns_server, key=wrong)
    with pytest.raises(DnsFailed) as caught, contextlib.ExitStack() as cleanup:
        publish(solver, solver, [APEX, WILDCARD], 10, cleanup)
    message = str(caught.value)
    assert "TSIG error BADSIG" in message and "secret differs" in message
    assert "key_secret_file" in caught.value.hint
    assert wrong.secret not in message and dns_server.key.secret not in message
    assert "BADSIG" in caplog.text  # the failed cleanup is logged, and without the secret
    assert wrong.secret not in caplog.text and dns_server.key.secret not in caplog.text
    assert dns_server.zone_txt("clinic.test") == {}


def test_an_unknown_key_name_says_badkey(dns_server: AuthoritativeServer) -> None:
    other = TestKey(name="not-configured", secret=dns_server.key.secret)
    with pytest.raises(DnsFailed, match="TSIG error BADKEY") as caught:
        solver_for(dns_server, key=other).present([APEX])
    assert "key_name" in caught.value.hint
    assert dns_server.zone_txt("clinic.test") == {}


def test_a_zone_that_refuses_updates_says_so(dns_server: AuthoritativeServer) -> None:
    task = DnsTask.for_key_authorization("refused.test", "token.thumb")
    solver = solver_for(dns_server)
    with pytest.raises(DnsFailed, match="refused the update") as caught, \
            contextlib.ExitStack() as cleanup:
        publish(solver, solver, [task], 10, cleanup)
    # BIND answers REFUSED; Knot answers NOTAUTH with TSIG BADKEY when no acl of the zone
    # names the key. Either way the hint says how to grant it.
    assert "REFUSED" in str(caught.value) or "BADKEY" in str(caught.value)
    assert dns_server.zone_txt("refused.test") == {}


def test_a_name_outside_every_zone_of_the_server(dns_server: AuthoritativeServer) -> None:
    task = DnsTask.for_key_authorization("clinic.elsewhere", "token.thumb")
    with pytest.raises(DnsFailed,
                       match=r"not authoritative for _acme-challenge\.clinic\.elsewhere"):
        solver_for(dns_server).present([task])


@pytest.mark.parametrize("algorithm", ["hmac-sha224", "hmac-sha384", "hmac-sha512"])
def test_other_tsig_algorithms(bind_factory, algorithm: str) -> None:
    key = TestKey(name=f"key-{algorithm}", algorithm=algorithm)
    bind = bind_factory(key=key)
    solver = solver_for(bind)
    with contextlib.ExitStack() as cleanup:
        publish(solver, solver, [APEX], 10, cleanup)
        assert bind.txt(RECORD) == {APEX.value}
    assert bind.zone_txt("clinic.test") == {}


def test_a_late_nameserver_is_waited_for(bind_factory) -> None:
    primary, late = bind_factory(), bind_factory()
    solver = solver_for(primary, nameservers=[primary.address, late.address])
    tasks = [APEX, WILDCARD]
    timer = threading.Timer(1.5, lambda: late.update(
        "clinic.test", add=[(RECORD + ".", t.value) for t in tasks]))
    with contextlib.ExitStack() as cleanup:
        started = time.monotonic()
        timer.start()
        publish(solver, solver, tasks, 20, cleanup)
        took = time.monotonic() - started
        assert late.txt(RECORD) == {APEX.value, WILDCARD.value}
    timer.join()
    assert 1.5 <= took < 5, took  # polled, not slept: seen within the capped backoff
    assert primary.zone_txt("clinic.test") == {}


def test_a_secondary_that_never_gets_it_is_named(bind_factory) -> None:
    primary, never = bind_factory(), bind_factory()
    solver = solver_for(primary, nameservers=[primary.address, never.address])
    with pytest.raises(DnsFailed) as caught, contextlib.ExitStack() as cleanup:
        publish(solver, solver, [APEX, WILDCARD], 1.5, cleanup)
    message = str(caught.value)
    assert "1 of 2 authoritative nameserver(s)" in message
    assert never.address in message and primary.address not in message
    assert f"2 value(s) at {RECORD}" in message
    assert "propagation_timeout" in caught.value.hint
    assert primary.zone_txt("clinic.test") == {}  # cleaned up after the failure


def test_ctrl_c_while_waiting_removes_the_records(bind_factory, tmp_path: Path) -> None:
    primary, never = bind_factory(), bind_factory()
    key_file = tmp_path / "tsig.key"
    key_file.write_text(primary.key.bind_clause())
    key_file.chmod(0o600)
    script = tmp_path / "order.py"
    script.write_text(f"""
import contextlib
from mamoru.challenges.dns.base import DnsTask, publish
from mamoru.challenges.dns.rfc2136 import Rfc2136Solver, load_tsig_key
key = load_tsig_key({str(key_file)!r}, name={primary.key.name!r})
solver = Rfc2136Solver({primary.address!r}, key,
                       nameservers=[{primary.address!r}, {never.address!r}])
tasks = [DnsTask.for_key_authorization(n, n + ".thumb") for n in ("clinic.test", "*.clinic.test")]
with contextlib.ExitStack() as cleanup:
    publish(solver, solver, tasks, 60, cleanup)
""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while len(primary.txt(RECORD)) < 2:  # present() done: the process is waiting now
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert b"KeyboardInterrupt" in err
    assert primary.zone_txt("clinic.test") == {}


def test_after_a_kill_the_next_run_removes_what_was_left(bind_factory, tmp_path: Path) -> None:
    primary, never = bind_factory(), bind_factory()
    key_file = tmp_path / "tsig.key"
    key_file.write_text(primary.key.bind_clause())
    journal_path = tmp_path / "state" / "dns01-journal.json"
    journal_path.parent.mkdir()
    script = tmp_path / "order.py"
    script.write_text(f"""
import contextlib
from mamoru.challenges.dns.base import DnsTask, Journal, publish
from mamoru.challenges.dns.rfc2136 import Rfc2136Solver, load_tsig_key
key = load_tsig_key({str(key_file)!r}, name={primary.key.name!r})
solver = Rfc2136Solver({primary.address!r}, key,
                       nameservers=[{primary.address!r}, {never.address!r}])
tasks = [DnsTask.for_key_authorization(n, n + ".thumb") for n in ("clinic.test", "*.clinic.test")]
with contextlib.ExitStack() as cleanup:
    publish(solver, solver, tasks, 60, cleanup, Journal({str(journal_path)!r}))
""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(script)], env=env)
    try:
        deadline = time.monotonic() + 20
        while len(primary.txt(RECORD)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.kill()  # SIGKILL: no cleanup can run in that process
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = primary.zone_txt("clinic.test")[RECORD]
    assert len(left) == 2
    assert journal_path.stat().st_mode & 0o777 == 0o600
    # The next order (here: a new solver, as a new mamoru process would make) cleans up first.
    solver = solver_for(primary)
    with contextlib.ExitStack() as cleanup:
        publish(solver, solver, [APEX], 10, cleanup, Journal(str(journal_path)))
        assert primary.txt(RECORD) == {APEX.value}
    assert primary.zone_txt("clinic.test") == {}
    assert not journal_path.exists()


def test_cleanup_is_safe_twice_and_without_present(dns_server: AuthoritativeServer) -> None:
    solver = solver_for(dns_server)
    assert solver.cleanup([APEX]) == []  # never added: deleting it changes nothing
    solver.present([APEX])
    assert solver.cleanup([APEX]) == []
    assert solver.cleanup([APEX]) == []
    assert dns_server.zone_txt("clinic.test") == {}


def test_key_files_in_every_format(tmp_path: Path) -> None:
    secret = TestKey().secret
    bind_style = f'key "a" {{ algorithm hmac-sha512; secret "x"; }};\n' \
                 f'key "mamoru-clinic" {{\n\talgorithm hmac-sha384;\n\tsecret "{secret}";\n}};\n'
    knot_style = f"key:\n  - id: mamoru-clinic\n    algorithm: hmac-sha224\n    secret: {secret}\n"
    for text, algorithm in ((bind_style, "hmac-sha384"), (knot_style, "hmac-sha224"),
                            (secret + "\n", "hmac-sha256")):
        path = tmp_path / "key"
        path.write_text(text)
        key = load_tsig_key(str(path), name="mamoru-clinic")
        assert key.algorithm == algorithm and key.name == "mamoru-clinic"
        assert secret not in repr(key)
    with pytest.raises(DnsFailed, match=r"has no key named 'other'.*mamoru-clinic"):
        parse_tsig_key(bind_style, name="other")
    with pytest.raises(DnsFailed, match=r"rfc2136\.key_algorithm is hmac-sha256"):
        parse_tsig_key(bind_style, name="mamoru-clinic", algorithm="hmac-sha256")
    with pytest.raises(DnsFailed, match="not valid base64"):
        parse_tsig_key("not*base64", name="k")
    with pytest.raises(DnsFailed, match="not supported"):
        parse_tsig_key(secret, name="k", algorithm="hmac-md5")
    with pytest.raises(DnsFailed, match="cannot read the TSIG key file"):
        load_tsig_key(str(tmp_path / "missing"), name="k")


def test_the_server_being_down_is_a_clear_error() -> None:
    from tests.servers.ports import free_port
    solver = Rfc2136Solver(f"127.0.0.1:{free_port(udp=True)}",
                           parse_tsig_key(TestKey().secret, name="k"), timeout=1)
    with pytest.raises(DnsFailed, match=r"cannot ask the DNS server 127\.0\.0\.1:") as caught:
        solver.present([APEX])
    assert "rfc2136.server" in caught.value.hint
    started = time.monotonic()
    assert solver.cleanup([APEX]) == []  # never sent: nothing to delete, no second wait
    assert time.monotonic() - started < 0.5


def test_a_real_secondary_is_waited_for_until_its_zone_transfer(bind_factory,
                                                                tmp_path: Path) -> None:
    """BIND primary, Knot secondary fed by zone transfer (no NOTIFY: it polls the SOA every
    2 s). The wait ends once the transfer brought both values, within a few seconds."""
    from tests.dns.conftest import ZONES
    from tests.servers.authdns import Zone
    from tests.servers.knot import Knot

    zones = [Zone(z.name, z.records, z.updatable, refresh=2) for z in ZONES]
    primary = bind_factory(zones=zones)
    with Knot(tmp_path / "secondary", zones=zones[:1], primary=primary.port) as secondary:
        assert secondary.zone_txt("clinic.test") == {}  # transferred: it serves the zone
        solver = solver_for(primary, nameservers=[primary.address, secondary.address])
        tasks = [APEX, WILDCARD]
        with contextlib.ExitStack() as cleanup:
            started = time.monotonic()
            publish(solver, solver, tasks, 20, cleanup)
            took = time.monotonic() - started
            assert secondary.txt(RECORD) == {APEX.value, WILDCARD.value}
        assert 0.1 < took < 8, took  # it did lag (no NOTIFY), and was polled, not slept
        solver.wait(tasks, 20, gone=True)  # the removal reaches the secondary the same way
        assert secondary.zone_txt("clinic.test") == {}


def test_a_real_secondary_that_has_not_refreshed_is_named(bind_factory, tmp_path: Path) -> None:
    from tests.servers.knot import Knot

    primary = bind_factory()  # SOA refresh 60 s, no NOTIFY: the secondary stays behind
    with Knot(tmp_path / "secondary", zones=[primary.zones[0]], primary=primary.port) as late:
        solver = solver_for(primary, nameservers=[primary.address, late.address])
        with pytest.raises(DnsFailed) as caught, contextlib.ExitStack() as cleanup:
            publish(solver, solver, [APEX], 1.5, cleanup)
        assert f"{late.address} lacks 1 value(s) at {RECORD}" in str(caught.value)
    assert primary.zone_txt("clinic.test") == {}


def test_a_cname_into_a_challenge_zone_on_another_server(bind_factory) -> None:
    """The clinic's zone lives on one server (here: A, the "registrar's DNS"), its
    `_acme-challenge` CNAME points into a challenge zone on mamoru's own primary (B). The
    primary is not authoritative for the clinic's name, so the CNAME is asked of the resolver
    (A here; the system resolver by default), and the record goes into B's zone."""
    from tests.servers.authdns import Zone

    clinic_dns = bind_factory(zones=[Zone("clinic.test", [
        "_acme-challenge IN CNAME clinic.challenges.test.",
        "_acme-challenge.www IN CNAME www.clinic.challenges.test."])])
    challenge_primary = bind_factory(zones=[Zone("challenges.test")])
    solver = solver_for(challenge_primary, resolver=clinic_dns.address)
    tasks = [APEX, WILDCARD, DnsTask.for_key_authorization("www.clinic.test", "w.thumb")]
    with contextlib.ExitStack() as cleanup:
        publish(solver, solver, tasks, 10, cleanup)
        assert challenge_primary.zone_txt("challenges.test") == {
            "clinic.challenges.test": {APEX.value, WILDCARD.value},
            "www.clinic.challenges.test": {tasks[2].value}}
    assert challenge_primary.zone_txt("challenges.test") == {}
    assert clinic_dns.zone_txt("clinic.test") == {}
