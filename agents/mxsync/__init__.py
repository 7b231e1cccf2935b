"""MxSync: repatriate Australian Synchrotron experiment (EPN) data, as ASSyncy's mxsync did.

Reads top to bottom:

- :mod:`.agent` - the OCS shell: what an operator can do (ops, parameters, ``session.data``).
- :mod:`.cli` - the same jobs as ``hpcsync mxsync ...`` commands, without a hub.
- :mod:`.options` - the arguments both share (or an ASSyncy ``config.yml``), and the engine.
- :mod:`.config` - reading an ASSyncy ``config.yml`` as it is, with clear errors.
- :mod:`.engine` - discovery (finished visits → EPN → project) and transfers with verification.
- :mod:`.epns` - EPN names: what is accepted, and the EPN → project map.
- :mod:`.portal` - the Synchrotron portal API client.
- :mod:`.ledger` - the EPN ledger (``mxsync_epn_transfers``), ``ignore.yml`` import and export.
"""
