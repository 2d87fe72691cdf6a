"""Fixtures for the security tests: simulators over real sockets, so the same guards as
tests/integration (no leaked tasks, a cached OPC UA address space)."""

from __future__ import annotations

# The same task-leak check and OPC UA address-space cache as the integration tests.
from tests.integration.conftest import address_space_cache, no_leaked_tasks  # noqa: F401
