"""OPC UA method calls of the simulated packer: arguments checked as a real server
checks them, and a refusal returned as the status code and text a client reads.

asyncua neither counts nor types a method's input arguments, so the simulator does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from asyncua import ua

from simulators.packer_physics import PouchPlan, RefusalKind
from simulators.packml import PackMLCommand

_VT = ua.VariantType
_STATUS = ua.StatusCodes


class MethodError(Exception):
    """A refused method call: the status code, a message, and the argument at fault."""

    def __init__(self, code: int, message: str, argument: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.argument = argument


#: How the machine's refusals show as OPC UA status codes.
REFUSAL_STATUS = {
    RefusalKind.INVALID_STATE: _STATUS.BadInvalidState,
    RefusalKind.INVALID_ARGUMENT: _STATUS.BadInvalidArgument,
}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    arguments: tuple[tuple[str, ua.VariantType, str], ...]  # name, type, description
    handler: Callable[..., None]


def argument_description(arg: tuple[str, ua.VariantType, str]) -> ua.Argument:
    arg_name, vtype, desc = arg
    return ua.Argument(
        Name=arg_name,
        DataType=ua.NodeId(ua.Int32(vtype.value)),
        ValueRank=-1,
        Description=ua.LocalizedText(desc),
    )


def without_start_parameters(call: Callable[..., Any]) -> Callable[..., Any]:
    """OPC 30050's Start takes an optional PackMLDescriptorDataType[] `Parameter`; this
    machine has none to set, so it accepts the call without it or with an empty one."""

    async def start(parent: ua.NodeId, *args: ua.Variant) -> Any:
        if len(args) > 1:
            exc = MethodError(
                _STATUS.BadTooManyArguments, f"Start: takes at most 1 argument, got {len(args)}"
            )
            return error_result(exc, len(args))
        if args:
            (parameter,) = args
            if parameter.VariantType != _VT.ExtensionObject or not isinstance(
                parameter.Value, list
            ):
                exc = MethodError(
                    _STATUS.BadTypeMismatch,
                    f"Parameter: expected an array of PackMLDescriptorDataType,"
                    f" got {parameter.VariantType.name}",
                    0,
                )
                return error_result(exc, 1)
            if parameter.Value:
                exc = MethodError(
                    _STATUS.BadInvalidArgument,
                    f"Parameter: this machine takes no start parameters,"
                    f" got {len(parameter.Value)}",
                    0,
                )
                return error_result(exc, 1)
        return await call(parent)

    return start


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def bind_command(
    func: Callable[[PackMLCommand], None], command: PackMLCommand
) -> Callable[[], None]:
    def handler() -> None:
        func(command)

    return handler


def check_arguments(spec: MethodSpec, args: Sequence[ua.Variant]) -> list[Any]:
    """Count and types are not checked by asyncua, so the method does it."""
    expected = len(spec.arguments)
    if len(args) < expected:
        missing = [a[0] for a in spec.arguments[len(args) :]]
        raise MethodError(_STATUS.BadArgumentsMissing, f"{spec.name}: missing {missing}")
    if len(args) > expected:
        raise MethodError(
            _STATUS.BadTooManyArguments,
            f"{spec.name}: takes {expected} argument(s), got {len(args)}",
        )
    values = []
    for i, ((arg_name, vtype, _), variant) in enumerate(zip(spec.arguments, args, strict=True)):
        if variant.VariantType != vtype:
            raise MethodError(
                _STATUS.BadTypeMismatch,
                f"{arg_name}: expected {vtype.name}, got {variant.VariantType.name}",
                i,
            )
        values.append(variant.Value)
    return values


def error_result(exc: MethodError, n_args: int) -> ua.CallMethodResult:
    """A Bad result whose text rides in InputArgumentDiagnosticInfos[].AdditionalInfo.

    OPC UA has no message field on CallMethodResult; the per-argument diagnostics are the
    place a client can read. A method without arguments still gets one entry so the
    client sees why a command was refused.
    """
    result = ua.CallMethodResult()
    if exc.argument is not None:
        result.StatusCode = _status(_STATUS.BadInvalidArgument)
        result.InputArgumentResults = [ua.StatusCode() for _ in range(n_args)]
        result.InputArgumentResults[exc.argument] = _status(exc.code)
        result.InputArgumentDiagnosticInfos = [ua.DiagnosticInfo() for _ in range(n_args)]
        result.InputArgumentDiagnosticInfos[exc.argument] = ua.DiagnosticInfo(
            AdditionalInfo=ua.String(exc.message)
        )
    else:
        result.StatusCode = _status(exc.code)
        result.InputArgumentResults = [ua.StatusCode() for _ in range(n_args)]
        result.InputArgumentDiagnosticInfos = [
            ua.DiagnosticInfo(AdditionalInfo=ua.String(exc.message)) for _ in range(max(n_args, 1))
        ]
    return result


def parse_pouches(text: str | None) -> tuple[PouchPlan, ...]:
    """The JSON's structure; the machine checks canisters and sequences itself."""

    def bad(message: str) -> MethodError:
        return MethodError(_STATUS.BadInvalidArgument, f"Pouches{message}", 1)

    try:
        data = json.loads(text or "")
    except json.JSONDecodeError as exc:
        raise bad(f": not valid JSON ({exc})") from exc
    if not isinstance(data, list) or not data:
        raise bad(": must be a non-empty JSON list of pouches")
    pouches: list[PouchPlan] = []
    for i, entry in enumerate(data):
        where = f"[{i}]"
        if not isinstance(entry, dict):
            raise bad(f"{where}: must be an object with seq, label and items")
        unknown = set(entry) - {"seq", "label", "items"}
        if unknown:
            raise bad(f"{where}: unknown field(s) {sorted(unknown)}")
        seq = entry.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise bad(f"{where}.seq: must be an integer, got {seq!r}")
        label = entry.get("label", "")
        if not isinstance(label, str):
            raise bad(f"{where}.label: must be a string")
        items = entry.get("items")
        if not isinstance(items, list) or not items:
            raise bad(f"{where}.items: must be a non-empty list of [canister, quantity]")
        parsed: list[tuple[int, int]] = []
        for j, item in enumerate(items):
            if not (isinstance(item, list) and len(item) == 2 and all(map(_is_int, item))):
                raise bad(
                    f"{where}.items[{j}]: must be [canister, quantity] integers, got {item!r}"
                )
            parsed.append((item[0], item[1]))
        pouches.append(PouchPlan(seq, label, tuple(parsed)))
    return tuple(pouches)
