"""Hands planned jobs to packers.

A job goes to a packer whose calibrated canisters hold all its machine-packed products
and that can reach enough stock (its canisters plus the central store), the fastest
free one first. The claim is a conditional update in the database, so two controllers
on one ledger never run the same job. A job nothing can machine-pack is marked for
manual preparation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from controller.async_ledger import AsyncLedger
from controller.packing.planner import PackerOffer, PlannedJob, pick_packer
from controller.packing.runner import PackerRunner
from controller.packing.store import JobRecord, PackingStore

log = logging.getLogger("doseline.dispatch")
ACTOR = "controller"


class Dispatcher:
    def __init__(
        self,
        store: PackingStore,
        ledger: AsyncLedger,
        runners: Mapping[str, PackerRunner],
        *,
        poll_interval_s: float = 0.5,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.runners = runners
        self.poll_interval_s = poll_interval_s
        self.waiting: dict[str, str] = {}  # job id -> why it has no packer yet

    async def serve(self) -> None:
        while True:
            await self.dispatch()
            await asyncio.sleep(self.poll_interval_s)

    async def dispatch(self) -> int:
        """One round: every planned, unassigned job that a free packer can take gets
        one. Returns how many were handed over."""
        handed = 0
        for record in await self.ledger.run(self.store.jobs, states=("planned",)):
            if record.packer is not None:
                continue
            job = record.job
            if not job.packers:
                await self.ledger.run(
                    self.store.move,
                    job.job_id,
                    old="planned",
                    new="manual",
                    actor=ACTOR,
                    reason="no packer has a calibrated canister for its products: prepare by hand",
                )
                log.warning("job %s: nothing machine-packable, prepared by hand", job.job_id)
                continue
            offers = [
                await self._offer(self.runners[n], job) for n in job.packers if n in self.runners
            ]
            name = pick_packer(job, offers)
            if name is None:
                self._note_waiting(job, offers)
                continue
            if not await self.ledger.run(self.store.claim, job.job_id, name, actor=ACTOR):
                continue  # another controller took it
            self.waiting.pop(job.job_id, None)
            self.runners[name].inbox.put_nowait(
                JobRecord(
                    job=job,
                    state=record.state,
                    packer=name,
                    attempt=record.attempt,
                    baseline=record.baseline,
                    good=record.good,
                    rejected=record.rejected,
                    reason=record.reason,
                    updated_at=record.updated_at,
                )
            )
            handed += 1
        return handed

    async def _offer(self, runner: PackerRunner, job: PlannedJob) -> PackerOffer:
        stock: dict[str, int] = {}
        if runner.available:
            for gtin in job.units_by_gtin():
                stock[gtin] = await runner.reachable(gtin)
        return PackerOffer(runner.name, runner.config.pouches_per_minute, runner.available, stock)

    def _note_waiting(self, job: PlannedJob, offers: Sequence[PackerOffer]) -> None:
        needs = job.units_by_gtin()
        if not any(o.available for o in offers):
            why = "no able packer is free"
        else:
            short = sorted(
                g for o in offers if o.available for g, n in needs.items() if o.stock.get(g, 0) < n
            )
            why = f"not enough stock of {', '.join(short)}" if short else "waiting"
        if self.waiting.get(job.job_id) != why:
            self.waiting[job.job_id] = why
            if why != "no able packer is free":
                log.warning("job %s waits: %s", job.job_id, why)
