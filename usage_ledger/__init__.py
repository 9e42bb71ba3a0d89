"""Integrations of usage-ledger with the gateways that call models (see docs/litellm.md).

The ledger service itself is the ``app`` package; this package holds what runs inside other
programs, such as the LiteLLM proxy callback in ``usage_ledger.integrations.litellm``.
"""
