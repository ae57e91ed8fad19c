"""Fixtures for tests/guest/. The guest-agent ones live in agent_harness.py (add other areas' here)."""

from .agent_harness import agent_binary, agent_server, client
from .userland_fixtures import agents, busyboxes, cruns, host_inputs

__all__ = ["agent_binary", "agent_server", "agents", "busyboxes", "client", "cruns", "host_inputs"]
