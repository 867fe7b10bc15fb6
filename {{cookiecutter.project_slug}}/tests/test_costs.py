"""`cost`: the estimate is instance-hours x the config's prices, and a missing price says what to add."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import project_module

costs = project_module("costs")
config_module = project_module("config")


def test_estimate_is_hours_times_price(project_config):
    lines = {line.step: line for line in costs.estimate(project_config, endpoint_hours=10)}
    instances = project_config.section("instances")
    max_run_hours = project_config.section("jobs")["max_run_seconds"] / 3600
    prices = project_config.section("prices")
    tuning = lines["tuning"]
    assert tuning.instance_hours == pytest.approx(
        project_config.section("tuning")["max_jobs"] * max_run_hours * instances["tuning"]["count"]
    )
    assert tuning.usd == pytest.approx(tuning.instance_hours * prices[instances["tuning"]["type"]])
    assert lines["endpoint"].instance_hours == pytest.approx(10 * instances["endpoint"]["count"])
    assert costs.total(list(lines.values())) == pytest.approx(sum(line.usd for line in lines.values()))


def test_missing_price_names_the_instance_type(project_config):
    data = dict(project_config.data)
    data["instances"] = {**data["instances"], "endpoint": {"type": "ml.zz9.xlarge", "count": 1}}
    config = dataclasses.replace(project_config, data=data)
    with pytest.raises(config_module.ConfigError, match=r"no price for ml\.zz9\.xlarge in \[prices\]"):
        costs.estimate(config)
