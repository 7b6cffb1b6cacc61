"""The config: a typed model (model.py), its defaults (defaults.py), a strict loader (load.py)."""

from mamoru.config.load import find_config_path, load_config, load_config_text
from mamoru.config.model import Settings, Site

__all__ = ["Settings", "Site", "find_config_path", "load_config", "load_config_text"]
