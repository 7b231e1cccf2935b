"""SlurmSync: reconcile Slurm accounting (sacct/sacctmgr) with a ColdFront/myBRC/myLRC API.

Reads top to bottom:

- :mod:`.agent` - the OCS shell: what an operator can do (ops, parameters, ``session.data``).
- :mod:`.cli` - the same jobs as ``hpcsync slurmsync ...`` commands, without a hub.
- :mod:`.options` - the arguments both share, and how they become an engine.
- :mod:`.engine` - the three jobs (reverse sync, running-jobs sync, full sync).
- :mod:`.slurm` - sacct/sacctmgr: commands, output parsing, node lists.
- :mod:`.coldfront` - the ColdFront API client (pagination, allocations, job upserts).
- :mod:`.ledger` - what was pushed, so a re-run pushes only what changed.
- :mod:`.pricing`, :mod:`.clock`, :mod:`.profiles`, :mod:`.bookkeeping` - the small parts.
"""
