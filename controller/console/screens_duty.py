"""The stock duty's morning screen (pharmacist): a crisis period in force and those of
the last 90 days, the preparedness list with the products below their floor first,
open shortage notices with their substitutes' free stock, the rationing rules in force
with today's grants per ward, licences expiring or expired within 30 days, and the
overdue exemption reviews. Its forms start and end a crisis period and record and
close a shortage notice, through the same ledger methods as `doseline duty crisis`
and `doseline duty shortage`, with the signed-in user as the actor."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from controller.api.auth import Role
from controller.api.context import ApiContext
from controller.console.web import PREFIX, act, context, field, page, refused, render, screen
from controller.ledger import LedgerError, UnknownEntity, reports
from controller.ledger.schema import PRODUCT_CATEGORIES

router = APIRouter()

screen("/duty", "Stock duty", Role.PHARMACIST, "pharmacist")

OBLIGATION_DAYS = 30  # the one-month obligation, as on the exemptions screen
CRISIS_HISTORY = timedelta(days=90)  # crisis periods shown: ended within this
LICENCE_WINDOW = timedelta(days=30)  # licences shown: valid_to within this of today


def _tz(ctx: ApiContext) -> ZoneInfo:
    return ZoneInfo(ctx.site.site.timezone)


def local_moment(text: str, name: str, tz: ZoneInfo) -> datetime | None:
    """A form's `YYYY-MM-DDTHH:MM` (the site's local time) as an aware UTC time; empty
    is None."""
    text = text.strip()
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{name}: {text[:30]!r} is not a date and time (YYYY-MM-DDTHH:MM)"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(UTC)


def _date(text: str, name: str) -> date | None:
    text = text.strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name}: {text[:20]!r} is not a date (YYYY-MM-DD)") from None


def _id(text: str, name: str) -> int:
    if not text.isdigit() or len(text) > 10:
        raise ValueError(f"{name}: {text[:20]!r} is not an id")
    return int(text)


def refusal(exc: LedgerError) -> tuple[int, str]:
    """The status and the text of a ledger refusal, the text naming the field and the
    value (a crisis overlap's own text names neither, so both are put in front)."""
    text = str(exc)
    if isinstance(exc, UnknownEntity) or getattr(exc, "kind", None) == "missing":
        return 404, text
    name = getattr(exc, "field", None)
    if name is not None and not text.startswith(f"{name}:"):
        text = f"{name}: {getattr(exc, 'value', '')}: {text}"
    conflict = bool(getattr(exc, "conflict", False))
    return (409 if conflict else 422), text


def _done(session_flash: list[tuple[str, str]], kind: str, text: str) -> Response:
    session_flash.append((kind, text))
    return RedirectResponse(f"{PREFIX}/duty", status_code=303)


@router.get("/duty")
async def duty(request: Request) -> Response:
    session, response = await page(Role.PHARMACIST)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    led = ctx.ledger
    tz = _tz(ctx)
    now = datetime.now(UTC)
    today = ctx.today()
    summary = await ctx.read(
        reports.compliance_summary, led, now=now, obligation_days=OBLIGATION_DAYS
    )
    periods = await ctx.read(led.crisis_periods, at=now)
    in_force = [p for p in periods if p.in_force]
    recent = [
        p
        for p in reversed(periods)
        if p.ends_at is None or _aware(p.ends_at) >= now - CRISIS_HISTORY
    ]
    listed = sorted(summary.preparedness.listed, key=lambda p: (not p.below_floor, p.name))
    shortages = await ctx.read(led.shortages, status="open", free_at=ctx.site.store.all_bins)
    rules = await ctx.read(led.rationing_rules)
    granted: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for draw in await ctx.read(led.ration_draws, day=today):
        granted[draw.rule_id][draw.ward] += draw.units
    licences = [
        x
        for x in await ctx.read(led.licences)
        if x.revoked_at is None and today - LICENCE_WINDOW <= x.valid_to <= today + LICENCE_WINDOW
    ]
    licences.sort(key=lambda x: (x.valid_to, x.number))

    def local(moment: datetime) -> str:
        """A ledger time (UTC) as the site's local time."""
        return _aware(moment).astimezone(tz).strftime("%Y-%m-%d %H:%M")

    return render(
        request,
        "duty.html",
        session,
        in_force=in_force,
        recent=recent,
        listed=listed,
        below_floor=sum(1 for p in listed if p.below_floor),
        shortages=shortages,
        rules=rules,
        granted={rid: dict(sorted(w.items())) for rid, w in granted.items()},
        licences=licences,
        today=today,
        overdue=summary.exemptions_review_overdue,
        local=local,
        wards={w.code: w.name for w in ctx.site.wards},
        products=[(p.gtin, p.name) for p in ctx.site.catalogue],
        categories=PRODUCT_CATEGORIES,
        now_local=datetime.now(tz).strftime("%Y-%m-%dT%H:%M"),
    )


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@router.post("/duty/crisis/start")
async def crisis_start(request: Request) -> Response:
    got = await act(request, Role.PHARMACIST)
    if isinstance(got, Response):
        return got
    session, form = got
    ctx = context(request)
    tz = _tz(ctx)
    try:
        starts_at = local_moment(field(form, "starts_at"), "starts_at", tz)
        ends_at = local_moment(field(form, "ends_at"), "ends_at", tz)
        period = await ctx.write(
            ctx.ledger.start_crisis,
            starts_at=starts_at or datetime.now(UTC),
            ends_at=ends_at,
            reason=field(form, "reason"),
            categories=[c for c in form.get("category", []) if c],
            gtins=[g.strip() for g in form.get("gtin", []) if g.strip()],
            actor=session.user.name,
        )
    except ValueError as exc:
        return refused(request, session, 422, str(exc))
    except LedgerError as exc:
        status, text = refusal(exc)
        return refused(request, session, status, text)
    return _done(session.flash, "crisis-start", str(period.id))


@router.post("/duty/crisis/end")
async def crisis_end(request: Request) -> Response:
    got = await act(request, Role.PHARMACIST)
    if isinstance(got, Response):
        return got
    session, form = got
    ctx = context(request)
    try:
        crisis_id = _id(field(form, "id"), "id")
        ends_at = local_moment(field(form, "ends_at"), "ends_at", _tz(ctx))
        period = await ctx.write(
            ctx.ledger.end_crisis,
            crisis_id,
            ends_at=ends_at,
            reason=field(form, "reason"),
            actor=session.user.name,
        )
    except ValueError as exc:
        return refused(request, session, 422, str(exc))
    except LedgerError as exc:
        status, text = refusal(exc)
        return refused(request, session, status, text)
    return _done(session.flash, "crisis-end", str(period.id))


@router.post("/duty/shortage/record")
async def shortage_record(request: Request) -> Response:
    got = await act(request, Role.PHARMACIST)
    if isinstance(got, Response):
        return got
    session, form = got
    ctx = context(request)
    gtin = field(form, "gtin").strip()
    try:
        if not gtin:
            raise ValueError("gtin: a product is needed")
        shortage = await ctx.write(
            ctx.ledger.record_shortage,
            gtin,
            notice_ref=field(form, "notice_ref"),
            supplier=field(form, "supplier") or None,
            expected_end=_date(field(form, "expected_end"), "expected_end"),
            substitutes=[s.strip() for s in form.get("substitute", []) if s.strip()],
            note=field(form, "note"),
            actor=session.user.name,
            today=ctx.today(),
        )
    except ValueError as exc:
        return refused(request, session, 422, str(exc))
    except LedgerError as exc:
        status, text = refusal(exc)
        return refused(request, session, status, text)
    return _done(session.flash, "shortage-record", f"{shortage.id} ({shortage.gtin})")


@router.post("/duty/shortage/close")
async def shortage_close(request: Request) -> Response:
    got = await act(request, Role.PHARMACIST)
    if isinstance(got, Response):
        return got
    session, form = got
    ctx = context(request)
    try:
        shortage_id = _id(field(form, "id"), "id")
        shortage = await ctx.write(ctx.ledger.close_shortage, shortage_id, actor=session.user.name)
    except ValueError as exc:
        return refused(request, session, 422, str(exc))
    except LedgerError as exc:
        status, text = refusal(exc)
        return refused(request, session, status, text)
    return _done(session.flash, "shortage-close", str(shortage.id))
