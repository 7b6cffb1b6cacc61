"""Obtain one certificate: order, answer every challenge, finalize, download.

Cleanup of presented challenges always runs (ExitStack), after success, a CA error, a timeout
or a stop request. An order's dns-01 records are published as one batch and waited for once
(every authoritative nameserver serves every value) before any challenge is answered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mamoru.challenges.base import ChallengeSolver, ChallengeTask, solver_for
from mamoru.config.model import Site
from mamoru.errors import OrderFailed
from mamoru.observe.events import Events
from mamoru.protocol.ari import cert_id_or_none
from mamoru.protocol.keys import (
    PrivateKey,
    generate_key,
    key_pem,
    load_x509_meanwhile,
    make_csr_der,
)
from mamoru.protocol.session import AcmeSession
from mamoru.storage import CertVersion

if TYPE_CHECKING:  # the dns-01 code is imported only for a site that uses dns-01
    from mamoru.challenges.dns.base import DnsSolver, Waiter

DNS01 = "dns-01"  # = challenges.dns.base.CHALLENGE_TYPE (tests/unit/test_issuance_imports.py)


@dataclass(frozen=True)
class Issued:
    key_pem: bytes
    chain_pem: bytes
    order_url: str
    replaced: str | None
    profile: str | None
    profile_wanted: str | None = None  # what the config asked for (a CA may offer none)

    def meta(self, key_kind: str) -> dict[str, Any]:
        """What is stored beside the certificate for renewal and status."""
        return {"key": key_kind, "profile": self.profile, "order": self.order_url,
                "profile_wanted": self.profile_wanted, "replaced": self.replaced,
                "ari_cert_id": cert_id_or_none(self.chain_pem)}


def obtain(
    site: Site,
    session: AcmeSession,
    solver: ChallengeSolver | None,
    key: PrivateKey | Future[PrivateKey],
    events: Events,
    *,
    profile: str | None,
    replaces: str | None,
    timeout: float,
    finalize: bool = True,
    dns: tuple[DnsSolver, Waiter | None] | None = None,
    dns_journal: str | None = None,
) -> Issued:
    """Run one order for `site` with `key` (or the key being made: it is waited for only
    when the CSR is signed). `solver` answers the http-01 names, `dns` (solver, waiter) the
    dns-01 names: all of an order's dns-01 records are published in one batch and waited for
    once. Raises IssuanceError subclasses."""
    deadline = time.monotonic() + timeout
    names = list(site.domains)
    order = session.new_order(names, profile=profile, replaces=replaces)
    load_x509_meanwhile()  # the CSR's module, imported while the CA validates
    events.emit("order", site.name, order=order.url, names=names, replaces=order.replaced,
                profile=profile)
    tasks = session.pending_challenges(order, site.challenge.type_for)
    http_tasks = [task for task in tasks if task.type != DNS01]
    dns_tasks = [task for task in tasks if task.type == DNS01]
    with contextlib.ExitStack() as cleanup:
        if http_tasks and solver is None:
            raise OrderFailed(f"no http-01 solver for {http_tasks[0].identifier}")
        for task in http_tasks:
            assert solver is not None
            cleanup.callback(solver.cleanup, task)  # registered before present: always runs
            solver.present(task)
        if dns_tasks:
            _publish_dns(site, dns, dns_tasks, deadline, cleanup, dns_journal, events,
                         order.url)
        for task in tasks:  # answered together, validated in parallel by the CA
            session.answer(task)
        if tasks:
            events.emit("challenge", site.name, names=[t.identifier for t in tasks],
                        challenge_type=" and ".join(sorted({t.type for t in tasks})),
                        order=order.url)
        session.wait_authorizations(order, tasks, deadline)
    if tasks:
        events.emit("validated", site.name, order=order.url)
    if not finalize:  # a dry run at a CA that would issue a real certificate
        return Issued(key_pem=b"", chain_pem=b"", order_url=order.url, replaced=order.replaced,
                      profile=profile)
    if isinstance(key, Future):
        key = key.result()
    chain = session.finalize(order, make_csr_der(key, names), deadline)
    return Issued(key_pem=key_pem(key), chain_pem=chain, order_url=order.url,
                  replaced=order.replaced, profile=profile)


def _publish_dns(site: Site, dns: tuple[DnsSolver, Waiter | None] | None,
                 tasks: list[ChallengeTask], deadline: float, cleanup: contextlib.ExitStack,
                 journal: str | None, events: Events, order_url: str) -> None:
    """Every dns-01 record of the order in one batch, then one wait for all of them."""
    if dns is None or site.challenge.dns01 is None:
        raise OrderFailed(f"no dns-01 solver for {tasks[0].identifier}")
    from mamoru.challenges.dns.base import DnsTask, Journal, publish

    records = [DnsTask.for_key_authorization(task.identifier, task.key_authorization)
               for task in tasks]
    started = time.monotonic()
    wait = min(site.challenge.dns01.propagation_timeout, max(1.0, deadline - started))
    publish(dns[0], dns[1], records, wait, cleanup, Journal(journal) if journal else None)
    events.emit("dns-published", site.name, names=[task.identifier for task in tasks],
                seconds=round(time.monotonic() - started, 3), order=order_url)


def obtain_for_site(site: Site, session: AcmeSession, events: Events,
                    current: CertVersion | None, *, default_profile: str | None,
                    timeout: float, finalize: bool = True,
                    dns_journal: str | None = None) -> Issued:
    """Everything `obtain` needs, picked for `site`: the profile the CA offers, `replaces`
    when the CA speaks ARI, the solver, and a fresh key. `session` has the account loaded."""
    profile = site.profile or default_profile
    offered = session.profiles
    if profile and not offered:
        events.emit("warning", site.name, warning="no-profiles", profile=profile)
        profile = None
    elif profile and profile not in offered:
        raise OrderFailed(f"the CA does not offer profile {profile!r} (it offers: "
                          f"{', '.join(sorted(offered))})",
                          hint="Change acme.profile (or the site's profile) to one it offers.")
    replaces = None
    if current is not None and session.supports_ari:
        # Metadata rebuilt from the certificate has no id: derive it from the certificate.
        replaces = current.meta.get("ari_cert_id") or _cert_id_of(current)
    challenge = site.challenge
    http_names = [name for name in site.domains if challenge.type_for(name) != DNS01]
    solver = solver_for(challenge) if http_names else None
    dns = None
    if challenge.dns01 is not None:
        from mamoru.challenges.dns.setup import dns_solver_for

        dns = dns_solver_for(challenge.dns01)
    key = _make_key(site.key)
    issued = obtain(site, session, solver, key, events, profile=profile,
                    replaces=replaces, timeout=timeout, finalize=finalize, dns=dns,
                    dns_journal=dns_journal)
    return dataclasses.replace(issued, profile_wanted=site.profile or default_profile)


def _cert_id_of(version: CertVersion) -> str | None:
    try:
        return cert_id_or_none(version.read("cert.pem"))
    except OSError:
        return None


def _make_key(kind: str) -> PrivateKey | Future[PrivateKey]:
    """A new key of `kind`. An RSA key takes 0.05 s (2048 bits) to 0.6 s (4096) and OpenSSL
    releases the GIL meanwhile, so it is made on a thread while the CA validates the order:
    off the critical path. An EC key takes half a millisecond: made here."""
    if not kind.startswith("rsa-"):
        return generate_key(kind)
    future: Future[PrivateKey] = Future()

    def make() -> None:
        try:
            future.set_result(generate_key(kind))
        except BaseException as error:  # handed to whoever waits for the key
            future.set_exception(error)

    threading.Thread(target=make, name=f"key {kind}", daemon=True).start()
    return future
