"""The printable delivery note that travels with a ward's delivery (HTML, printed from
any browser). It carries the note's barcode (`DN:<number>`, Code 128: the ward scans it
to confirm receipt) and each line's GS1 data: GTIN, batch and expiry, as the packs
carry them, so a recall can be traced to the shelf."""

from __future__ import annotations

import io
from html import escape
from zoneinfo import ZoneInfo

import barcode
from barcode.writer import SVGWriter

from controller.wardsupply.views import NoteView

NOTE_PREFIX = "DN:"


def note_barcode_svg(number: str) -> str:
    """The note's Code 128 barcode as inline SVG (no text line: it is printed beside)."""
    code = barcode.get("code128", NOTE_PREFIX + number, writer=SVGWriter())
    out = io.BytesIO()
    code.write(out, options={"module_height": 12.0, "write_text": False, "quiet_zone": 4.0})
    svg = out.getvalue().decode("utf-8")
    return svg[svg.index("<svg") :]  # inline: drop the XML prologue and doctype


def render_note_html(
    note: NoteView, *, site_name: str, timezone: str, room_name: str | None = None
) -> str:
    """A self-contained A4 page; every value from the ledger is escaped."""
    tz = ZoneInfo(timezone)
    rows = "\n".join(
        "<tr>"
        f"<td>{escape(x.name)}</td>"
        f"<td class=n>{escape(x.gtin)}</td>"
        f"<td>{escape(x.batch)}</td>"
        f"<td>{x.expiry:%Y-%m-%d}</td>"
        f"<td class=r>{x.units}</td>"
        f"<td class=r>{x.packs:g}</td>"
        f"<td class=n>{escape(x.gs1)}</td>"
        f"<td>{'' if x.received_units is None else x.received_units}</td>"
        f"<td>{escape(x.deviation or '')}</td>"
        "</tr>"
        for x in note.lines
    )
    received = (
        f"{note.received_at.astimezone(tz):%Y-%m-%d %H:%M} by {escape(note.received_by or '')}"
        + (" (automatically)" if note.auto_received else "")
        if note.received_at
        else "not yet received"
    )
    title = f"Delivery note {escape(note.number)}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
@page {{ size: A4; margin: 15mm; }}
body {{ font-family: sans-serif; font-size: 11pt; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border: 1px solid #444; padding: 3px 5px; text-align: left; }}
td.r {{ text-align: right; }} td.n {{ font-family: monospace; }}
.head {{ display: flex; justify-content: space-between; align-items: flex-start; }}
.sign {{ margin-top: 18mm; }}
</style></head>
<body>
<div class="head"><div>
<h1>{title}</h1>
<p>{escape(site_name)} &rarr; {escape(note.hospital)} / {escape(note.ward)} /
drug room {escape(room_name or note.drug_room)}</p>
<p>Pick list {escape(note.pick_list)}; dispatched
{note.dispatched_at.astimezone(tz):%Y-%m-%d %H:%M}; {received}</p>
</div><div>{note_barcode_svg(note.number)}<br><code>{NOTE_PREFIX}{escape(note.number)}</code></div>
</div>
<table>
<thead><tr><th>Product</th><th>GTIN</th><th>Batch</th><th>Expiry</th><th>Units</th>
<th>Packs</th><th>GS1 (01)(17)(10)</th><th>Received</th><th>Deviation</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<p class="sign">Received by (name, date): ______________________________</p>
</body></html>
"""
