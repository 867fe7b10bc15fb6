"""USD per instance-hour for SageMaker: the AWS Price List API when reachable, else config.toml's table.

`hourly_prices` asks the Price List API (boto3 `pricing`, served from us-east-1 for every region) for the
on-demand price of each instance type and use (training or hosting) in the project's region, keeps what it
found in `.state/prices.json` for `CACHE_DAYS`, and falls back to [prices] in config.toml when the API
cannot be reached (no credentials, no network, no permission, a dry run). Each price says where it came
from, and every figure printed carries that source beside it.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ProjectConfig

PRICING_REGION = "us-east-1"
CACHE_FILENAME = "prices.json"
CACHE_DAYS = 30
# Price List "component" of each use: training and tuning jobs are Training, endpoints are Hosting.
COMPONENTS = {"training": "Training", "hosting": "Hosting"}
CONFIG_SOURCE = "config.toml [prices]"
API_SOURCE = "AWS Price List API"


@dataclass(frozen=True)
class Price:
    usd_per_hour: float
    source: str


def config_price(config: ProjectConfig, instance_type: str) -> Price | None:
    prices = config.data.get("prices", {})
    return Price(float(prices[instance_type]), CONFIG_SOURCE) if instance_type in prices else None


def _on_demand_usd(product: dict[str, Any]) -> float | None:
    """The hourly USD price of one Price List product document (None if it has none)."""
    for term in product.get("terms", {}).get("OnDemand", {}).values():
        for dimension in term.get("priceDimensions", {}).values():
            usd = dimension.get("pricePerUnit", {}).get("USD")
            if usd is not None and dimension.get("unit", "").lower().startswith("hr") and float(usd) > 0:
                return float(usd)
    return None


def fetch_price(client: Any, region: str, instance_type: str, use: str) -> float | None:
    """The on-demand price from the Price List API; the highest when several products match (an upper
    bound, as `cost` is); None when the list has none for this type, use and region."""
    filters = [
        {"Type": "TERM_MATCH", "Field": field, "Value": value}
        for field, value in (
            ("productFamily", "ML Instance"),
            ("regionCode", region),
            ("instanceName", instance_type),
            ("component", COMPONENTS[use]),
        )
    ]
    found: list[float] = []
    paginator = client.get_paginator("get_products")
    for page in paginator.paginate(ServiceCode="AmazonSageMaker", Filters=filters, FormatVersion="aws_v1"):
        for document in page.get("PriceList", []):
            usd = _on_demand_usd(json.loads(document) if isinstance(document, str) else document)
            if usd is not None:
                found.append(usd)
    return max(found) if found else None


class PriceCache:
    """`.state/prices.json`: {"<region>/<use>/<instance type>": {"usd_per_hour": ..., "fetched": date}}."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / CACHE_FILENAME

    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def get(self, key: str, today: datetime.date) -> Price | None:
        entry = self._load().get(key)
        if not entry:
            return None
        fetched = datetime.date.fromisoformat(entry["fetched"])
        if (today - fetched).days > CACHE_DAYS:
            return None
        return Price(float(entry["usd_per_hour"]), f"{API_SOURCE}, cached {fetched.isoformat()}")

    def put(self, key: str, usd_per_hour: float, today: datetime.date) -> None:
        document = self._load()
        document[key] = {"usd_per_hour": usd_per_hour, "fetched": today.isoformat()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        temporary.replace(self.path)


def pricing_client(boto_session: Any) -> Any | None:
    """A Price List client with short timeouts, or None without credentials (nothing to ask with)."""
    from botocore.config import Config

    if boto_session is None or boto_session.get_credentials() is None:
        return None
    settings = Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 1})
    return boto_session.client("pricing", region_name=PRICING_REGION, config=settings)


def hourly_prices(
    config: ProjectConfig,
    wanted: list[tuple[str, str]],
    *,
    boto_session: Any | None = None,
    today: datetime.date | None = None,
) -> dict[tuple[str, str], Price]:
    """The price of each (instance type, use) in `wanted`: cache, then the API (when `boto_session` is
    given and has credentials), then config.toml. A type missing everywhere is left out (the caller says
    what to add)."""
    import botocore.exceptions

    today = today or datetime.date.today()
    region = config.aws["region"]
    cache = PriceCache(config.state_dir)
    client = None
    reachable = boto_session is not None
    prices: dict[tuple[str, str], Price] = {}
    for instance_type, use in dict.fromkeys(wanted):
        key = f"{region}/{use}/{instance_type}"
        price = cache.get(key, today)
        if price is None and reachable:
            try:
                client = client or pricing_client(boto_session)
                usd = fetch_price(client, region, instance_type, use) if client else None
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                reachable = False  # one failure is enough: the rest would wait for the same timeout
                usd = None
            if client is None:
                reachable = False
            if usd is not None:
                cache.put(key, usd, today)
                price = Price(usd, API_SOURCE)
        price = price or config_price(config, instance_type)
        if price is not None:
            prices[(instance_type, use)] = price
    return prices
