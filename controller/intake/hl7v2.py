"""HL7 v2 RDE^O11 (pharmacy/treatment encoded order) intake.

A small parser of our own rather than a library: intake reads five segment types, and
it must report every problem as a segment-field path ("RXE-3") with the value, never
raise anything else, and never keep a clear patient identifier. The delimiters come
from MSH-1 and MSH-2; escape sequences are decoded only in the fields that are read.
Paths follow the HAPI terser style: `TQ1(1)-4(2).1` is the second TQ1 segment, field 4,
third repetition, first component; an omitted index is the first one.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, time
from decimal import Decimal

from controller.config import Product
from controller.intake.common import (
    Catalogue,
    Code,
    Collector,
    IntakeError,
    Strength,
    check_period,
    check_size,
    check_times,
    check_units,
    check_ward,
    is_count_unit,
    make_order,
    parse_number,
    resolve_product,
)
from controller.packing.orders import DoseOrder, pseudonym

MESSAGE_TYPE = ("RDE", "O11")
GTIN_SYSTEMS = {"GTIN"}
ATC_SYSTEMS = {"ATC", "WC"}  # WC: WHO ATC in HL7 table 0396
# Repeat patterns (TQ1-3) that mean "every day"; anything else (Q1W, QOD, Q2D, ...) is
# refused, since a DoseOrder is packed every day of its period.
DAILY_PATTERNS = {"QD", "Q1D", "BID", "TID", "QID", "QAM", "QPM", "QHS", "QNOON"} | {
    f"Q{n}H" for n in (1, 2, 3, 4, 6, 8, 12, 24)
}
CHARSETS = {
    "": "utf-8",  # the standard's default is ASCII, of which UTF-8 is a superset
    "ASCII": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "8859/1": "latin-1",
    "8859/15": "iso8859-15",
}

_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_DTM = re.compile(
    r"^(\d{4})(\d{2})(\d{2})(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,4})?)?)?)?(?:[+-]\d{4})?$"
)
_TM = re.compile(r"^([01]\d|2[0-3])([0-5]\d)(?:([0-5]\d)(?:\.(\d{1,4}))?)?$")
_TERMINATOR = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Delimiters:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str | None = None


@dataclass
class Segment:
    """One segment; `fields[n]` is field n as sent (MSH-1 is the field separator)."""

    name: str
    fields: list[str]
    delimiters: Delimiters
    path: str  # how problems name it: "RXE", "TQ1(1)", "ORDER(1)/RXE"

    def ref(self, n: int, component: int | None = None, repetition: int = 0) -> str:
        text = f"{self.path}-{n}" + (f"({repetition})" if repetition else "")
        return text + (f".{component}" if component else "")

    def raw(self, n: int) -> str:
        return self.fields[n] if 0 < n < len(self.fields) else ""

    def repeats(self, n: int) -> int:
        raw = self.raw(n)
        if self.name == "MSH" and n <= 2:
            return 1
        return len(raw.split(self.delimiters.repetition)) if raw else 0

    def text(
        self, n: int, component: int = 1, repetition: int = 0, c: Collector | None = None
    ) -> str | None:
        """Field n, repetition, component (first subcomponent), unescaped and stripped;
        "" when absent. None when the escapes are broken (reported to `c`, or raised as
        IntakeError without one)."""
        d = self.delimiters
        raw = self.raw(n)
        if self.name == "MSH" and n <= 2:
            return raw
        reps = raw.split(d.repetition)
        if repetition >= len(reps):
            return ""
        comps = reps[repetition].split(d.component)
        if component > len(comps):
            return ""
        part = comps[component - 1].split(d.subcomponent)[0]
        where = self.ref(n, component, repetition)
        own = c is None
        col = c if c is not None else Collector("HL7 v2 message")
        value = _unescape(part, d, where, col)
        if own:
            col.raise_if_any()
        return None if value is None else value.strip()


def _unescape(raw: str, d: Delimiters, where: str, c: Collector) -> str | None:
    if d.escape not in raw:
        return raw
    out: list[str] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch != d.escape:
            out.append(ch)
            i += 1
            continue
        end = raw.find(d.escape, i + 1)
        if end < 0:
            c.add(where, raw, f"escape sequence starting at {i + 1} is not closed")
            return None
        seq = raw[i + 1 : end]
        simple = {
            "F": d.field,
            "S": d.component,
            "T": d.subcomponent,
            "R": d.repetition,
            "E": d.escape,
            "H": "",
            "N": "",
            ".br": "\n",
        }
        if d.truncation is not None:
            simple["P"] = d.truncation
        if seq in simple:
            out.append(simple[seq])
        elif seq.startswith("X") and re.fullmatch(r"X(?:[0-9A-Fa-f]{2})+", seq):
            data = bytes.fromhex(seq[1:])
            try:
                out.append(data.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(data.decode("latin-1"))
        else:
            shown = d.escape + seq + d.escape
            c.add(where, raw, f"unknown escape sequence {shown}")
            return None
        i = end + 1
    return "".join(out)


@dataclass
class Hl7Message:
    """A parsed message: its delimiters and segments in order."""

    delimiters: Delimiters
    segments: list[Segment]

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    def first(self, name: str) -> Segment | None:
        found = self.all(name)
        return found[0] if found else None


def parse_message(payload: str | bytes | bytearray) -> Hl7Message:
    """The segments of any HL7 v2 message (no RDE rules); IntakeError if it has no
    usable MSH or a line is not a segment."""
    c = Collector("HL7 v2 message")
    text = _decode(payload, c) if not isinstance(payload, str) else payload
    msg = _split(text, c) if text is not None else None
    c.raise_if_any()
    assert msg is not None
    return msg


def _decode(data: bytes | bytearray, c: Collector) -> str | None:
    """Bytes to text in the character set MSH-18 names (UTF-8 when it names none)."""
    data = bytes(data)
    head = _TERMINATOR.split(data[:4096].decode("latin-1"), maxsplit=1)[0].lstrip("\ufeff\x0b")
    parts = head.split(head[3]) if head.startswith("MSH") and len(head) > 4 else []
    charset = ""
    if len(parts) > 17:
        rep = parts[1][1] if len(parts[1]) > 1 else "~"
        charset = parts[17].split(rep)[0].strip().upper()
    codec = CHARSETS.get(charset)
    if codec is None:
        c.add(
            "MSH-18",
            charset,
            f"character set not supported ({', '.join(k for k in CHARSETS if k)})",
        )
        return None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        c.add("payload", f"byte {exc.start}", f"is not valid {charset or 'UTF-8'} text")
        return None


def _split(text: str, c: Collector) -> Hl7Message | None:
    # MLLP framing (VT ... FS CR) and a byte-order mark are tolerated around the message.
    text = text.lstrip("\ufeff\x0b\r\n\t ").rstrip("\x1c\r\n\t ")
    lines = [line for line in _TERMINATOR.split(text) if line.strip()]
    if not lines or not lines[0].startswith("MSH"):
        c.add("MSH", lines[0][:3] if lines else None, "missing: a message starts with MSH")
        return None
    msh = lines[0]
    if len(msh) < 8:
        c.add("MSH-2", msh[3:], "missing: the field separator and four encoding characters")
        return None
    fs = msh[3]
    parts = msh.split(fs)
    enc = parts[1]
    if fs.isalnum() or fs.isspace():
        c.add("MSH-1", fs, "is not a usable field separator")
        return None
    if (
        not 4 <= len(enc) <= 5
        or len(set(enc)) != len(enc)
        or any(ch.isalnum() or ch.isspace() for ch in enc)
    ):
        c.add(
            "MSH-2",
            enc,
            "must be 4 (or 5) distinct symbols: component, repetition, escape, "
            "subcomponent[, truncation]",
        )
        return None
    d = Delimiters(fs, enc[0], enc[1], enc[2], enc[3], enc[4] if len(enc) == 5 else None)
    segments: list[Segment] = []
    seen: Counter[str] = Counter()
    for number, line in enumerate(lines, start=1):
        name = line[:3]
        if not _SEGMENT_NAME.match(name) or (len(line) > 3 and line[3] != fs):
            c.add(
                f"segment {number}",
                line[:3],
                "is not an HL7 segment (3 capitals, then a field separator)",
            )
            continue
        if name == "MSH" and number > 1:
            c.add(f"segment {number}", name, "a second MSH: one message per payload")
            continue
        fields = line.split(fs)
        if name == "MSH":
            fields = ["MSH", fs, *fields[1:]]
        occurrence = seen[name]
        seen[name] += 1
        segments.append(
            Segment(name, fields, d, name if not occurrence else f"{name}({occurrence})")
        )
    return Hl7Message(d, segments)


# --- RDE^O11 -------------------------------------------------------------------------


@dataclass
class _Order:
    orc: Segment
    rxe: Segment | None = None
    tq1s: list[Segment] = field(default_factory=list)
    prefix: str = ""


@dataclass(frozen=True)
class _Settings:
    catalogue: Catalogue
    salt: str
    default_ward: str | None
    today: date


def parse_hl7v2(
    payload: str | bytes | bytearray,
    *,
    catalogue: Catalogue,
    salt: str,
    default_ward: str | None = None,
    today: date,
) -> list[DoseOrder]:
    """DoseOrders from one RDE^O11 message (one per TQ1 of each order); all or nothing."""
    c = Collector("HL7 v2 RDE^O11")
    s = _Settings(catalogue, salt, default_ward, today)
    orders: list[DoseOrder] = []
    if check_size(payload, c):
        text = _decode(payload, c) if not isinstance(payload, str) else payload
        msg = _split(text, c) if text is not None else None
        if msg is not None:
            orders = _message(msg, c, s)
    c.raise_if_any()
    return orders


@dataclass(frozen=True)
class _Planned:
    """One TQ1's worth of an order, checked and ready to become a DoseOrder."""

    tq1: Segment
    gtin: str
    units: int
    times: tuple[time, ...]
    start: date
    end: date


