"""The typed config model: frozen dataclasses, filled in by `load.py` with every default applied.

Nothing here reads files or validates; by the time a `Settings` exists it is known good.
Secrets (the EAB HMAC key, SMTP password, webhook secret) are held in `Secret`, whose repr and
str never show the value, so a stray log line or traceback cannot leak them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class Secret:
    """A string that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Eab:
    """External Account Binding (RFC 8555 §7.3.4): key id and HMAC key (base64url)."""

    kid: str
    hmac_key: Secret


@dataclass(frozen=True)
class AcmeSettings:
    directory: str  # the directory URL (aliases already resolved)
    ca_bundle: str | None = None
    contact: tuple[str, ...] = ()
    eab: Eab | None = None
    profile: str | None = None
    max_concurrent_orders: int = 4
    timeout: float = 30.0
    order_timeout: float = 300.0


@dataclass(frozen=True)
class Paths:
    state: str
    live: str
    event_log: str
    event_log_max_bytes: int = 10 * 1024 * 1024
    event_log_keep: int = 5
    key_group: str | None = None  # group allowed to read keys (0640/0750 instead of 0600/0700)


@dataclass(frozen=True)
class Challenge:
    type: str = "http-01"
    webroot: str | None = None
    standalone: tuple[str, int] | None = None  # (host, port) mamoru listens on itself


@dataclass(frozen=True)
class Server:
    """How a site's certificate reaches its web server (see mamoru.install)."""

    type: str = "none"  # nginx | apache | command | none
    mode: str = "site"  # site | include
    conf_dir: str | None = None
    listen_https: str = "443"
    listen_http: str = "80"
    root: str | None = None
    test: tuple[str, ...] | None = None
    reload: tuple[str, ...] | None = None
    verify: tuple[str, int] | None = None  # where to handshake; default 127.0.0.1:<https port>
    redirect: bool = True
    hsts: int = 0
    command_timeout: float = 60.0
    verify_timeout: float = 10.0


@dataclass(frozen=True)
class Site:
    name: str
    domains: tuple[str, ...]  # A-labels, lower case, validated
    key: str = "ec-p256"
    profile: str | None = None
    challenge: Challenge = field(default_factory=Challenge)
    server: Server = field(default_factory=Server)
    line: int | None = None  # where the site starts in the config file

    @property
    def names(self) -> tuple[str, ...]:
        return self.domains


@dataclass(frozen=True)
class RenewalSettings:
    check_interval_hours: float = 12.0
    retry_first_seconds: float = 60.0
    retry_max_seconds: float = 6 * 3600.0
    permanent_retry_seconds: float = 12 * 3600.0
    jitter_fraction: float = 0.1


@dataclass(frozen=True)
class EmailAlerts:
    host: str
    port: int
    sender: str
    to: tuple[str, ...]
    starttls: bool = True
    username: str | None = None
    password: Secret | None = None
    timeout: float = 10.0
    ca_bundle: str | None = None  # trust for STARTTLS; default: the system store


@dataclass(frozen=True)
class WebhookAlerts:
    url: str
    secret: Secret | None = None
    timeout: float = 10.0
    ca_bundle: str | None = None


@dataclass(frozen=True)
class AlertSettings:
    email: EmailAlerts | None = None
    webhook: WebhookAlerts | None = None
    after_failures: int = 1
    days_left: float = 7.0
    remind_hours: float = 24.0


@dataclass(frozen=True)
class MetricsSettings:
    listen: tuple[str, int] | None = None
    textfile: str | None = None


@dataclass(frozen=True)
class CheckSettings:
    """The browser's-eye check run after every install (mamoru.check.report)."""

    after_install: bool = True
    ca_bundle: str | None = None  # trust for the check; default: the system store
    timeout: float = 5.0


@dataclass(frozen=True)
class Settings:
    config_file: str
    acme: AcmeSettings
    paths: Paths
    sites: tuple[Site, ...]
    renewal: RenewalSettings = field(default_factory=RenewalSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    check: CheckSettings = field(default_factory=CheckSettings)
    warnings: tuple[str, ...] = ()

    def site(self, name: str) -> Site:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)
