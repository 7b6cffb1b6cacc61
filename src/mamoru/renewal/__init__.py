"""When to renew and when to retry, as pure functions of plain values (no App, no I/O):
`policy` (the due time: ARI window or lifetime rule, never in a loop), `backoff` (the retry
table), `due` (a site's decision, its next check, and where a restarted daemon picks it up).

May import: clock, config.model, storage.lineage and storage.sitestate (plain data). Never
protocol, challenges, install, check, observe, service, pipeline, app or cli.
"""
