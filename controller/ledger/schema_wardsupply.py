"""Tables of ward supply: requisitions from the drug rooms, their lines through review,
picking and delivery, the pick lists with every scanned pack, and the delivery notes.

The stock itself moves in the ledger's movements (store -> in transit -> drug room);
these tables say why, for which ward, and whether the line came on time and in full.
States come from controller.ledger.ward_states, so the CHECKs and the code agree.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
)

from controller.ledger.schema_base import UTCDateTime, check_in, metadata
from controller.ledger.ward_states import (
    Deviation,
    LineStatus,
    NoteStatus,
    PickListStatus,
    RequisitionSource,
)

ward_requisitions = Table(
    "ward_requisitions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("number", String(30), nullable=False, unique=True),
    # the sender's own id: the same (sender, sender_id) is booked once
    Column("sender", String(100), nullable=False),
    Column("sender_id", String(64), nullable=False),
    Column("drug_room", String(30), nullable=False),
    Column("hospital", String(20), nullable=False),
    Column("ward", String(32), nullable=False),
    Column("source", String(12), nullable=False),
    Column("urgent", Boolean, nullable=False, server_default="0"),
    Column("requested_by", String(100), nullable=False, server_default=""),
    Column("note", String(300), nullable=False, server_default=""),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("authored_at", UTCDateTime(), nullable=True),
    Column("actor", String(100), nullable=False),
    UniqueConstraint("sender", "sender_id", name="uq_ward_requisitions_sender_id"),
    CheckConstraint(check_in("source", RequisitionSource), name="ck_ward_requisitions_source"),
)

ward_pick_lists = Table(
    "ward_pick_lists",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("number", String(40), nullable=False, unique=True),
    Column("hospital", String(20), nullable=False),
    Column("run_code", String(10), nullable=False),  # URGENT for an urgent delivery
    Column("run_date", Date, nullable=False),
    Column("urgent", Boolean, nullable=False, server_default="0"),
    Column("status", String(12), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("created_by", String(100), nullable=False),
    Column("dispatched_at", UTCDateTime(), nullable=True),
    Column("dispatched_by", String(100), nullable=True),
    CheckConstraint(check_in("status", PickListStatus), name="ck_ward_pick_lists_status"),
)
Index("ix_ward_pick_lists_status", ward_pick_lists.c.status)

ward_requisition_lines = Table(
    "ward_requisition_lines",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("requisition_id", Integer, ForeignKey("ward_requisitions.id"), nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=False),
    Column("packs", Integer, nullable=False),  # as requested
    # after review: what is to be delivered (a reduction or a substitute)
    Column("approved_product_id", Integer, ForeignKey("products.id"), nullable=True),
    Column("approved_packs", Integer, nullable=True),
    Column("status", String(12), nullable=False),
    Column("flags", String(100), nullable=False, server_default=""),
    Column("usual_packs", Integer, nullable=True),  # the usual-quantity limit when judged
    Column("decision", String(12), nullable=True),
    Column("decided_by", String(100), nullable=True),
    Column("decided_at", UTCDateTime(), nullable=True),
    Column("reason", String(300), nullable=True),
    # the delivery it is planned for, and when it is due on the ward
    Column("run_code", String(10), nullable=True),
    Column("run_date", Date, nullable=True),
    Column("due_at", UTCDateTime(), nullable=True),
    Column("pick_list_id", Integer, ForeignKey("ward_pick_lists.id"), nullable=True),
    Column("reservation_key", String(200), nullable=True),
    Column("reserved_units", Integer, nullable=False, server_default="0"),
    Column("picked_units", Integer, nullable=False, server_default="0"),
    Column("delivered_units", Integer, nullable=False, server_default="0"),
    Column("purchase_order", String(40), nullable=True),
    # a back order line points at the line whose rest it carries
    Column("back_order_of", Integer, ForeignKey("ward_requisition_lines.id"), nullable=True),
    Column("received_at", UTCDateTime(), nullable=True),
    UniqueConstraint("requisition_id", "line_no", name="uq_ward_requisition_lines_line"),
    CheckConstraint(check_in("status", LineStatus), name="ck_ward_requisition_lines_status"),
    CheckConstraint("packs > 0", name="ck_ward_requisition_lines_packs"),
    CheckConstraint("approved_packs IS NULL OR approved_packs >= 0", name="ck_ward_lines_approved"),
)
Index("ix_ward_requisition_lines_status", ward_requisition_lines.c.status)

ward_pick_scans = Table(
    "ward_pick_scans",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("pick_list_id", Integer, ForeignKey("ward_pick_lists.id"), nullable=False),
    Column("line_id", Integer, ForeignKey("ward_requisition_lines.id"), nullable=False),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=False),
    Column("batch", String(20), nullable=False),
    Column("serial", String(20), nullable=True),
    Column("units", Integer, nullable=False),
    Column("scanned_at", UTCDateTime(), nullable=False),
    Column("actor", String(100), nullable=False),
    # a serialised pack is picked once; NULL serials (unserialised packs) never clash
    UniqueConstraint("product_id", "batch", "serial", name="uq_ward_pick_scans_pack"),
    CheckConstraint("units > 0", name="ck_ward_pick_scans_units"),
)
Index("ix_ward_pick_scans_list", ward_pick_scans.c.pick_list_id)

ward_delivery_notes = Table(
    "ward_delivery_notes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("number", String(40), nullable=False, unique=True),
    Column("pick_list_id", Integer, ForeignKey("ward_pick_lists.id"), nullable=False),
    Column("drug_room", String(30), nullable=False),
    Column("hospital", String(20), nullable=False),
    Column("ward", String(32), nullable=False),
    Column("status", String(12), nullable=False),
    Column("dispatched_at", UTCDateTime(), nullable=False),
    Column("received_at", UTCDateTime(), nullable=True),
    Column("received_by", String(100), nullable=True),
    Column("auto_received", Boolean, nullable=False, server_default="0"),
    CheckConstraint(check_in("status", NoteStatus), name="ck_ward_delivery_notes_status"),
)
Index("ix_ward_delivery_notes_status", ward_delivery_notes.c.status)

ward_note_lines = Table(
    "ward_note_lines",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("note_id", Integer, ForeignKey("ward_delivery_notes.id"), nullable=False),
    Column("line_id", Integer, ForeignKey("ward_requisition_lines.id"), nullable=False),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=False),
    Column("lot_id", Integer, ForeignKey("lots.id"), nullable=False),
    Column("units", Integer, nullable=False),
    Column("received_units", Integer, nullable=True),
    Column("deviation", String(10), nullable=True),
    Column("deviation_units", Integer, nullable=False, server_default="0"),
    Column("deviation_reason", String(300), nullable=True),
    CheckConstraint("units > 0", name="ck_ward_note_lines_units"),
    CheckConstraint(
        "deviation IS NULL OR " + check_in("deviation", Deviation),
        name="ck_ward_note_lines_deviation",
    ),
)
Index("ix_ward_note_lines_note", ward_note_lines.c.note_id)