def _message(msg: Hl7Message, c: Collector, s: _Settings) -> list[DoseOrder]:
    msh = msg.segments[0]
    kind = (msh.text(9, 1, c=c), msh.text(9, 2, c=c))
    if kind != MESSAGE_TYPE:
        c.add(
            "MSH-9", msh.raw(9), "message type must be RDE^O11 (pharmacy/treatment encoded order)"
        )
        return []
    patient = _patient(msg, c, s)
    c.patient = patient
    ward = _ward(msg, c, s)
    groups = _orders(msg, c)
    planned: list[_Planned] = []
    for group in groups:
        planned += _order(group, c, s)
    _overlaps(planned, c)
    if c.count or patient is None or ward is None:
        return []
    out = []
    for p in planned:
        order = make_order(c, p.tq1.path, patient, ward, p.gtin, p.units, p.times, p.start, p.end)
        if order is not None:
            out.append(order)
    return out


def _overlaps(planned: list[_Planned], c: Collector) -> None:
    """The same product at the same time on the same day from two TQ1s is a duplicate."""
    for k, p in enumerate(planned):
        for q in planned[:k]:
            if p.gtin != q.gtin or p.start > q.end or q.start > p.end:
                continue
            for at in sorted(set(p.times) & set(q.times)):
                c.add(
                    p.tq1.ref(4),
                    at.strftime("%H%M"),
                    f"same product and time as {q.tq1.path} on overlapping days",
                )


