"""The rules file's schema: what each key may hold, checked by pydantic, published as JSON Schema.

The models mirror the file: `RulesDocument` is the whole of it, `Rule` one entry of `rules`, `Match` its
conditions. Validation also compiles (regexes, flow filters), so a file that validates loads. What a
JSON Schema cannot say (a template's variables are its rule's named groups; `scope` and `user_id` are
one key; rule names are unique, `duplicate_names`) is checked here too; `json_schema()` leaves it out.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    field_validator,
    model_validator,
)

from memproxy.config import BACKENDS, DEFAULT_RULES

from . import templates
from .fields import (
    Count,
    FlowFilter,
    Fraction,
    HeaderName,
    HeaderValue,
    HostGlob,
    Inject,
    JsonPath,
    ListedRegex,
    MaybeRegex,
    Model,
    Port,
    Query,
    Regex,
    RouteName,
    Text,
    choice,
    invalid,
    many,
    section,
    table,
    token,
)
from .legacy import ContextRetrieval, UserIdMappings

SCHEMA_FILE = DEFAULT_RULES.with_name("memory.schema.json")  # the published copy, beside the default rules
_LITELLM = "A section of a LiteLLM config sharing the file: ignored here."


class Models(Model):
    """Recall and store only for some models: regexes on the model name."""

    allow: many(ListedRegex) = Field([], description="Only models matching one of these (an unknown model fails).")
    deny: many(ListedRegex) = Field([], description="Never models matching one of these.")


class Sdk(Model):
    """The LiteLLM call of the SDK path: the provider's model, and where and with which key to call it."""

    model: Text = Field("", description="A LiteLLM model name, e.g. anthropic/claude-sonnet-4-5.")
    api_base: Text = ""
    api_key: Text = Field("", description="As written: ${VAR} or os.environ/VAR are read from the environment.")


class Settings(Model):
    """What to do with a routed request. In `defaults:` for every rule; a rule's own settings win."""

    recall: bool = Field(True, description="Search the scope's memories and inject them.")
    store: bool = Field(True, description="Remember the finished turn.")
    auxiliary: bool = Field(False, description="Not conversation (titles, classifiers): neither recalled nor stored.")
    profile: bool = Field(False, description="Also inject Supermemory's profile of the scope.")
    query: Query = Field("last_user", description="What recall searches with.")
    inject: Inject = Field("dual", description="Where recalled memories go.")
    max_results: Count = 5
    max_chars: Count = 4000
    threshold: Fraction = Field(
        0.0, description="Minimum relevance (the local store applies it once a scope holds 3 memories or more)."
    )
    models: section(Models) = Models()
    route: RouteName = Field("passthrough", description="sdk: through the LiteLLM SDK path; supermemory_router: "
                                                        "Supermemory's Memory Router.")
    sdk: Sdk = Field(Sdk(), description="The SDK path's provider mapping.")
    also_recall: many(Text) = Field([], description="Scopes recalled beside the rule's own, labelled apart within "
                                                    "max_chars, e.g. [user] or [user, 'team:{team}']: templates "
                                                    "like `scope`. Nothing is stored in them.")

    @field_validator("also_recall")
    @classmethod
    def _layer_templates(cls, v: list[str]) -> list[str]:
        if problems := [p for t in v for p in templates.problems(t)]:
            raise invalid(*problems)
        return v


class Match(Model):
    """Conditions that must all hold; named groups `(?P<name>...)` of their regexes feed the scope template."""

    filter: FlowFilter = Field(None, description="A mitmproxy flow filter, e.g. '~d example.com & ~m POST'. Body "
                                                 "filters (~b ~bq ~bs) and nested repetition are refused.")
    host: many(HostGlob) = Field([], description="Host globs, e.g. '*.anthropic.com'.")
    path: MaybeRegex = Field(None, description="A regex on the path and query.")
    method: many(token("method")) = []
    port: many(Port) = Field([], description="The listen port the request arrived on.")
    headers: table(token("header name", blank=True), HeaderValue) = Field(
        {}, description="Header name -> regex; null: must be absent; '!regex': must not match.")
    body: many(ListedRegex) = Field([], description="Regexes on the raw body text.")
    json_: table(JsonPath, Regex) = Field(
        {}, alias="json", description="Dot path -> regex on the text under it ('messages.*.content', 'messages.-1.content').")
    model: MaybeRegex = Field(None, description="A regex on the request's model.")
    project: MaybeRegex = Field(None, description="A regex on the registered project of the listen port.")

    def groups(self) -> set[str]:
        """The named groups its regexes capture (not those of '!regex', which match nothing)."""
        patterns = [self.path, self.model, self.project, *self.body, *self.json_.values(),
                    *(t.pattern for t in self.headers.values() if t is not None and not t.negate)]
        return {name for p in patterns if p is not None for name in p.groupindex}


