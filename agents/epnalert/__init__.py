"""EpnAlert: mail a helpdesk about EPNs awaiting repatriation that no project claims.

Reads top to bottom:

- :mod:`.agent` - the OCS shell (ops ``check``, ``send``, the daily ``run`` process).
- :mod:`.cli` - ``hpcsync epnalert --config config.yml [--send]``.
- :mod:`.options` - the arguments (or ASSyncy's ``config.yml``) and the engine they build.
- :mod:`.engine` - listing, enrichment from the portal, the alert ledger, the decision to mail.
- :mod:`.mail` - Jinja2 templates (ASSyncy's accepted) and SMTP with STARTTLS/SSL and auth.
"""
