"""The planner: jobs per ward and time, fitted to the packers' calibrated canisters."""

from __future__ import annotations

import json
from datetime import date, time
from pathlib import Path

import pytest

from controller.config import Site, gs1_check_digit, load_site, parse_site
from controller.demo.orders import demo_orders
from controller.packing.orders import DoseOrder
from controller.packing.planner import (
    PackerCapability,
    PackerOffer,
    PlannedJob,
    PlannedPouch,
    Substitution,
    capabilities,
    describe,
    fit_to_machines,
    pick_packer,
    plan_day,
    substitution_groups,
)
from tests.sites import FURO, METO, OXY, PARA, site_dict

REPO = Path(__file__).resolve().parents[2]
DAY = date(2027, 1, 15)


def gtin(body: str) -> str:
    return body + str(gs1_check_digit(body))


PARA2 = "07359990000174"  # paracetamol 500 mg from a second supplier (demo catalogue)
KCL = "07359990000150"  # potassium chloride: an uncalibrated canister in the demo
PARA3 = gtin("0735999000090")  # a third one, with a GTIN above PARA2
PARA0 = gtin("0735999000000")  # and one with a GTIN below every other
assert PARA0 < PARA < PARA2 < PARA3

GROUPS: dict[str, str | None] = {
    PARA: "N02BE01 500 mg tablet",
    PARA0: "N02BE01 500 mg tablet",
    PARA2: "N02BE01 500 mg tablet",
    PARA3: "N02BE01 500 mg tablet",
    METO: None,
    FURO: None,
    OXY: "N02AA05 5 mg tablet",  # a group, but no packer holds a partner
}


def cap(name: str, ppm: float, *gtins: str) -> PackerCapability:
    return PackerCapability(name, ppm, frozenset(gtins))


def job(*pouches: tuple[str, dict[str, int]], job_id: str = "W1-20270115-0800") -> PlannedJob:
    return PlannedJob(
        job_id,
        "W1",
        DAY,
        time(8),
        tuple(
            PlannedPouch(seq, patient, tuple(sorted(items.items())))
            for seq, (patient, items) in enumerate(pouches, start=1)
        ),
    )


def demo_site() -> Site:
    return load_site(REPO / "config" / "demo.yaml")


# --- plan_day ---------------------------------------------------------------------------


def test_plan_day_groups_by_ward_and_time_and_sorts_pouches_by_patient() -> None:
    at8, at12 = time(8), time(12)
    orders = [
        DoseOrder("PT-B", "W1", PARA, 2, (at8, at12), DAY, DAY),
        DoseOrder("PT-A", "W1", METO, 1, (at8,), DAY, DAY),
        DoseOrder("PT-A", "W1", PARA, 1, (at8,), date(2027, 1, 1), date(2027, 1, 31)),
        DoseOrder("PT-A", "W1", PARA, 1, (at8,), DAY, DAY),  # a second order adds up
        DoseOrder("PT-C", "W2", FURO, 1, (at8,), DAY, DAY),
        DoseOrder("PT-D", "W1", OXY, 1, (at8,), date(2027, 1, 16), date(2027, 1, 20)),
    ]
    jobs = plan_day(orders, DAY)
    assert jobs == [
        PlannedJob(
            "W1-20270115-0800",
            "W1",
            DAY,
            at8,
            (
                PlannedPouch(1, "PT-A", ((PARA, 2), (METO, 1))),
                PlannedPouch(2, "PT-B", ((PARA, 2),)),
            ),
        ),
        PlannedJob("W1-20270115-1200", "W1", DAY, at12, (PlannedPouch(1, "PT-B", ((PARA, 2),)),)),
        PlannedJob("W2-20270115-0800", "W2", DAY, at8, (PlannedPouch(1, "PT-C", ((FURO, 1),)),)),
    ]
    assert jobs[0].units_by_gtin() == {PARA: 4, METO: 1}
    assert jobs[0].manual_units_by_gtin() == {}
    assert jobs[0].packers == () and jobs[0].substitutions == ()
    assert plan_day(orders, date(2027, 2, 1)) == []


# --- capabilities -----------------------------------------------------------------------


def test_capabilities_count_only_calibrated_canisters() -> None:
    raw = site_dict()
    raw["packers"][0]["canisters"][1]["calibrated"] = False  # METO
    site = parse_site(raw)
    assert site.packers[0].canisters[1].calibrated is False
    assert site.packers[0].canisters[0].calibrated is True  # the default
    assert capabilities(site) == [PackerCapability("PK1", 60, frozenset({PARA, FURO}))]


