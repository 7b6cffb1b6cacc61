"""Challenge solvers: how mamoru proves to the CA that it controls a name (webroot and
standalone http-01). Solvers see plain values (`base.ChallengeTask`), never protocol types.

May import: config, errors, storage.atomic. Never protocol, install, renewal, pipeline or cli.
"""
