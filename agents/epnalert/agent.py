"""EpnAlert OCS agent: mail once about EPNs waiting at the Synchrotron that no project claims.

Op declarations only; :class:`~.engine.EpnAlertEngine` does the work.
"""

from __future__ import annotations

import argparse

from ocs import ocs_agent

from hpcsync.agents.core.jobs import Result
from hpcsync.agents.core.skeleton import AgentShell, Feed, process, run_agent, task

from .options import EpnAlertOptions


class EpnAlert(AgentShell):
    """Alert a helpdesk about unclaimed EPNs, once per EPN (then after a reminder interval).

    Args:
        agent (OCSAgent): the OCS agent object.
        args (argparse.Namespace): parsed arguments (see :func:`make_parser`).
    """

    agent_class = "EpnAlert"
    options_class = EpnAlertOptions
    feeds = (Feed("alerts", agg_params={"frame_length": 60}),)

    @task(changes_state=True)
    @ocs_agent.param("send", default=False, type=bool)
    def check(self, session, params):
        """check(send=False)

        **Task** - List the EPN directories on the remote, find those no project claims,
        add the portal's visit details and render the mail. Sends it only with
        ``send=True`` (then the EPNs are recorded as alerted).

        Parameters:
            send (bool): send the mail (default False: render only, record nothing).

        Notes:
            Example of ``session.data``::

                >>> response.session['data']
                {'operation': 'check', 'dry_run': True, 'send': False, 'listed': 12,
                 'unknown': ['14444a', '15001b'], 'due': ['14444a'], 'not_due': ['15001b'],
                 'with_details': ['14444a'], 'refused': [], 'portal_error': None,
                 'sent_to': None, 'text': 'EPNs are waiting ...', 'activity': 'done'}
        """
        return self.jobs.run(
            session, lambda job: job.engine.check(send=params["send"]), operation="check", dry_run=not params["send"]
        )

    @task(changes_state=True)
    def send(self, session, params):
        """send()

        **Task** - The check, and the mail sent if any EPN is due (``check(send=True)``).

        Notes:
            Example of ``session.data``::

                >>> response.session['data']
                {'operation': 'send', 'due': ['14444a'],
                 'sent_to': 'SMTP server smtp.example.edu:587 for help@example.edu',
                 'activity': 'done'}
        """
        return self.jobs.run(session, lambda job: job.engine.check(send=True), operation="send")

    @task(changes_state=False)
    def alerts(self, session, params):
        """alerts()

        **Task** - The EPNs alerted so far: first and last time, how often.

        Notes:
            Example of ``session.data``::

                >>> response.session['data']
                {'alerts': [{'epn': '14444a', 'first_alerted_at': 1767225600.0,
                             'last_alerted_at': 1767225600.0, 'times_alerted': 1}]}
        """
        return self.jobs.run(
            session, lambda job: Result(True, "EPNs alerted", {"alerts": job.engine.alerts()}), operation="alerts"
        )

    @process(changes_state=True, startup=lambda args: args.auto_run)
    @ocs_agent.param("send", default=None, type=bool)
    def run(self, session, params):
        """run(send=None)

        **Process** - ASSyncy's cron entry as a process: the check once a day at
        ``--run-at`` (local time). Stops within a second.

        Parameters:
            send (bool): send the mail (default: the agent's ``--run-send``, off).

        Notes:
            Example of ``session.data``::

                >>> response.session['data']
                {'activity': 'waiting', 'interval': 60.0,
                 'last_cycle': {'ok': True, 'message': 'next check tomorrow at 01:00'}}
        """
        send = self.options.run_send if params["send"] is None else params["send"]
        return self.jobs.repeat(
            session,
            lambda job: job.engine.daily(send=send),
            operation="run",
            interval=60.0,
            dry_run=not send,
            one_engine=True,
            record_cycles=False,
        )


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The EpnAlert agent's arguments (site-config ``arguments:``)."""
    if parser is None:
        parser = argparse.ArgumentParser()
    EpnAlertOptions.add_arguments(parser.add_argument_group("Agent Options"))
    return parser


def main(args: list[str] | None = None) -> None:
    run_agent(EpnAlert, make_parser, args)


if __name__ == "__main__":
    main()
