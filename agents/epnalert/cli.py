"""``hpcsync epnalert --config config.yml [--send]``: ASSyncy's ``epnalert`` without a hub.

Without ``--send`` the mail is rendered and printed, nothing is sent or recorded (ASSyncy
always sent: put ``--send`` in the crontab entry). ``--list-alerts`` prints what was alerted.
"""

from __future__ import annotations

import argparse
import json

from hpcsync.agents.core.skeleton import run_cli_job

from .options import EpnAlertOptions, add_arguments


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "epnalert", help="mail about EPNs no project claims (ASSyncy's epnalert; renders only unless --send)"
    )
    add_arguments(p)
    p.add_argument("--send", action="store_true", help="send the mail and record the EPNs as alerted")
    p.add_argument("--list-alerts", action="store_true", help="print the EPNs alerted so far and exit")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    options = EpnAlertOptions.from_args(args, instance_id="cli")
    if args.list_alerts:
        from hpcsync.agents.core.jobs import Result

        report = run_cli_job(
            options,
            lambda ctx: Result(True, "alerts", {"alerts": ctx.engine.alerts()}),
            agent_class="EpnAlert",
            operation="alerts",
            dry_run=True,
            changes_state=False,
        )
        for row in report.data["alerts"]:
            print(json.dumps(row))
        return 0
    report = run_cli_job(
        options,
        lambda ctx: ctx.engine.check(send=args.send),
        agent_class="EpnAlert",
        operation="send" if args.send else "check",
        dry_run=not args.send,
    )
    if not args.send and report.text:
        print(report.text)
    print(report.message())
    return 0 if report.ok else 1