def test_demo_site_capabilities_and_groups() -> None:
    site = demo_site()
    caps = capabilities(site)
    assert [(c.name, c.pouches_per_minute, len(c.gtins)) for c in caps] == [
        ("PACKER-1", 60, 12),
        ("PACKER-2", 120, 12),
    ]
    groups = substitution_groups(site)
    assert len(groups) == len(site.catalogue)
    assert groups[PARA] == groups[PARA2] == "N02BE01 500 mg tablet"
    assert groups[METO] is None


def test_demo_day_fits_both_packers_fastest_first() -> None:
    site = demo_site()
    assert site.demo is not None
    orders = demo_orders(site, site.demo, DAY, DAY)
    planned = plan_day(orders, DAY)
    jobs = fit_to_machines(planned, capabilities(site), substitution_groups(site))
    assert [j.job_id for j in jobs] == [
        f"MED1-20270115-{hhmm}" for hhmm in "0800 1200 1700 2100".split()
    ]
    assert all(j.packers == ("PACKER-2", "PACKER-1") for j in jobs)
    # The demo orders the second supplier's paracetamol (no canister: substituted within
    # its group) and potassium chloride (uncalibrated canister: added by hand).
    assert all([(s.ordered, s.packed) for s in j.substitutions] == [(PARA2, PARA)] for j in jobs)
    assert {j.job_id[-4:]: set(j.manual_units_by_gtin()) for j in jobs} == {
        "0800": {KCL},
        "1200": set(),
        "1700": {KCL},
        "2100": set(),
    }
    assert [len(j.pouches) for j in jobs] == [len(j.pouches) for j in planned]


def test_uncalibrated_canister_on_the_fast_packer_leaves_the_slow_one() -> None:
    site = demo_site()
    demo = site.demo
    assert demo is not None
    fast = site.packers[1]
    assert fast.name == "PACKER-2" and fast.canisters[0].gtin == PARA
    site = site.model_copy(
        update={
            "packers": [
                site.packers[0],
                fast.model_copy(
                    update={
                        "canisters": [
                            fast.canisters[0].model_copy(update={"calibrated": False}),
                            *fast.canisters[1:],
                        ]
                    }
                ),
            ]
        }
    )
    planned = plan_day(demo_orders(site, demo, DAY, DAY), DAY)
    jobs = fit_to_machines(planned, capabilities(site), substitution_groups(site))
    # every demo time has paracetamol; only PACKER-1 packs it now (no partner canister)
    assert all(PARA in j.units_by_gtin() for j in jobs)
    assert [j.packers for j in jobs] == [("PACKER-1",)] * 4
    assert all([(s.ordered, s.packed) for s in j.substitutions] == [(PARA2, PARA)] for j in jobs)


# --- fit_to_machines --------------------------------------------------------------------


def test_substitute_from_the_same_group_is_packed_and_recorded() -> None:
    planned = job(
        ("PT-A", {PARA: 2, METO: 1}),
        ("PT-B", {PARA: 2}),
        ("PT-C", {METO: 1}),
    )
    [fitted] = fit_to_machines([planned], [cap("P1", 60, PARA2, METO)], GROUPS)
    assert [p.items for p in fitted.pouches] == [
        ((METO, 1), (PARA2, 2)),
        ((PARA2, 2),),
        ((METO, 1),),
    ]
    assert [p.manual for p in fitted.pouches] == [(), (), ()]
    assert fitted.substitutions == (Substitution(PARA, PARA2, 4),)
    assert fitted.packers == ("P1",)
    assert fitted.units_by_gtin() == {PARA2: 4, METO: 2}
    assert describe(fitted) == [f"substituted: 4 x {PARA} packed as {PARA2}"]


def test_substitute_is_the_lowest_gtin_the_packer_holds() -> None:
    planned = job(("PT-A", {PARA: 2, PARA2: 1}))
    # PARA0 is the lowest of the group, but the packer does not hold it
    [fitted] = fit_to_machines([planned], [cap("P1", 60, PARA3, PARA2, METO)], GROUPS)
    assert fitted.pouches[0].items == ((PARA2, 3),)  # ordered PARA2 and substitute merged
    assert fitted.substitutions == (Substitution(PARA, PARA2, 2),)
    [fitted] = fit_to_machines([planned], [cap("P1", 60, PARA3, METO)], GROUPS)
    assert fitted.pouches[0].items == ((PARA3, 3),)
    assert fitted.substitutions == (
        Substitution(PARA, PARA3, 2),
        Substitution(PARA2, PARA3, 1),
    )


