"""The legacy rules format (the seed's `user_id_mappings` and `context_retrieval`), accepted as it is, so that its
rules files keep working:

    user_id_mappings:   custom_header, header_patterns: [{header, pattern, user_id}], default_user_id
    context_retrieval:  enabled, query_strategy, injection_strategy, max_context_length, max_results,
                        enabled_for_models, api_key, container_tag

Where a file sets both formats, the new one's keys win, and header patterns are tried after the rules.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field

from .fields import Count, HeaderName, Inject, Model, Query, Regex, Text, many
from .matching import HeaderCondition, Rule
from .model import Actions


class HeaderPattern(Model):
    """A request whose header matches the pattern gets the scope `user_id`."""

    header: HeaderName
    pattern: Regex
    user_id: Text


class UserIdMappings(Model):
    """The earlier format's routing."""

    custom_header: HeaderName = Field("x-memory-user-id", description="The override header (new: override_header).")
    header_patterns: list[HeaderPattern] = Field([], description="Tried in order, after the rules.")
    default_user_id: Text = Field("default", description="The scope of requests no pattern matches (new: default_scope).")


class ContextRetrieval(Model):
    """The earlier format's recall settings, for every request (new: defaults)."""

    enabled: bool = Field(True, description="new: recall")
    query_strategy: Query = Field("last_user", description="new: query")
    injection_strategy: Inject = Field("dual", description="new: inject")
    max_context_length: Count = Field(4000, description="new: max_chars")
    max_results: Count = 5
    enabled_for_models: many(Text) = Field([], description="Model names recalled for (new: models.allow, regexes).")
    api_key: Text = Field("", description="Supermemory's API key (new: memory.supermemory.api_key).")
    container_tag: Text = ""


# context_retrieval key -> Actions field (enabled_for_models by hand)
_ACTIONS = {
    "enabled": "recall",
    "query_strategy": "query",
    "injection_strategy": "inject",
    "max_context_length": "max_chars",
    "max_results": "max_results",
}


def retrieval_actions(section: ContextRetrieval) -> dict[str, Any]:
    """The Actions fields `context_retrieval` sets."""
    fields = {_ACTIONS[key]: getattr(section, key) for key in section.model_fields_set if key in _ACTIONS}
    if "enabled_for_models" in section.model_fields_set:
        fields["models_allow"] = tuple(f"^{re.escape(x)}$" for x in section.enabled_for_models)
    return fields


def retrieval_settings(section: ContextRetrieval) -> dict[str, Any]:
    """The Supermemory settings `context_retrieval` sets (api_key, container_tag)."""
    return {key: getattr(section, key) for key in ("api_key", "container_tag") if key in section.model_fields_set}


def header_rules(section: UserIdMappings, actions: Actions) -> list[Rule]:
    """`header_patterns` as rules named `header_patterns[i]`, each with the default actions."""
    return [
        Rule(name=f"header_patterns[{i}]", actions=actions, template=(p.user_id,),
             headers=(HeaderCondition(p.header, p.header.lower(), p.pattern, False),))
        for i, p in enumerate(section.header_patterns)
    ]
