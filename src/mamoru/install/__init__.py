"""Putting a stored certificate in service: the transaction (write generated files, flip live,
config test, reload, verify per name, roll back on any failure), the nginx/Apache/command
installers, and the TLS proof that each name serves the new certificate.

    transaction  install(): the story, the rollback, and installer_for (which installer a site
                 gets; it sits above nginx and apache, which import the modules below)
    base         the Installer seam, CommandInstaller, the include-mode files of nginx/Apache
    nginx        nginx's server blocks and commands
    apache       Apache's virtual hosts, Listen guards and commands
    listen       listen addresses; what Apache already listens on (DUMP_INCLUDES)
    commands     running a server's commands; the default test/reload argv (systemd, systemd-run)
    files        mamoru's own generated files: header, ownership check, write/restore, quoting
    verify       the TLS handshake per name that proves what the server serves

Certificates are reached only through the Storage seam (storage.base.Storage, storage.lineage).
May import: config, errors, netaddr, storage, observe.events, check.tls (the probe stack).
Never protocol, challenges, renewal, pipeline or cli.
"""
