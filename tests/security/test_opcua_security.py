"""OPC UA security of the packer link, end to end over loopback sockets.

The packer simulator runs with its own certificate, signed/encrypted endpoints only, a
trust list of client certificates and a user; the controller's driver is built from a
site-file `security:` section through controller.devices, as `doseline run` builds it.
Certificates are made once per module (RSA key generation is the slow part).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from prometheus_client import CollectorRegistry

from controller.config import Packer, gs1_check_digit
from controller.devices import packer_driver
from controller.metrics import Metrics
from controller.packing.runner import PackerRunner, PackingSettings
from drivers.base import DriverError, PackMLCommand, PackMLState
from drivers.opcua_packer import OpcUaPackerDriver
from simulators.packer_opcua import PackerSimulator, SimSecurity
from tests.security.pki import Pair, opcua_app_certificate

SERVER_URI = "urn:doseline:packer-simulator:P1"
CLIENT_URI = "urn:doseline:controller"
USER, PASSWORD = "operator", "correct horse battery staple"
GTIN = "0735000001001" + str(gs1_check_digit("0735000001001"))
CANISTERS = [(1, GTIN, 200, 300)]
FAST = {"speed_factor": 100.0, "transient_seconds": 0.005}
P = ua.SecurityPolicyType


@dataclass(frozen=True)
class Pki:
    packer: Pair  # the packer's own certificate, pinned by the controller
    impostor: Pair  # another machine claiming to be P1
    expired: Pair  # the packer's certificate, but out of date
    controller: Pair  # the controller's certificate, on the packer's trust list
    stranger: Pair  # a client certificate the packer does not trust
    password_file: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("opcua-pki")
    now = datetime.now(UTC)
    password_file = d / "opcua-password"
    password_file.write_text(PASSWORD + "\n", encoding="utf-8")
    return Pki(
        packer=opcua_app_certificate(d, "packer-P1", SERVER_URI, server=True),
        impostor=opcua_app_certificate(d, "impostor-P1", SERVER_URI, server=True),
        expired=opcua_app_certificate(
            d,
            "expired-P1",
            SERVER_URI,
            server=True,
            not_before=now - timedelta(days=400),
            not_after=now - timedelta(days=35),
        ),
        controller=opcua_app_certificate(d, "controller", CLIENT_URI, server=False),
        stranger=opcua_app_certificate(d, "stranger", CLIENT_URI, server=False),
        password_file=password_file,
    )


StartPacker = Callable[..., Awaitable[PackerSimulator]]


@pytest.fixture
async def start_packer(address_space_cache: Path, pki: Pki) -> AsyncIterator[StartPacker]:
    """Starts secured packer simulators (the packer's certificate, the controller on
    its trust list, one user unless told otherwise); all are stopped afterwards."""
    started: list[PackerSimulator] = []

    async def start(
        *,
        certificate: Pair | None = None,
        policies: tuple[ua.SecurityPolicyType, ...] = (
            P.Basic256Sha256_Sign,
            P.Basic256Sha256_SignAndEncrypt,
        ),
        users: dict[str, str] | None = None,
    ) -> PackerSimulator:
        own = certificate or pki.packer
        security = SimSecurity(
            own.cert,
            own.key,
            trusted_clients=[pki.controller.cert],
            policies=policies,
            users={USER: PASSWORD} if users is None else users,
        )
        sim = PackerSimulator(
            "P1",
            canisters=CANISTERS,
            address_space_cache=address_space_cache,
            server_clock=False,
            security=security,
            **FAST,
        )
        started.append(sim)
        await sim.start()
        return sim

    yield start
    for sim in reversed(started):
        await sim.stop()


@pytest.fixture
async def drivers() -> AsyncIterator[list[OpcUaPackerDriver]]:
    """Drivers a test made; each is closed afterwards."""
    made: list[OpcUaPackerDriver] = []
    yield made
    for driver in made:
        await driver.close()


def site_packer(pki: Pki, address: str, **changes: Any) -> Packer:
    """A packer of the site file with a `security:` section; `changes` override keys
    of the section (None removes one)."""
    security: dict[str, Any] = {
        "policy": "Basic256Sha256",
        "mode": "SignAndEncrypt",
        "certificate": str(pki.controller.cert),
        "private_key": str(pki.controller.key),
        "server_certificate": str(pki.packer.cert),
        "user": USER,
        "password_file": str(pki.password_file),
    }
    security.update(changes)
    return Packer.model_validate(
        {
            "name": "P1",
            "address": address,
            "canisters": [{"number": 1, "gtin": GTIN, "capacity": 300}],
            "security": {k: v for k, v in security.items() if v is not None},
        }
    )


def secured_driver(
    drivers: list[OpcUaPackerDriver], pki: Pki, sim: PackerSimulator, **changes: Any
) -> OpcUaPackerDriver:
    driver = packer_driver(site_packer(pki, sim.endpoint, **changes))
    assert isinstance(driver, OpcUaPackerDriver)
    driver.timeout = 3.0
    drivers.append(driver)
    return driver


async def wait_for_state(driver: OpcUaPackerDriver, state: PackMLState) -> None:
    for _ in range(300):
        if (await driver.read_status()).state is state:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"the packer did not reach {state.name}")


@pytest.mark.parametrize("mode", ["Sign", "SignAndEncrypt"])
async def test_secured_session_reads_state_and_sends_commands(
    start_packer: StartPacker, drivers: list[OpcUaPackerDriver], pki: Pki, mode: str
) -> None:
    sim = await start_packer()
    driver = secured_driver(drivers, pki, sim, mode=mode)
    await driver.connect()

    status = await driver.read_status()
    assert status.state is PackMLState.STOPPED
    (canister,) = await driver.read_canisters()
    assert (canister.number, canister.gtin, canister.count) == (1, GTIN, 200)
    await driver.command(PackMLCommand.RESET)
    await wait_for_state(driver, PackMLState.IDLE)
    assert sim.state == PackMLState.IDLE  # the command reached the machine


@pytest.mark.parametrize(
    ("policy", "mode", "endpoint"),
    [
        ("Aes128Sha256RsaOaep", "Sign", P.Aes128Sha256RsaOaep_Sign),
        ("Aes256Sha256RsaPss", "SignAndEncrypt", P.Aes256Sha256RsaPss_SignAndEncrypt),
    ],
    ids=["Aes128Sha256RsaOaep-Sign", "Aes256Sha256RsaPss-SignAndEncrypt"],
)
async def test_newer_policies_work_where_the_packer_offers_them(
    start_packer: StartPacker,
    drivers: list[OpcUaPackerDriver],
    pki: Pki,
    policy: str,
    mode: str,
    endpoint: ua.SecurityPolicyType,
) -> None:
    sim = await start_packer(policies=(endpoint,))
    driver = secured_driver(drivers, pki, sim, policy=policy, mode=mode)
    await driver.connect()
    assert (await driver.read_status()).state is PackMLState.STOPPED


async def test_a_policy_the_packer_does_not_offer_is_named(
    start_packer: StartPacker, drivers: list[OpcUaPackerDriver], pki: Pki
) -> None:
    sim = await start_packer()  # Basic256Sha256 only
    driver = secured_driver(drivers, pki, sim, policy="Aes256Sha256RsaPss")
    with pytest.raises(DriverError) as refused:
        await driver.connect()
    assert str(refused.value).startswith("packer P1 (")
    assert "offers no Aes256Sha256RsaPss SignAndEncrypt endpoint" in str(refused.value)
    assert "Basic256Sha256 SignAndEncrypt" in str(refused.value)


async def test_a_client_certificate_off_the_trust_list_is_refused(
    start_packer: StartPacker, drivers: list[OpcUaPackerDriver], pki: Pki
) -> None:
    sim = await start_packer()
    driver = secured_driver(
        drivers,
        pki,
        sim,
        certificate=str(pki.stranger.cert),
        private_key=str(pki.stranger.key),
    )
    with pytest.raises(DriverError) as refused:
        await driver.connect()
    message = str(refused.value)
    assert message.startswith(f"packer P1 ({sim.endpoint}): connect: refused:")
    assert "does not trust the controller's certificate" in message
    assert "BadCertificateUntrusted" in message


async def test_the_driver_refuses_a_packer_presenting_another_certificate(
    start_packer: StartPacker, drivers: list[OpcUaPackerDriver], pki: Pki
) -> None:
    sim = await start_packer(certificate=pki.impostor)  # the controller pins packer-P1
    driver = secured_driver(drivers, pki, sim)
    with pytest.raises(DriverError) as refused:
        await driver.connect()
    message = str(refused.value)
    assert message.startswith(f"packer P1 ({sim.endpoint}): connect: untrusted server:")
    assert "CN=impostor-P1" in message
    assert str(pki.packer.cert) in message and "CN=packer-P1" in message


async def test_the_pin_holds_without_the_endpoint_check(
    start_packer: StartPacker,
    drivers: list[OpcUaPackerDriver],
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The endpoint check only explains; the secure channel itself is bound to the
    pinned certificate, so an impostor cannot even read the controller's request."""

    async def no_check(*_args: object) -> None:
        return None

    monkeypatch.setattr(OpcUaPackerDriver, "_check_endpoint", no_check)
    caplog.set_level(logging.CRITICAL, logger="asyncua")  # the server's "Decryption failed"
    sim = await start_packer(certificate=pki.impostor)
    driver = secured_driver(drivers, pki, sim)
    driver.timeout = 0.5
    with pytest.raises(DriverError, match=r"^packer P1 \(.*\): connect: "):
        await driver.connect()


