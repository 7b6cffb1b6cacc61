"""The dns-01 solver and waiter a site's config asks for (`challenge.rfc2136`, `.provider` or
`.hook`, with `propagation_timeout` and `nameservers`). dnspython is imported only when a site
asks for dns-01, so an http-01 provision never loads it."""

from __future__ import annotations

from mamoru.challenges.dns.base import DnsSolver, Waiter
from mamoru.config.model import Dns01


def dns_solver_for(dns01: Dns01) -> tuple[DnsSolver, Waiter]:
    """A solver and the waiter that checks its records. Raises DnsFailed (an unreadable or
    malformed key or credentials file)."""
    if dns01.rfc2136 is not None:
        from mamoru.challenges.dns.rfc2136 import Rfc2136Solver, parse_tsig_key

        settings = dns01.rfc2136
        key = parse_tsig_key(settings.key.reveal(), name=settings.key_name,
                             algorithm=settings.key_algorithm,
                             source="rfc2136.key_secret_file")
        solver = Rfc2136Solver(settings.server, key, zone=settings.zone,
                               nameservers=dns01.nameservers, resolver=settings.resolver)
        return solver, solver
    from mamoru.challenges.dns.propagation import PropagationWaiter

    waiter = PropagationWaiter(dns01.nameservers)
    if dns01.provider is not None:
        from mamoru.challenges.dns.lexicon import LexiconSolver, load_credentials

        provider = dns01.provider
        return LexiconSolver(provider.name, load_credentials(provider.credentials_file),
                             zone=provider.zone), waiter
    from mamoru.challenges.dns.hook import HookSolver

    assert dns01.hook is not None
    hook = dns01.hook
    return HookSolver(hook.present, hook.cleanup, timeout=hook.timeout), waiter
