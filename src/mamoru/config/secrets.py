"""Secrets in the config: the EAB HMAC key, the SMTP password, the webhook secret.

Each is given inline (`hmac_key: ...`) or in a file (`hmac_key_file: /etc/mamoru/eab.key`),
never both. A secret file is read without trusting it: opened non-blocking (a FIFO must not hang
the loader), read only when it is a regular file and only up to 64 KiB (`/dev/zero` as a secret
file must not eat the memory), and must be non-empty UTF-8. A secret that every user can read
(in the config itself or in its file) is loaded with a warning that says how to fix it. The
value is wrapped in `Secret`, which never prints itself.
"""

from __future__ import annotations

import os
import stat

from mamoru.config.fields import Fields
from mamoru.config.model import Secret

_MAX_SECRET_BYTES = 64 * 1024


def read_secret(fields: Fields, key: str, file_key: str, file_mode: int | None
                ) -> Secret | None:
    """The secret given inline (`key`) or in a file (`file_key`) of `fields`; None when neither
    is given or the one given is unusable (the problem is recorded). `file_mode` is the config
    file's st_mode, when it was read from a file."""
    inline = fields.text(key, None)
    file_path = fields.path_value(file_key, None)
    if inline and file_path:
        fields.error(key, f"give {key} or {file_key}, not both")
        return None
    if inline:
        if file_mode is not None and file_mode & stat.S_IROTH:
            fields.problems.warn(fields.key_line(key), fields.child_path(key),
                                 "this config holds a secret and is readable by every user; "
                                 "run `chmod 600` on it or move the secret to " + file_key)
        return Secret(inline.strip())
    if file_path:
        return _read_secret_file(fields, file_key, file_path)
    return None


def _read_secret_file(fields: Fields, file_key: str, file_path: str) -> Secret | None:
    fields.problems.observe(file_path, content=True)  # before reading: a change shows
    try:
        fd = os.open(file_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            raw = handle.read(_MAX_SECRET_BYTES + 1) if stat.S_ISREG(mode) else b""
    except OSError as error:
        fields.error(file_key, f"cannot read {file_path}: {error.strerror}")
        return None
    if not stat.S_ISREG(mode):
        fields.error(file_key, f"{file_path} is not a regular file")
        return None
    if len(raw) > _MAX_SECRET_BYTES:
        fields.error(file_key, f"{file_path} is larger than 64 KiB (a secret file holds one line)")
        return None
    try:
        value = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        fields.error(file_key, f"{file_path} is not UTF-8 text")
        return None
    if not value:
        fields.error(file_key, f"{file_path} is empty")
        return None
    if mode & stat.S_IROTH:
        fields.problems.warn(fields.key_line(file_key), fields.child_path(file_key),
                             f"{file_path} holds a secret and is readable by every user; "
                             "chmod 600 it")
    return Secret(value)
