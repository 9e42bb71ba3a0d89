"""Pricing: LiteLLM's price map as exact integers, model resolution, usage costs and estimates.

The public API is ``app.pricing.service``; see docs/pricing.md.
"""
