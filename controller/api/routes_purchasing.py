"""Purchasing over HTTP: the suppliers and their delivery reliability, purchase orders
made from the order proposal, their order files, deliveries booked against them
(goods-in) and the closing of an order. The same store as `doseline purchasing ...`
(docs/purchasing.md)."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError

from controller.api.auth import Role
from controller.api.context import ApiContext, Context, Pharmacist, Technician, Viewer, role_note
from controller.api.errors import ApiError, Problem, responses
from controller.api.models import Closed, Text, one_of
from controller.ledger import LedgerError
from controller.ledger.states import PurchaseLineStatus, PurchaseOrderStatus
from controller.purchasing import (
    PurchasingError,
    PurchasingStore,
    model,
    order_csv,
    parse_delivery_csv,
)
from controller.purchasing.store import MAX_NOTE as MAX_DELIVERY_NOTE

log = logging.getLogger("doseline.api")
router = APIRouter(prefix="/purchasing", tags=["purchasing"])

MAX_NUMBER = 40  # purchase_orders.number
MAX_SUPPLIER = 20  # suppliers.code
MAX_REASON = 200  # the audit trail keeps a reason of up to 200 characters
MAX_LOCATION = 100  # locations.code
MAX_DELIVERY_CHARS = 5_000_000  # tens of thousands of rows; more is a runaway sender

if TYPE_CHECKING:
    OrderStatusName = str
    OrderStatusFilter = str
    LineStatusName = str
else:
    OrderStatusName = one_of(PurchaseOrderStatus)
    OrderStatusFilter = one_of(PurchaseOrderStatus, ["all"])
    LineStatusName = one_of(PurchaseLineStatus)


# ----------------------------------------------------------------------------- models


class Supplier(BaseModel):
    code: str
    name: str
    lead_time_days: int = Field(description="days from order to delivery")
    products: int = Field(description="products ordered from this supplier")


class SupplierList(BaseModel):
    count: int
    suppliers: list[Supplier]


class SupplierReliability(BaseModel):
    supplier: str
    name: str
    orders: int = Field(description="purchase orders sent to the supplier")
    lines_due: int = Field(
        description="order lines settled (delivered or short) or past their expected date "
        "(cancelled lines do not count)"
    )
    lines_in_full: int = Field(description="due lines delivered in full")
    lines_on_time_in_full: int = Field(description="of those, delivered by the expected date")
    units_ordered: int = Field(description="units of the due lines")
    units_received: int = Field(description="units received on the due lines")
    lines_late: int = Field(description="due lines still open or back-ordered")
    mean_lead_days: float | None = Field(description="order to delivery, over deliveries")
    fill_rate: float | None = Field(description="units_received / units_ordered")
    otif: float | None = Field(description="lines_on_time_in_full / lines_due")
    in_full_rate: float | None = Field(description="lines_in_full / lines_due")


class SupplierReliabilityList(BaseModel):
    today: date = Field(description="the site's local date the figures are computed for")
    suppliers: list[SupplierReliability]


class PurchaseOrderLine(BaseModel):
    line_no: int
    gtin: str
    article: int
    name: str
    packs: int
    pack_size: int
    units: int = Field(description="packs x pack_size, in dispensing units")
    unit_price: Decimal = Field(description="SEK per unit, as a decimal string")
    received_units: int
    back_order_units: int
    short_units: int = Field(description="units the supplier will not deliver")
    open_units: int = Field(description="units still expected")
    status: LineStatusName


class PurchaseOrder(BaseModel):
    number: str
    supplier: str
    supplier_name: str
    status: OrderStatusName = Field(description="open, partial, complete or cancelled")
    created_at: datetime
    created_by: str
    expected_on: date = Field(description="the order date plus the supplier's lead time")
    closed_at: datetime | None
    note: str | None
    value: Decimal = Field(description="units x unit_price over the lines, SEK")
    lines: list[PurchaseOrderLine]

    @classmethod
    def of(cls, order: model.PurchaseOrder) -> PurchaseOrder:
        return cls(
            number=order.number,
            supplier=order.supplier,
            supplier_name=order.supplier_name,
            status=order.status,
            created_at=order.created_at,
            created_by=order.created_by,
            expected_on=order.expected_on,
            closed_at=order.closed_at,
            note=order.note,
            value=order.value,
            lines=[
                PurchaseOrderLine(
                    line_no=ln.line_no,
                    gtin=ln.gtin,
                    article=ln.article,
                    name=ln.name,
                    packs=ln.packs,
                    pack_size=ln.pack_size,
                    units=ln.units,
                    unit_price=ln.unit_price,
                    received_units=ln.received_units,
                    back_order_units=ln.back_order_units,
                    short_units=ln.short_units,
                    open_units=ln.open_units,
                    status=ln.status,
                )
                for ln in order.lines
            ],
        )


class PurchaseOrderList(BaseModel):
    count: int
    orders: list[PurchaseOrder]


class CreatePurchaseOrdersRequest(Closed):
    target_days: int | None = Field(
        default=None,
        ge=1,
        le=365,
        description="days of consumption the order should cover after delivery "
        "(default: the site's purchasing.target_days)",
    )
    supplier: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SUPPLIER,
        description="order only from this supplier (default: every supplier)",
    )
    note: str | None = Field(
        default=None,
        max_length=MAX_REASON,
        description="kept on the orders and as the audit trail's reason",
    )


class CreatedPurchaseOrders(BaseModel):
    count: int
    orders: list[PurchaseOrder]
    unassigned: list[str] = Field(
        description="GTINs the order proposal wants that have no supplier on file"
    )


class DeliveryRequest(Closed):
    note: str = Field(
        min_length=1,
        max_length=MAX_DELIVERY_NOTE,
        description="the supplier's delivery note number; a note is booked once per order",
    )
    csv: str = Field(
        min_length=1,
        max_length=MAX_DELIVERY_CHARS,
        description="the delivery file (docs/purchasing.md): `;`-separated, header first",
    )
    location: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_LOCATION,
        description="where rows that name no location are booked in "
        "(default: the site's receiving location)",
    )


class SubstituteProduct(BaseModel):
    gtin: str
    name: str
    supplier: str | None = Field(description="the supplier it is ordered from, if any")
    usable_units: int = Field(description="released, unexpired stock outside quarantine")


class DeliveryLineOutcome(BaseModel):
    line_no: int
    gtin: str
    name: str
    ordered: int
    delivered_now: int
    substituted_now: int = Field(description="of delivered_now, units of another product")
    received_total: int
    back_order: int = Field(description="units the supplier promises to deliver later")
    short_now: int = Field(description="units declared short by this delivery")
    status: LineStatusName
    substitutes: list[SubstituteProduct] = Field(
        description="products of the line's substitution group, when the line ends short"
    )


class ReceivedPack(BaseModel):
    gtin: str
    batch: str
    expiry: date
    serial: str
    location: str


class DeliveryReceipt(BaseModel):
    order: str
    note: str
    booked: bool = Field(description="false: this delivery note was booked before")
    order_status: OrderStatusName
    lines: list[DeliveryLineOutcome] = Field(description="empty when the note was booked before")
    units: int = Field(description="units booked in by this delivery note")
    warnings: list[str] = Field(description="lots inside the minimum shelf life")
    packs: list[ReceivedPack] = Field(description="serialised packs booked in")
    verification: dict[str, str] = Field(
        description="serial -> verified, `alert <code>: ...` or `not verified: ...`; "
        "empty without pack verification"
    )

    @classmethod
    def of(cls, r: model.Receipt) -> DeliveryReceipt:
        return cls(
            order=r.order,
            note=r.note,
            booked=r.booked,
            order_status=r.order_status,
            lines=[
                DeliveryLineOutcome(
                    line_no=o.line_no,
                    gtin=o.gtin,
                    name=o.name,
                    ordered=o.ordered,
                    delivered_now=o.delivered_now,
                    substituted_now=o.substituted_now,
                    received_total=o.received_total,
                    back_order=o.back_order,
                    short_now=o.short_now,
                    status=o.status,
                    substitutes=[
                        SubstituteProduct(
                            gtin=s.gtin,
                            name=s.name,
                            supplier=s.supplier,
                            usable_units=s.usable_units,
                        )
                        for s in o.substitutes
                    ],
                )
                for o in r.lines
            ],
            units=r.units,
            warnings=list(r.warnings),
            packs=[
                ReceivedPack(
                    gtin=p.gtin,
                    batch=p.batch,
                    expiry=p.expiry,
                    serial=p.serial,
                    location=p.location,
                )
                for p in r.packs
            ],
            verification=dict(r.verification),
        )


class ClosePurchaseOrderRequest(Closed):
    note: str = Field(
        min_length=1, max_length=MAX_REASON, description="why the order is closed (required)"
    )


# ----------------------------------------------------------------------------- helpers


def _store(ctx: ApiContext) -> PurchasingStore:
    if ctx.running is not None:
        return ctx.running.purchasing
    return PurchasingStore(ctx.ledger)


# "row 4: gtin: '0735...' is neither ...", "line 3: back_order: 200 is more than ...",
# "supplier: 'X' is not a listed supplier", "the delivery file has no rows"
_PROBLEM = re.compile(
    r"^(?:(?P<where>(?:row|line) \d+): )?(?:(?P<field>[a-z_]+(?: [a-z_]+)?): )?(?P<rest>.*)$",
    re.DOTALL,
)
_VALUE = re.compile(r"^(?:[A-Z]+ )?(?:'(?P<quoted>[^']*)'|(?P<bare>\d[\w.:-]*))(?=$|[\s,;)])")


def _problem(text: str, default_field: str, number: str | None) -> Problem:
    """One of a PurchasingError's problems with its field and value: a row of the
    delivery file is `row <n>.<column>` (n counts the header as row 1), an order line
    `line <n>[.<field>]`; the order itself (`number`) is `order`."""
    match = _PROBLEM.match(text)
    assert match is not None  # the pattern matches any text
    where, field, rest = match.group("where"), match.group("field"), match.group("rest")
    if field == "receiving location":  # the body's `location`, used for rows naming none
        where, field = None, "location"
    name = ".".join(p for p in (where, field) if p) or default_field
    found = _VALUE.match(rest)
    value = (
        (found.group("quoted") if found.group("quoted") is not None else found.group("bare"))
        if found
        else None
    )
    if name == "order" and value is None:
        value = number
    return Problem(field=name, value=value, message=rest)


def _refused(
    status: int, what: str, exc: LedgerError, default_field: str, number: str | None = None
) -> ApiError:
    """A refusal listing every problem, the first one's field and value on top. Only a
    PurchasingError's problems name rows and order lines; the ledger's own (a lot whose
    expiry differs from the recorded one) number its booking lines, which are neither:
    those are given whole, under `default_field`."""
    texts = list(getattr(exc, "problems", None) or [str(exc)])
    problems: list[Problem] = []
    for text in texts:
        if isinstance(exc, PurchasingError):
            p = _problem(text, default_field, number)
        else:
            p = Problem(field=default_field, message=text)
        if p not in problems:
            problems.append(p)
    first = problems[0]
    count = f"{len(texts)} problem{'s' if len(texts) != 1 else ''}"
    return ApiError(
        status,
        f"{what} refused ({count}): {'; '.join(texts)}",
        field=first.field,
        value=first.value,
        problems=problems,
    )


def _not_found(number: str) -> ApiError:
    return ApiError(404, f"no such purchase order: {number!r}", field="number", value=number)


async def _order(ctx: ApiContext, store: PurchasingStore, number: str) -> model.PurchaseOrder:
    try:
        return await ctx.read(store.order, number)
    except PurchasingError:
        raise _not_found(number) from None


Number = Annotated[
    Text, Path(min_length=1, max_length=MAX_NUMBER, description="PO-<yyyymmdd>-<supplier>-<nn>")
]


# ----------------------------------------------------------------------------- routes


@router.get(
    "/suppliers",
    summary="Suppliers",
    description="The site's active suppliers, by code, with their lead time and how many "
    "products are ordered from each. Role: viewer or above.",
    response_model=SupplierList,
    responses=responses(401, 403, 422, 503),
    openapi_extra=role_note(Role.VIEWER),
)
async def list_suppliers(ctx: Context, _user: Viewer) -> SupplierList:
    rows = await ctx.read(_store(ctx).suppliers)
    return SupplierList(
        count=len(rows),
        suppliers=[
            Supplier(code=r.code, name=r.name, lead_time_days=r.lead_time_days, products=r.products)
            for r in rows
        ],
    )


@router.get(
    "/suppliers/reliability",
    summary="Each supplier's delivery reliability",
    description="Per active supplier, over its order lines that are due (delivered, "
    "short, or past their expected date on the site's local date): lines in full and on "
    "time in full, units ordered and received, late lines, the mean lead time, and the "
    "rates fill_rate, otif and in_full_rate (null when nothing is due). "
    "Role: viewer or above.",
    response_model=SupplierReliabilityList,
    responses=responses(401, 403, 422, 503),
    openapi_extra=role_note(Role.VIEWER),
)
async def supplier_reliability(ctx: Context, _user: Viewer) -> SupplierReliabilityList:
    today = ctx.today()
    rows = await ctx.read(_store(ctx).reliability, today=today)
    return SupplierReliabilityList(
        today=today,
        suppliers=[
            SupplierReliability(
                supplier=r.supplier,
                name=r.name,
                orders=r.orders,
                lines_due=r.lines_due,
                lines_in_full=r.lines_in_full,
                lines_on_time_in_full=r.lines_on_time_in_full,
                units_ordered=r.units_ordered,
                units_received=r.units_received,
                lines_late=r.lines_late,
                mean_lead_days=r.mean_lead_days,
                fill_rate=r.fill_rate,
                otif=r.otif,
                in_full_rate=r.in_full_rate,
            )
            for r in rows
        ],
    )


@router.get(
    "/orders",
    summary="Purchase orders",
    description="Purchase orders, newest first: `open` (the default: open and partial), "
    "`partial`, `complete`, `cancelled` or `all`. Role: technician or above.",
    response_model=PurchaseOrderList,
    responses=responses(401, 403, 422, 503),
    openapi_extra=role_note(Role.TECHNICIAN),
)
async def list_orders(
    ctx: Context,
    _user: Technician,
    status: Annotated[
        OrderStatusFilter,
        Query(description="open (default: open and partial), partial, complete, cancelled, all"),
    ] = "open",
) -> PurchaseOrderList:
    orders = await ctx.read(_store(ctx).orders, status=None if status == "all" else status)
    return PurchaseOrderList(count=len(orders), orders=[PurchaseOrder.of(o) for o in orders])


@router.get(
    "/orders/{number}",
    summary="One purchase order, or its order file",
    description="The order with its lines. `format=csv` gives the order file sent to the "
    "supplier (`;`-separated, one row per line; docs/purchasing.md) as an attachment "
    "`<number>.csv`. An unknown number gives 404. Role: technician or above.",
    response_model=PurchaseOrder,
    responses={
        **responses(401, 403, 404, 422, 503),
        200: {"content": {"text/csv": {}}, "description": "the order (JSON) or its order file"},
    },
    openapi_extra=role_note(Role.TECHNICIAN),
)
async def get_order(
    ctx: Context,
    _user: Technician,
    number: Number,
    format: Annotated[Literal["json", "csv"], Query(description="json (default) or csv")] = "json",
) -> PurchaseOrder | Response:
    order = await _order(ctx, _store(ctx), number)
    if format == "csv":
        return Response(
            order_csv(order, ctx.site.site.name),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{order.number}.csv"'},
        )
    return PurchaseOrder.of(order)


@router.post(
    "/orders",
    summary="Create purchase orders from the order proposal",
    description="One order per supplier for what the order proposal says is missing, net "
    "of what is already on order, so ordering twice does not order the gap twice. "
    "`supplier` limits it to one supplier (an unknown code gives 422). The token's user "
    "is the buyer in the orders and the audit trail. 201 when orders were made, 200 when "
    "the proposal wanted nothing. Products without a supplier are listed under "
    "`unassigned`. Role: pharmacist or above.",
    response_model=CreatedPurchaseOrders,
    status_code=201,
    responses={
        200: {"model": CreatedPurchaseOrders, "description": "Nothing to order"},
        **responses(401, 403, 422, 503),
    },
    openapi_extra=role_note(Role.PHARMACIST),
)
async def create_orders(
    ctx: Context, user: Pharmacist, body: CreatePurchaseOrdersRequest, response: Response
) -> CreatedPurchaseOrders:
    note = body.note.strip() if body.note is not None else None
    target = body.target_days if body.target_days is not None else ctx.site.purchasing.target_days
    try:
        orders, unassigned = await ctx.write(
            _store(ctx).create_orders,
            now=ctx.ledger.clock(),
            actor=user.name,
            target_days=target,
            supplier=body.supplier,
            note=note or None,
        )
    except LedgerError as exc:
        raise _refused(422, "purchase orders", exc, "body") from None
    log.info(
        "api: %s created %d purchase order(s), %d product(s) without a supplier",
        user.name,
        len(orders),
        len(unassigned),
    )
    if not orders:
        response.status_code = 200
    return CreatedPurchaseOrders(
        count=len(orders), orders=[PurchaseOrder.of(o) for o in orders], unassigned=unassigned
    )


@router.post(
    "/orders/{number}/deliveries",
    summary="Book a delivery against a purchase order (goods-in)",
    description="Reads the delivery file, matches it against the order (partial "
    "deliveries, back orders, shortages, substitutes of the ordered product's group) and "
    "books it, all or nothing: a refused file gives 422 with every bad row and field "
    "listed, and nothing is booked. With a running controller whose site verifies packs, "
    "the serialised packs are verified after the booking. A delivery note is booked once: "
    "the same note again gives 200 with `booked: false` and changes nothing; 201 when "
    "booked. Role: technician or above.",
    response_model=DeliveryReceipt,
    status_code=201,
    responses={
        200: {"model": DeliveryReceipt, "description": "This delivery note was booked before"},
        **responses(401, 403, 404, 422, 503),
    },
    openapi_extra=role_note(Role.TECHNICIAN),
)
async def receive(
    ctx: Context, user: Technician, number: Number, body: DeliveryRequest, response: Response
) -> DeliveryReceipt:
    note = body.note.strip()
    if not note:
        raise ApiError(
            422, "note: the delivery note number is blank", field="note", value=body.note
        )
    store = _store(ctx)
    await _order(ctx, store, number)
    site = ctx.site
    what = f"delivery {note!r} for {number}"
    try:
        rows = await asyncio.to_thread(parse_delivery_csv, body.csv)
    except PurchasingError as exc:
        raise _refused(422, what, exc, "csv", number) from None
    location = body.location or site.receiving_location()
    shelf_life = site.ledger.min_shelf_life_days
    now = ctx.ledger.clock()
    running = ctx.running
    try:
        if running is not None:
            receipt = await running.goods_in.receive(
                store,
                number,
                note,
                rows,
                actor=user.name,
                now=now,
                location=location,
                min_shelf_life_days=shelf_life,
            )
        else:  # the ledger alone: no pack verification
            receipt = await ctx.write(
                store.receive,
                number,
                note,
                rows,
                actor=user.name,
                now=now,
                location=location,
                min_shelf_life_days=shelf_life,
            )
    except OperationalError as exc:
        log.error("api: %s: ledger: %s", what, type(exc.orig).__name__)
        raise ApiError(503, "the ledger database is unreachable or busy; try again") from None
    except LedgerError as exc:
        raise _refused(422, what, exc, "csv", number) from None
    if receipt.booked:
        log.info(
            "api: %s booked %s for %s: %d units, order %s",
            user.name,
            note,
            number,
            receipt.units,
            receipt.order_status,
        )
    else:
        response.status_code = 200
    return DeliveryReceipt.of(receipt)


@router.post(
    "/orders/{number}/close",
    summary="Close a purchase order",
    description="Ends the order with a reason (`note`, required): lines still open or "
    "back-ordered are cancelled. The order becomes `complete` when anything was "
    "received or declared short, else `cancelled`. An order already complete or "
    "cancelled gives 409; an unknown number 404. The token's user is the actor in the "
    "audit trail. Role: pharmacist or above.",
    response_model=PurchaseOrder,
    responses=responses(401, 403, 404, 409, 422, 503),
    openapi_extra=role_note(Role.PHARMACIST),
)
async def close_order(
    ctx: Context, user: Pharmacist, number: Number, body: ClosePurchaseOrderRequest
) -> PurchaseOrder:
    note = body.note.strip()
    if not note:
        raise ApiError(422, "note: say why the order is closed", field="note", value=body.note)
    store = _store(ctx)
    order = await _order(ctx, store, number)
    if order.status not in ("open", "partial"):
        raise ApiError(
            409, f"purchase order {number} is {order.status} already", field="number", value=number
        )
    try:
        closed = await ctx.write(
            store.close, number, actor=user.name, note=note, now=ctx.ledger.clock()
        )
    except LedgerError as exc:
        # Closed by someone else meanwhile: the order's status says so.
        current = await _order(ctx, store, number)
        if current.status not in ("open", "partial"):
            raise ApiError(
                409,
                f"purchase order {number} is {current.status} already",
                field="number",
                value=number,
            ) from None
        raise _refused(422, f"closing {number}", exc, "note", number) from None
    log.info("api: %s closed purchase order %s: %s", user.name, number, closed.status)
    return PurchaseOrder.of(closed)