def _patient(msg: Hl7Message, c: Collector, s: _Settings) -> str | None:
    """Pseudonym of PID-3's first identifier (CX.1), taken as soon as it is read."""
    pids = msg.all("PID")
    if not pids:
        c.add("PID", None, "missing segment: the patient is required")
        return None
    if len(pids) > 1:
        c.add(pids[1].path, None, "one patient per message")
    pid = pids[0]
    raw = pid.raw(3).split(pid.delimiters.repetition)[0].split(pid.delimiters.component)[0]
    clear = pid.text(3, 1, c=c)
    if clear is None:
        return None
    if not clear:
        c.add("PID-3", None, "missing: the patient identifier is required")
        return None
    alias = pseudonym(clear, s.salt)
    c.hide(clear, alias)
    c.hide(raw.strip(), alias)
    return alias


def _ward(msg: Hl7Message, c: Collector, s: _Settings) -> str | None:
    """PV1-3.1 (point of care), else the configured default ward."""
    pv1s = msg.all("PV1")
    if len(pv1s) > 1:
        c.add(pv1s[1].path, None, "one visit per message")
    ward = pv1s[0].text(3, 1, c=c) if pv1s else ""
    if ward is None:
        return None
    if ward:
        return check_ward(ward, "PV1-3.1", c)
    if s.default_ward is None:
        c.add("PV1-3.1", None, "missing: no point of care and no default ward configured")
        return None
    return check_ward(s.default_ward, "default_ward", c)


_ORDER_SEGMENTS = {"RXE", "TQ1"}


