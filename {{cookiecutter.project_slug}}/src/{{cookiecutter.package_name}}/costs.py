"""What tuning, training and a day of endpoint may cost, before anything is launched.

An upper bound from config.toml alone: instance type x instance count x jobs x
max run time, at the approximate on-demand prices in its [prices] table. Spot
training is billed for less (the saving varies), so it is shown at full price.
Built-in Debugger and Profiler rules run at no extra charge.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ConfigError, ProjectConfig


@dataclass(frozen=True)
class CostLine:
    step: str
    instance_type: str
    instance_hours: float
    usd_per_hour: float

    @property
    def usd(self) -> float:
        return self.instance_hours * self.usd_per_hour


def _price(config: ProjectConfig, instance_type: str) -> float:
    prices = config.data.get("prices", {})
    if instance_type not in prices:
        raise ConfigError(
            f"no price for {instance_type} in [prices] of config.toml; add it (USD per instance-hour)"
        )
    return float(prices[instance_type])


def estimate(config: ProjectConfig, endpoint_hours: float = 24.0) -> list[CostLine]:
    """One line per step: tuning (all jobs), training, the endpoint for `endpoint_hours`."""
    instances = config.section("instances")
    max_run_hours = config.section("jobs")["max_run_seconds"] / 3600
    max_jobs = config.section("tuning")["max_jobs"]
    steps = [
        ("tuning", instances["tuning"], max_jobs * max_run_hours),
        ("training", instances["training"], max_run_hours),
        ("endpoint", instances["endpoint"], endpoint_hours),
    ]
    return [
        CostLine(step, machines["type"], hours * machines["count"], _price(config, machines["type"]))
        for step, machines, hours in steps
    ]


def total(lines: list[CostLine]) -> float:
    return sum(line.usd for line in lines)
