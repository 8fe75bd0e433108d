"""The kinds of value a rules file holds, as pydantic field types.

Each type checks one kind of value, says what is wrong in the words the loader reports (`invalid`), turns
the text into what matching uses (a compiled regex, a flow filter) and describes itself in the published
JSON Schema. Checks that need no code (types, bounds, unknown keys) are pydantic's own; `loading` words
their errors the same way.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Annotated, Any, NamedTuple

import regex
from mitmproxy import flowfilter
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from memproxy.protocols.base import INJECT_STRATEGIES, QUERY_STRATEGIES
from memproxy.regexes import Pattern, nested_repetition

from .model import ROUTES

TOKEN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"  # an HTTP header name or method
HOST_GLOB = r"^[A-Za-z0-9.*?\[\]!_-]+$"
_TOKEN = re.compile(TOKEN)
_HOST_GLOB = re.compile(HOST_GLOB)
_BODY_FILTERS = ("b", "bq", "bs")


def invalid(*messages: str, at: tuple[str | int, ...] = ()) -> PydanticCustomError:
    """An error the loader reports as it is, one line per message, at the value's key path (and then `at`)."""
    return PydanticCustomError("rules", "{message}", {"message": messages[0], "errors": tuple((at, m) for m in messages)})


def type_name(v: Any) -> str:
    """What a YAML value is, in the words of an error message."""
    return {type(None): "null", bool: "a boolean", int: "a whole number", float: "a decimal number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(v), type(v).__name__)


def _string(v: Any) -> str:
    if not isinstance(v, str):
        raise invalid(f"expected a string, got {type_name(v)}")
    return v


def _nonblank(v: str) -> str:
    if not v.strip():
        raise invalid("must not be empty")
    return v


# A string with something in it.
Text = Annotated[str, AfterValidator(_nonblank), WithJsonSchema({"type": "string", "pattern": r"\S"})]


def token(what: str, *, blank: bool = False) -> Any:
    """A header name or method; `blank`: an empty one is invalid rather than empty (header names as keys)."""

    def check(v: str) -> str:
        if not _TOKEN.fullmatch(v):
            raise invalid(f"invalid {what} '{v}'")
        return v

    checks = (AfterValidator(check),) if blank else (AfterValidator(_nonblank), AfterValidator(check))
    return Annotated[str, *checks, WithJsonSchema({"type": "string", "pattern": TOKEN})]


HeaderName = token("header name")


class Model(BaseModel):
    """A mapping of the rules file: strict types (YAML's `yes` is no boolean here) and no unknown keys."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def choice(values: tuple[str, ...], what: str) -> Any:
    """One of `values` (`what` they are, for the error)."""

    def check(v: str) -> str:
        if v not in values:
            hint = difflib.get_close_matches(v, values, n=1)
            extra = f"did you mean '{hint[0]}'? " if hint else ""
            raise invalid(f"unknown {what} '{v}' ({extra}expected one of: {', '.join(values)})")
        return v

    return Annotated[str, AfterValidator(_nonblank), AfterValidator(check),
                     WithJsonSchema({"type": "string", "enum": list(values)})]


Query = choice(QUERY_STRATEGIES, "query strategy")
Inject = choice(INJECT_STRATEGIES, "injection strategy")
RouteName = choice(ROUTES, "route")


def _glob(v: str) -> str:
    if not _HOST_GLOB.fullmatch(v):
        raise invalid(f"invalid host glob '{v}'")
    return v


HostGlob = Annotated[str, AfterValidator(_nonblank), AfterValidator(_glob),
                     WithJsonSchema({"type": "string", "pattern": HOST_GLOB})]
Count = Annotated[int, Field(ge=0)]
Port = Annotated[int, Field(ge=0, le=65535)]


def _fraction(v: Any, handler: Callable[[Any], float]) -> float:
    value = handler(v)
    if not 0 <= value <= 1:
        raise invalid(f"must be between 0 and 1, got {v}")
    return value


Fraction = Annotated[float, WrapValidator(_fraction), WithJsonSchema({"type": "number", "minimum": 0, "maximum": 1})]


def _compile(v: str) -> Pattern:
    try:
        return Pattern(v)
    except (regex.error, re.error, OverflowError, RecursionError) as e:
        raise invalid(f"invalid regex '{v}': {getattr(e, 'msg', None) or e}") from None


def _regex(v: Any) -> Pattern:
    return _compile(_string(v))


def _nonblank_regex(v: Any) -> Pattern:
    return _compile(_nonblank(_string(v)))


_REGEX_SCHEMA = {"type": "string", "description": "A regular expression (Python syntax: the `regex` package)."}
_REGEX = (PlainValidator(_regex, json_schema_input_type=str), WithJsonSchema(_REGEX_SCHEMA))
# A regex, compiled; its named groups feed the rule's scope template. MaybeRegex: for a key that may be
# absent (None), where null is refused as any other value that is not a string.
Regex = Annotated[Pattern, *_REGEX]
MaybeRegex = Annotated[Pattern | None, *_REGEX]
# A regex that may not be empty (an entry of a list of regexes).
ListedRegex = Annotated[Pattern, PlainValidator(_nonblank_regex, json_schema_input_type=str),
                        WithJsonSchema({**_REGEX_SCHEMA, "pattern": r"\S"})]


class HeaderTest(NamedTuple):
    """A header condition's regex; `negate`: the header must not match it (written "!regex")."""

    pattern: Pattern
    negate: bool


def _header_test(v: Any) -> HeaderTest | None:
    if v is None:
        return None
    if isinstance(v, str) and v.startswith("!"):
        return HeaderTest(_compile(v[1:]), True)
    return HeaderTest(_regex(v), False)


# A header's regex, "!regex" (must not match), or null (must be absent).
HeaderValue = Annotated[HeaderTest | None, PlainValidator(_header_test, json_schema_input_type=str | None),
                        WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "null"}]})]


