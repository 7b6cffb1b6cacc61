"""Where certificates, keys and per-site state live: the Storage seam (base.py), a version's
plain data (lineage.py), crash-safe file writes (atomic.py) and the filesystem implementation
(filesystem.py).

May import: errors, clock, config.model. Nothing above it (no protocol, install, renewal,
pipeline or cli).
"""

from mamoru.storage.base import Storage
from mamoru.storage.filesystem import FileStorage, SiteLock
from mamoru.storage.lineage import CertVersion

__all__ = ["CertVersion", "FileStorage", "SiteLock", "Storage"]
