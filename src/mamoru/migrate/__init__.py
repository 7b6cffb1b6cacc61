"""Moving a server from another ACME client to mamoru (today: certbot, `mamoru import-certbot`).

certbot_state.py reads certbot's own files (renewal confs with configobj, live/ and archive/
symlinks, accounts/); plan.py maps a lineage to a mamoru site, pure; adopt.py changes things:
the backup, mamoru's store and account, the compatibility links in certbot's tree, certbot's
`autorenew = False`, and `undo`; config_writer.py writes the sites as mamoru config.

May import: errors, config (model, names, defaults), storage, protocol.keys and
protocol.account (to place the imported account where mamoru's account code looks). Never
install, renewal, service, observe, check, issuance, pipeline, app or cli: an import moves
files and writes config, it does not renew or deploy.
"""