async def test_an_expired_packer_certificate_is_refused(
    start_packer: StartPacker, drivers: list[OpcUaPackerDriver], pki: Pki
) -> None:
    sim = await start_packer(certificate=pki.expired)
    driver = secured_driver(drivers, pki, sim, server_certificate=str(pki.expired.cert))
    with pytest.raises(DriverError) as refused:
        await driver.connect()
    assert "the packer's certificate (CN=expired-P1" in str(refused.value)
    assert "is valid only from" in str(refused.value)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"password_file": None, "password_env": "DOSELINE_TEST_PACKER_PASSWORD"}, "user access"),
        ({"user": "intruder"}, "user access denied (wrong user name or password)"),
        ({"user": None, "password_file": None}, "rejected the user identity"),
    ],
    ids=["wrong-password", "unknown-user", "no-user"],
)
async def test_a_wrong_password_or_a_missing_user_is_refused(
    start_packer: StartPacker,
    drivers: list[OpcUaPackerDriver],
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
    changes: dict[str, Any],
    reason: str,
) -> None:
    monkeypatch.setenv("DOSELINE_TEST_PACKER_PASSWORD", "not the password")
    sim = await start_packer()
    driver = secured_driver(drivers, pki, sim, **changes)
    with pytest.raises(DriverError) as refused:
        await driver.connect()
    message = str(refused.value)
    assert message.startswith(f"packer P1 ({sim.endpoint}): connect: refused:")
    assert reason in message


