"""The entry points: find the config file, read it, and turn it into `Settings`, strictly.

Unknown keys are errors, and every problem is reported at once with its place, as
`FILE:LINE: path.to.key: message` (a `ConfigError` carries them all). The stages live next door:
`yamlnodes.py` composes the YAML keeping line numbers, `schema.py` reads the sections with the
typed reader of `fields.py`, `secrets.py` reads secret files, and `defaults.py` holds every
default.
"""

from __future__ import annotations

import os
from typing import Any

from mamoru.config import defaults as D
from mamoru.config.model import Settings
from mamoru.errors import ConfigError
from mamoru.i18n import N_

_MAX_BYTES = 1024 * 1024  # a clinic's config is a few kilobytes; refuse absurd input early


def find_config_path(explicit: str | None) -> str:
    """The config file to use: `--config`, else $MAMORU_CONFIG, else /etc/mamoru/config.yaml."""
    return explicit or os.environ.get(D.CONFIG_ENV) or D.CONFIG_PATH


def load_config(path: str, *, cached: bool = False) -> Settings:
    """Read and validate the config at `path`. Raises ConfigError listing every problem.

    `cached`: use the Settings kept from an earlier read when neither the file nor anything
    the loader looked at has changed since, and keep these for the next one (config/cache.py).
    Commands that read the config to act on it pass it; `mamoru check-config`, whose job is
    to read the file, does not."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_BYTES + 1)
            info = os.fstat(handle.fileno())
    except FileNotFoundError:
        raise _unreadable(path, N_("no such file (give one with --config FILE)")) from None
    except OSError as error:
        raise _unreadable(path, N_("cannot read: {why}"), why=error.strerror) from None
    if len(data) > _MAX_BYTES:
        raise _unreadable(path, N_("file is larger than 1 MiB"))
    if cached:
        from mamoru.config import cache

        kept = cache.read(path, data, info)
        if kept is not None:
            return kept
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _unreadable(path, N_("not UTF-8 text: {why}"), why=str(error)) from None
    settings, files = _validate(text, path, info.st_mode)
    if cached:
        cache.write(path, data, info, settings, files)
    return settings


def load_config_text(
    text: str, filename: str = "<config>", file_mode: int | None = None
) -> Settings:
    """Validate config `text` (named `filename` in messages; `file_mode` is the st_mode of the
    file it came from, for the warning about readable secrets). Raises ConfigError."""
    return _validate(text, filename, file_mode)[0]


def _validate(text: str, filename: str, file_mode: int | None
              ) -> tuple[Settings, dict[str, list[int | str] | None]]:
    """The Settings of config `text`, and the other files the loader looked at (with what
    they were then). Raises ConfigError."""
    # YAML and the schema are imported here, not with the module: a process that only holds
    # Settings (the resident daemon, service/worker.py) never loads them.
    from mamoru.config.schema import build
    from mamoru.config.yamlnodes import Problems, compose

    problems = Problems(filename)
    root = compose(text, problems)
    settings = None
    if root is not None:
        settings = build(root, problems, file_mode)
    if problems.errors:
        raise ConfigError(problems.errors)
    assert settings is not None
    return settings, problems.files


def _unreadable(path: str, message: str, /, **params: Any) -> ConfigError:
    """The error for a config file that cannot be read as text at all."""
    from mamoru.config.yamlnodes import Problems

    problems = Problems(path)
    problems.error(None, "", message, **params)
    return ConfigError(problems.errors)
