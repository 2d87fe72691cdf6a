"""The packing job's life, as a state machine.

Transitions only record what happened; the runner does the device and ledger work
between them (no I/O in callbacks: a new event would cancel a running async callback).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from transitions.extensions.asyncio import AsyncMachine

from controller.ledger.states import TERMINAL_JOB_STATES, JobState

log = logging.getLogger("doseline.jobs")
Trigger = Callable[[], Awaitable[bool]]


# The states are the ledger's (controller/ledger/states.py): packing_jobs.state, the
# API's job states and this machine's states are one set.
S = JobState
TERMINAL = TERMINAL_JOB_STATES

TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "reserved", "source": S.PLANNED, "dest": S.RESERVED},
    # The controller restarted before the machine had the job: released, planned again.
    {"trigger": "requeued", "source": S.RESERVED, "dest": S.PLANNED},
    {"trigger": "to_manual", "source": S.PLANNED, "dest": S.MANUAL},
    {"trigger": "loaded", "source": S.RESERVED, "dest": S.LOADED},
    {"trigger": "started", "source": S.LOADED, "dest": S.PACKING},
    {"trigger": "held", "source": S.PACKING, "dest": S.HELD},
    {"trigger": "resumed", "source": S.HELD, "dest": S.PACKING},
    {"trigger": "completed", "source": S.PACKING, "dest": S.COMPLETED},
    {"trigger": "ended_partial", "source": [S.LOADED, S.PACKING, S.HELD], "dest": S.PARTIAL},
    {
        "trigger": "failed",
        "source": [S.PLANNED, S.RESERVED, S.LOADED, S.PACKING, S.HELD],
        "dest": S.FAILED,
    },
    {"trigger": "cancelled", "source": [S.PLANNED, S.RESERVED, S.LOADED], "dest": S.CANCELLED},
]


class Job:
    """A job's state; `history` keeps each transition for the summary and the audit."""

    state: JobState
    # Triggers added by the state machine, from TRANSITIONS.
    reserved: Trigger
    loaded: Trigger
    started: Trigger
    held: Trigger
    resumed: Trigger
    completed: Trigger
    ended_partial: Trigger
    failed: Trigger
    cancelled: Trigger
    requeued: Trigger
    to_manual: Trigger

    def __init__(self, job_id: str, state: JobState = S.PLANNED) -> None:
        self.job_id = job_id
        self.packer: str | None = None
        self.reason = ""
        self.history: list[tuple[str, str]] = []
        self.pouches_good = 0
        self.pouches_rejected = 0
        self.machine = AsyncMachine(
            model=self,
            states=JobState,
            transitions=TRANSITIONS,
            initial=state,
            queued=True,
            after_state_change="_record",
            send_event=True,
        )

    async def _record(self, event: Any) -> None:
        self.history.append((event.transition.source, event.transition.dest))
        log.info("job %s: %s -> %s", self.job_id, event.transition.source, event.transition.dest)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL
