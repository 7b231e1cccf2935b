"""Targets: which API, which allocation period, which resource per project, which prices.

Two profiles are built in, ``mybrc`` and ``mylrc``, with the values the original scripts
hard-coded. A YAML profile file adds profiles or adjusts built-in ones::

    profiles:
      mybrc-staging:
        extends: mybrc                       # optional: start from a built-in profile
        base_url: https://mybrc-staging.example.org/api/
        period_start: "06-01"                # MM-DD, cluster time
        resources: {pc: Savio Compute, vector: Vector Compute}
        default_resource: "{PREFIX} Compute" # projects whose prefix is not listed
        prices: {savio: 0.75, savio2: 1.00}  # or price_file: /etc/slurm/bank-config.toml
        reverse_sync_exclude: [abc, "vector_*"]
        status_map: {COMPLETED: COMPLETING}
        periodic_prefixes: [fc_, ic_, pc_]   # allowances charged only within the allocation's end date
        server_time_zone: America/Los_Angeles # the server's DISPLAY_TIME_ZONE (allocation dates)

Every mistake is reported with the file, the profile and the key.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from hpcsync.agents.core.errors import ConfigError
from hpcsync.agents.core.files import read_operator_text

from .pricing import PriceTable, load_price_file

#: Where the banking plugin keeps its prices; the original scripts' default.
BANK_CONFIG = "/etc/slurm/bank-config.toml"

# The jobcomp banking plugin records a finished job as COMPLETING (the state Slurm reports
# while the job is being torn down), and the original running-jobs sync wrote the same.
# Using one vocabulary keeps the API's job lists and reports consistent.
_BANKING_STATUS_MAP = {"COMPLETED": "COMPLETING"}
#: myBRC's periodic computing allowances (FCA, ICA, PCA); ``ac_``/``co_`` are not periodic.
PERIODIC_PREFIXES = ("fc_", "ic_", "pc_")


@dataclass(frozen=True)
class Profile:
    """One target API and how to account for it."""

    name: str
    base_url: str
    period_start_month: int
    period_start_day: int = 1
    resources: Mapping[str, str] = field(default_factory=dict)
    default_resource: str = "{PREFIX} Compute"
    prices: Mapping[str, Any] | None = None
    price_file: str | None = BANK_CONFIG
    reverse_sync_exclude: tuple[str, ...] = ()
    status_map: Mapping[str, str] = field(default_factory=lambda: dict(_BANKING_STATUS_MAP))
    #: project prefixes of the server's periodic computing allowances: their jobs are charged
    #: only if the allocation has an end date and they ended by it
    periodic_prefixes: tuple[str, ...] = PERIODIC_PREFIXES
    #: the server's display time zone: allocation dates are its days
    server_time_zone: str = "America/Los_Angeles"
    source: str = "built-in"

    def resource_for(self, project: str) -> str:
        """The compute resource of a project, chosen by its name's prefix (``pc_x`` -> ``pc``)."""
        prefix = project.split("_", 1)[0].lower()
        return self.resources.get(prefix) or self.default_resource.replace("{PREFIX}", prefix.upper())

    def excluded_from_reverse_sync(self, project: str) -> bool:
        return any(fnmatch.fnmatchcase(project, pattern) for pattern in self.reverse_sync_exclude)

    def price_table(self, price_file: str | None = None) -> PriceTable:
        """The one price table: an explicit ``price_file``, else the profile's prices or file."""
        if price_file:
            return load_price_file(price_file)
        if self.prices is not None:
            return PriceTable(self.prices, source=f"profile {self.name} ({self.source})")
        if self.price_file:
            return load_price_file(self.price_file)
        raise ConfigError(f"profile {self.name} has no prices: give prices, price_file or --price-file")

    def api_status(self, slurm_state: str) -> str:
        return self.status_map.get(slurm_state, slurm_state)


BUILTIN_PROFILES: dict[str, Profile] = {
    "mybrc": Profile(
        name="mybrc",
        base_url="https://mybrc.brc.berkeley.edu/api/",
        period_start_month=6,
        resources={
            "ac": "Savio Compute",
            "co": "Savio Compute",
            "fc": "Savio Compute",
            "ic": "Savio Compute",
            "pc": "Savio Compute",
            "vector": "Vector Compute",
            "abc": "ABC Compute",
        },
        reverse_sync_exclude=("abc", "vector_*"),
    ),
    "mylrc": Profile(
        name="mylrc",
        base_url="https://mylrc.lbl.gov/api/",
        period_start_month=10,
        resources={"ac": "LAWRENCIUM Compute", "lr": "LAWRENCIUM Compute", "pc": "LAWRENCIUM Compute"},
    ),
}

_KEYS = {
    "extends",
    "base_url",
    "period_start",
    "resources",
    "default_resource",
    "prices",
    "price_file",
    "reverse_sync_exclude",
    "status_map",
    "periodic_prefixes",
    "server_time_zone",
}
_PERIOD = re.compile(r"^(\d{1,2})-(\d{1,2})$")


