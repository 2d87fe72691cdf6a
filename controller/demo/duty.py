"""The demo's stock duty: the decisions a pharmacy takes around the one-month duty on
the demo day, booked through the same ledger calls as `doseline duty ...`.

- Before the day: the chief pharmacist reviews the exemption the site file declares
  (oxycodone, its level lowered to 14 days) and sets its next review; the region's
  preparedness list is imported from `config/preparedness.csv` (a target and a floor
  per product; the face masks start below their floor); the wholesaler's shortage
  notice for paracetamol 500 mg is registered, with the second supplier's paracetamol
  as the substitute, and paracetamol is rationed among the wards: a cap per ward and
  day, the ICU first and uncapped. The ward requisitions and the pocket refills of the
  day are cut to each ward's grant.
  The municipal emergency store's use of face masks last month is recorded as
  external use, so the masks' month is sized on the region's whole use.
- 13:00 to 16:00 (simulated): a short crisis period for protective equipment. While it
  lasts a mask below the month is information, and the mask below its preparedness
  floor is what matters; ending it is a decision of its own, audited like the start.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from controller.app import Controller
from controller.ledger import reports
from controller.ledger.schema import ward_requisition_lines

DUTY_PHARMACIST = "pharmacist:chief"
EXEMPT_GTIN = "07359990000136"  # oxycodone 5 mg: exempt by the site file, level 14 days
SCARCE_GTIN = "07359990000013"  # paracetamol 500 mg: the wholesaler's shortage notice
SUBSTITUTE_GTIN = "07359990000174"  # paracetamol 500 mg from the second supplier
MASK_GTIN = "07359990000211"  # surgical face masks: the crisis, and below their floor
CAP_PER_WARD_DAY = 200  # tablets of paracetamol per ward and day while rationed
PRIORITY_WARDS = ("ICU",)
PREPAREDNESS_FILE = Path(__file__).resolve().parents[2] / "config" / "preparedness.csv"
LIST_NAME = "Regional preparedness list 2027"
CRISIS_HOURS = (13.0, 16.0)
EXTERNAL_UNIT = "Municipal emergency store (MUNI)"
EXTERNAL_MASKS = 15_000  # masks the municipality's store used last month


@dataclass
class DutyDemo:
    controller: Controller
    say: Callable[[str], None]
    day_seconds: float
    clock: Callable[[], datetime]  # the simulated day's clock
    today: date
    stats: dict[str, Any] = field(default_factory=dict)

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await self.controller.aledger.run(fn, *args, **kwargs)

    async def before_the_day(self) -> None:
        led = self.controller.ledger
        reviewed = await self._run(
            led.review_exemption,
            EXEMPT_GTIN,
            review_date=self.today + timedelta(days=182),
            actor=DUTY_PHARMACIST,
            note="reviewed: the licence cap still holds; measures in place",
        )
        self.say(
            f"stock duty: exemption of {reviewed.name} reviewed by {DUTY_PHARMACIST}: "
            f"judged on {reviewed.level_days} days instead of 30 ({reviewed.measures.lower()}),"
            f" next review {reviewed.review_date}"
        )
        imported = await self._run(
            led.import_preparedness,
            PREPAREDNESS_FILE.read_text(encoding="utf-8"),
            list_name=LIST_NAME,
            actor=DUTY_PHARMACIST,
        )
        self.say(
            f"stock duty: preparedness list '{LIST_NAME}' imported from "
            f"{PREPAREDNESS_FILE.name}: {len(imported.added)} products with a target and a floor"
        )
        last_month = (self.today.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
        await self._run(
            led.record_external_use,
            MASK_GTIN,
            month=last_month,
            unit_name=EXTERNAL_UNIT,
            quantity=EXTERNAL_MASKS,
            actor=DUTY_PHARMACIST,
        )
        self.stats["external_use"] = {
            "unit": EXTERNAL_UNIT,
            "month": last_month,
            "product": "Surgical face mask type IIR",
            "quantity": EXTERNAL_MASKS,
        }
        self.say(
            f"stock duty: {EXTERNAL_UNIT} used {EXTERNAL_MASKS} face masks in {last_month}: "
            "the region's month is sized on its whole use"
        )
        shortage = await self._run(
            led.record_shortage,
            SCARCE_GTIN,
            notice_ref="NP-2027-014",
            supplier="NORDPHARM",
            expected_end=self.today + timedelta(days=21),
            substitutes=[SUBSTITUTE_GTIN],
            note="production stop at the manufacturer",
            actor=DUTY_PHARMACIST,
        )
        rule = await self._run(
            led.start_rationing,
            SCARCE_GTIN,
            cap_per_ward_day=CAP_PER_WARD_DAY,
            priority_wards=list(PRIORITY_WARDS),
            reason=f"shortage notice {shortage.notice_ref}",
            shortage_id=shortage.id,
            actor=DUTY_PHARMACIST,
        )
        self.stats["shortage"] = {
            "product": shortage.name,
            "notice": shortage.notice_ref,
            "supplier": shortage.supplier,
            "expected_end": shortage.expected_end.isoformat() if shortage.expected_end else None,
            "substitutes": [s.name for s in shortage.substitutes],
        }
        self.stats["rationing"] = {
            "rule": rule.id,
            "cap_per_ward_day": rule.cap_per_ward_day,
            "priority_wards": list(rule.priority_wards),
        }
        self.say(
            f"stock duty: shortage notice {shortage.notice_ref} for {shortage.name} until "
            f"{shortage.expected_end} (substitute: "
            f"{', '.join(s.name for s in shortage.substitutes)}); rationed at "
            f"{rule.cap_per_ward_day} tablets per ward and day, "
            f"{', '.join(rule.priority_wards)} first"
        )

    async def _at(self, hour: float) -> None:
        """Waits until the simulated time of day `hour` (0-24)."""
        now = self.clock()
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        elapsed = (now - midnight).total_seconds() * self.day_seconds / 86400
        await asyncio.sleep(max(0.0, self.day_seconds * hour / 24 - elapsed))

    async def crisis(self) -> None:
        """A short crisis period for protective equipment, and a look at the figures
        while it lasts."""
        led = self.controller.ledger
        start, end = CRISIS_HOURS
        await self._at(start)
        period = await self._run(
            led.start_crisis,
            starts_at=self.clock(),
            reason="regional decision RD-27-3: surge of respiratory infections",
            actor="regional crisis board",
            categories=["protective_equipment"],
        )
        self.say(
            f"stock duty: crisis period {period.id} for protective equipment from "
            f"{self._hhmm(period.starts_at)}: stock may be drawn below the month"
        )
        await self._at((start + end) / 2)
        during = await self._run(reports.compliance_summary, led.engine, now=self.clock())
        await self._at(end)
        ended = await self._run(
            led.end_crisis,
            period.id,
            ends_at=self.clock(),
            reason="regional decision RD-27-4: back to normal conditions",
            actor="regional crisis board",
        )
        self.say(
            f"stock duty: crisis period {ended.id} ended at {self._hhmm(ended.ends_at)} "
            f"by {ended.ended_by}"
        )
        masks = next(p for p in during.preparedness.listed if p.gtin == MASK_GTIN)
        self.stats["crisis"] = {
            "id": ended.id,
            "from": ended.starts_at.isoformat(),
            "to": ended.ends_at.isoformat() if ended.ends_at else None,
            "hours": f"{self._hhmm(ended.starts_at)}-{self._hhmm(ended.ends_at)}",
            "categories": list(ended.categories),
            "reason": ended.reason,
            "in_force_mid_period": [p.id for p in during.crisis],
            "below_month_in_crisis": sum(len(c.below_month_in_crisis) for c in during.categories),
            "masks_below_floor": masks.below_floor,
        }

    def _hhmm(self, at: datetime | None) -> str:
        return "-" if at is None else at.astimezone(self.clock().tzinfo).strftime("%H:%M")

    async def summary(self) -> dict[str, Any]:
        """The duty at the end of the day, for the summary and its JSON."""
        led = self.controller.ledger
        now = self.clock()
        cover = await self._run(reports.days_of_cover, led.engine, now=now)
        compliance = await self._run(reports.compliance_summary, led.engine, now=now)
        exempt = next(r for r in cover.rows if r.gtin == EXEMPT_GTIN)
        masks = next(r for r in cover.rows if r.gtin == MASK_GTIN)
        out_external = dict(self.stats.get("external_use", {}))
        out_external["internal_cover_days"] = masks.cover_days
        out_external["whole_cover_days"] = masks.whole_cover_days
        out_external["status"] = masks.status
        record = await self._run(led.exemption, EXEMPT_GTIN)
        draws = await self._run(led.ration_draws, gtin=SCARCE_GTIN)
        per_ward: dict[str, int] = defaultdict(int)
        for d in draws:
            per_ward[d.ward] += d.units
        cut = await self._run(self._rationed_lines)
        out = dict(self.stats)
        out["external_use"] = out_external
        out["exemption"] = {
            "product": record.name,
            "level_days": record.level_days,
            "measures": record.measures,
            "review_date": record.review_date.isoformat(),
            "reviewed_by": record.reviewed_by,
            "cover_days": exempt.cover_days,
            "status": exempt.status,
        }
        p = compliance.preparedness
        out["preparedness"] = {
            "list": LIST_NAME,
            "listed": p.products_listed,
            "below_floor": [
                {"product": x.name, "stock": x.stock, "floor": x.floor, "target": x.target}
                for x in p.listed
                if x.below_floor
            ],
        }
        rationing = dict(out.get("rationing", {}))
        rationing["granted_by_ward"] = dict(sorted(per_ward.items()))
        rationing["lines_cut"] = cut
        out["rationing"] = rationing
        out["compliance_share"] = compliance.share
        return {"stock_duty": out}

    def _rationed_lines(self) -> int:
        """Ward lines cut by the rationing (their reason says so)."""
        L = ward_requisition_lines
        with self.controller.ledger.engine.connect() as c:
            rows = c.execute(select(L.c.reason).where(L.c.reason.like("rationed%"))).all()
        return len(rows)
