"""mamoru (守る, "to protect"): keeps a clinic's HTTPS certificates valid, unattended."""

__version__ = "0.1.0"
