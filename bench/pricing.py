"""Quotes per second of app.pricing against litellm.cost_per_token, on the same mix, same run.

Run (litellm only ever lives in the bench venv, never as a runtime dependency):

    make bench-pricing
    # or: .venv-bench/bin/python bench/pricing.py [--seconds 3] [--cases PATH]

The mix is every reference case (shared/pricing-cases/cases.jsonl: 22 models, ten usage
shapes each, from zero to 1e9 tokens) plus service-tier, threshold and off-peak requests.
Each engine prices the whole mix repeatedly for ``--seconds``. The headline ratio gives both
engines prebuilt inputs (our ``Usage`` records, LiteLLM ``Usage`` objects, datetimes); ours is
also timed from the raw JSON values (usage dicts and ISO strings), as the CLI sees them, and
so is LiteLLM (building its Usage objects in the loop). Costs are compared exactly: ours is an
exact decimal, LiteLLM's a float, and they must agree to 1e-9 relative wherever LiteLLM
returns a non-zero price.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the map

from app.pricing import service  # noqa: E402
from app.pricing.normalise import normalise_usage  # noqa: E402
from app.pricing.table import default_table  # noqa: E402

CASES = ROOT.parent / "shared" / "pricing-cases" / "cases.jsonl"
LOCAL_CASES = ROOT / "tests" / "pricing" / "data" / "cases.jsonl"
TOLERANCE = Decimal("1e-9")
PEAK = "2026-11-18T08:00:00+00:00"
OFF_PEAK = "2026-11-18T12:00:00+00:00"


def extra_requests() -> list[dict[str, Any]]:
    """Requests the reference cases leave out: service tiers, thresholds, off-peak, tiers."""
    usage = {"prompt_tokens": 250_000, "completion_tokens": 3000, "cache_read_tokens": 100_000,
             "reasoning_tokens": 1000}  # fmt: skip
    small = {"prompt_tokens": 3000, "completion_tokens": 700, "cache_read_tokens": 1000}
    out: list[dict[str, Any]] = []
    models = [("gemini/gemini-2.5-pro", None), ("gpt-5", "openai"), ("claude-sonnet-4-5", None),
              ("dashscope/qwen-plus-2025-09-11", None), ("xai/grok-4.3", None),
              ("deepseek/deepseek-v4-pro", None)]  # fmt: skip
    for model, provider in models:
        for case_usage, at in ((usage, PEAK), (small, PEAK), (small, OFF_PEAK)):
            out.append({"id": f"extra:{model}:{case_usage['prompt_tokens']}:{at[11:13]}",
                        "model": model, "provider": provider, "usage": case_usage,
                        "billing_time": at})  # fmt: skip
    for tier in ("priority", "flex"):
        out.append({"id": f"extra:gpt-5:{tier}", "model": "gpt-5", "provider": "openai",
                    "usage": {**small, "service_tier": tier}, "billing_time": PEAK})  # fmt: skip
    return out


def load_mix(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        cases = [json.loads(line) for line in lines if line.strip()]
    return cases + extra_requests()


def ours(mix: list[dict[str, Any]], *, prebuilt: bool) -> tuple[Callable[[], None], list[Decimal]]:
    """Our quote loop: prebuilt Usage records and datetimes, or the raw JSON values."""
    table = default_table()
    prepared = [
        (
            case["model"],
            case["provider"],
            normalise_usage(case["usage"], model=case["model"], provider=case["provider"])
            if prebuilt
            else case["usage"],
            datetime.fromisoformat(case["billing_time"]) if prebuilt else case["billing_time"],
        )
        for case in mix
    ]
    results = [
        Decimal(service.quote_to_json(service.quote(
            table, model=model, provider=provider, usage=usage, billing_time=at))["total_usd"])
        for model, provider, usage, at in prepared
    ]  # fmt: skip
    quote = service.quote

    def run() -> None:
        for model, provider, usage, at in prepared:
            quote(table, model=model, provider=provider, usage=usage, billing_time=at)

    return run, results


def theirs(
    mix: list[dict[str, Any]], *, prebuilt: bool
) -> tuple[Callable[[], None], list[Decimal | None]]:
    """LiteLLM's loop: prebuilt Usage objects, or built from the JSON values in the loop."""
    import litellm
    from litellm._internal_context import pinned_billing_time
    from litellm.types.utils import (
        CacheCreationTokenDetails,
        CompletionTokensDetailsWrapper,
        PromptTokensDetailsWrapper,
        Usage,
    )

    def usage_object(fields: dict[str, Any]) -> Usage:
        writes = fields.get("cache_creation_tokens", 0)
        writes_1h = fields.get("cache_creation_1h_tokens", 0)
        return Usage(
            prompt_tokens=fields.get("prompt_tokens", 0),
            completion_tokens=fields.get("completion_tokens", 0),
            total_tokens=fields.get("prompt_tokens", 0) + fields.get("completion_tokens", 0),
            prompt_tokens_details=PromptTokensDetailsWrapper(
                cached_tokens=fields.get("cache_read_tokens", 0),
                cache_creation_tokens=writes,
                cache_creation_token_details=CacheCreationTokenDetails(
                    ephemeral_5m_input_tokens=writes - writes_1h,
                    ephemeral_1h_input_tokens=writes_1h,
                ),
            ),
            completion_tokens_details=CompletionTokensDetailsWrapper(
                reasoning_tokens=fields.get("reasoning_tokens", 0)
            ),
        )

    prepared = [
        (case["model"], case["provider"], usage_object(case["usage"]),
         datetime.fromisoformat(case["billing_time"]), case["usage"].get("service_tier"))
        for case in mix
    ]  # fmt: skip

    def one(model: str, provider: str | None, usage: Usage, at: datetime,
            tier: str | None) -> Decimal | None:  # fmt: skip
        with pinned_billing_time(at):
            try:
                prompt, completion = litellm.cost_per_token(
                    model=model, custom_llm_provider=provider, usage_object=usage,
                    prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                    service_tier=tier,
                )  # fmt: skip
            except Exception:  # an unmapped model: reported, not fatal
                return None
        return Decimal(repr(prompt)) + Decimal(repr(completion))

    results = [one(*item) for item in prepared]

    def run() -> None:
        for item in prepared:
            one(*item)

    def run_from_json() -> None:
        for case in mix:
            fields = case["usage"]
            at = datetime.fromisoformat(case["billing_time"])
            one(case["model"], case["provider"], usage_object(fields), at,
                fields.get("service_tier"))  # fmt: skip

    return (run if prebuilt else run_from_json), results


