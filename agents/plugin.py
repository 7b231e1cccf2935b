"""The ``ocs.plugins`` registry for hpcsync: agent class -> module.

Only agents that work are listed; ``ocs-agent-cli`` finds them by the ``agent-class`` of an
instance in the site config.
"""

package_name = "hpcsync"

agents: dict[str, dict[str, str]] = {
    "SlurmSync": {"module": "hpcsync.agents.slurmsync.agent", "entry_point": "main"},
    "SupRsync": {"module": "hpcsync.agents.suprsync.agent", "entry_point": "main"},
}
