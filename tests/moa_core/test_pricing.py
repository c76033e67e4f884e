"""price_call: provider cost -> genai-prices table -> configured prices -> unknown.

Expected dollars are computed by hand from the rates genai-prices 0.2.x holds.
"""

from __future__ import annotations

import pytest

from moa_core.pricing import price_call, price_provider_id
from moa_core.settings import ProviderSettings
from moa_core.values import Usage

ANTHROPIC = ProviderSettings("anthropic", "anthropic", "https://api.anthropic.com")
OPENROUTER = ProviderSettings("openrouter", "openai", "https://openrouter.ai/api/v1", request_cost=True)
LOCAL = ProviderSettings("local", "openai", "http://127.0.0.1:8080/v1")


def test_sonnet_from_table_with_cache_reads_and_writes() -> None:
    # Sonnet 4.5: $3/M input, $0.30/M cache read, $3.75/M cache write, $15/M output.
    usage = Usage(input=1_000, cache_read=2_000, cache_write=4_000, output=500)
    expected = (1_000 * 3 + 2_000 * 0.30 + 4_000 * 3.75 + 500 * 15) / 1e6  # 0.0261
    cost = price_call(ANTHROPIC, "claude-sonnet-4-5", usage, None)
    assert cost.source == "price_table"
    assert cost.usd == pytest.approx(expected)
    assert isinstance(cost.usd, float)


def test_cached_tokens_count_towards_the_long_context_tier() -> None:
    # 150k uncached + 60k cache read = 210k input > 200k, so Sonnet's upper tier applies:
    # $6/M input, $0.60/M read, $22.50/M output. Passing only the uncached 150k would miss it.
    usage = Usage(input=150_000, cache_read=60_000, output=1_000)
    expected = (150_000 * 6 + 60_000 * 0.60 + 1_000 * 22.5) / 1e6  # 0.9585
    cost = price_call(ANTHROPIC, "claude-sonnet-4-5", usage, None)
    assert cost.usd == pytest.approx(expected)


def test_openrouter_model_ids_are_priced_from_its_table() -> None:
    usage = Usage(input=300, cache_read=500, cache_write=200)
    cost = price_call(OPENROUTER, "anthropic/claude-sonnet-4.5", usage, None)
    assert cost.source == "price_table"
    assert cost.usd == pytest.approx((300 * 3 + 500 * 0.30 + 200 * 3.75) / 1e6)  # 0.0018


def test_provider_reported_cost_wins_over_the_table() -> None:
    usage = Usage(input=1_000, output=1_000)
    cost = price_call(OPENROUTER, "anthropic/claude-sonnet-4.5", usage, 0.0123)
    assert (cost.usd, cost.source) == (0.0123, "provider")


def test_provider_reported_zero_is_a_real_figure() -> None:
    cost = price_call(OPENROUTER, "some/free-model:free", Usage(input=10, output=10), 0.0)
    assert (cost.usd, cost.source) == (0.0, "provider")


def test_provider_cost_counts_even_when_usage_is_unknown() -> None:
    cost = price_call(OPENROUTER, "anthropic/claude-sonnet-4.5", Usage(source="unknown"), 0.5)
    assert (cost.usd, cost.source) == (0.5, "provider")


def test_unknown_usage_without_provider_cost_is_unknown() -> None:
    priced = ProviderSettings("local", "openai", LOCAL.base_url, price_in_per_mtok=1, price_out_per_mtok=2)
    for provider, model in ((ANTHROPIC, "claude-sonnet-4-5"), (priced, "llama")):
        cost = price_call(provider, model, Usage(source="unknown"), None)
        assert (cost.usd, cost.source) == (None, "unknown")


def test_estimated_usage_is_still_priced() -> None:
    cost = price_call(ANTHROPIC, "claude-sonnet-4-5", Usage(input=100_000, source="estimated"), None)
    assert (cost.usd, cost.source) == (pytest.approx(0.3), "price_table")