def rate(run: Callable[[], None], count: int, seconds: float) -> float:
    run()  # warm caches
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        done += count
    return done / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--cases", type=Path, default=CASES if CASES.exists() else LOCAL_CASES)
    args = parser.parse_args()
    mix = load_mix(args.cases)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"mix: {len(mix)} requests ({args.cases.name} + extras)")
    run_ours, totals = ours(mix, prebuilt=True)
    ours_rate = rate(run_ours, len(mix), args.seconds)
    run_raw, raw_totals = ours(mix, prebuilt=False)
    raw_rate = rate(run_raw, len(mix), args.seconds)
    assert raw_totals == totals
    print(f"app.pricing (Usage objects):  {ours_rate:10,.0f} quotes/s")
    print(f"app.pricing (JSON dicts):     {raw_rate:10,.0f} quotes/s (normalise_usage included)")
    if importlib.util.find_spec("litellm") is None:
        print("litellm is not installed here: run in the bench venv (make bench-pricing)")
        return 0
    run_theirs, litellm_totals = theirs(mix, prebuilt=True)
    theirs_rate = rate(run_theirs, len(mix), args.seconds)
    run_theirs_raw, _ = theirs(mix, prebuilt=False)
    theirs_raw_rate = rate(run_theirs_raw, len(mix), args.seconds)
    print(f"litellm.cost_per_token (Usage objects): {theirs_rate:10,.0f} quotes/s")
    print(f"litellm.cost_per_token (JSON dicts):    {theirs_raw_rate:10,.0f} quotes/s")
    print(f"ratio, prebuilt usage objects on both sides: {ours_rate / theirs_rate:.1f}x")
    print(f"ratio, both from JSON values:                {raw_rate / theirs_raw_rate:.1f}x")
    compared = differ = 0
    for case, mine, other in zip(mix, totals, litellm_totals, strict=True):
        if other is None or other == 0:
            if other is None or mine != 0:
                print(f"  not compared: {case['id']}: ours {mine}, litellm {other}")
            continue
        compared += 1
        if abs(mine - other) > TOLERANCE * abs(other):
            differ += 1
            print(f"  DIFFERS {case['id']}: ours {mine}, litellm {other}")
    print(f"agreement: {compared - differ}/{compared} non-zero LiteLLM prices within 1e-9 relative")
    return 0


if __name__ == "__main__":
    sys.exit(main())