def load_profile_file(path: str | Path) -> dict[str, Profile]:
    """All profiles of a YAML profile file (``profiles: {name: {...}}``)."""
    path = Path(path).expanduser()
    text = read_operator_text(path, "profile file", ConfigError)
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"profile file {path} is not valid YAML: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("profiles"), dict) or not document["profiles"]:
        raise ConfigError(f"profile file {path}: expected a top-level 'profiles:' mapping of name -> settings")
    extra = set(document) - {"profiles"}
    if extra:
        raise ConfigError(f"profile file {path}: unknown top-level key(s) {', '.join(sorted(map(str, extra)))}")
    return {str(name): _profile_from(str(name), body, path) for name, body in document["profiles"].items()}


def _profile_from(name: str, body: Any, path: Path) -> Profile:
    where = f"profile file {path}, profile {name}"
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a mapping of settings")
    unknown = set(body) - _KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} (known: {sorted(_KEYS)})")
    base_name = body.get("extends")
    if base_name is not None:
        if base_name not in BUILTIN_PROFILES:
            raise ConfigError(
                f"{where}: extends {base_name!r}, but the built-in profiles are {sorted(BUILTIN_PROFILES)}"
            )
        profile = replace(BUILTIN_PROFILES[base_name], name=name)
    else:
        for required in ("base_url", "period_start"):
            if required not in body:
                raise ConfigError(f"{where}: {required} is required (or 'extends: mybrc|mylrc')")
        profile = Profile(name=name, base_url="", period_start_month=1, resources={}, status_map={})
    changes: dict[str, Any] = {"source": str(path)}
    if "base_url" in body:
        url = body["base_url"]
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}: base_url must be an http:// or https:// URL, got {url!r}")
        changes["base_url"] = url if url.endswith("/") else url + "/"
    if "period_start" in body:
        match = _PERIOD.match(str(body["period_start"]).strip())
        month, day = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
        if not (1 <= month <= 12 and 1 <= day <= 28):
            raise ConfigError(f"{where}: period_start must be MM-DD (day 1-28), got {body['period_start']!r}")
        changes["period_start_month"], changes["period_start_day"] = month, day
    if "resources" in body:
        changes["resources"] = {k.lower(): v for k, v in _str_mapping(body["resources"], f"{where}: resources").items()}
    if "default_resource" in body:
        if not isinstance(body["default_resource"], str) or not body["default_resource"].strip():
            raise ConfigError(f"{where}: default_resource must be text such as '{{PREFIX}} Compute'")
        changes["default_resource"] = body["default_resource"]
    if "prices" in body:
        prices = body["prices"]
        if not isinstance(prices, dict):
            raise ConfigError(f"{where}: prices must be a mapping of partition -> price per CPU-hour")
        PriceTable(prices, source=where)  # validate now, so the error names the file
        changes["prices"] = dict(prices)
    if "price_file" in body:
        if body["price_file"] is not None and not isinstance(body["price_file"], str):
            raise ConfigError(f"{where}: price_file must be a path")
        changes["price_file"] = body["price_file"]
    if "reverse_sync_exclude" in body:
        patterns = body["reverse_sync_exclude"]
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ConfigError(f"{where}: reverse_sync_exclude must be a list of project names or patterns")
        changes["reverse_sync_exclude"] = tuple(patterns)
    if "status_map" in body:
        changes["status_map"] = _str_mapping(body["status_map"], f"{where}: status_map")
    if "periodic_prefixes" in body:
        prefixes = body["periodic_prefixes"]
        if not isinstance(prefixes, list) or not all(isinstance(p, str) and p for p in prefixes):
            raise ConfigError(f"{where}: periodic_prefixes must be a list of project name prefixes such as pc_")
        changes["periodic_prefixes"] = tuple(prefixes)
    if "server_time_zone" in body:
        zone = body["server_time_zone"]
        try:
            ZoneInfo(str(zone))
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"{where}: server_time_zone {zone!r} is not an IANA zone name") from None
        changes["server_time_zone"] = str(zone)
    return replace(profile, **changes)


def _str_mapping(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(f"{where} must be a mapping of text to text")
    return dict(value)


def select_profile(target: str | None, profile_file: str | None = None) -> Profile:
    """The profile named ``target`` (from the file first, then the built-ins).

    With a profile file that holds exactly one profile, ``target`` may be omitted.
    """
    available = dict(BUILTIN_PROFILES)
    from_file: dict[str, Profile] = {}
    if profile_file:
        from_file = load_profile_file(profile_file)
        available.update(from_file)
    if not target:
        if len(from_file) == 1:
            return next(iter(from_file.values()))
        raise ConfigError(f"no target given: choose one of {sorted(available)}")
    if target not in available:
        where = f" (profile file {profile_file})" if profile_file else ""
        raise ConfigError(f"unknown target {target!r}{where}: choose one of {sorted(available)}")
    return available[target]
