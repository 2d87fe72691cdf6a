"""Packing jobs and commands to the packers."""

from __future__ import annotations

import logging
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Path, Query

from controller.api.auth import Role
from controller.api.context import Context, Technician, Viewer, role_note
from controller.api.errors import ApiError, responses
from controller.api.models import (
    Job,
    JobList,
    JobStateName,
    PackerCommandRequest,
    PackerCommandResult,
    Text,
)
from controller.ledger import LedgerError
from drivers.base import DriverError, PackMLCommand

log = logging.getLogger("doseline.api")
jobs_router = APIRouter(tags=["jobs"])
packers_router = APIRouter(tags=["packers"])


@jobs_router.get(
    "/jobs",
    summary="Packing jobs",
    description="Jobs of a day and/or in a state, in packing order. Role: viewer or above.",
    response_model=JobList,
    responses=responses(401, 403, 422),
    openapi_extra=role_note(Role.VIEWER),
)
async def list_jobs(
    ctx: Context,
    _user: Viewer,
    day: Annotated[date | None, Query(description="only jobs of this day")] = None,
    state: Annotated[JobStateName | None, Query(description="only jobs in this state")] = None,
) -> JobList:
    records = await ctx.read(ctx.store.jobs, states=[state] if state else None, day=day)
    return JobList(count=len(records), jobs=[Job.of(r) for r in records])


@jobs_router.get(
    "/jobs/{job_id}",
    summary="One packing job",
    description="Role: viewer or above.",
    response_model=Job,
    responses=responses(401, 403, 404, 422),
    openapi_extra=role_note(Role.VIEWER),
)
async def get_job(
    ctx: Context, _user: Viewer, job_id: Annotated[Text, Path(max_length=100)]
) -> Job:
    try:
        record = await ctx.read(ctx.store.job, job_id)
    except LedgerError:
        raise ApiError(404, f"no such job: {job_id!r}", field="job_id", value=job_id) from None
    return Job.of(record)


@packers_router.post(
    "/packers/{name}/commands",
    summary="Send a PackML command to a packer",
    description="hold, unhold, reset or stop, sent to the machine by the running "
    "controller. A command the machine refuses in its current state gives 409 with the "
    "machine's answer. The command and who sent it go to the audit trail. "
    "Role: technician or above.",
    response_model=PackerCommandResult,
    responses=responses(401, 403, 404, 409, 422, 503),
    openapi_extra=role_note(Role.TECHNICIAN),
)
async def packer_command(
    ctx: Context,
    user: Technician,
    name: Annotated[Text, Path(max_length=100)],
    body: PackerCommandRequest,
) -> PackerCommandResult:
    if name not in {p.name for p in ctx.site.packers}:
        raise ApiError(404, f"unknown packer: {name!r}", field="name", value=name)
    machines = ctx.need_running(f"a command to packer {name}").machines
    packer = machines.packer(name)
    command = PackMLCommand[body.command.upper()]
    if packer is None or not packer.link_ok:
        raise ApiError(
            503,
            f"packer {name} is not connected; the controller is reconnecting to it",
            field="name",
            value=name,
        )
    before: str | None = None
    try:
        before = (await machines.packer_status(name)).state.name
    except DriverError as exc:
        raise ApiError(503, str(exc), field="name", value=name) from None
    try:
        await machines.packer_command(name, command)
    except DriverError as exc:
        raise ApiError(409, str(exc), field="command", value=body.command) from None
    log.info("api: %s sent %s to packer %s", user.name, command.value, name)
    after = None
    try:
        after = (await machines.packer_status(name)).state
    except DriverError as exc:
        log.warning("api: packer %s: state after %s not readable: %s", name, command.value, exc)
    audited = True
    try:
        await ctx.write(
            ctx.ledger.record_event,
            actor=user.name,
            action="packer command",
            entity="packer",
            key=name,
            old={"state": before},
            new={"command": command.value, "state": after.name if after else None},
            reason=f"{command.value} sent through the API",
        )
    except (LedgerError, ApiError) as exc:
        audited = False
        log.error("api: %s to packer %s not audited: %s", command.value, name, exc)
    return PackerCommandResult(
        packer=name,
        command=command.value,
        state=after.name if after else None,
        state_number=int(after) if after is not None else None,
        audited=audited,
    )
