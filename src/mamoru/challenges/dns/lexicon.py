"""dns-01 through a DNS provider's API, with `dns-lexicon` (Cloudflare, Route 53, Gandi, OVH,
Sakura Cloud and 80 more: `lexicon --help` lists them).

Credentials come from a file (YAML or JSON mapping of the provider's options, e.g.
`auth_token: ...` for Cloudflare), never from the main config, and never reach a log or an
error: any error text is scrubbed of every credential value before it is shown.

Lexicon's `create_record` adds a value beside the ones already at a name on the providers that
support several TXT values, and `delete_record` with the content removes only that value.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import yaml

from mamoru.challenges.dns.base import CHALLENGE_TYPE, DnsFailed, DnsTask

log = logging.getLogger(__name__)


class Operations(Protocol):
    """What the solver uses of lexicon's `Client` context (its `_ClientOperations`)."""

    def create_record(self, rtype: str, name: str, content: str) -> bool: ...

    def delete_record(self, identifier: str | None = None, rtype: str | None = None,
                      name: str | None = None, content: str | None = None) -> bool: ...


ClientFactory = Callable[[dict[str, Any]], AbstractContextManager[Operations]]


def lexicon_client(config: dict[str, Any]) -> AbstractContextManager[Operations]:
    """lexicon's own Client for a config dict (imported only when a provider is used)."""
    try:
        from lexicon.client import Client
        from lexicon.config import ConfigResolver
    except ImportError:
        raise DnsFailed("the dns-lexicon package is not installed",
                        hint="Install it (pip install 'mamoru[dns-providers]') to use "
                        "challenge.provider.") from None
    resolver = ConfigResolver()  # type: ignore[no-untyped-call]
    client: AbstractContextManager[Operations] = Client(resolver.with_dict(config))
    return client


def load_credentials(path: str) -> dict[str, str]:
    """The provider options in a YAML/JSON file: a mapping of option name -> value."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not text"
        raise DnsFailed(f"cannot read the DNS provider credentials file {path}: {reason}",
                        hint="Check challenge.provider.credentials_file (keep it 0600).") from None
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError):
        data = None
    if not isinstance(data, dict) or not data or not all(
            isinstance(k, str) and isinstance(v, str | int) for k, v in data.items()):
        raise DnsFailed(f"{path} is not a mapping of provider options (e.g. `auth_token: "
                        "...`)", hint="Write one `option: value` per line, as the provider's "
                        "lexicon options are named (without the --auth- prefix).")
    return {key.replace("-", "_"): str(value) for key, value in data.items()}


class LexiconSolver:
    """dns-01 through lexicon provider `provider`. Implements DnsSolver only (pair it with the
    propagation check). `zone` names the zone when lexicon cannot guess it from the public
    suffix list (a delegated sub-zone)."""

    challenge_type = CHALLENGE_TYPE

    def __init__(self, provider: str, credentials: Mapping[str, str], *,
                 zone: str | None = None, ttl: int = 60,
                 client_factory: ClientFactory = lexicon_client) -> None:
        self.provider = provider
        self._credentials = dict(credentials)
        self.zone = zone.rstrip(".") if zone else None
        self.ttl = ttl
        self._client_factory = client_factory

    def _config(self, task: DnsTask) -> dict[str, Any]:
        domain = self.zone or task.record_name.split(".", 1)[1]
        # lexicon's `ddns` provider reads the zone from its own options, the others from the
        # top-level `domain`: both are given.
        options = {"domain": domain, **self._credentials}
        config: dict[str, Any] = {"provider_name": self.provider, "domain": domain,
                                  "ttl": self.ttl, self.provider: options}
        if self.zone:
            config["delegated"] = self.zone
        return config

    def present(self, tasks: Sequence[DnsTask]) -> None:
        for task in tasks:
            self._call(task, "add", _create(task))

    def cleanup(self, tasks: Sequence[DnsTask]) -> list[DnsTask]:
        failed = []
        for task in tasks:
            try:
                self._call(task, "delete", _delete(task))
            except DnsFailed as error:
                log.warning("dns-01 cleanup: %s", error)
                failed.append(task)
        return failed

    def _call(self, task: DnsTask, action: str, step: Callable[[Operations], bool]) -> None:
        try:
            with self._client_factory(self._config(task)) as operations:
                result = step(operations)
        except DnsFailed:
            raise
        except Exception as error:  # lexicon providers raise anything: requests, KeyError...
            raise DnsFailed(
                f"DNS provider {self.provider}: cannot {action} the TXT record "
                f"{task.record_name}: {type(error).__name__}: {self._scrub(str(error))}",
                hint="Check the provider credentials file and that the account may edit "
                "this zone (challenge.provider.zone names a delegated zone).") from None
        if result is False:
            raise DnsFailed(f"DNS provider {self.provider} did not {action} the TXT record "
                            f"{task.record_name}")

    def _scrub(self, text: str) -> str:
        for value in self._credentials.values():
            if len(value) >= 4:
                text = text.replace(value, "***")
        return text[-1000:]


def _create(task: DnsTask) -> Callable[[Operations], bool]:
    return lambda operations: operations.create_record("TXT", task.record_name, task.value)


def _delete(task: DnsTask) -> Callable[[Operations], bool]:
    return lambda operations: operations.delete_record(rtype="TXT", name=task.record_name,
                                                       content=task.value)
