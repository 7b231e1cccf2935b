"""CloudSync: alces sync's targets between local directories and S3 (or a local directory).

Reads top to bottom: ``agent.py`` (the ops), ``options.py`` (arguments -> engine), ``engine.py``
(push, pull, purge), ``targets.py`` (the target files), ``crypto.py`` (encryption),
``ledger.py`` (the hash cache and target state).
"""