def test_no_partner_in_the_group_goes_manual() -> None:
    planned = job(
        ("PT-A", {PARA: 2, FURO: 1, OXY: 1}),
        ("PT-B", {FURO: 2}),
        ("PT-C", {PARA: 1}),
    )
    [fitted] = fit_to_machines([planned], [cap("P1", 60, PARA, METO)], GROUPS)
    assert [(p.items, p.manual) for p in fitted.pouches] == [
        (((PARA, 2),), ((FURO, 1), (OXY, 1))),
        ((), ((FURO, 2),)),
        (((PARA, 1),), ()),
    ]
    assert fitted.units_by_gtin() == {PARA: 3}
    assert fitted.manual_units_by_gtin() == {FURO: 3, OXY: 1}
    assert fitted.packers == ("P1",)
    assert fitted.substitutions == ()
    assert [p.sequence for p in fitted.machine_pouches()] == [1, 3]
    assert describe(fitted) == [
        f"manual: 3 x {FURO} (no calibrated canister)",
        f"manual: 1 x {OXY} (no calibrated canister)",
    ]


def test_job_with_nothing_for_a_machine_is_manual_only() -> None:
    planned = job(("PT-A", {FURO: 1}), ("PT-B", {OXY: 2}))
    [fitted] = fit_to_machines([planned], [cap("P1", 60, PARA, METO)], GROUPS)
    assert fitted.packers == ()
    assert fitted.units_by_gtin() == {}
    assert fitted.manual_units_by_gtin() == {FURO: 1, OXY: 2}
    assert fitted.machine_pouches() == ()
    # no packers at all: the same
    [alone] = fit_to_machines([planned], [], GROUPS)
    assert alone == fitted


def test_packer_covering_most_units_is_chosen() -> None:
    # PARA is 4 units, METO and FURO 6: the slow packer holding METO and FURO wins
    planned = job(
        ("PT-A", {PARA: 2, METO: 1, FURO: 1}),
        ("PT-B", {PARA: 2, METO: 1, FURO: 1}),
        ("PT-C", {METO: 1, FURO: 1}),
    )
    packers = [cap("FAST", 120, PARA), cap("SLOW", 60, METO, FURO)]
    [fitted] = fit_to_machines([planned], packers, GROUPS)
    assert fitted.units_by_gtin() == {METO: 3, FURO: 3}
    assert fitted.manual_units_by_gtin() == {PARA: 4}
    assert fitted.packers == ("SLOW",)
    # a third packer that also covers the machine items is listed, fastest first
    packers.append(cap("MID", 90, METO, FURO, OXY))
    [fitted] = fit_to_machines([planned], packers, GROUPS)
    assert fitted.packers == ("MID", "SLOW")
    assert fitted.manual_units_by_gtin() == {PARA: 4}


def test_equal_cover_prefers_the_ordered_product_then_speed_then_name() -> None:
    planned = job(("PT-A", {PARA: 2, METO: 1}))
    # both reach 3 units; SLOW packs them as ordered, FAST only through a substitute
    [fitted] = fit_to_machines(
        [planned], [cap("FAST", 120, PARA2, METO), cap("SLOW", 60, PARA, METO)], GROUPS
    )
    assert fitted.substitutions == ()
    assert fitted.packers == ("SLOW",)
    # same cover, same products: the faster one, listed first; then by name
    packers = [cap("B", 120, PARA, METO), cap("C", 60, PARA, METO), cap("A", 120, PARA, METO)]
    [fitted] = fit_to_machines([planned], packers, GROUPS)
    assert fitted.packers == ("A", "B", "C")


def test_substitution_narrows_the_packers_to_those_holding_the_substitute() -> None:
    planned = job(("PT-A", {PARA: 2, METO: 1, FURO: 1}))
    packers = [
        cap("P1", 60, PARA2, METO, FURO),  # reaches 4 (2 by substitute)
        cap("P2", 120, PARA, METO),  # reaches 3
        cap("P3", 90, PARA2, PARA, METO, FURO),  # reaches 4 as ordered
    ]
    [fitted] = fit_to_machines([planned], packers, GROUPS)
    assert fitted.substitutions == ()
    assert fitted.packers == ("P3",)
    [fitted] = fit_to_machines([planned], packers[:2], GROUPS)
    assert fitted.substitutions == (Substitution(PARA, PARA2, 2),)
    assert fitted.pouches[0].items == ((METO, 1), (FURO, 1), (PARA2, 2))
    assert fitted.packers == ("P1",)


# --- pick_packer ------------------------------------------------------------------------


