"""hpcsync agents: one OCS agent per sync job, sharing :mod:`hpcsync.agents.core`."""
