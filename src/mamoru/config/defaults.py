"""Every default value of the config, in one table.

The loader fills these in; `config.example.yaml` documents them; nothing else in mamoru
hard-codes a default a user could want to change.
"""

from __future__ import annotations

from typing import Final

CONFIG_PATH: Final = "/etc/mamoru/config.yaml"
CONFIG_ENV: Final = "MAMORU_CONFIG"

# Well-known ACME directories a config may name instead of a URL.
DIRECTORIES: Final[dict[str, str]] = {
    "letsencrypt": "https://acme-v02.api.letsencrypt.org/directory",
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}

DEFAULTS: Final[dict[str, object]] = {
    "acme.directory": "letsencrypt",
    # Orders in flight at once against one CA: fast for a vendor's many sites, gentle on the CA.
    "acme.max_concurrent_orders": 4,
    # Seconds for one HTTP exchange with the CA (connect + read).
    "acme.timeout": 30,
    # Seconds an order may take from creation to a downloaded certificate.
    "acme.order_timeout": 300,
    "paths.state": "/var/lib/mamoru",
    "paths.live": "/etc/mamoru/live",
    "paths.event_log": "/var/log/mamoru/events.jsonl",
    # Rotate the event log in-process when it passes this size; keep this many old files.
    "paths.event_log_max_bytes": 10 * 1024 * 1024,
    "paths.event_log_keep": 5,
    "site.key": "ec-p256",
    "challenge.type": "http-01",
    "server.type": "none",
    "server.mode": "site",
    "server.listen.https": "443",
    "server.listen.http": "80",
    "server.redirect": True,
    "server.hsts": 0,
    # Seconds to wait for the config test and the reload command.
    "server.command_timeout": 60,
    # Seconds to keep handshaking until every name serves the new certificate.
    "server.verify_timeout": 10,
    "renewal.check_interval_hours": 12,
    "renewal.retry_first_seconds": 60,
    "renewal.retry_max_seconds": 6 * 3600,
    "renewal.permanent_retry_seconds": 12 * 3600,
    "renewal.jitter_fraction": 0.1,
    "alerts.after_failures": 1,
    "alerts.days_left": 7,
    "alerts.remind_hours": 24,
}

KEY_TYPES: Final = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
CHALLENGE_TYPES: Final = ("http-01",)
SERVER_TYPES: Final = ("nginx", "apache", "command", "none")
SERVER_MODES: Final = ("site", "include")