def offer(name: str, ppm: float, stock: dict[str, int], *, available: bool = True) -> PackerOffer:
    return PackerOffer(name, ppm, available, stock)


def test_pick_packer_fastest_available_with_stock() -> None:
    planned = job(("PT-A", {PARA: 2, METO: 1}), ("PT-B", {PARA: 2}))
    fitted = PlannedJob(
        planned.job_id,
        planned.ward,
        planned.day,
        planned.time,
        planned.pouches,
        packers=("FAST", "MID", "SLOW"),
    )
    enough = {PARA: 4, METO: 1}
    offers = [
        offer("SLOW", 60, enough),
        offer("FAST", 120, enough, available=False),
        offer("MID", 90, {PARA: 4, METO: 0}),  # short of METO
        offer("OTHER", 240, enough),  # not able to pack this job
    ]
    assert pick_packer(fitted, offers) == "SLOW"
    offers[2] = offer("MID", 90, {PARA: 40, METO: 1})
    assert pick_packer(fitted, offers) == "MID"
    offers[1] = offer("FAST", 120, enough)
    assert pick_packer(fitted, offers) == "FAST"
    assert pick_packer(fitted, [offer("MID", 90, {PARA: 4})]) is None  # METO missing: 0
    assert pick_packer(fitted, []) is None


def test_pick_packer_ties_follow_job_packers_and_manual_only_gets_none() -> None:
    planned = job(("PT-A", {PARA: 1}))
    fitted = PlannedJob(planned.job_id, "W1", DAY, time(8), planned.pouches, packers=("B", "A"))
    offers = [offer("A", 60, {PARA: 1}), offer("B", 60, {PARA: 1})]
    assert pick_packer(fitted, offers) == "B"
    manual_only = fit_to_machines([job(("PT-A", {FURO: 1}))], [cap("A", 60, PARA)], GROUPS)[0]
    assert manual_only.packers == ()
    assert pick_packer(manual_only, offers) is None


# --- persistence ------------------------------------------------------------------------


def test_to_dict_from_dict_round_trip() -> None:
    planned = job(("PT-A", {PARA: 2, METO: 1, FURO: 1}), ("PT-B", {FURO: 1}))
    [fitted] = fit_to_machines(
        [planned], [cap("P1", 120, PARA2, METO), cap("P2", 60, PARA2, METO, OXY)], GROUPS
    )
    data = fitted.to_dict()
    assert data == {
        "job_id": "W1-20270115-0800",
        "ward": "W1",
        "day": "2027-01-15",
        "time": "08:00",
        "pouches": [
            {
                "sequence": 1,
                "patient": "PT-A",
                "items": [[METO, 1], [PARA2, 2]],
                "manual": [[FURO, 1]],
            },
            {"sequence": 2, "patient": "PT-B", "items": [], "manual": [[FURO, 1]]},
        ],
        "packers": ["P1", "P2"],
        "substitutions": [{"ordered": PARA, "packed": PARA2, "units": 2}],
    }
    assert PlannedJob.from_dict(json.loads(json.dumps(data))) == fitted
    # a job persisted before fitting (no manual, packers or substitutions) still loads
    bare = planned.to_dict()
    for pouch in bare["pouches"]:
        del pouch["manual"]
    del bare["packers"], bare["substitutions"]
    assert PlannedJob.from_dict(bare) == planned
    # seconds, should a time carry them, survive too
    odd = PlannedJob("J", "W1", DAY, time(8, 0, 30), ())
    assert odd.to_dict()["time"] == "08:00:30"
    assert PlannedJob.from_dict(odd.to_dict()) == odd


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"time": "25:00"}, "job W1-20270115-0800: time: '25:00' is not a valid time"),
        ({"day": 20270115}, "job W1-20270115-0800: day: 20270115 is not a non-empty string"),
        ({"job_id": ""}, "job: job_id: '' is not a non-empty string"),
        (
            {"pouches": [{"sequence": 1, "patient": "PT-A", "items": [["x", 0]]}]},
            r"job W1-20270115-0800: pouches\[0\]: items\[0\]: \['x', 0\] is not a \[gtin, units\]",
        ),
        ({"pouches": [{"patient": "PT-A", "items": []}]}, r"pouches\[0\]: sequence: missing"),
        ({"packers": "P1"}, "packers: 'P1' is not a list of strings"),
    ],
)
def test_from_dict_names_the_field_and_value(change: dict[str, object], message: str) -> None:
    data = {**job(("PT-A", {PARA: 1})).to_dict(), **change}
    with pytest.raises(ValueError, match=message):
        PlannedJob.from_dict(data)