def test_unknown_model_falls_back_to_configured_prices() -> None:
    provider = ProviderSettings(
        "anthropic",
        "anthropic",
        "https://api.anthropic.com",
        price_in_per_mtok=2.0,
        price_out_per_mtok=8.0,
        price_cache_read_per_mtok=0.5,
    )
    usage = Usage(input=10_000, cache_read=20_000, cache_write=4_000, output=3_000)
    # Cache writes have no price of their own, so they cost the input price.
    expected = (10_000 * 2.0 + 20_000 * 0.5 + 4_000 * 2.0 + 3_000 * 8.0) / 1e6  # 0.062
    cost = price_call(provider, "claude-from-the-future-9", usage, None)
    assert cost.source == "config"
    assert cost.usd == pytest.approx(expected)


def test_local_model_with_zero_prices_costs_zero() -> None:
    provider = ProviderSettings(
        "ollama", "openai", "http://localhost:11434/v1", price_in_per_mtok=0, price_out_per_mtok=0
    )
    cost = price_call(provider, "llama3.1:8b", Usage(input=5_000, output=700), None)
    assert (cost.usd, cost.source) == (0.0, "config")


def test_config_without_a_price_for_a_used_token_kind_is_unknown() -> None:
    provider = ProviderSettings("local", "openai", LOCAL.base_url, price_in_per_mtok=1.0)
    assert price_call(provider, "llama", Usage(input=1_000), None).usd == pytest.approx(0.001)
    cost = price_call(provider, "llama", Usage(input=1_000, output=10), None)
    assert (cost.usd, cost.source) == (None, "unknown")


def test_unknown_everything_is_unknown_never_zero() -> None:
    for provider in (LOCAL, ANTHROPIC):
        cost = price_call(provider, "no-such-model-anywhere", Usage(input=1_000, output=1_000), None)
        assert cost.usd is None
        assert cost.source == "unknown"


def test_explicit_price_provider_is_used_for_a_proxy() -> None:
    proxy = ProviderSettings("proxy", "anthropic", "http://127.0.0.1:9999", price_provider="anthropic")
    cost = price_call(proxy, "claude-sonnet-4-5", Usage(input=100_000), None)
    assert (cost.usd, cost.source) == (pytest.approx(0.3), "price_table")


def test_unknown_price_provider_skips_the_table() -> None:
    odd = ProviderSettings("odd", "openai", "https://api.openai.com/v1", price_provider="no-such-provider")
    assert price_call(odd, "gpt-4o", Usage(input=10), None).source == "unknown"


@pytest.mark.parametrize(
    ("base_url", "name", "expected"),
    [
        ("https://openrouter.ai/api/v1", "x", "openrouter"),
        ("https://api.openai.com/v1", "x", "openai"),
        ("https://api.anthropic.com", "x", "anthropic"),
        ("https://api.groq.com/openai/v1", "x", "groq"),
        ("https://api.deepseek.com", "x", "deepseek"),
        ("https://api.mistral.ai/v1", "x", "mistral"),
        ("https://api.together.xyz/v1", "x", "together"),
        ("https://api.fireworks.ai/inference/v1", "x", "fireworks"),
        ("https://generativelanguage.googleapis.com/v1beta/openai/", "x", "google"),
        ("http://127.0.0.1:8080/v1", "deepseek", "deepseek"),  # known by name
        ("http://127.0.0.1:8080/v1", "my-llama", None),
    ],
)
def test_price_provider_guess(base_url: str, name: str, expected: str | None) -> None:
    assert price_provider_id(None, base_url, name) == expected


def test_guessed_ids_exist_in_genai_prices() -> None:
    from genai_prices.data_snapshot import get_snapshot

    from moa_core.pricing import PROVIDER_IDS_BY_HOST

    known = {p.id for p in get_snapshot().providers}
    assert set(PROVIDER_IDS_BY_HOST.values()) <= known
