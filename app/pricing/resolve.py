"""Model resolution: a caller's model id and provider hint -> one price table key.

Only whole keys are ever matched: each candidate below is looked up exactly (then ignoring
case), so a name never slides onto a shorter neighbour (``gpt-4o-mini`` is never ``gpt-4o``).
Candidates, first match wins (docs/pricing.md has the full list with examples):

1. ``provider/model`` (``azure/gpt-4o``, ``gemini/gemini-2.5-flash``), then the model as given;
2. the model without its provider prefix and route segments (``bedrock/converse/``,
   ``bedrock/us-east-1/`` after trying that regional key, duplicated prefixes);
3. provider-specific spellings: Fireworks' ``accounts/fireworks/models/``, Bedrock ids without
   their geo prefix (``us.``, ``eu.``, ``global.``...) only after the geo id itself;
4. revisions resolving to their base only when the revision itself is absent: dated
   ``-YYYYMMDD`` / ``-YYYY-MM-DD`` suffixes, Vertex ``@version``, Google ``-00N`` versions;
5. with no provider known, ``<first-party provider>/model`` (``xai/grok-4``).

With a provider known (hint or prefix), an entry of another provider family never matches.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from app.pricing.errors import UnknownModel
from app.pricing.table import PriceEntry, PriceTable
from app.pricing.units import size_key

BEDROCK_GEO_PREFIXES = ("global", "us", "eu", "apac", "jp", "au", "ca", "us-gov", "in")
BEDROCK_ROUTE_PREFIXES = ("converse/", "invoke/", "chat_completions/", "mantle/")
_BEDROCK_REGION = re.compile(r"^[a-z]{2}(?:-gov)?-[a-z]+-\d$")
_DATED_SUFFIX = re.compile(r"(?:-\d{8}|-\d{4}-\d{2}-\d{2})$")
_GOOGLE_VERSION = re.compile(r"-\d{3}$")
_VERTEX_VERSION = re.compile(r"@[\w.-]+$")
_FIRST_PARTY = (
    "openai",
    "anthropic",
    "gemini",
    "xai",
    "deepseek",
    "mistral",
    "cohere",
    "groq",
    "perplexity",
    "moonshot",
    "zai",
    "minimax",
    "dashscope",
    "ai21",
)
_MEMO_LIMIT = 100_000
_PROVIDER_ALIASES = {
    "bedrock_converse": "bedrock",
    "aws": "bedrock",
    "amazon_bedrock": "bedrock",
    "vertex": "vertex_ai",
    "vertex_ai_beta": "vertex_ai",
    "google_vertex": "vertex_ai",
    "google": "gemini",
    "google_ai_studio": "gemini",
    "azure_openai": "azure",
    "fireworks": "fireworks_ai",
    "together": "together_ai",
    "x-ai": "xai",
}


@lru_cache(maxsize=1024)
def provider_family(provider: str) -> str:
    """The family of a LiteLLM provider name (``vertex_ai-language-models`` -> vertex_ai)."""
    name = provider.strip().lower()
    name = _PROVIDER_ALIASES.get(name, name)
    for family in ("vertex_ai", "bedrock", "fireworks_ai"):
        if name.startswith(family):
            return family
    if name.startswith("text-completion-"):
        return name.removeprefix("text-completion-")
    if name == "azure_text":
        return "azure"
    if name == "cohere_chat":
        return "cohere"
    return name


@dataclass(frozen=True, slots=True)
class Resolution:
    """The entry a (model, provider) pair resolved to, and the provider family it is billed as."""

    entry: PriceEntry
    family: str


def _accepts(family: str | None, entry: PriceEntry) -> bool:
    if family is None or not entry.provider:
        return True
    entry_family = provider_family(entry.provider)
    if entry_family == family:
        return True
    return family == "azure_ai" and entry_family in ("azure", "openai")


@lru_cache(maxsize=16)
def _known_families(providers: frozenset[str]) -> frozenset[str]:
    families = {provider_family(provider) for provider in providers if provider}
    return frozenset(families | set(_PROVIDER_ALIASES))


def _bedrock_variants(name: str) -> Iterator[str]:
    """Bedrock route, region and geo spellings of ``name``, most specific first."""
    changed = True
    while changed:
        changed = False
        for prefix in ("bedrock/", *BEDROCK_ROUTE_PREFIXES):
            if name.startswith(prefix):
                name = name.removeprefix(prefix)
                changed = True
    region, slash, rest = name.partition("/")
    if slash and _BEDROCK_REGION.match(region):
        yield f"bedrock/{region}/{rest}"
        name = rest
    if name.startswith("arn:") and "/" in name:
        name = name.rsplit("/", 1)[1]
    yield name
    geo, dot, rest = name.partition(".")
    if dot and geo in BEDROCK_GEO_PREFIXES:
        yield rest


def _revision_bases(name: str) -> Iterator[str]:
    """Base ids a revision resolves to when the revision itself is not in the table."""
    if "@" in name:
        base = _VERTEX_VERSION.sub("", name)
        yield base
        name = base
    if _DATED_SUFFIX.search(name):
        yield _DATED_SUFFIX.sub("", name)
    elif _GOOGLE_VERSION.search(name) and ("gemini" in name or "gemma" in name):
        yield _GOOGLE_VERSION.sub("", name)


def _candidates(model: str, family: str | None, hint: str | None) -> Iterator[str]:
    name = model
    if family is not None:
        while name.startswith(f"{family}/{family}/"):
            name = name.removeprefix(f"{family}/")
        if hint is not None and name.startswith(f"{hint}/{hint}/"):
            name = name.removeprefix(f"{hint}/")
    bare = name
    if family is not None:
        for prefix in {family, hint} - {None}:
            if bare.startswith(f"{prefix}/"):
                bare = bare.removeprefix(f"{prefix}/")
                break
    if family is not None:
        yield f"{family}/{bare}"
        if hint is not None and hint != family:
            yield f"{hint}/{bare}"
    yield name
    yield bare
    forms = list(_bedrock_variants(bare)) if family == "bedrock" else [bare]
    if family == "fireworks_ai" and not bare.startswith("accounts/"):
        forms.append(f"accounts/fireworks/models/{bare}")
    for form in forms:
        if family is not None:
            yield f"{family}/{form}"
        yield form
    for form in forms:
        for base in _revision_bases(form):
            if family is not None:
                yield f"{family}/{base}"
            yield base
    if family is None and "/" not in bare:
        for provider in _FIRST_PARTY:
            yield f"{provider}/{bare}"
            for base in _revision_bases(bare):
                yield f"{provider}/{base}"


def _image_names(
    model: str, family: str | None, hint: str | None, size: str, quality: str | None
) -> Iterator[str]:
    spelled = size_key(size)
    if spelled is None:
        return
    prefix, bare = "", model
    for head in {family, hint} - {None}:
        if model.startswith(f"{head}/"):
            prefix, bare = f"{head}/", model.removeprefix(f"{head}/")
            break
    if quality:
        yield f"{prefix}{quality.strip().lower()}/{spelled}/{bare}"
    yield f"{prefix}{spelled}/{bare}"


def resolve(
    table: PriceTable,
    *,
    model: str,
    provider: str | None,
    at: datetime | None = None,
    image_size: str | None = None,
    image_quality: str | None = None,
) -> Resolution:
    """The entry pricing ``model`` (with the caller's ``provider`` hint), or ``UnknownModel``.

    With an ``image_size`` (and quality), entries keyed by size and quality
    (``hd/1024-x-1792/dall-e-3``) are tried before the model's own entry.
    """
    memo_key = (model, provider, image_size, image_quality)
    memo = table.resolutions.get(memo_key)
    if memo is not None:
        entry = table.get(memo[0], at=at)
        # A memo holds for every billing time unless an override changes the entry's provider
        # or is not yet in force for an override-only key: then resolve afresh.
        if entry is not None and _accepts(memo[1], entry):
            return Resolution(entry, memo[1])
    if not isinstance(model, str) or not model.strip():
        raise UnknownModel("model must be a non-empty string", model=str(model))
    model = model.strip()
    hint = provider.strip().lower() if isinstance(provider, str) and provider.strip() else None
    family = provider_family(hint) if hint is not None else None
    if family is None:
        head, slash, _ = model.partition("/")
        if slash and provider_family(head) in _known_families(table.providers):
            family = provider_family(head)
            hint = head
    names = [model]
    if image_size:
        names = [*_image_names(model, family, hint, image_size, image_quality), model]
    seen: set[str] = set()
    for candidate in (found for name in names for found in _candidates(name, family, hint)):
        if candidate in seen:
            continue
        seen.add(candidate)
        key = table.canonical_key(candidate)
        if key is None:
            continue
        entry = table.get(key, at=at)
        if entry is not None and _accepts(family, entry):
            resolution = Resolution(entry, family or provider_family(entry.provider))
            if len(table.resolutions) < _MEMO_LIMIT:
                table.resolutions[memo_key] = (key, resolution.family)
            return resolution
    raise UnknownModel(
        f"no price for model {model!r}" + (f" from provider {provider!r}" if provider else ""),
        model=model,
        suggestions=suggest(table, model),
    )


def suggest(table: PriceTable, model: str, *, limit: int = 5) -> list[str]:
    """The known ids nearest to ``model`` (difflib ratio), best first."""
    keys = list(table)
    lowered = model.lower()
    close = difflib.get_close_matches(lowered, [key.lower() for key in keys], n=limit, cutoff=0.6)
    by_lower = {key.lower(): key for key in keys}
    return [by_lower[match] for match in close]
