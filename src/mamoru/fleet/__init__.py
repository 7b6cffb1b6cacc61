"""The vendor's side of mamoru (the `fleet` extra): every clinic's renewals in one PostgreSQL.

- `db`: connecting, the versioned migrations (`migrations/NNNN_*.sql`), clinics' tokens and
  the page's users;
- `server`: `mamoru fleet serve`, the collector clinics push to over HTTPS, and the page;
- `query`: the fleet's state as `mamoru fleet status` and the page show it;
- `alerts`: the vendor's alerts (silent clinics, expiring sites, one digest per incident);
- `commands`: the `mamoru fleet ...` verbs.

Nothing on the clinic's side imports this package: the daemon stays light.
"""
