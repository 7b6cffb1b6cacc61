"""Where certificates, keys and per-site state live (see filesystem.py)."""

from mamoru.storage.filesystem import CertVersion, FileStorage, SiteLock

__all__ = ["CertVersion", "FileStorage", "SiteLock"]
