"""`cost`: the estimate is instance-hours x the config's prices, and a missing price says what to add."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import project_module

costs = project_module("workflow.costs")
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


# --- prices: the Price List API, its cache, config.toml's table ---------------------------------------

import datetime  # noqa: E402
import json  # noqa: E402

import boto3  # noqa: E402
from botocore.stub import ANY, Stubber  # noqa: E402

pricing = project_module("aws.pricing")


def price_document(usd: str) -> str:
    """One Price List product as get_products returns it (a JSON string), with an on-demand hourly rate."""
    return json.dumps(
        {
            "product": {"attributes": {"instanceName": "ml.m5.large", "component": "Hosting"}},
            "terms": {
                "OnDemand": {"T1": {"priceDimensions": {"D1": {"unit": "Hrs", "pricePerUnit": {"USD": usd}}}}}
            },
        }
    )


@pytest.fixture
def project_copy(project_root, tmp_path):
    from launch_helpers import copy_project

    return config_module.ProjectConfig.load(copy_project(project_root, tmp_path / "project"))


def stubbed_session(documents: list[str]):
    """A boto3 session whose pricing client answers get_products once with `documents`."""
    session = boto3.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1")
    client = session.client("pricing", region_name="us-east-1")
    stubber = Stubber(client)
    stubber.add_response(
        "get_products",
        {"PriceList": documents, "FormatVersion": "aws_v1"},
        {"ServiceCode": "AmazonSageMaker", "Filters": ANY, "FormatVersion": "aws_v1"},
    )
    stubber.activate()
    session.client = lambda *args, **kwargs: client
    return session, stubber


def test_api_prices_are_used_cached_and_named(project_copy):
    wanted = [("ml.m5.large", "hosting")]
    session, stubber = stubbed_session([price_document("0.0999"), price_document("0.1")])
    today = datetime.date(2026, 12, 1)
    prices = pricing.hourly_prices(project_copy, wanted, boto_session=session, today=today)
    stubber.assert_no_pending_responses()
    assert prices[wanted[0]] == pricing.Price(0.1, pricing.API_SOURCE)  # the higher: an upper bound
    # Asked again, offline: the cache answers, and says so.
    again = pricing.hourly_prices(project_copy, wanted, today=today + datetime.timedelta(days=3))
    assert again[wanted[0]].usd_per_hour == 0.1 and "cached 2026-12-01" in again[wanted[0]].source
    # Too old a cache: config.toml's table, named as the source.
    later = pricing.hourly_prices(project_copy, wanted, today=today + datetime.timedelta(days=60))
    assert later[wanted[0]].source == pricing.CONFIG_SOURCE


def test_an_unreachable_api_falls_back_to_the_config(project_copy):
    session = boto3.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1")
    client = session.client("pricing", region_name="us-east-1")
    stubber = Stubber(client)
    stubber.add_client_error("get_products", "AccessDeniedException", "not allowed")
    stubber.activate()
    session.client = lambda *args, **kwargs: client
    prices = pricing.hourly_prices(project_copy, costs.wanted_prices(project_copy), boto_session=session)
    lines = costs.estimate(project_copy, prices=prices)
    assert {line.source for line in lines} == {pricing.CONFIG_SOURCE}


def test_an_estimate_over_the_budget_is_refused_in_one_line(project_config):
    lines = costs.estimate(project_config)
    budget = project_config.settings.budget.usd
    (training,) = [line for line in lines if line.step == "training"]
    data = {**project_config.data, "budget": {"usd": training.usd / 2, "endpoint_hours": 24}}
    tight = dataclasses.replace(project_config, data=data)
    message = costs.over_budget(tight, "train", lines, spent_usd=0.0)
    assert message and "over [budget] usd" in message and "--yes" in message
    assert pricing.CONFIG_SOURCE in message
    roomy = dataclasses.replace(project_config, data={**data, "budget": {"usd": training.usd + 1.0}})
    assert costs.over_budget(roomy, "train", lines, spent_usd=0.0) is None
    assert costs.over_budget(roomy, "train", lines, spent_usd=2.0) is not None  # what was spent counts
    assert budget >= 0


def test_usage_is_billable_seconds_when_sagemaker_reports_them():
    price = pricing.Price(2.0, "test")
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    end = start + datetime.timedelta(hours=3)
    assert costs.usage_usd(start, end, 2, price) == pytest.approx(12.0)
    assert costs.usage_usd(start, end, 2, price, billable_seconds=1800) == pytest.approx(2.0)
    assert costs.usage_usd(start, None, 1, price, now=start + datetime.timedelta(hours=1)) == pytest.approx(
        2.0
    )
