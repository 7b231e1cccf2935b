"""The one list of hpcsync's agents. Everything else that lists agents derives from it:

- ``agents/plugin.py``: the ``ocs.plugins`` registry (agent class -> module), which
  ``ocs-agent-cli`` reads to start an instance;
- the ``hpcsync`` command: one ``hpcsync <command> ...`` subcommand group per agent with a
  ``cli`` module (the command is the package name unless the entry names another);
- the docs: ``docs/agents/index.rst`` lists one page per agent, ``docs/agents/<package>.rst``.

Adding an agent means adding one :class:`AgentEntry` here (see ``docs/developers.rst``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AgentEntry:
    """One agent: its OCS class name, its package under ``agents/`` and what it does."""

    agent_class: str
    package: str
    summary: str
    #: the package has ``cli.py`` with ``add_commands(subparsers)``
    has_cli: bool = True
    #: the ``hpcsync`` subcommand its ``cli.py`` adds (default: the package name)
    command: str | None = None

    @property
    def module(self) -> str:
        """The module ``ocs-agent-cli`` imports (it has ``make_parser`` and ``main``)."""
        return f"hpcsync.agents.{self.package}.agent"

    @property
    def cli_command(self) -> str:
        return self.command or self.package

    @property
    def cli_module(self) -> str:
        return f"hpcsync.agents.{self.package}.cli"

    @property
    def docs_page(self) -> str:
        """The agent's page, relative to ``docs/``."""
        return f"agents/{self.package}"


AGENTS: tuple[AgentEntry, ...] = (
    AgentEntry(
        "SupRsync",
        "suprsync",
        "keep a local directory synced to a remote over rsync/ssh from a ledger of registered files; "
        "verify by md5; delete local copies after a delay; finalize timecode directories",
    ),
    AgentEntry(
        "SlurmSync",
        "slurmsync",
        "reconcile Slurm accounting (sacct/sacctmgr) with a ColdFront/myBRC/myLRC allocation API; dry run by default",
    ),
    AgentEntry(
        "CloudSync",
        "cloudsync",
        "alces sync's named targets between a local directory and S3 (or a local directory): push and pull by "
        "content hash, permissions manifest, empty directories, per-file authenticated encryption; purge on confirm",
        command="sync",
    ),
    AgentEntry(
        "MpistatReporter",
        "mpistat",
        "from mpistat/wrstat dumps: lurge's per-group usage report (LDAP names and PIs, quotas, archives) to TSV and "
        "the shared db, project inspector, group splitter with S3 upload, usage history",
    ),
    AgentEntry(
        "MxSync",
        "mxsync",
        "repatriate Australian Synchrotron experiment (EPN) data: finished visits from the portal API, rsync/sftp "
        "into <root>/<project>/<epn>/data/, verified, never queued twice; reads ASSyncy's config.yml; dry run "
        "by default",
    ),
    AgentEntry(
        "EpnAlert",
        "epnalert",
        "mail a helpdesk (Jinja2 text + HTML, SMTP with STARTTLS/SSL and auth) about Synchrotron EPNs no project "
        "claims, once per EPN and again after a reminder interval; reads ASSyncy's config.yml",
    ),
)


def by_class(agent_class: str) -> AgentEntry:
    for entry in AGENTS:
        if entry.agent_class == agent_class:
            return entry
    raise KeyError(f"no hpcsync agent class {agent_class!r}; known: {', '.join(e.agent_class for e in AGENTS)}")
