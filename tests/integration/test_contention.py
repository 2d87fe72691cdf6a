"""Several controller processes on one PostgreSQL ledger, wanting more than there is.

Each worker is a process of its own with its own engine, as a controller is
(`controller.bench.contention`, the workers `doseline bench` runs). They reserve and
post pouch-sized needs of the same three products from the same small stock until
none is left. Demand exceeds stock, so the ledger must post exactly the stock and not
one unit more, refuse the rest for lack of stock only, and be left sound: no negative
balance, nothing reserved, no reservation open, and `verify_ledger` clean.

Nothing here is timed: the throughput is the bench's business (docs/performance.md).
"""

from __future__ import annotations

from collections import Counter

from controller.bench.contention import BINS, PRODUCTS, Stock, contend
from controller.ledger import Ledger
from controller.ledger.engine import make_engine

PROCESSES = 3
STOCK = Stock(units_per_lot=30)  # 60 units of each product, 180 in all


async def test_contending_processes_never_oversell(postgres_url: str) -> None:
    results, facts, _wall = await contend(postgres_url, PROCESSES, 60, STOCK)

    assert len(results) == PROCESSES
    assert all(r["ran_out"] for r in results), results  # demand went on past the stock
    assert all(r["reserve_and_post"] > 0 for r in results), results  # each one booked
    assert all(r["refused_insufficient_stock"] > 0 for r in results), results
    assert facts["refused_otherwise"] == []  # every refusal was for lack of stock

    # Exactly the stock was posted: never more, and nothing left behind.
    assert facts["posted_units_in_ledger"] == STOCK.total
    assert facts["posted_units_by_workers"] == STOCK.total
    assert facts["units_left"] == 0
    per_product: Counter[str] = Counter()
    for r in results:
        per_product.update(r["posted"])
    assert per_product == {gtin: STOCK.per_product for gtin in PRODUCTS}

    assert facts["negative_balances"] == 0
    assert facts["open_reservations"] == 0
    assert facts["verify_violations"] == []
    ledger = Ledger(make_engine(postgres_url))
    try:
        rows = [row for row in ledger.stock() if row.location in BINS]
        assert all(row.reserved == 0 for row in rows), rows
        assert sum(row.on_hand for row in rows) == 0, rows
    finally:
        ledger.engine.dispose()
