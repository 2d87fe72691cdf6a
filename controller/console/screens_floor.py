"""Screens for every role: the packing floor, the cabinets, stock lookup, and cover
against the one-month obligation (charts drawn server-side as inline SVG)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from controller.api.auth import Role
from controller.api.context import ApiContext
from controller.cabinets.poller import pocket_location
from controller.config import valid_gtin
from controller.console.web import context, page, refused, render, screen
from controller.ledger import reports
from controller.ledger.errors import LedgerError
from controller.packing.store import OPEN_STATES

router = APIRouter()

screen("/floor", "Packing floor", Role.VIEWER, "everyone")
screen("/cabinets", "Cabinets", Role.VIEWER, "everyone")
screen("/stock", "Stock lookup", Role.VIEWER, "everyone")
screen("/cover", "Cover", Role.VIEWER, "everyone")


# ----------------------------------------------------------------------- packing floor


async def _floor(ctx: ApiContext) -> list[dict[str, Any]]:
    jobs = await ctx.read(ctx.store.jobs, states=OPEN_STATES)
    by_packer = {j.packer: j for j in jobs if j.packer}
    machines = []
    packers = ctx.running.machines if ctx.running is not None else None
    for packer in ctx.site.packers:
        view = packers.packer(packer.name) if packers is not None else None
        state = view.state if view is not None else None
        job = by_packer.get(packer.name)
        total = len(job.job.pouches) if job is not None else 0
        good, rejected = (job.good, job.rejected) if job is not None else (0, 0)
        status = view.last_status if view is not None else None
        if job is not None and status is not None and status.job_id == job.job_id:
            # The machine's own job counters, live while it packs.
            good, rejected = status.job_pouches_good, status.job_pouches_rejected
        done = good + rejected
        machines.append(
            {
                "name": packer.name,
                "link": bool(view and view.link_ok),
                "state": state.name.title() if state is not None else None,
                "state_number": int(state) if state is not None else None,
                "job": job,
                "total": total,
                "done": done,
                "rejected": rejected,
                "percent": round(100 * done / total) if total else 0,
            }
        )
    return machines


@router.get("/floor")
async def floor(request: Request) -> Response:
    return await _page(request, "floor.html")


@router.get("/fragments/floor")
async def floor_fragment(request: Request) -> Response:
    return await _page(request, "_floor.html")


async def _page(request: Request, template: str) -> Response:
    session, response = await page(Role.VIEWER)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    if "floor" in template:
        values: dict[str, Any] = {"machines": await _floor(ctx)}
    else:
        values = {"cabinets": await _cabinets(ctx)}
    return render(request, template, session, **values)


# ---------------------------------------------------------------------------- cabinets


async def _cabinets(ctx: ApiContext) -> list[dict[str, Any]]:
    machines = ctx.running.machines if ctx.running is not None else None
    refills = await ctx.read(ctx.refills.open_refills)
    names = {p.gtin: p.name for p in ctx.site.catalogue}
    codes = [pocket_location(c.name, p.number) for c in ctx.site.cabinets for p in c.pockets]
    on_hand = await ctx.read(ctx.ledger.on_hand_many, codes) if codes else {}
    shown = []
    for cabinet in ctx.site.cabinets:
        link = machines.cabinet_link(cabinet.name) if machines is not None else None
        low = []
        for pocket in cabinet.pockets:
            where = pocket_location(cabinet.name, pocket.number)
            units = on_hand.get((where, pocket.gtin), 0)
            if units < pocket.min:
                low.append(
                    {
                        "number": pocket.number,
                        "name": names.get(pocket.gtin, pocket.gtin),
                        "units": units,
                        "min": pocket.min,
                        "max": pocket.max,
                    }
                )
        shown.append(
            {
                "name": cabinet.name,
                "ward": cabinet.ward,
                "link": link,
                "low": low,
                "refills": [r for r in refills if r.cabinet == cabinet.name],
                "names": names,
            }
        )
    return shown


@router.get("/cabinets")
async def cabinets(request: Request) -> Response:
    return await _page(request, "cabinets.html")


@router.get("/fragments/cabinets")
async def cabinets_fragment(request: Request) -> Response:
    return await _page(request, "_cabinets.html")


# ---------------------------------------------------------------------- stock lookup


@router.get("/stock")
async def stock(request: Request, product: str = "") -> Response:
    session, response = await page(Role.VIEWER)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    product = product.strip()[:100]
    matches = []
    if product:
        for p in ctx.site.catalogue:
            if product.lower() in p.name.lower() or product == p.gtin or product == str(p.article):
                matches.append(p)
        if not matches and product.isdigit():
            try:
                gtin = valid_gtin(product)
                matches = [p for p in ctx.site.catalogue if p.gtin == gtin]
            except ValueError:
                pass
    found = []
    today = datetime.now(UTC).date()
    for p in matches[:10]:
        try:
            lots = await ctx.read(ctx.ledger.stock, gtin=p.gtin)
        except LedgerError as exc:
            return refused(request, session, 422, str(exc))
        found.append({"product": p, "lots": lots, "today": today})
    return render(request, "stock.html", session, product=product, found=found)


# ------------------------------------------------------------------------------ cover


def bar_chart(
    rows: list[tuple[str, float | None]],
    *,
    mark: float | None,
    unit: str,
    top: float,
    label_prefix: str = "",
) -> dict[str, Any]:
    """Geometry of a horizontal bar chart: one bar per row, a mark line (the
    obligation), all in viewBox units; the template draws it as SVG."""
    height = 22
    label_w = 190
    width = 560
    scale = (width - label_w - 60) / top if top > 0 else 0
    bars = []
    for i, (label, value) in enumerate(rows):
        shown = min(value, top) if value is not None else 0
        bars.append(
            {
                "y": i * height + 4,
                "label": label,
                "value": value,
                "w": round(shown * scale, 1),
                "short": mark is not None and value is not None and value < mark,
                "none": value is None,
            }
        )
    return {
        "width": width,
        "height": len(rows) * height + 8,
        "label_w": label_w,
        "bars": bars,
        "mark_x": round(label_w + mark * scale, 1) if mark is not None else None,
        "unit": unit,
        "label_prefix": label_prefix,  # labels that are catalogue msgids after it
    }


@router.get("/cover")
async def cover(request: Request) -> Response:
    session, response = await page(Role.VIEWER)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    now = datetime.now(UTC)
    report = await ctx.read(reports.days_of_cover, ctx.ledger, now=now, obligation_days=30)
    summary = await ctx.read(reports.compliance_summary, ctx.ledger, now=now, obligation_days=30)

    def days(row: reports.CoverRow) -> float | None:
        return row.cover_days_90d if row.basis == "90d" else row.cover_days_30d

    rows = sorted(report.rows, key=lambda r: (days(r) is None, days(r) or 0))
    product_chart = bar_chart([(r.name, days(r)) for r in rows], mark=30, unit="d", top=90)
    category_chart = bar_chart(
        [
            (c.category, round(100 * c.share, 1) if c.share is not None else None)
            for c in summary.categories
        ],
        mark=100,
        unit="%",
        top=100,
        label_prefix="category:",
    )
    return render(
        request,
        "cover.html",
        session,
        report=report,
        summary=summary,
        rows=rows,
        days=days,
        product_chart=product_chart,
        category_chart=category_chart,
    )
