"""Fixtures for tests/guest/. The guest-agent ones live in agent_harness.py (add other areas' here)."""

from .agent_harness import agent_binary, agent_server, client

__all__ = ["agent_binary", "agent_server", "client"]
