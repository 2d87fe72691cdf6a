"""`doseline bench`: measured performance of the ledger, the packers, the cabinets and
several controllers on one PostgreSQL ledger (docs/performance.md).

One module per measurement: `ledger`, `packers`, `cabinets`, `contention`. `run`
assembles the report, `child` is the process each phase runs in, `site` generates the
sites, and `simulators.fleet` is the simulators' own process (never imported here).
"""

PHASES = ("ledger", "packers", "cabinets", "contention", "console")
