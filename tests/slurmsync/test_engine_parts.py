"""Unit tests of the SlurmSync engine parts: sacct parsing, node lists, time zones, prices, profiles."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from hpcsync.agents.core.errors import ConfigError
from hpcsync.agents.slurmsync.clock import ClusterClock, api_time
from hpcsync.agents.slurmsync.pricing import PriceTable, load_price_file
from hpcsync.agents.slurmsync.profiles import BUILTIN_PROFILES, load_profile_file, select_profile
from hpcsync.agents.slurmsync.slurm import (
    SacctDump,
    SacctFormatError,
    expand_nodes,
    parse_sacct_line,
    parse_sacct_output,
)

LA = ClusterClock("America/Los_Angeles")

LINE = (
    "1234|2024-07-01T09:59:00|2024-07-01T10:00:00|2024-07-01T12:30:00|41234|pc_alpha|COMPLETED|savio2|"
    "savio_normal|n0[061-062].savio2,n0100.savio2|48|3|3|432000|5-00:00:00"
)


def test_sacct_line_is_read_in_the_cluster_zone_and_sent_as_utc():
    job = parse_sacct_line(LINE, LA, "test line 1")
    # 10:00 in Los Angeles in July (PDT, UTC-7) is 17:00 UTC - the original scripts sent 10:00.
    assert job.start == datetime(2024, 7, 1, 17, 0, tzinfo=UTC)
    assert api_time(job.start) == "2024-07-01T17:00:00Z"
    assert job.end - job.start == (datetime(2024, 7, 1, 19, 30) - datetime(2024, 7, 1, 17, 0))
    assert (job.job_id, job.uid, job.account, job.state, job.partition, job.qos) == (
        "1234", "41234", "pc_alpha", "COMPLETED", "savio2", "savio_normal",
    )  # fmt: skip
    assert (job.alloc_cpus, job.req_nodes, job.alloc_nodes, job.cpu_time_raw) == (48, 3, 3, 432000)


def test_ranged_node_lists_are_expanded_not_dropped():
    job = parse_sacct_line(LINE, LA, "x")
    assert job.nodes == ("n0061.savio2", "n0062.savio2", "n0100.savio2")
    assert expand_nodes("n[001-003,010]") == ("n001", "n002", "n003", "n010")
    assert expand_nodes("None assigned") == ()


def test_elapsed_time_across_a_dst_change_is_real_time():
    # 2024-11-03 01:30 PDT -> 03:30 PST is 3 hours of wall time, not 2.
    line = LINE.replace("2024-07-01T10:00:00", "2024-11-03T00:30:00").replace(
        "2024-07-01T12:30:00", "2024-11-03T02:30:00"
    )
    line = line.replace("2024-07-01T09:59:00", "2024-11-03T00:00:00")
    job = parse_sacct_line(line, LA, "x")
    assert (job.end - job.start).total_seconds() == 3 * 3600


def test_machine_local_zone_is_the_default(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    import time

    time.tzset()
    try:
        job = parse_sacct_line(LINE, ClusterClock(None), "x")
        assert api_time(job.start) == "2024-07-01T01:00:00Z"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_states_steps_and_unknown_times():
    cancelled = parse_sacct_line(LINE.replace("|COMPLETED|", "|CANCELLED by 1234|"), LA, "x")
    assert cancelled.state == "CANCELLED"
    running = parse_sacct_line(
        LINE.replace("2024-07-01T12:30:00", "Unknown").replace("|COMPLETED|", "|RUNNING|"), LA, "x"
    )
    assert running.end is None and running.active
    assert parse_sacct_line(LINE.replace("1234|", "1234.batch|", 1), LA, "x") is None
    # `sacct -p` (not -P) ends lines with a separator: accepted.
    assert parse_sacct_line(LINE + "|", LA, "x").job_id == "1234"


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("1|2|3", "expected 16 fields"),
        (LINE.replace("|48|", "|forty|"), "field AllocCPUS 'forty'"),
        (LINE.replace("2024-07-01T10:00:00", "07/01/24 10:00"), "field Start '07/01/24 10:00'"),
        (LINE.replace("n0[061-062]", "n0[061-"), "field NodeList"),
    ],
)
def test_malformed_lines_name_the_line_and_field(line, needle):
    with pytest.raises(SacctFormatError) as info:
        parse_sacct_output(["", LINE, line], LA, "sacct -A pc_alpha output")
    assert "sacct -A pc_alpha output line 3" in str(info.value)
    assert needle in str(info.value)


def with_ids(sacct_id: str, raw: str) -> str:
    """LINE as sacct prints it with JobIDRaw asked for: JobID first, the raw id last."""
    return sacct_id + LINE[LINE.index("|") :] + "|" + raw


def test_array_tasks_and_het_components_are_keyed_by_their_raw_job_id():
    # sacct -X prints array task 6_1 (raw id 8) and het-job component 123+1 (raw id 124).
    task = parse_sacct_line(with_ids("6_1", "8"), LA, "x")
    assert (task.job_id, task.sacct_id) == ("8", "6_1")
    lines = [with_ids("123+0", "123"), with_ids("123+1", "124"), with_ids("123+0.batch", "123.batch")]
    het = parse_sacct_output([*lines, with_ids("6_1.extern", "8.extern"), with_ids("6_2.0", "6.0")], LA, "x")
    assert [(j.job_id, j.sacct_id) for j in het] == [("123", "123+0"), ("124", "123+1")]  # steps skipped
    # `sacct -p` ends the line with a separator; a plain job's raw id is its JobID.
    assert parse_sacct_line(with_ids("1234", "1234") + "|", LA, "x").job_id == "1234"


def test_saved_dumps_in_the_seed_15_field_shape_still_read(tmp_path):
    old = parse_sacct_line(LINE.replace("1234|", "6_1|", 1), LA, "x")  # no JobIDRaw: JobID it is
    assert (old.job_id, old.sacct_id, old.alloc_cpus) == ("6_1", "6_1", 48)
    dump = tmp_path / "sacct.txt"
    dump.write_text(LINE + "\n" + LINE.replace("1234|", "1235|", 1) + "|\n" + with_ids("6_1", "8") + "\n")
    jobs = SacctDump(dump, LA).jobs_by_id(["1234", "1235", "8", "6_1"])
    assert [(j.job_id, j.sacct_id) for j in jobs] == [("1234", "1234"), ("1235", "1235"), ("8", "6_1")]


def test_price_table_formula_half_up_and_unknown_partition_is_free():
    prices = PriceTable({"savio2": "1.00", "savio2_gpu": 2.67})
    # 48 CPUs x 2.5 h x 1.00
    assert prices.amount("savio2", 48, 2.5 * 3600) == Decimal("120.00")
    # 0.005 rounds up (half up), where float round() gives 0.0
    assert PriceTable({"p": "0.018"}).amount("p", 1, 1000) == Decimal("0.01")
    assert prices.amount("nosuch", 48, 3600) == Decimal("0.00")
    assert prices.unknown_seen == {"nosuch"}


def test_price_file_is_parsed_as_toml(tmp_path):
    good = tmp_path / "bank-config.toml"
    good.write_text("[Enable]\njob_submit = true\n[PartitionPrice]\nsavio = 0.75\nsavio2 = 1.00\n# savio3 = 9\n")
    table = load_price_file(good)
    assert table.prices == {"savio": Decimal("0.75"), "savio2": Decimal("1.0")}
    bad = tmp_path / "bad.toml"
    bad.write_text("[PartitionPrice]\nsavio = 'cheap'\n")
    with pytest.raises(ConfigError, match="partition 'savio': price must be a number"):
        load_price_file(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_price_file(tmp_path / "missing.toml")
    (tmp_path / "none.toml").write_text("[Other]\n")
    with pytest.raises(ConfigError, match=r"no \[PartitionPrice\] table"):
        load_price_file(tmp_path / "none.toml")


def test_builtin_profiles_resources_and_period_start():
    mybrc, mylrc = BUILTIN_PROFILES["mybrc"], BUILTIN_PROFILES["mylrc"]
    assert mybrc.resource_for("pc_alpha") == "Savio Compute"
    assert mybrc.resource_for("vector_x") == "Vector Compute"
    assert mybrc.resource_for("lr_x") == "LR Compute"
    assert mylrc.resource_for("lr_x") == "LAWRENCIUM Compute"
    assert mybrc.excluded_from_reverse_sync("vector_abc") and mybrc.excluded_from_reverse_sync("abc")
    assert not mybrc.excluded_from_reverse_sync("abcd")
    clock = ClusterClock("America/Los_Angeles")
    may = datetime(2025, 5, 31, 12, tzinfo=UTC)
    june = datetime(2025, 6, 1, 12, tzinfo=UTC)
    assert clock.period_start(6, now=may) == datetime(2024, 6, 1, 7, tzinfo=UTC)  # midnight PDT
    assert clock.period_start(6, now=june) == datetime(2025, 6, 1, 7, tzinfo=UTC)
    assert clock.period_start(10, now=june) == datetime(2024, 10, 1, 7, tzinfo=UTC)


def test_profile_file_extends_and_validates(tmp_path):
    path = tmp_path / "profiles.yaml"
    path.write_text(
        "profiles:\n  staging:\n    extends: mylrc\n    base_url: http://127.0.0.1:9/api\n"
        "    prices: {lr3: 1.5}\n    period_start: '07-15'\n"
    )
    profile = select_profile(None, str(path))  # the only profile in the file
    assert profile.name == "staging" and profile.base_url == "http://127.0.0.1:9/api/"
    assert (profile.period_start_month, profile.period_start_day) == (7, 15)
    assert profile.resource_for("lr_x") == "LAWRENCIUM Compute"
    assert profile.price_table().amount("lr3", 2, 3600) == Decimal("3.00")
    assert select_profile("mybrc", str(path)).name == "mybrc"

    cases = {
        "profiles:\n  x:\n    extends: mybrc\n    colour: blue\n": "profile x: unknown key(s) colour",
        "profiles:\n  x:\n    base_url: ftp://x\n    period_start: 06-01\n": "base_url must be an http",
        "profiles:\n  x:\n    extends: mybrc\n    period_start: 13-01\n": "period_start must be MM-DD",
        "profiles:\n  x:\n    extends: mybrc\n    prices: {savio: free}\n": "partition 'savio': price must be a number",
        "profiles: [\n": "is not valid YAML",
        "targets: {}\n": "expected a top-level 'profiles:'",
        "profiles:\n  x:\n    period_start: 06-01\n": "base_url is required",
        "profiles:\n  x:\n    extends: mybrc\n    periodic_prefixes: pc_\n": "periodic_prefixes must be a list",
        "profiles:\n  x:\n    extends: mybrc\n    server_time_zone: Mars/Olympus\n": "not an IANA zone name",
    }
    for text, needle in cases.items():
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_profile_file(path)
        assert str(path) in str(info.value) and needle in str(info.value), text
    with pytest.raises(ConfigError, match="does not exist"):
        load_profile_file(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown target 'nope'"):
        select_profile("nope")


def test_user_times_are_cluster_local_unless_they_carry_an_offset():
    assert LA.parse_user_time("2024-07-01", "start") == datetime(2024, 7, 1, 7, tzinfo=UTC)
    assert LA.parse_user_time("2024-07-01T10:00:00", "start") == datetime(2024, 7, 1, 17, tzinfo=UTC)
    assert LA.parse_user_time("2024-07-01T10:00:00Z", "start") == datetime(2024, 7, 1, 10, tzinfo=UTC)
    assert LA.sacct_arg(datetime(2024, 7, 1, 17, tzinfo=UTC)) == "2024-07-01T10:00:00"
    with pytest.raises(ConfigError, match="start '2024-13-01' is not a time"):
        LA.parse_user_time("2024-13-01", "start")
    with pytest.raises(ConfigError, match="not a known IANA zone"):
        ClusterClock("Mars/Olympus")


def test_the_servers_charge_rule_by_prefix_and_allocation_dates():
    from hpcsync.agents.slurmsync.charging import ChargeRule
    from hpcsync.agents.slurmsync.coldfront import Allocation

    def rule(project: str, start: str | None, end: str | None) -> ChargeRule:
        allocation = Allocation(1, project, "Savio Compute", start, "Active", end)
        return ChargeRule.of(allocation, ("fc_", "ic_", "pc_"), "America/Los_Angeles")

    t = datetime(2025, 1, 10, tzinfo=UTC)
    assert rule("pc_a", "2024-06-01", "2025-05-31").why_uncharged(t, t, t) is None
    assert "has no end date" in rule("pc_a", "2024-06-01", None).why_uncharged(t, t, t)
    assert rule("pc_a", "2024-06-01", None).why_uncharged(t, t, None, put=False) is None  # a POST: no end check
    assert rule("ac_a", "2024-06-01", None).why_uncharged(t, t, t) is None  # not periodic
    assert "has no start date" in rule("ac_a", None, None).why_uncharged(t, t, t)
    # 2025-01-10 ends at 08:00 UTC the next day (PST): a job ending 07:59:59 is in, 08:00:01 out.
    last = rule("fc_a", "2024-06-01", "2025-01-10")
    assert last.why_uncharged(t, t, datetime(2025, 1, 11, 7, 59, 59, tzinfo=UTC)) is None
    assert "ended after" in last.why_uncharged(t, t, datetime(2025, 1, 11, 8, 0, 1, tzinfo=UTC))
    assert "started before" in rule("fc_a", "2025-01-11", None).why_uncharged(t, t, t)
