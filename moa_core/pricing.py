"""Dollars of one model call, and where the figure came from.

Order: the cost the provider reported (OpenRouter) -> the genai-prices table bundled in the
package (never updated over the network here) -> the prices set in config -> unknown. Unknown
is `Cost(None, "unknown")`, never zero: a missing figure must stay visibly missing.
"""

from __future__ import annotations

import math
from functools import lru_cache
from urllib.parse import urlsplit

import genai_prices
from genai_prices import data_snapshot
from genai_prices import types as price_types

from moa_core.settings import ProviderSettings
from moa_core.values import UNKNOWN_COST, Cost, Usage

# genai-prices provider ids by API host. genai-prices also matches its own URL patterns, which
# cover more hosts; this table names the common ones plainly and wins over those patterns.
PROVIDER_IDS_BY_HOST = {
    "openrouter.ai": "openrouter",
    "api.openrouter.ai": "openrouter",
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "api.groq.com": "groq",
    "api.deepseek.com": "deepseek",
    "api.mistral.ai": "mistral",
    "api.together.xyz": "together",
    "api.fireworks.ai": "fireworks",
    "generativelanguage.googleapis.com": "google",
    "api.x.ai": "x-ai",
    "api.cerebras.ai": "cerebras",
    "api.perplexity.ai": "perplexity",
}

_PER_MTOK = 1_000_000

_Entry = tuple[price_types.Provider, price_types.ModelInfo]


def price_call(provider: ProviderSettings, model: str, usage: Usage, provider_cost_usd: float | None) -> Cost:
    """The cost of one call of `model` on `provider` that used `usage`."""
    if provider_cost_usd is not None and math.isfinite(provider_cost_usd) and provider_cost_usd >= 0:
        return Cost(float(provider_cost_usd), "provider")
    if usage.source == "unknown":
        return UNKNOWN_COST
    table = table_price(provider, model, usage)
    if table is not None:
        return Cost(table, "price_table")
    configured = config_price(provider, usage)
    if configured is not None:
        return Cost(configured, "config")
    return UNKNOWN_COST


def table_price(provider: ProviderSettings, model: str, usage: Usage) -> float | None:
    """Dollars from the genai-prices table, or None when it does not know this model here."""
    provider_id = price_provider_id(provider.price_provider, provider.base_url, provider.name)
    if provider_id is None:
        return None
    entry = _table_entry(provider_id, model)
    if entry is None:
        return None
    price_provider, model_info = entry
    # genai-prices counts cached tokens inside input_tokens; our Usage.input excludes them.
    table_usage = genai_prices.Usage(
        input_tokens=usage.input + usage.cache_read + usage.cache_write,
        cache_read_tokens=usage.cache_read,
        cache_write_tokens=usage.cache_write,
        output_tokens=usage.output,
    )
    try:
        calculation = model_info.calc_price(table_usage, price_provider)
    except (LookupError, ValueError):
        return None
    return float(calculation.total_price)


def config_price(provider: ProviderSettings, usage: Usage) -> float | None:
    """Dollars from the provider's configured per-million prices, or None when none are set.

    Cache reads and writes cost the input price unless their own price is configured. A token
    kind that was used but has no price makes the whole figure unknown rather than too low.
    """
    price_in = provider.price_in_per_mtok
    price_out = provider.price_out_per_mtok
    if price_in is None and price_out is None:
        return None
    cache_read = provider.price_cache_read_per_mtok
    cache_write = provider.price_cache_write_per_mtok
    parts = (
        (usage.input, price_in),
        (usage.cache_read, cache_read if cache_read is not None else price_in),
        (usage.cache_write, cache_write if cache_write is not None else price_in),
        (usage.output, price_out),
    )
    dollars = 0.0
    for tokens, price in parts:
        if tokens == 0:
            continue
        if price is None:
            return None
        dollars += tokens * price / _PER_MTOK
    return dollars


def load_price_table() -> None:
    """Load the bundled genai-prices table now rather than at the first priced call."""
    data_snapshot.get_snapshot()


@lru_cache(maxsize=256)
def price_provider_id(price_provider: str | None, base_url: str, name: str) -> str | None:
    """The genai-prices provider id for a provider, or None when the table does not know it.

    Explicit `price_provider` first, then the base URL's host, then the provider's name.
    """
    if price_provider:
        return price_provider.strip().lower()
    host = (urlsplit(base_url).hostname or "").lower()
    if host in PROVIDER_IDS_BY_HOST:
        return PROVIDER_IDS_BY_HOST[host]
    snapshot = data_snapshot.get_snapshot()
    if host:
        try:  # genai-prices' own API URL patterns (Azure, Bedrock, Moonshot, ...)
            return snapshot.find_provider(None, None, base_url).id
        except LookupError:
            pass
    # genai-prices' own name matching: exact ids plus aliases such as "xai" or "gemini".
    found = data_snapshot.find_provider_by_id(snapshot.providers, name)
    return found.id if found is not None else None


@lru_cache(maxsize=4096)
def _table_entry(provider_id: str, model: str) -> _Entry | None:
    """The table's provider and model for this pair; misses are cached too."""
    try:
        return data_snapshot.get_snapshot().find_provider_model(model, None, provider_id, None)
    except LookupError:
        return None
