"""The config: YAML file -> a typed, validated, fully defaulted `Settings`.

What lives here, in the order a config goes through it:
  load.py       entry points: find_config_path, load_config, load_config_text
  yamlnodes.py  YAML composed with line numbers; aliases, anchors, merge keys, tags refused
  fields.py     the typed field reader: one mapping, FILE:LINE problems, unknown keys
  secrets.py    secrets inline or in files (mode checks, FIFOs, /dev/zero, size caps)
  schema.py     the sections (acme, paths, renewal, alerts, metrics, check, sites) -> Settings
  names.py      domain and site name validation (IDNA, mixed scripts, path safety)
  model.py      the frozen dataclasses the rest of mamoru reads
  defaults.py   every default value: the only place a default lives

What config/ may import: `mamoru.errors` (ConfigError, ConfigProblem), `mamoru.netaddr`
(address parsing) and itself; nothing else of mamoru's, and nothing above it
(tests/unit/test_import_rules.py fails on such an import). Every other part may import config/.
"""

from typing import TYPE_CHECKING, Any

from mamoru.config.model import Settings, Site

if TYPE_CHECKING:
    from mamoru.config.load import find_config_path, load_config, load_config_text

_LOAD = frozenset({"find_config_path", "load_config", "load_config_text"})


def __getattr__(name: str) -> Any:
    # The loader (and YAML with it) is imported on first use: importing config.model, as
    # every part does, must not load it (the resident daemon holds Settings it never parses).
    if name in _LOAD:
        from mamoru.config import load

        return getattr(load, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["Settings", "Site", "find_config_path", "load_config", "load_config_text"]
