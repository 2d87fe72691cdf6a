"""`doseline bench`: measured performance of the ledger, the packers, the cabinets,
several controllers on one PostgreSQL ledger and a day of ward supply
(docs/performance.md).

One module per measurement: `ledger`, `packers`, `cabinets`, `contention`,
`wardsupply`, `console` and `region_year` (the phase `region-year`). `run` assembles
the report, `child` is the process each phase runs in, `site` generates the sites,
and `simulators.fleet` is the simulators' own process (never imported here).
"""

PHASES = (
    "ledger",
    "packers",
    "cabinets",
    "contention",
    "wardsupply",
    "console",
    "region-year",
)
# Run only when asked for (`--only region-year`): a whole year takes many minutes.
ON_REQUEST = ("region-year",)
