"""Every connection the API accepts has TCP_NODELAY, so a keep-alive response written
in two parts (headers, then body) goes out at once instead of waiting for the client's
delayed ACK (about 40 ms a request on Linux). asyncio sets it only on sockets whose
proto says TCP, which the listening socket must therefore name."""

from __future__ import annotations

import asyncio
import socket

from controller.api import ApiServer
from controller.api.app import create_app
from controller.config import parse_site
from controller.ledger import Ledger
from controller.ledger.engine import make_engine
from controller.packing.store import PackingStore
from tests.api.conftest import tokens
from tests.sites import site_dict


async def test_accepted_connections_have_nodelay() -> None:
    site = parse_site(site_dict())
    ledger = Ledger(make_engine("sqlite://"))
    app = create_app(site=site, ledger=ledger, store=PackingStore(ledger), tokens=tokens())
    server = ApiServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 ")
        assert server._server is not None
        connections = list(server._server.server_state.connections)
        assert connections, "the keep-alive connection is open"
        for protocol in connections:
            sock = protocol.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        writer.close()
        await writer.wait_closed()
    finally:
        await server.stop()
        ledger.engine.dispose()
