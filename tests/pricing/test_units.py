"""Billable units other than text tokens, each with its own rule."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app.pricing.errors import UnknownModel
from app.pricing.table import default_table
from tests.pricing.helpers import make_table, price

SNAPSHOT = default_table()


def test_embeddings_bill_input_only() -> None:
    quote = price(SNAPSHOT, "text-embedding-3-small", prompt_tokens=1_000_000)
    assert (quote["prompt_usd"], quote["completion_usd"]) == ("0.02", "0")


def test_audio_tokens_in_and_out() -> None:
    table = make_table(
        {
            "a": {
                "input_cost_per_token": "2.5e-06",
                "output_cost_per_token": "1e-05",
                "input_cost_per_audio_token": "4e-05",
                "output_cost_per_audio_token": "8e-05",
            }
        }
    )
    quote = price(
        table,
        "a",
        prompt_tokens=1000,
        audio_input_tokens=400,
        completion_tokens=100,
        audio_output_tokens=60,
    )
    assert Decimal(quote["prompt_usd"]) == 600 * Decimal("2.5e-6") + 400 * Decimal("4e-5")
    assert Decimal(quote["completion_usd"]) == 40 * Decimal("1e-5") + 60 * Decimal("8e-5")


def test_audio_tokens_without_an_audio_rate_are_plain_tokens() -> None:
    quote = price(SNAPSHOT, "gpt-4o", prompt_tokens=1000, audio_input_tokens=1000)
    assert quote["prompt_usd"] == "0.0025"


def test_image_per_size_and_quality_entry() -> None:
    quote = price(SNAPSHOT, "gpt-image-1", images=2, image_size="1024x1024", image_quality="low")
    assert quote["model_key"] == "low/1024-x-1024/gpt-image-1"
    assert quote["completion_usd"] == "0.022"  # the entry's per-image price, not per pixel


def test_image_per_pixel_is_exact_and_rounded_up_once() -> None:
    table = make_table(
        {
            "1024-x-1024/pix": {
                "litellm_provider": "openai",
                "input_cost_per_pixel": "1.9073486328125e-08",
            }
        }
    )
    quote = price(table, "pix", images=1, image_size="1024x1024")
    exact = 1024 * 1024 * Decimal("1.90734863281e-08")  # rate rounded to 12 significant digits
    assert quote["exact"] is False
    assert Decimal(quote["completion_usd"]) == exact.quantize(Decimal("1e-12"), "ROUND_CEILING")
    line = quote["breakdown"]["lines"][0]
    assert Decimal(line["amount_usd"]) == exact


def test_per_pixel_needs_a_size() -> None:
    table = make_table({"pix": {"output_cost_per_pixel": "1e-08"}})
    with pytest.raises(UnknownModel):
        price(table, "pix", images=1)


def test_image_price_by_size_label() -> None:
    quote = price(SNAPSHOT, "fal_ai/fal-ai/nano-banana-2", images=3, image_size="2048x2048")
    assert quote["completion_usd"] == "0.36"
    flat = price(SNAPSHOT, "fal_ai/fal-ai/nano-banana-2", images=1)
    assert flat["completion_usd"] == "0.08"


def test_per_second_transcription_and_speech() -> None:
    whisper = price(SNAPSHOT, "whisper-1", input_seconds="12.5")
    assert whisper["prompt_usd"] == "0.00125"
    table = make_table({"realtime": {"input_cost_per_second": "0.0002833333333333333"}})
    odd = price(table, "realtime", input_seconds="3")
    assert odd["exact"] is False  # 3 x 0.000283333333333 = 0.000849999999999, rounded up
    assert odd["prompt_usd"] == "0.00085"
    tts = price(SNAPSHOT, "tts-1", input_characters=1000)
    assert tts["prompt_usd"] == "0.015"


def test_video_per_second_by_resolution() -> None:
    quote = price(SNAPSHOT, "dashscope/wan3.0-video", output_seconds="5", video_resolution="720p")
    assert quote["completion_usd"] == "0.412565"
    default = price(SNAPSHOT, "dashscope/wan3.0-video", output_seconds="5")
    assert default["completion_usd"] == "0.825125"


def test_web_search_per_query_by_context_size() -> None:
    table = make_table(
        {
            "s": {
                "input_cost_per_token": "1e-06",
                "output_cost_per_token": "1e-06",
                "search_context_cost_per_query": {
                    "search_context_size_low": "0.03",
                    "search_context_size_medium": "0.035",
                    "search_context_size_high": "0.05",
                },
            }
        }
    )
    assert price(table, "s", web_search_queries=2)["prompt_usd"] == "0.07"
    assert (
        price(table, "s", web_search_queries=2, search_context_size="high")["prompt_usd"] == "0.1"
    )
    with pytest.raises(UnknownModel):
        price(make_table({"t": {"input_cost_per_token": "1e-06"}}), "t", web_search_queries=1)


def test_per_query_search_endpoint() -> None:
    assert price(SNAPSHOT, "deepseek/search", queries=4)["prompt_usd"] == "0.003"


def test_unpriced_unit_is_an_error() -> None:
    with pytest.raises(UnknownModel):
        price(SNAPSHOT, "gpt-4o", images=1)
    with pytest.raises(UnknownModel):
        price(SNAPSHOT, "gpt-4o", output_seconds="1")
