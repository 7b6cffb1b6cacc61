"""Every default value of the config, in one table: the only place a default lives.

The loader (`schema.py`) passes these for a key the config leaves out, and the dataclasses of
`model.py` name the same constants as their field defaults, so a `Settings` built in code and
one read from a file agree. `None` ("not set") is the one default spelled as a literal
elsewhere. `config.example.yaml` documents these values; nothing else in mamoru hard-codes a
default a user could want to change. Limits (the range a number may take) are not defaults and
stay with the key they bound, in `schema.py`.
"""

from __future__ import annotations

from typing import Final

from mamoru.netaddr import LOCALHOST

# --- where the config is --------------------------------------------------------------------------
CONFIG_PATH: Final = "/etc/mamoru/config.yaml"
CONFIG_ENV: Final = "MAMORU_CONFIG"
# Where a validated config is kept for the next command (config/cache.py): for root (and
# mamoru.service, CacheDirectory=mamoru); other users: $XDG_CACHE_HOME/mamoru. The variable
# overrides both; set to nothing, no cache is kept.
CACHE_DIR: Final = "/var/cache/mamoru"
CACHE_ENV: Final = "MAMORU_CACHE_DIR"

# Well-known ACME directories a config may name instead of a URL.
DIRECTORIES: Final[dict[str, str]] = {
    "letsencrypt": "https://acme-v02.api.letsencrypt.org/directory",
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}

# --- acme: ----------------------------------------------------------------------------------------
ACME_DIRECTORY: Final = "letsencrypt"
ACME_CONTACT: Final[tuple[str, ...]] = ()  # no contact address: the CA gets none
# Orders in flight at once against one CA: fast for a vendor's many sites, gentle on the CA.
ACME_MAX_CONCURRENT_ORDERS: Final = 4
# Seconds for one HTTP exchange with the CA (connect + read).
ACME_TIMEOUT: Final = 30
# Seconds an order may take from creation to a downloaded certificate.
ACME_ORDER_TIMEOUT: Final = 300

# --- paths: ---------------------------------------------------------------------------------------
PATHS_STATE: Final = "/var/lib/mamoru"
PATHS_LIVE: Final = "/etc/mamoru/live"
PATHS_EVENT_LOG: Final = "/var/log/mamoru/events.jsonl"
# Rotate the event log in-process when it passes this size; keep this many old files.
PATHS_EVENT_LOG_MAX_BYTES: Final = 10 * 1024 * 1024
PATHS_EVENT_LOG_KEEP: Final = 5

# --- sites.<name>: --------------------------------------------------------------------------------
SITE_KEY: Final = "ec-p256"
CHALLENGE_TYPE: Final = "http-01"
# Where a listen or connect address without a host points (standalone, verify, metrics).
ADDRESS_HOST: Final = LOCALHOST
# Answering challenges on a non-loopback address must be asked for.
CHALLENGE_STANDALONE_PUBLIC: Final = False
# Seconds to wait until every authoritative nameserver serves an order's dns-01 records.
CHALLENGE_PROPAGATION_TIMEOUT: Final = 120
# Seconds a dns-01 hook command may run.
CHALLENGE_HOOK_TIMEOUT: Final = 60
CHALLENGE_HOOK_CLEANUP: Final[tuple[str, ...]] = ()  # no cleanup program: nothing is run
# Check the zone's NS set (as its primary serves it) unless nameservers are listed.
CHALLENGE_NAMESERVERS: Final[tuple[str, ...]] = ()
CHALLENGE_DNS01_NAMES: Final[tuple[str, ...]] = ()  # with http-01: no name by dns-01
SERVER_TYPE: Final = "none"
SERVER_MODE: Final = "site"
SERVER_LISTEN_HTTPS: Final = "443"
SERVER_LISTEN_HTTP: Final = "80"
SERVER_REDIRECT: Final = True
SERVER_HSTS: Final = 0  # no Strict-Transport-Security header
# Seconds to wait for the config test and the reload command.
SERVER_COMMAND_TIMEOUT: Final = 60
# Seconds to keep handshaking until every name serves the new certificate.
SERVER_VERIFY_TIMEOUT: Final = 10

# --- renewal: -------------------------------------------------------------------------------------
RENEWAL_CHECK_INTERVAL_HOURS: Final = 12
RENEWAL_RETRY_FIRST_SECONDS: Final = 60
RENEWAL_RETRY_MAX_SECONDS: Final = 6 * 3600
RENEWAL_PERMANENT_RETRY_SECONDS: Final = 12 * 3600
RENEWAL_JITTER_FRACTION: Final = 0.1

# --- alerts: --------------------------------------------------------------------------------------
ALERTS_AFTER_FAILURES: Final = 1
ALERTS_DAYS_LEFT: Final = 7
ALERTS_REMIND_HOURS: Final = 24
# The language of alert summaries: whoever reads the alert mail, not the daemon's locale.
ALERTS_LANGUAGE: Final = "en"
ALERT_LANGUAGES: Final = ("en", "ja")
EMAIL_PORT: Final = 587  # SMTP submission
EMAIL_STARTTLS: Final = True
EMAIL_TLS: Final = False  # implicit TLS from the first byte (SMTPS)
EMAIL_TLS_PORT: Final = 465  # SMTP submission over implicit TLS
# Seconds for one delivery of an alert (an SMTP session, a webhook POST).
ALERT_TIMEOUT: Final = 10

# --- check: ---------------------------------------------------------------------------------------
CHECK_AFTER_INSTALL: Final = True
CHECK_TIMEOUT: Final = 5.0  # seconds per connection
# The check after install also loads each name in a real headless Chromium (check/browser.py).
CHECK_BROWSER: Final = False

# --- fleet: (reporting to the vendor's collector; clinic defaults to the host name) ---------
FLEET_OUTBOX_DIR: Final = "fleet-outbox"  # the outbox: <paths.state>/fleet-outbox


def fleet_clinic() -> str:
    """fleet.clinic's default: this machine's host name (its first label)."""
    import socket

    return socket.gethostname().split(".")[0] or "clinic"



# Minutes between snapshots of every site (a site is also snapshot after its events).
FLEET_SNAPSHOT_MINUTES: Final = 60
# Minutes between pushes when there is nothing to send (the vendor's dead man's switch).
FLEET_HEARTBEAT_MINUTES: Final = 5
# The outbox keeps at most this many bytes; past it the oldest unsent records go.
FLEET_OUTBOX_MAX_BYTES: Final = 64 * 1024 * 1024
# Records per HTTPS request.
FLEET_BATCH: Final = 500
# Seconds for one push (connect + answer).
FLEET_TIMEOUT: Final = 20

# --- what a loaded config carries besides the keys ------------------------------------------------
WARNINGS: Final[tuple[str, ...]] = ()  # a config read without remarks has none

# --- the values some keys may take ----------------------------------------------------------------
KEY_TYPES: Final = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
CHALLENGE_TYPES: Final = ("http-01", "dns-01")
TSIG_ALGORITHMS: Final = ("hmac-sha256", "hmac-sha224", "hmac-sha384", "hmac-sha512")
SERVER_TYPES: Final = ("nginx", "apache", "command", "none")
SERVER_MODES: Final = ("site", "include")
