"""One day of dose orders for a demo ward: plausible regimens, seeded, no real people."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import date, time

from controller.config import DemoConfig, Product
from controller.packing.orders import DoseOrder, pseudonym

# ATC code -> (units per dose, administration times as hours of the day)
REGIMENS: dict[str, tuple[int, tuple[int, ...]]] = {
    "N02BE01": (2, (8, 12, 17, 21)),  # paracetamol 1 g four times a day
    "C07AB02": (1, (8,)),
    "C03CA01": (1, (8, 12)),
    "B01AF02": (1, (8, 21)),
    "C10AA05": (1, (21,)),
    "A02BC01": (1, (8,)),
    "C09AA02": (1, (8,)),
    "A10BA02": (1, (8, 17)),
    "H03AA01": (1, (8,)),
    "C08CA01": (1, (8,)),
    "N05CF01": (1, (21,)),
    "H02AB06": (2, (8,)),
}


def demo_orders(
    demo: DemoConfig, packable: Sequence[Product], day: date, *, salt: str
) -> list[DoseOrder]:
    """Each patient gets two to five regimens of the packable products."""
    rng = random.Random(demo.seed)
    times = {t.hour: t for t in demo.administration_times}
    choices = [p for p in packable if p.atc in REGIMENS]
    orders = []
    for n in range(1, demo.patients + 1):
        patient = pseudonym(f"{demo.ward}-bed-{n:03d}", salt)
        for product in rng.sample(choices, rng.randint(2, min(5, len(choices)))):
            units, hours = REGIMENS[product.atc]
            at = tuple(times.get(h, time(h)) for h in hours if h in times)
            if not at:
                continue
            orders.append(DoseOrder(patient, demo.ward, product.gtin, units, at, day, day))
    return orders
