"""`doseline duty`: the one-month stock duty beyond the reports (scope, exemptions,
preparedness, crisis periods, shortages, rationing, licences, external use); one
module per part."""

from __future__ import annotations

import argparse

from controller.cli import duty_preparedness, duty_scope, duty_shortages, duty_use


def add_duty_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    duty = sub.add_parser("duty", help="the one-month stock duty: scope, exemptions, crisis ...")
    dsub = duty.add_subparsers(dest="duty_command", required=True)
    for part in (duty_scope, duty_preparedness, duty_shortages, duty_use):
        part.register(dsub)
