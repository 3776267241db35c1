"""Google accounts: persistent records, the atomic store, the pool, OAuth and the supervisor."""
