"""The MpistatReporter OCS agent: op declarations over :class:`~.engine.MpistatEngine`.

From mpistat/wrstat dumps: lurge's per-group usage report (TSV and the shared db), the
project inspector, the group splitter with its upload, and a ``run`` process that waits
for a new complete set of dumps and runs the configured jobs.
"""

from __future__ import annotations

import argparse

from ocs import ocs_agent

from hpcsync.agents.core.skeleton import AgentShell, Feed, process, run_agent, task

from .options import MpistatOptions, is_date, parse_date


class MpistatReporter(AgentShell):
    """Group usage reports, project inspections and group splits from mpistat/wrstat dumps.

    Args:
        agent (OCSAgent): the OCS agent object.
        args (argparse.Namespace): parsed arguments (see :func:`make_parser`).
    """

    agent_class = "MpistatReporter"
    options_class = MpistatOptions
    feeds = (Feed("mpistat_stats", agg_params={"frame_length": 60}),)

    @task(changes_state=True)
    @ocs_agent.param("replace", default=False, type=bool)
    @ocs_agent.param("date", default=None, type=str, check=is_date)
    def report(self, session, params):
        """report(date=None, replace=False)

        **Task** - lurge's group report for the newest complete set of dumps (or the set of
        ``date``): per volume and group the used bytes (sum of size/nlink), the days since
        the last modification, the group's name and PI from LDAP, its quota and archive
        marker. Writes ``report-output-files/report-YYYYMMDD.tsv`` and the date's rows in
        the database (one transaction). A date already stored is refused unless
        ``replace=True``.

        Parameters:
            date (str): ``YYYY-MM-DD`` of the set (default: the newest complete set within
                ``--max-days-ago``).
            replace (bool): replace a date already stored (default False).

        Notes:
            While reading, ``progress`` shows the current file, lines read, lines/s and
            malformed lines. Malformed lines are skipped and counted; the op then ends
            ``degraded``. Example of ``session.data``::

                >>> response.session['data']
                {'operation': 'report', 'dry_run': False, 'date': '2026-11-30',
                 'volumes': ['scratch114'], 'files': ['/data/20261130_114.dat.gz'],
                 'groups': 212, 'unknown_gids': 3, 'lines_read': 10000002,
                 'lines_per_s': 2400000,
                 'malformed': {'total': 2, 'wrong_column_count': 1, 'undecodable_path': 1,
                               'non_integer_numeric_field': 0, 'unknown_entry_type': 0,
                               'first': ['20261130_114.dat.gz:3: wrong column count',
                                         '20261130_114.dat.gz:9: undecodable path']},
                 'tsv': '/var/lib/mpistat/report-output-files/report-20261130.tsv',
                 'warnings': {'1': 209, '2': 2, '3': 1}, 'elapsed_s': 4.2,
                 'inflate': 'isal', 'activity': 'done', 'timestamp': 1764547200.0}
        """
        date = parse_date(params["date"])
        return self.jobs.run(session, lambda job: job.engine.report(date=date, replace=params["replace"]),
                             operation="report")  # fmt: skip

    @task(changes_state=True)
    @ocs_agent.param("generic", default=False, type=bool)
    @ocs_agent.param("depth", default=None, type=int, check=lambda n: n >= 1)
    @ocs_agent.param("date", default=None, type=str, check=is_date)
    def inspect(self, session, params):
        """inspect(date=None, depth=None, generic=False)

        **Task** - The project inspector: per directory under the ``--inspect-root``
        roots, to ``depth`` levels (one more under ``users``), the total size, BAM, CRAM,
        VCF, PED/BED, SAM and FASTQ sizes, file count, days since the last modification,
        PI and group. Writes ``inspections/inspect-YYYYMMDD.tsv`` and replaces each
        volume's directories in the database all at once (the old set stays if the run
        fails).

        Parameters:
            date (str): ``YYYY-MM-DD`` of the set (default: the newest complete set).
            depth (int): directory depth (default: ``--inspect-depth``).
            generic (bool): one path column instead of project and directory.

        Notes:
            >>> response.session['data']
            {'operation': 'inspect', 'date': '2026-11-30', 'volumes': ['scratch114'],
             'directories': {'scratch114': 48}, 'depth': 2, 'generic': False,
             'tsv': '/var/lib/mpistat/inspections/inspect-20261130.tsv',
             'malformed': {'total': 0, ...}, 'elapsed_s': 3.1, 'activity': 'done',
             'timestamp': 1764547200.0}
        """
        date = parse_date(params["date"])
        return self.jobs.run(
            session,
            lambda job: job.engine.inspect(date=date, depth=params["depth"], generic=params["generic"]),
            operation="inspect",
        )

    @task(changes_state=True)
    @ocs_agent.param("replace", default=False, type=bool)
    @ocs_agent.param("upload", default=True, type=bool)
    @ocs_agent.param("date", default=None, type=str, check=is_date)
    def split(self, session, params):
        """split(date=None, upload=True, replace=False)

        **Task** - The group splitter: one ``<group>.dat.gz`` per selected group (and the
        lines under ``--split-path-prefix``), ``index.txt`` with Treeserve's estimates,
        ``passwdfile`` and ``groupfile``, built in ``<split-dir>/YYYYMMDD``; then uploaded
        to ``--upload-url`` under ``YYYYMMDD/`` (index.txt last). A date already split or
        uploaded is refused unless ``replace=True``.

        Parameters:
            date (str): ``YYYY-MM-DD`` of the set (default: the newest complete set).
            upload (bool): upload when ``--upload-url`` is set (default True).
            replace (bool): split and upload a finished date again.

        Notes:
            >>> response.session['data']
            {'operation': 'split', 'date': '2026-11-30', 'directory': '/var/lib/mpistat/groups/20261130',
             'groups': 2, 'lines_read': 31, 'lines_written': 14, 'unknown_gid_lines': 0,
             'malformed': {'total': 0, ...}, 'uploaded': 5,
             'destination': 's3://branchserve/mpistat (endpoint http://127.0.0.1:9000)',
             'elapsed_s': 0.4, 'activity': 'done', 'timestamp': 1764547200.0}
        """
        date = parse_date(params["date"])
        return self.jobs.run(
            session,
            lambda job: job.engine.split(date=date, upload=params["upload"], replace=params["replace"]),
            operation="split",
        )

    @task(changes_state=False)
    def status(self, session, params=None):
        """status()

        **Task** - The newest complete set of dumps on disk and the newest report stored,
        so an operator sees whether a report is pending.

        Notes:
            >>> response.session['data']
            {'dump_dir': '/data/mpistat', 'volumes': ['scratch114'],
             'newest_set': {'date': '2026-11-30', 'files': ['/data/mpistat/20261130_114.dat.gz']},
             'latest_report': '2026-11-29', 'report_pending': True, 'activity': 'done',
             'timestamp': 1764547200.0}
        """
        return self.jobs.run(session, lambda job: job.engine.status(), operation="status")

    @process(changes_state=True, startup=lambda args: args.auto_run)
    @ocs_agent.param("interval", default=None, type=float, check=lambda s: s >= 1)
    def run(self, session, params):
        """run(interval=None)

        **Process** - Every ``interval`` seconds, look for a complete set of dumps newer
        than the newest stored report and run the ``--run-jobs`` (report, inspect, split)
        on it. A set already reported is left alone.

        Parameters:
            interval (float): seconds between looks (default: ``--interval``).

        Notes:
            >>> response.session['data']
            {'activity': 'waiting', 'interval': 3600.0, 'jobs': ['report'],
             'counters': {'cycles': 3},
             'last_cycle': {'ok': True, 'date': '2026-11-30', 'ran': ['report'],
                            'finished_at': 1764547200.0,
                            'message': 'report for 2026-11-30: 212 groups ...'},
             'next_run_at': 1764550800.0, 'timestamp': 1764547200.0}
        """
        return self.jobs.repeat(
            session,
            lambda job: job.engine.run_new(self.options.run_jobs),
            operation="run",
            interval=params["interval"] or self.options.interval,
            fields={"jobs": list(self.options.run_jobs)},
        )


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The MpistatReporter agent's arguments (site-config ``arguments:``)."""
    if parser is None:
        parser = argparse.ArgumentParser()
    MpistatOptions.add_arguments(parser.add_argument_group("Agent Options"))
    return parser


def main(args: list[str] | None = None) -> None:
    run_agent(MpistatReporter, make_parser, args)


if __name__ == "__main__":
    main()