def _orders(msg: Hl7Message, c: Collector) -> list[_Order]:
    """ORC starts an order; the RXE and TQ1 segments after it belong to it."""
    groups: list[_Order] = []
    for seg in msg.segments[1:]:
        if seg.name == "ORC":
            groups.append(_Order(seg))
        elif seg.name in _ORDER_SEGMENTS:
            if not groups:
                c.add(seg.path, None, "appears before the first ORC")
            elif seg.name == "TQ1":
                groups[-1].tq1s.append(seg)
            elif groups[-1].rxe is not None:
                c.add(seg.path, None, "a second RXE in one order")
            else:
                groups[-1].rxe = seg
    if not groups:
        c.add("ORC", None, "missing segment: the message has no order")
    if len(groups) > 1:  # name segments within their order: ORDER(1)/TQ1(1)
        for k, group in enumerate(groups):
            group.prefix = f"ORDER({k})/"
            group.orc.path = f"{group.prefix}ORC"
            if group.rxe is not None:
                group.rxe.path = f"{group.prefix}RXE"
            for j, tq1 in enumerate(group.tq1s):
                tq1.path = f"{group.prefix}TQ1" + (f"({j})" if j else "")
    else:
        for j, tq1 in enumerate(groups[0].tq1s if groups else []):
            tq1.path = "TQ1" + (f"({j})" if j else "")
    return groups


_CONTROL_REASONS = {
    "CA": "cancellations are not handled by intake: cancel the order in the pharmacy system",
    "DC": "discontinuations are not handled by intake: stop the order in the pharmacy system",
    "XO": "changes are not handled by intake: send the changed order as a new order (NW)",
    "RP": "replacements are not handled by intake: send the new order as NW",
}


def _order(group: _Order, c: Collector, s: _Settings) -> list[_Planned]:
    before = c.count
    orc = group.orc
    control = orc.text(1, c=c)
    if control is not None and control != "NW":
        reason = _CONTROL_REASONS.get(control, "only new orders (NW) are accepted")
        c.add(orc.ref(1), control or None, reason if control else "missing: " + reason)
    rxe = group.rxe
    if rxe is None:
        c.add(f"{group.prefix}RXE", None, "missing segment: the order has no RXE")
        return []
    strength = _strength(rxe, c)
    product = resolve_product(
        s.catalogue,
        _codes(rxe, c),
        strength,
        c,
        field=rxe.ref(2),
        strength_field=rxe.ref(25),
        value=rxe.raw(2) or None,
    )
    dose, units = _dose(rxe, c)
    _dose_units(rxe, c, product)
    if not group.tq1s:
        c.add(
            f"{group.prefix}TQ1", None, "missing segment: administration times (TQ1-4) are required"
        )
        return []
    planned: list[_Planned] = []
    for tq1 in group.tq1s:
        timing = _timing(tq1, orc, dose, c, s)
        if timing is not None and product is not None and units is not None:
            planned.append(_Planned(tq1, product.gtin, units, *timing))
    return planned if c.count == before else []


def _codes(rxe: Segment, c: Collector) -> list[Code]:
    """RXE-2 (CWE): identifier^text^system, and the alternate triplet in components 4-6."""
    codes = []
    for first in (1, 4):
        value, text, system = (rxe.text(2, first + k, c=c) for k in range(3))
        if value is None or text is None or system is None or not value:
            continue
        system = system.upper()
        if system in GTIN_SYSTEMS:
            codes.append(Code("gtin", value, rxe.ref(2, first), text))
        elif system in ATC_SYSTEMS:
            codes.append(Code("atc", value.upper(), rxe.ref(2, first), text))
    return codes


def _strength(rxe: Segment, c: Collector) -> Strength | None:
    """RXE-25 give strength with RXE-26 units, when sent."""
    text = rxe.text(25, c=c)
    if not text:
        return None
    amount = parse_number(text)
    if amount is None or amount <= 0:
        c.add(rxe.ref(25), text, "is not a positive number")
        return None
    unit = rxe.text(26, 1, c=c) or rxe.text(26, 2, c=c)
    if not unit:
        c.add(rxe.ref(26), None, "missing: a strength needs its unit")
        return None
    return Strength.of(amount, unit)


def _dose(rxe: Segment, c: Collector) -> tuple[Decimal | None, int | None]:
    """RXE-3 (give amount minimum); RXE-4 (maximum) must be absent or the same."""
    text = rxe.text(3, c=c)
    if text is None:
        return None, None
    if not text:
        c.add(rxe.ref(3), None, "missing: the dose is required")
        return None, None
    value = parse_number(text)
    if value is None:
        c.add(rxe.ref(3), text, "is not a number")
        return None, None
    units = check_units(value, rxe.ref(3), c)
    top = rxe.text(4, c=c)
    if top:
        most = parse_number(top)
        if most is None:
            c.add(rxe.ref(4), top, "is not a number")
        elif most != value:
            c.add(rxe.ref(4), top, f"a dose range ({text} to {top}) cannot be packed")
    return value, units