async def test_a_password_from_the_environment_is_accepted(
    start_packer: StartPacker,
    drivers: list[OpcUaPackerDriver],
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOSELINE_TEST_PACKER_PASSWORD", PASSWORD)
    sim = await start_packer()
    driver = secured_driver(
        drivers, pki, sim, password_file=None, password_env="DOSELINE_TEST_PACKER_PASSWORD"
    )
    await driver.connect()
    assert (await driver.read_status()).state is PackMLState.STOPPED


async def test_an_unsecured_client_is_refused_by_a_secured_packer(
    start_packer: StartPacker, drivers: list[OpcUaPackerDriver]
) -> None:
    sim = await start_packer()
    driver = OpcUaPackerDriver("P1", sim.endpoint, timeout=3.0)
    drivers.append(driver)
    with pytest.raises(DriverError) as refused:
        await driver.connect()
    assert str(refused.value) == (
        f"packer P1 ({sim.endpoint}): connect: refused: the packer offers no unsecured"
        " (None) endpoint (it requires security: set packers[].security in the site file)"
    )


async def test_no_session_on_an_unsecured_channel_even_skipping_the_endpoint_check(
    start_packer: StartPacker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncua's server opens a NoSecurity channel for discovery whatever its endpoints,
    and its client alone checks that the session's endpoint is offered. A client that
    skips that check must still get no session (the simulator's user manager wants a
    trusted channel certificate), even where anonymous users are allowed."""
    sim = await start_packer(users={})  # anonymous allowed on secured channels
    monkeypatch.setattr(
        Client, "find_endpoint", staticmethod(lambda endpoints, _mode, _uri: endpoints[0])
    )
    client = Client(sim.endpoint, timeout=3.0)
    try:
        with pytest.raises(ua.UaStatusCodeError) as refused:
            await client.connect()
    finally:
        client.disconnect_socket()
    assert refused.value.code == ua.StatusCodes.BadUserAccessDenied


async def test_a_refused_connection_counts_as_a_driver_error(
    start_packer: StartPacker,
    drivers: list[OpcUaPackerDriver],
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The packer's service counts a refused connect in doseline_driver_errors_total and
    logs the reason once, like any other unreachable packer."""
    sim = await start_packer()
    config = site_packer(pki, sim.endpoint, user="intruder")
    driver = secured_driver(drivers, pki, sim, user="intruder")
    metrics = Metrics(CollectorRegistry())
    runner = PackerRunner(
        config,
        driver,
        ledger=None,  # type: ignore[arg-type]  # not reached before a connect succeeds
        store=None,  # type: ignore[arg-type]
        metrics=metrics,
        settings=PackingSettings(store_bins=["A1"]),
        desk=None,  # type: ignore[arg-type]
    )

    def errors() -> float:
        value = metrics.registry.get_sample_value("doseline_driver_errors_total", {"device": "P1"})
        return value or 0.0

    caplog.set_level(logging.WARNING, logger="doseline.packing")
    task = asyncio.create_task(runner.ensure_connected())
    try:
        for _ in range(500):
            if errors() >= 1:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert errors() == 1  # one refused attempt, then the 1 s backoff
    assert not runner.link_ok
    (record,) = [r for r in caplog.records if r.name == "doseline.packing"]
    assert "packer P1 unreachable" in record.getMessage()
    assert "user access denied" in record.getMessage()


async def test_missing_files_and_password_are_named_at_connect(
    pki: Pki, drivers: list[OpcUaPackerDriver], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Checked before anything goes on the wire: no server is needed."""
    address = "opc.tcp://127.0.0.1:9/"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"certificate": str(tmp_path / "nope.der")}, "security.certificate: file"),
        ({"private_key": str(tmp_path / "nope.pem")}, "security.private_key: file"),
        ({"server_certificate": str(tmp_path / "p1.der")}, "security.server_certificate: file"),
        ({"password_file": str(tmp_path / "pw")}, "security.password_file: cannot read"),
        (
            {"password_file": None, "password_env": "DOSELINE_TEST_UNSET_PASSWORD"},
            "security.password_env: environment variable DOSELINE_TEST_UNSET_PASSWORD is not set",
        ),
    ]
    monkeypatch.delenv("DOSELINE_TEST_UNSET_PASSWORD", raising=False)
    for changes, expected in cases:
        driver = packer_driver(site_packer(pki, address, **changes))
        assert isinstance(driver, OpcUaPackerDriver)
        drivers.append(driver)
        with pytest.raises(DriverError) as refused:
            await driver.connect()
        assert str(refused.value).startswith(f"packer P1 ({address}): connect: {expected}")
        for value in changes.values():
            if value and "/" in value:
                assert value in str(refused.value)
