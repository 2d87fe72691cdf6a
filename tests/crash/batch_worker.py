"""A process that books through the group-commit writer, to be killed mid-batch.

`python -m tests.crash.batch_worker URL RUN N [--stall-at K --mark FILE]` reserves one
unit for each of N pouches, then posts each reservation as consumed, every command
through one `GroupWriter` with all of a phase submitted at once, so that they share
transactions. With `--stall-at K`, the K-th post stalls inside its batch's transaction
(after writing FILE) until the process is killed: the batch it belongs to has run
part of its commands and committed none of them. Run again without it, the worker
resubmits every command under the same keys, as a restarted controller does.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.ledger import Ledger, LedgerError, Need, Use
from controller.ledger.engine import make_engine
from controller.ledger.group_commit import BatchSettings, GroupWriter, Job
from controller.ledger.ledger import CONSUMED

GTIN = "07359990000013"
BINS = ["STORE/A", "STORE/B"]


def run_phase(writer: GroupWriter, calls: list[Callable[[], Any]]) -> list[BaseException | None]:
    errors: list[BaseException | None] = [None] * len(calls)
    left = [len(calls)]
    finished = threading.Event()
    lock = threading.Lock()

    def done_for(i: int) -> Callable[[Any, BaseException | None], None]:
        def done(_result: Any, error: BaseException | None) -> None:
            errors[i] = error
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    finished.set()

        return done

    gate = threading.Event()
    writer.submit(Job(gate.wait, lambda _r, _e: None, batchable=False))
    for i, call in enumerate(calls):
        writer.submit(Job(call, done_for(i)))
    gate.set()
    finished.wait()
    return errors


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("run")
    parser.add_argument("count", type=int)
    parser.add_argument("--stall-at", type=int, default=-1)
    parser.add_argument("--mark", default="")
    args = parser.parse_args()
    ledger = Ledger(make_engine(args.url))
    writer = GroupWriter(ledger, BatchSettings(max_commands=32))

    def reserve(i: int) -> Callable[[], Any]:
        return lambda: ledger.reserve(
            f"{args.run}:r{i}",
            purpose="pouch",
            needs=[Need(GTIN, 1)],
            from_locations=BINS,
            timeout_s=3600,
            actor="crash-worker",
        )

    def post(i: int) -> Callable[[], Any]:
        def call() -> Any:
            if i == args.stall_at:
                Path(args.mark).write_text("stalled")
                time.sleep(600)  # killed here, inside the batch's transaction
            return ledger.post(
                f"{args.run}:p{i}",
                reservation_key=f"{args.run}:r{i}",
                uses=[Use(GTIN, 1, CONSUMED, "consume", "packed")],
                actor="crash-worker",
            )

        return call

    for phase in (reserve, post):
        errors = run_phase(writer, [phase(i) for i in range(args.count)])
        refused = [e for e in errors if e is not None]
        if refused:
            print(f"refused: {refused[0]!r}", flush=True)
            if not isinstance(refused[0], LedgerError):
                return 2
            return 1
    writer.close()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
