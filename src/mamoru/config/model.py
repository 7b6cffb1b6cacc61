"""The typed config model: frozen dataclasses, filled in by `schema.py` with every default applied.

Nothing here reads files or validates; by the time a `Settings` exists it is known good. A field
default is a name from `defaults.py` (or None, "not set"), never a value of its own.
Secrets (the EAB HMAC key, SMTP password, webhook secret) are held in `Secret`, whose repr and
str never show the value, so a stray log line or traceback cannot leak them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mamoru.config import defaults as D


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
    """The `acme:` section: which CA, how to reach it, and the account's details."""
    directory: str  # the directory URL (aliases already resolved)
    ca_bundle: str | None = None
    contact: tuple[str, ...] = D.ACME_CONTACT
    eab: Eab | None = None
    profile: str | None = None
    max_concurrent_orders: int = D.ACME_MAX_CONCURRENT_ORDERS
    timeout: float = D.ACME_TIMEOUT
    order_timeout: float = D.ACME_ORDER_TIMEOUT


@dataclass(frozen=True)
class Paths:
    """The `paths:` section: where mamoru keeps its state, the live certificates and its log."""
    state: str
    live: str
    event_log: str
    event_log_max_bytes: int = D.PATHS_EVENT_LOG_MAX_BYTES
    event_log_keep: int = D.PATHS_EVENT_LOG_KEEP
    key_group: str | None = None  # group allowed to read keys (0640/0750 instead of 0600/0700)


@dataclass(frozen=True)
class Rfc2136:
    """dns-01 by RFC 2136 dynamic update. `key` is the text of the key file (a base64 secret,
    a BIND/tsig-keygen `key {}` clause or Knot's `key:` section), parsed by the solver."""

    server: str  # host[:port] of the primary that accepts updates
    key_name: str
    key: Secret
    key_algorithm: str | None = None  # None: the key file's, else hmac-sha256
    zone: str | None = None  # None: found by an SOA query to the server
    resolver: str | None = None  # host[:port] for CNAMEs the primary does not serve


@dataclass(frozen=True)
class DnsProvider:
    """dns-01 through a dns-lexicon provider; the credentials file is read by the solver."""

    name: str
    credentials_file: str
    zone: str | None = None


@dataclass(frozen=True)
class DnsHook:
    present: tuple[str, ...]
    cleanup: tuple[str, ...] = D.CHALLENGE_HOOK_CLEANUP
    timeout: float = D.CHALLENGE_HOOK_TIMEOUT


@dataclass(frozen=True)
class Dns01:
    """How a site's dns-01 records are written (exactly one of the three) and checked."""

    rfc2136: Rfc2136 | None = None
    provider: DnsProvider | None = None
    hook: DnsHook | None = None
    propagation_timeout: float = D.CHALLENGE_PROPAGATION_TIMEOUT
    nameservers: tuple[str, ...] = D.CHALLENGE_NAMESERVERS  # to check instead of the NS set


@dataclass(frozen=True)
class Challenge:
    """A site's `challenge:`: how mamoru proves control of its names. `type` is the site's
    challenge; with http-01, the names in `dns01_names` use dns-01 (`dns01` says how)."""

    type: str = D.CHALLENGE_TYPE
    webroot: str | None = None
    standalone: tuple[str, int] | None = None  # (host, port) mamoru listens on itself
    dns01: Dns01 | None = None
    dns01_names: tuple[str, ...] = D.CHALLENGE_DNS01_NAMES

    def type_for(self, name: str) -> str:
        """The challenge type that proves control of `name` (as ordered, "*." included)."""
        return "dns-01" if self.type == "dns-01" or name in self.dns01_names else "http-01"


@dataclass(frozen=True)
class Server:
    """How a site's certificate reaches its web server (see mamoru.install)."""

    type: str = D.SERVER_TYPE  # nginx | apache | command | none
    mode: str = D.SERVER_MODE  # site | include
    conf_dir: str | None = None
    listen_https: str = D.SERVER_LISTEN_HTTPS
    listen_http: str = D.SERVER_LISTEN_HTTP
    root: str | None = None
    test: tuple[str, ...] | None = None
    reload: tuple[str, ...] | None = None
    verify: tuple[str, int] | None = None  # where to handshake; default 127.0.0.1:<https port>
    redirect: bool = D.SERVER_REDIRECT
    hsts: int = D.SERVER_HSTS
    command_timeout: float = D.SERVER_COMMAND_TIMEOUT
    verify_timeout: float = D.SERVER_VERIFY_TIMEOUT


@dataclass(frozen=True)
class Site:
    """One entry of `sites:`: the names on one certificate, and how to get and install it."""
    name: str
    domains: tuple[str, ...]  # A-labels, lower case, validated
    key: str = D.SITE_KEY
    profile: str | None = None
    challenge: Challenge = field(default_factory=Challenge)
    server: Server = field(default_factory=Server)
    line: int | None = None  # where the site starts in the config file


@dataclass(frozen=True)
class RenewalSettings:
    """The `renewal:` section: how often sites are looked at, and the retry schedule."""
    check_interval_hours: float = D.RENEWAL_CHECK_INTERVAL_HOURS
    retry_first_seconds: float = D.RENEWAL_RETRY_FIRST_SECONDS
    retry_max_seconds: float = D.RENEWAL_RETRY_MAX_SECONDS
    permanent_retry_seconds: float = D.RENEWAL_PERMANENT_RETRY_SECONDS
    jitter_fraction: float = D.RENEWAL_JITTER_FRACTION


@dataclass(frozen=True)
class EmailAlerts:
    """`alerts.email:`: the SMTP relay and who gets the alert mails."""
    host: str
    port: int
    sender: str
    to: tuple[str, ...]
    starttls: bool = D.EMAIL_STARTTLS
    tls: bool = D.EMAIL_TLS  # implicit TLS (port 465) instead of STARTTLS
    username: str | None = None
    password: Secret | None = None
    timeout: float = D.ALERT_TIMEOUT
    ca_bundle: str | None = None  # trust for (START)TLS; default: the system store


@dataclass(frozen=True)
class WebhookAlerts:
    """`alerts.webhook:`: where alerts are POSTed, signed with the secret if given."""
    url: str
    secret: Secret | None = None
    timeout: float = D.ALERT_TIMEOUT
    ca_bundle: str | None = None


@dataclass(frozen=True)
class AlertSettings:
    """The `alerts:` section: when to alert, and the channels to alert on."""
    email: EmailAlerts | None = None
    webhook: WebhookAlerts | None = None
    after_failures: int = D.ALERTS_AFTER_FAILURES
    days_left: float = D.ALERTS_DAYS_LEFT
    remind_hours: float = D.ALERTS_REMIND_HOURS
    language: str = D.ALERTS_LANGUAGE  # of the alert summary (email subject, webhook summary)


@dataclass(frozen=True)
class MetricsSettings:
    """The `metrics:` section: a Prometheus endpoint and/or a textfile."""
    listen: tuple[str, int] | None = None
    textfile: str | None = None


@dataclass(frozen=True)
class FleetSettings:
    """Reporting to the vendor's fleet collector (mamoru.observe.outbox): every event and a
    snapshot of each site go into a durable outbox on disk and are pushed over HTTPS."""

    url: str
    token: Secret
    clinic: str
    outbox: str  # directory of the outbox
    ca_bundle: str | None = None  # trust for the collector's HTTPS; default: the system store
    snapshot_minutes: float = D.FLEET_SNAPSHOT_MINUTES
    heartbeat_minutes: float = D.FLEET_HEARTBEAT_MINUTES
    outbox_max_bytes: int = D.FLEET_OUTBOX_MAX_BYTES
    batch: int = D.FLEET_BATCH
    timeout: float = D.FLEET_TIMEOUT


@dataclass(frozen=True)
class CheckSettings:
    """The browser's-eye check run after every install (mamoru.check.report)."""

    after_install: bool = D.CHECK_AFTER_INSTALL
    ca_bundle: str | None = None  # trust for the check; default: the system store
    timeout: float = D.CHECK_TIMEOUT
    browser: bool = D.CHECK_BROWSER  # also load each name in a real headless Chromium


@dataclass(frozen=True)
class Settings:
    """A whole config, validated, with every default applied (see load.py)."""
    config_file: str
    acme: AcmeSettings
    paths: Paths
    sites: tuple[Site, ...]
    renewal: RenewalSettings = field(default_factory=RenewalSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    check: CheckSettings = field(default_factory=CheckSettings)
    fleet: FleetSettings | None = None
    warnings: tuple[str, ...] = D.WARNINGS

    def site(self, name: str) -> Site:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)