def _json_key(v: str) -> str:
    if "" in v.split("."):
        raise invalid(f"invalid JSON path '{v}': empty segment")
    return v


# A dot path into a JSON body: keys, indexes (-1: the last), `*` (any key or index) and `key=value` (only an object
# whose key holds that string).
JsonPath = Annotated[str, AfterValidator(_json_key), WithJsonSchema({"type": "string", "pattern": r"^[^.]+(\.[^.]+)*$"})]


def _filter(v: Any) -> Callable[[Any], bool]:
    text = _nonblank(_string(v))
    try:
        compiled = flowfilter.parse(text)
    except ValueError as e:
        cause = f": {e.__cause__}" if e.__cause__ else ""
        raise invalid(f"invalid filter expression '{text}'{cause}") from None
    if (problem := _filter_problem(compiled)) is not None:
        raise invalid(f"filter '{text}': {problem}")
    return compiled


def _filter_problem(node: Any) -> str | None:
    """Why a compiled flow filter is refused, or None. mitmproxy runs its regexes with `re` and no time
    limit: refuse those that search bodies (megabytes, and every WebSocket message so far) and those
    with nested repetition; the conditions of `match` do the same work within the request's deadline."""
    code, expr = getattr(node, "code", None), getattr(node, "expr", None)
    if code in _BODY_FILTERS:
        return f"~{code} searches bodies with no time limit; use the rule's 'body' or 'json' conditions"
    if isinstance(expr, str) and nested_repetition(expr):
        return (f"~{code} {expr!r}: a repetition inside a repetition can take exponential time, and filters"
                " have no time limit; use the rule's host, path or headers conditions")
    for child in (*getattr(node, "lst", ()), *filter(None, [getattr(node, "itm", None)])):
        if (problem := _filter_problem(child)) is not None:
            return problem
    return None


# A mitmproxy flow filter expression, compiled.
FlowFilter = Annotated[Callable[[Any], bool] | None, PlainValidator(_filter, json_schema_input_type=str),
                       WithJsonSchema({"type": "string", "description": "A mitmproxy flow filter expression."})]


def _listed(v: Any) -> Any:
    return v if isinstance(v, list) else [v]


def many(item: Any) -> Any:
    """One value or a non-empty list of them; always a list once validated."""
    return Annotated[list[item], BeforeValidator(_listed, json_schema_input_type=item | list[item]),
                     Field(min_length=1)]


def table(key: Any, value: Any) -> Any:
    """A non-empty mapping whose keys are `key`s (keys of other forms are invalid) and values `value`s."""
    return Annotated[dict[key, value], Field(min_length=1, json_schema_extra={"additionalProperties": False})]


def _none_is_empty(v: Any) -> Any:
    return {} if v is None else v


def section(model: Any) -> Any:
    """A mapping of the file that may be left empty (`defaults:` alone means no settings)."""
    return Annotated[model, BeforeValidator(_none_is_empty, json_schema_input_type=model | None)]
