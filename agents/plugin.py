"""The ``ocs.plugins`` registry for hpcsync: agent class -> module, derived from
:mod:`hpcsync.agents.registry`. ``ocs-agent-cli`` finds an instance's module by the
``agent-class`` of the instance in the site config.
"""

from .registry import AGENTS

package_name = "hpcsync"

agents: dict[str, dict[str, str]] = {
    entry.agent_class: {"module": entry.module, "entry_point": "main"} for entry in AGENTS
}
