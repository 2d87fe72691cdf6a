"""Property tests of GS1 pack identifiers (controller/gs1.py): what a pack's DataMatrix
carries, read back.

* Round trip: any valid pack id (a GTIN-14 with its check digit, an expiry date, a
  batch and an optional serial of 1 to 20 characters of GS1's character set 82)
  encoded by `encode_pack` is read back by `parse_pack` as the same pack, also behind
  each AIM symbology identifier a scanner may send (`]d2` DataMatrix, `]C1` GS1-128,
  `]Q3` QR, `]e0` DataBar), with its elements in any order and a group separator
  after each variable-length one, a trailing separator included.
* Anything else (arbitrary text, valid scans with a character changed, dropped or
  added, a separator moved) raises nothing but `ScanError`, and what it does accept
  is a pack id with a valid GTIN and fields within their lengths.
* An element given twice with different values is refused, naming it.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.config import valid_gtin
from controller.gs1 import PackId, ScanError, encode_pack, parse_pack

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

GS = "\x1d"
# GS1 AI encodable character set 82 (the batch and serial alphabet).
CSET82 = "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
AIM_PREFIXES = ["", "]d2", "]C1", "]Q3", "]e0"]


def check_digit(digits: str) -> str:
    """GS1 mod-10 check digit of the digits before it."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return str((10 - total % 10) % 10)


gtins = st.text(alphabet="0123456789", min_size=13, max_size=13).map(lambda d: d + check_digit(d))
# GS1 dates are YYMMDD: the century is the one within 50 years of today, so dates
# within 40 years either way read back unchanged.
expiries = st.dates(min_value=date(1990, 1, 1), max_value=date(2060, 12, 31))
codes = st.text(alphabet=CSET82, min_size=1, max_size=20)
packs = st.builds(PackId, gtins, codes, expiries, st.none() | codes)


def elements(pack: PackId) -> list[tuple[str, bool]]:
    """(element string, is of variable length) of a pack."""
    out = [(f"01{pack.gtin}", False), (f"17{pack.expiry:%y%m%d}", False), (f"10{pack.batch}", True)]
    if pack.serial:
        out.append((f"21{pack.serial}", True))
    return out


def assert_sane(pack: PackId) -> None:
    """What parse_pack returns is always a usable pack id."""
    assert len(pack.gtin) == 14 and valid_gtin(pack.gtin) == pack.gtin
    assert 1 <= len(pack.batch) <= 20 and set(pack.batch) <= set(CSET82)
    assert isinstance(pack.expiry, date)
    assert pack.serial is None or (1 <= len(pack.serial) <= 20 and set(pack.serial) <= set(CSET82))


@FUZZ
@given(packs, st.sampled_from(AIM_PREFIXES))
def test_encoded_packs_read_back(pack: PackId, prefix: str) -> None:
    assert parse_pack(prefix + encode_pack(pack)) == pack


@FUZZ
@given(packs, st.sampled_from(AIM_PREFIXES), st.randoms(use_true_random=False), st.booleans())
def test_elements_in_any_order_with_separators_read_back(
    pack: PackId, prefix: str, rnd: Any, trailing_gs: bool
) -> None:
    parts = elements(pack)
    rnd.shuffle(parts)
    text = ""
    for k, (element, variable) in enumerate(parts):
        text += element
        if variable and (k < len(parts) - 1 or trailing_gs):
            text += GS
    assert parse_pack(prefix + text) == pack


@FUZZ
@given(st.text(max_size=80))
def test_arbitrary_text_raises_only_scan_error(text: str) -> None:
    try:
        pack = parse_pack(text)
    except ScanError as exc:
        assert str(exc).startswith("scan ")
        return
    assert_sane(pack)


@FUZZ
@given(st.text(alphabet="0123456789" + GS + "]dCQ3e2" + CSET82[:12], max_size=60))
def test_gs1_looking_text_raises_only_scan_error(text: str) -> None:
    for candidate in (text, "01" + text, "]d201" + text):
        try:
            pack = parse_pack(candidate)
        except ScanError:
            continue
        assert_sane(pack)


@FUZZ
@given(
    packs,
    st.lists(
        st.tuples(
            st.sampled_from(["replace", "drop", "insert"]),
            st.integers(0, 80),
            st.sampled_from([*CSET82, GS, "\x00", "é", "]", "17", "10", "21", "01"]),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_scans_raise_only_scan_error(
    pack: PackId, edits: list[tuple[str, int, str]]
) -> None:
    text = encode_pack(pack)
    for kind, at, char in edits:
        at = min(at, len(text))
        if kind == "replace":
            text = text[:at] + char + text[at + 1 :]
        elif kind == "drop":
            text = text[:at] + text[at + 1 :]
        else:
            text = text[:at] + char + text[at:]
    try:
        found = parse_pack(text)
    except ScanError:
        return
    assert_sane(found)


@FUZZ
@given(packs, st.sampled_from(["10", "17", "21", "01"]), st.data())
def test_an_element_given_twice_with_another_value_is_refused(
    pack: PackId, ai: str, data: Any
) -> None:
    other = data.draw(packs, label="other")
    first = dict((e[:2], e) for e, _v in elements(pack))
    second = dict((e[:2], e) for e, _v in elements(other))
    if ai not in first or ai not in second or first[ai] == second[ai]:
        return
    text = encode_pack(pack) + GS + second[ai]
    names = {"01": "GTIN (01)", "10": "batch (10)", "17": "expiry date (17)", "21": "serial (21)"}
    with pytest.raises(ScanError, match=re.escape(f"{names[ai]} given twice")):
        parse_pack(text)


def test_the_same_element_twice_with_the_same_value_is_one_element() -> None:
    pack = PackId("07359990000013", "B-1", date(2028, 6, 30), "SN1")
    assert parse_pack(encode_pack(pack) + GS + "10B-1") == pack


@pytest.mark.parametrize(
    ("scan", "message"),
    [
        ("0107359990000013172806301012" + GS + "10XY", r"batch \(10\) given twice: '12' and 'XY'"),
        ("010735999000001317280630172701011012", r"expiry date \(17\) given twice"),
        ("0107359990000014172806301012", r"GTIN \(01\)"),
        ("0107359990000013172806301012" + GS + "0107359990000020", r"GTIN \(01\) given twice"),
        ("01073599900000131728063021SN", r"no batch \(10\)"),
        ("010735999000001310AB", r"no valid expiry date \(17\)"),
        ("", r"no GTIN \(01\)"),
        # biip's own exceptions escaped parse_pack here: IndexError, ParseError.
        ("]", r"is not a GS1 element string"),
        ("]0", r"is not a GS1 element string"),
        ("]]d2", r"is not a GS1 element string"),
    ],
)
def test_refusals_name_the_element(scan: str, message: str) -> None:
    with pytest.raises(ScanError, match=message):
        parse_pack(scan)
