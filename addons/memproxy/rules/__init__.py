"""Memory-routing rules: `rules/memory.yaml` loaded and validated, and a request matched to a Route.

    model      the request as rules see it (RequestView), a rule's Actions, the Route, RulesError
    scopes     scope names: injective, readable
    templates  scope templates `{var|filter}`
    source     the file read safely, parsed as YAML with the line of every key
    fields     the kinds of value a rules file holds (pydantic types that compile as they validate)
    schema     the file's schema (pydantic models) and its JSON Schema for editors
    legacy     the legacy format: the seed's user_id_mappings and context_retrieval
    loading    validation errors worded FILE:LINE: key.path: message; validated data compiled into rules
    matching   a compiled rule's conditions and template
    ruleset    Rules (first match wins) and RulesFile (reloaded on change)
    explain    why a request got its route: the rules tried and the conditions that decided
    view       the RequestView of a flow, as the request path and `memproxy rules explain` build it

Everything is compiled at load; `Rules.match` only evaluates precompiled conditions, cheap ones (method,
port, host, path, headers) before the body. Regexes search against the request's deadline (see
memproxy.regexes); flow filters, which mitmproxy runs with no time limit, may not search bodies or nest
repetitions.
"""

from .explain import Condition, Explanation, Tried, describe_actions, explain
from .matching import DEFAULT_BUDGET, HeaderCondition, Rule
from .model import MODEL_BUDGET, ROUTES, SDK_KEYS, Actions, HeaderDict, RequestView, Route, RulesError, plain_headers
from .ruleset import MIN_BUDGET, Rules, RulesFile
from .schema import SCHEMA_FILE, json_schema
from .scopes import (
    PROJECT_PREFIX,
    SCOPE_HASH_LEN,
    SCOPE_HASH_MARK,
    SCOPE_MAX,
    USER_SCOPE,
    named_scope,
    project_scope,
    scope_name,
)
from .source import ALIAS_BUDGET, MAX_RULES_BYTES, read_rules_file
from .templates import BUILTIN_VARS, FILTERS
from .view import OVERRIDE_KEY, flow_headers, request_view

__all__ = [
    "ALIAS_BUDGET", "BUILTIN_VARS", "PROJECT_PREFIX", "USER_SCOPE", "project_scope", "DEFAULT_BUDGET", "FILTERS", "MAX_RULES_BYTES", "MIN_BUDGET", "MODEL_BUDGET", "OVERRIDE_KEY",
    "ROUTES", "SCHEMA_FILE", "SCOPE_HASH_LEN", "SCOPE_HASH_MARK", "SCOPE_MAX", "SDK_KEYS", "Actions", "Condition",
    "Explanation", "HeaderCondition", "HeaderDict", "RequestView", "Route", "Rule", "Rules", "RulesError",
    "RulesFile", "Tried", "describe_actions", "explain", "flow_headers", "json_schema", "named_scope", "plain_headers",
    "read_rules_file", "request_view", "scope_name",
]
