"""Service units: one price table, one formula, unknown partitions priced 0.

``amount = round(price[partition] x AllocCPUS x (End - Start) in hours, 2)``, rounded half
up like the banking plugin (Python's ``round`` on floats, which the scripts used, rounds
half to even and inherits binary error). A partition missing from the table costs 0 -
the original ``full_sync`` charged it 1 while ``sync_running_jobs`` charged 0.

Prices come from a profile's ``prices`` mapping, or from the ``[PartitionPrice]`` table of
the banking plugin's ``bank-config.toml`` (parsed as TOML, not by substring matching).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

from hpcsync.agents.core.errors import ConfigError
from hpcsync.agents.core.files import read_operator_file

CENT = Decimal("0.01")
_SECONDS_PER_HOUR = Decimal(3600)


def to_price(value: object, where: str) -> Decimal:
    """A non-negative, finite decimal price; ConfigError naming ``where`` otherwise."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: price must be a number, got {value!r}")
    try:
        price = Decimal(str(value).strip())
    except InvalidOperation:
        raise ConfigError(f"{where}: price must be a number, got {value!r}") from None
    if not price.is_finite() or price < 0:
        raise ConfigError(f"{where}: price must be a finite number >= 0, got {value!r}")
    return price


class PriceTable:
    """Per-partition price of one CPU-hour, in service units."""

    def __init__(self, prices: Mapping[str, object], source: str = "price table"):
        self.source = source
        self.prices: dict[str, Decimal] = {
            str(name): to_price(value, f"{source}: partition {name!r}") for name, value in prices.items()
        }
        #: Partitions seen that the table does not list (each priced 0), for the report.
        self.unknown_seen: set[str] = set()

    def __repr__(self) -> str:
        return f"PriceTable({len(self.prices)} partitions from {self.source})"

    def price(self, partition: str) -> Decimal:
        found = self.prices.get(partition)
        if found is None:
            self.unknown_seen.add(partition)
            return Decimal(0)
        return found

    def amount(self, partition: str, cpus: int, seconds: float | int) -> Decimal:
        """Service units of a job: price x CPUs x hours, rounded half up to cents."""
        hours = Decimal(str(seconds)) / _SECONDS_PER_HOUR
        return (self.price(partition) * cpus * hours).quantize(CENT, rounding=ROUND_HALF_UP)


def load_price_file(path: str | Path) -> PriceTable:
    """The ``[PartitionPrice]`` table of a TOML file such as ``/etc/slurm/bank-config.toml``."""
    path = Path(path).expanduser()
    data = read_operator_file(path, "price file", ConfigError)
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"price file {path} is not valid TOML: {exc}") from None
    table = document.get("PartitionPrice")
    if not isinstance(table, dict):
        raise ConfigError(f"price file {path} has no [PartitionPrice] table of partition = price lines")
    return PriceTable(table, source=f"price file {path}")
