"""Setting mamoru up on a machine: `mamoru init` (setup/init.py) writes a first config.

May import `mamoru.config` (to check what it writes) and `mamoru.errors`, nothing else of
mamoru: it runs before anything is configured and only reads the machine (files, binaries,
`systemctl is-active`), so it must not depend on the ACME, storage or install parts.
"""