def _dose_units(rxe: Segment, c: Collector, product: Product | None) -> None:
    """RXE-5 must name a count of dosage units (TAB, CAP, ...), never mg or ml."""
    code, text = rxe.text(5, 1, c=c), rxe.text(5, 2, c=c)
    if code is None or text is None:
        return
    if not code and not text:
        c.add(rxe.ref(5), None, "missing: the dose needs a unit (tablet, capsule, ...)")
        return
    for k, unit in ((1, code), (2, text)):
        if unit and not is_count_unit(unit, product):
            c.add(
                rxe.ref(5, k),
                unit,
                "is not a count of dosage units (tablet, capsule, ...): "
                "doses by mass or volume are not packed",
            )
            return


def _timing(
    tq1: Segment, orc: Segment, dose: Decimal | None, c: Collector, s: _Settings
) -> tuple[tuple[time, ...], date, date] | None:
    """Times (TQ1-4) and period (TQ1-7..TQ1-8, or the day of ORC-9) of one TQ1; the
    repeat pattern must be daily and the priority not PRN."""
    before = c.count
    quantity = tq1.text(2, 1, c=c)
    if quantity:
        amount = parse_number(quantity)
        if amount is None or (dose is not None and amount != dose):
            c.add(tq1.ref(2, 1), quantity, "conflicts with the dose in RXE-3")
    for r in range(tq1.repeats(3)):
        pattern = tq1.text(3, 1, r, c=c)
        if pattern and pattern.upper() not in DAILY_PATTERNS:
            c.add(
                tq1.ref(3, 1, r),
                pattern,
                "is not an every-day pattern: only daily orders are packed",
            )
    for r in range(tq1.repeats(9)):
        if (tq1.text(9, 1, r, c=c) or "").upper() == "PRN":
            c.add(tq1.ref(9, 1, r), "PRN", "as-needed (PRN) doses are not packed")
    parsed: list[tuple[str, time | None]] = []
    for r in range(tq1.repeats(4)):
        text = tq1.text(4, 1, r, c=c)
        if text is None:
            parsed.append((tq1.ref(4, None, r), None))
        elif text:
            parsed.append((tq1.ref(4, None, r), _tm(text, tq1.ref(4, None, r), c)))
    if not parsed:
        c.add(tq1.ref(4), None, "missing: explicit administration times are required")
    times = check_times(parsed, c) if parsed else None
    period = _period(tq1, orc, c, s)
    if c.count > before or times is None or period is None:
        return None
    return times, *period


def _tm(text: str, name: str, c: Collector) -> time | None:
    match = _TM.match(text)
    if not match:
        c.add(name, text, "is not an HL7 time (HHMM)")
        return None
    micro = 1 if match[4] and int(match[4]) else 0  # any fraction: reported as seconds
    return time(int(match[1]), int(match[2]), int(match[3] or 0), micro)


def _dtm(seg: Segment, n: int, c: Collector) -> tuple[date | None, str | None]:
    """(date, text as sent) of a DTM field; text None when absent, date None when absent
    or unreadable (reported)."""
    text = seg.text(n, 1, c=c)
    if not text:
        return None, (None if text == "" else seg.raw(n))
    match = _DTM.match(text)
    if not match:
        c.add(seg.ref(n), text, "is not an HL7 date (YYYYMMDD[HHMM[SS]])")
        return None, text
    try:
        return date(int(match[1]), int(match[2]), int(match[3])), text
    except ValueError:
        c.add(seg.ref(n), text, "is not a valid date")
        return None, text


def _period(tq1: Segment, orc: Segment, c: Collector, s: _Settings) -> tuple[date, date] | None:
    """TQ1-7 to TQ1-8; without both, the day of ORC-9 (date/time of the transaction)."""
    start, start_text = _dtm(tq1, 7, c)
    end, end_text = _dtm(tq1, 8, c)
    end_field = tq1.ref(8)
    if start_text is None and end_text is None:
        start, end_text = _dtm(orc, 9, c)
        end, end_field = start, orc.ref(9)
        if end_text is None:
            c.add(tq1.ref(7), None, "missing: no start (TQ1-7), end (TQ1-8) or order date (ORC-9)")
            return None
    elif start_text is None:
        c.add(tq1.ref(7), None, "missing: the first day is required")
        return None
    elif end_text is None:
        c.add(tq1.ref(8), None, "missing: open-ended orders are not packed: give the last day")
        return None
    if start is None or end is None:
        return None
    if not check_period(start, end, s.today, end_field, c, end_text):
        return None
    return start, end


__all__ = ["Delimiters", "Hl7Message", "IntakeError", "Segment", "parse_hl7v2", "parse_message"]
