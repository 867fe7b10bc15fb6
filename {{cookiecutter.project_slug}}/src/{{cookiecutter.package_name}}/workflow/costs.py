"""What tuning, training and the endpoint may cost, before anything is launched, and the budget.

An upper bound from config.toml alone: instance type x instance count x jobs x max run time, at the
prices `pricing.hourly_prices` finds (the AWS Price List API, its cache, or config.toml's [prices]); each
line names its price's source. Spot training is billed for less (the saving varies), so it is shown at
full price. Built-in Debugger and Profiler rules run at no extra charge. A serverless endpoint is billed
per request and per GB-second of compute, which no instance-hour figure describes: it is listed at 0
with that said.

`over_budget` is what `tune`, `train` and `deploy` ask before they launch: the step's upper bound plus
what the project has spent so far (`status`'s figures), against [budget] usd.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..aws import pricing
from ..config import ConfigError, ProjectConfig

# The steps a launch command starts, and the Price List use of each.
STEPS = ("tuning", "training", "endpoint")
USES = {"tuning": "training", "training": "training", "endpoint": "hosting"}
SERVERLESS_SOURCE = "serverless: billed per request, not estimated"

Prices = Mapping[tuple[str, str], pricing.Price]


@dataclass(frozen=True)
class CostLine:
    step: str
    instance_type: str
    instance_hours: float
    usd_per_hour: float
    source: str = pricing.CONFIG_SOURCE

    @property
    def usd(self) -> float:
        return self.instance_hours * self.usd_per_hour


def wanted_prices(config: ProjectConfig) -> list[tuple[str, str]]:
    """The (instance type, use) pairs the estimate needs."""
    instances = config.section("instances")
    return [(instances[step]["type"], USES[step]) for step in STEPS]


def _price(config: ProjectConfig, prices: Prices | None, instance_type: str, use: str) -> pricing.Price:
    found = (prices or {}).get((instance_type, use)) or pricing.config_price(config, instance_type)
    if found is None:
        raise ConfigError(
            f"no price for {instance_type} in [prices] of config.toml; add it (USD per instance-hour)"
        )
    return found


def estimate(
    config: ProjectConfig, endpoint_hours: float | None = None, prices: Prices | None = None
) -> list[CostLine]:
    """One line per step: tuning (all jobs), training, the endpoint for `endpoint_hours` (default:
    [budget] endpoint_hours). `prices` as `pricing.hourly_prices` returns them; default: config.toml's."""
    if endpoint_hours is None:
        endpoint_hours = config.settings.budget.endpoint_hours
    instances = config.section("instances")
    max_run_hours = config.section("jobs")["max_run_seconds"] / 3600
    max_jobs = config.section("tuning")["max_jobs"]
    hours = {"tuning": max_jobs * max_run_hours, "training": max_run_hours, "endpoint": endpoint_hours}
    lines = []
    for step in STEPS:
        machines = instances[step]
        if step == "endpoint" and config.settings.endpoint.serverless:
            lines.append(CostLine(step, "serverless", endpoint_hours, 0.0, SERVERLESS_SOURCE))
            continue
        price = _price(config, prices, machines["type"], USES[step])
        lines.append(
            CostLine(
                step, machines["type"], hours[step] * machines["count"], price.usd_per_hour, price.source
            )
        )
    return lines


def total(lines: list[CostLine]) -> float:
    return sum(line.usd for line in lines)


def step_of(command: str) -> str:
    """The step a launch command starts: tune -> tuning, train -> training, deploy -> endpoint."""
    return {"tune": "tuning", "train": "training", "deploy": "endpoint"}[command]


def over_budget(config: ProjectConfig, command: str, lines: list[CostLine], spent_usd: float) -> str | None:
    """One line saying why `command` would go over [budget] usd; None when it fits (or no budget)."""
    budget = config.settings.budget.usd
    if not budget:
        return None
    (line,) = [line for line in lines if line.step == step_of(command)]
    if spent_usd + line.usd <= budget:
        return None
    return (
        f"{command} may cost up to {line.usd:.2f} USD ({line.source}) on top of {spent_usd:.2f} USD spent so "
        f"far, over [budget] usd = {budget:g} in config.toml: raise the budget, lower the step's size "
        "(max_jobs, max_run_seconds, instance count, [budget] endpoint_hours), or pass --yes"
    )


# --- what running resources have cost so far -------------------------------------------------------


def _utc(value: Any) -> datetime.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def usage_usd(
    start: Any,
    end: Any,
    instance_count: int,
    price: pricing.Price,
    now: datetime.datetime | None = None,
    billable_seconds: float | None = None,
) -> float:
    """instance-hours x price from a start and an end (or now, while running); SageMaker's own billable
    seconds win when it reports them (spot jobs are billed for less than they ran)."""
    if billable_seconds is not None:
        return billable_seconds / 3600 * instance_count * price.usd_per_hour
    began = _utc(start)
    if began is None:
        return 0.0
    ended = _utc(end) or now or datetime.datetime.now(datetime.timezone.utc)
    seconds = max((ended - began).total_seconds(), 0.0)
    return seconds / 3600 * instance_count * price.usd_per_hour