_TEMPLATE = ("A template: literal text and {variable|filter|...}; variables are the match's named groups and "
             f"{', '.join(templates.BUILTIN_VARS)}; filters {', '.join(templates.FILTERS)}. A variable missing "
             "from the request means: try the next rule.")


class Rule(Settings):
    """One rule: the first whose `match` holds names the scope and what to do."""

    model_config = ConfigDict(json_schema_extra={"not": {"required": ["scope", "user_id"]}})

    name: Text = Field("", description="Shown in logs, the info endpoint and mitmweb (default: rules[i]).")
    match: section(Match) = Field(Match(), description="Conditions that must all hold (none: every request).")
    scope: Text = Field("", description=f"The scope. {_TEMPLATE} Default: the default scope.")
    user_id: Text = Field("", description="Same as scope (the earlier spelling).")
    allow_override: bool = Field(True, description="false: the override header cannot change this rule's scope.")
    tool: Text = Field("", description="The tool its requests come from (e.g. Codex): recorded on every memory it "
                                       "stores, shown on recalled notes, and its own scope under "
                                       "project_memory: per_tool.")

    @field_validator("scope", "user_id")
    @classmethod
    def _template(cls, v: str, info: ValidationInfo) -> str:
        match = info.data.get("match")  # absent if it is invalid: then its groups are unknown
        if problems := templates.problems(v, match.groups() if isinstance(match, Match) else None):
            raise invalid(*problems)
        return v

    @model_validator(mode="after")
    def _one_scope(self) -> Rule:
        if {"scope", "user_id"} <= self.model_fields_set:
            raise invalid("'user_id' is the earlier spelling of 'scope': give one of them", at=("user_id",))
        groups = self.match.groups()
        if problems := [p for t in self.also_recall for p in templates.problems(t, groups)]:
            raise invalid(*problems, at=("also_recall",))
        return self


def _version(v: Any) -> int:
    if v != 1 or isinstance(v, bool):
        raise invalid(f"unsupported version {v!r} (expected 1)")
    return 1


def _no_rules(v: Any) -> Any:
    return [] if v is None else v


class Local(Model):
    """The embedded SQLite store."""

    path: Text = Field("", description="The database file (default: memories.db in memproxy's data directory).")


class Supermemory(Model):
    """Supermemory's REST API. Values as written: ${VAR} or os.environ/VAR are read from the environment."""

    api_key: Text = ""
    base_url: Text = ""
    search_mode: Text = ""
    container_tag: Text = Field("", description="The container tag of a scope: at most one {scope}, else ASCII "
                                                "letters, digits, '_', '.' and '-'; without {scope}, a prefix "
                                                "(`memproxy`: `memproxy_{scope}`).")

    @field_validator("container_tag")
    @classmethod
    def _container_tag(cls, tag: str) -> str:
        bare = tag.replace("{scope}", "")
        if tag.count("{scope}") > 1 or templates.PLACEHOLDER.sub("", bare) != bare:
            raise invalid("the only placeholder allowed is {scope}, once")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{0,64}", bare):
            raise invalid(f"invalid container tag {tag!r}: Supermemory allows ASCII letters, digits, '_', '.' and '-'"
                          " (at most 100 characters); other characters of the scope are rewritten, with a hash")
        return tag


class Memory(Model):
    """Where memories are kept."""

    backend: choice(BACKENDS, "backend") = Field("auto", description="auto: Supermemory if SUPERMEMORY_API_KEY "
                                                                      "is set, else local.")
    local: section(Local) = Local()
    supermemory: section(Supermemory) = Supermemory()


