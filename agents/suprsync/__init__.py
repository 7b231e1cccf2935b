"""SupRsync: keep a local directory synced to a remote over rsync/ssh from a ledger of
registered files; verify each copy by md5; delete local copies after a delay; finalize
timecode directories. ``agent.py`` is the OCS shell; the other modules are the engine."""
