"""mamoru as a long-running systemd service: the renewal daemon (APScheduler 3.x), the worker
process its runs of due sites happen in, and a dependency-free sd_notify client.

May import everything below the CLI (pipeline, app, observe, storage, renewal); never cli.
"""