class RulesDocument(Model):
    """memproxy's memory-routing rules (rules/memory.yaml): whose memory is a request, and what to do with it."""

    model_config = ConfigDict(title="memproxy rules",
                              json_schema_extra={"not": {"required": ["default_scope", "default_user_id"]}})

    version: Annotated[int, PlainValidator(_version, json_schema_input_type=typing.Literal[1])] = 1
    default_scope: Text = Field("default", description="The scope of requests no rule matches.")
    default_user_id: Text = Field("default", description="Same as default_scope (the earlier spelling).")
    override_header: HeaderName = Field("x-memory-user-id", description="A request header naming the scope; "
                                                                         "removed before the request leaves.")
    allow_override: bool = Field(True, description="false: the override header is never obeyed.")
    project_memory: choice(("shared", "per_tool"), "project_memory") = Field(
        "shared", description="shared: every tool recalls and stores one memory per project (`project:<name>`); "
                              "per_tool: each tool its own (`<tool>:<name>`, the rule's `tool` as a slug).")
    defaults: section(Settings) = Field(Settings(), description="What every rule does unless it says otherwise.")
    rules: Annotated[list[Rule], BeforeValidator(_no_rules, json_schema_input_type=list[Rule] | None)] = Field(
        [], description="Tried from top to bottom; the first whose match holds wins.")
    memory: section(Memory) = Memory()
    user_id_mappings: section(UserIdMappings) = UserIdMappings()
    context_retrieval: section(ContextRetrieval) = ContextRetrieval()
    # Sections of a LiteLLM config that may share the file: ignored here.
    model_list: Any = Field(None, description=_LITELLM)
    general_settings: Any = Field(None, description=_LITELLM)
    litellm_settings: Any = Field(None, description=_LITELLM)
    router_settings: Any = Field(None, description=_LITELLM)
    mcp_servers: Any = Field(None, description=_LITELLM)

    @model_validator(mode="after")
    def _one_default_scope(self) -> RulesDocument:
        if {"default_scope", "default_user_id"} <= self.model_fields_set:
            raise invalid("'default_user_id' is the earlier spelling of 'default_scope': give one of them",
                          at=("default_user_id",))
        return self


def duplicate_names(data: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """(path, message) for each rule whose name an earlier rule has (unnamed: `rules[i]`). Checked on the
    data as parsed, before validation, so that it is reported beside errors elsewhere in the rules."""
    items = data.get("rules") if isinstance(data, dict) else None
    seen: dict[str, int] = {}
    found = []
    for i, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, dict):
            continue
        name = item.get("name", f"rules[{i}]")
        name = name if isinstance(name, str) and name.strip() else ""  # not a name: reported by the schema
        if name in seen:
            found.append((("rules", i, "name"), f"duplicate rule name '{name}' (also rules[{seen[name]}])"))
        seen.setdefault(name, i)
    return found


def known_keys(path: tuple[str | int, ...]) -> tuple[str, ...]:
    """The keys the mapping at `path` may hold (none if `path` is not a mapping of the schema)."""
    kind: Any = RulesDocument
    for step in path:
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            kind = next((f.annotation for name, f in kind.model_fields.items() if (f.alias or name) == step), None)
        elif typing.get_origin(kind) is list and isinstance(step, int):
            kind = typing.get_args(kind)[0]
        else:
            return ()
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return tuple(f.alias or name for name, f in kind.model_fields.items())
    return ()


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a rules file: editors complete and check the file with it. It declares draft 7, the
    newest that YAML editors' language servers all read (it uses nothing newer; `$defs` is only where its
    `$ref`s point). Defaults that only mean "not set" (empty, null, a whole section) are left out: an editor
    would offer them."""
    schema = _without_empty_defaults(RulesDocument.model_json_schema())
    return {"$schema": "http://json-schema.org/draft-07/schema#", **schema}


def _without_empty_defaults(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_empty_defaults(x) for x in node]
    if not isinstance(node, dict):
        return node
    return {k: _without_empty_defaults(v) for k, v in node.items()
            if not (k == "default" and isinstance(v, dict | list | str | None) and (not v or isinstance(v, dict)))}
