"""A receipt as goods-in reads it: what came per line, what is still owed, what to
order instead, and what the verification system said."""

from __future__ import annotations

from controller.purchasing.model import Receipt


def receipt_lines(receipt: Receipt) -> list[str]:
    if not receipt.booked:
        return [
            f"delivery {receipt.note} for {receipt.order} was booked before "
            f"({receipt.units} units); nothing changed"
        ]
    out = [
        f"delivery {receipt.note} for {receipt.order}: {receipt.units} units booked, "
        f"order {receipt.order_status}"
    ]
    for o in receipt.lines:
        parts = [f"{o.delivered_now} delivered"]
        if o.substituted_now:
            parts.append(f"{o.substituted_now} of them a substitute")
        if o.back_order:
            parts.append(f"{o.back_order} back-ordered")
        if o.short_now:
            parts.append(f"{o.short_now} SHORT")
        out.append(
            f"  line {o.line_no} {o.name[:40]:<40} {o.received_total:>5}/{o.ordered:<5} "
            f"{o.status:<10} {', '.join(parts)}"
        )
        for s in o.substitutes:
            out.append(
                f"      order instead: {s.gtin} {s.name} from {s.supplier or 'no supplier'} "
                f"({s.usable_units} usable in stock)"
            )
    out += [f"  warning: {w}" for w in receipt.warnings]
    verified = [s for s, outcome in receipt.verification.items() if outcome == "verified"]
    if verified:
        out.append(f"  {len(verified)} serialised packs verified with the national system")
    out += [
        f"  pack {serial}: {outcome}"
        for serial, outcome in receipt.verification.items()
        if outcome != "verified"
    ]
    return out
