"""`memproxy rules`: validate a rules file, and see which rule a request matches and why."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape

from .. import config
from .common import console, load_rules, registry_option, rules_option

if TYPE_CHECKING:
    from mitmproxy import http

    from ..ports import PortRegistry
    from ..rules import Actions, RequestView, Rules


@click.group()
def rules() -> None:
    """Validate the routing rules, and see which rule a request matches and why."""


@rules.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), required=False)
def rules_check(file: Path | None) -> None:
    """Validate FILE (default: the bundled rules/memory.yaml); errors name file, line and key."""
    from ..rules import Rules, RulesError

    try:
        loaded = Rules.load(file or config.DEFAULT_RULES)
    except RulesError as e:
        for line in e.errors:
            click.echo(line, err=True)
        raise click.exceptions.Exit(1) from None
    console.print(f"ok: {len(_compiled(loaded))} rules in {escape(str(file or config.DEFAULT_RULES))}")


@rules.command("explain")
@rules_option
@click.option("-H", "--header", "headers", multiple=True, metavar="'NAME: VALUE'", help="A request header (repeatable).")
@click.option("--ua", help="The user agent (same as -H 'user-agent: UA').")
@click.option("--method", default="POST", show_default=True)
@click.option("--host", "req_host", default="localhost", show_default=True, help="The request's host.")
@click.option("--path", default="/", show_default=True, help="The request's path, e.g. /v1/messages.")
@click.option("--port", type=click.IntRange(0, 65535), default=0,
              help="The listen port the request arrived on; a registered project's port names its project.")
@click.option("--body", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="A JSON request body.")
@click.option("--flows", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Explain every LLM request in a saved mitmproxy flow file instead.")
@registry_option
def rules_explain(rules_path: Path | None, headers: tuple[str, ...], ua: str | None, method: str, req_host: str,
                  path: str, port: int, body: Path | None, flows: Path | None, registry: Path | None) -> None:
    """Show which rule a request matches, its user id and actions, and why (the conditions that held)."""
    from ..ports import PortRegistry

    loaded = load_rules(rules_path)
    projects = PortRegistry(registry)
    if flows:
        found = 0
        for label, flow, content in _saved_requests(flows):
            found += 1
            console.rule(escape(label))
            _explain(loaded, _view(flow, content, loaded, projects))
        if not found:
            console.print("no LLM requests in the flow file")
        return
    pairs = [("user-agent", ua)] if ua else []
    for h in headers:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"expected 'Name: value', got {h!r}", param_hint="-H")
        pairs.append((name.strip(), value.strip()))
    content = body.read_bytes() if body else b""
    _explain(loaded, _view(_made_flow(method, req_host, path, port, pairs, content), content, loaded, projects))


def _made_flow(method: str, host: str, path: str, port: int, headers: list[tuple[str, str]],
               content: bytes) -> http.HTTPFlow:
    """A flow as the proxy would see it, so that `filter:` conditions can be explained too."""
    from mitmproxy import connection, http

    client = connection.Client(peername=("127.0.0.1", 0), sockname=("127.0.0.1", port))
    flow = http.HTTPFlow(client, connection.Server(address=(host, 443)))
    flow.request = http.Request.make(method.upper(), f"https://{host}{path}", content,
                                     [(k.encode(), v.encode()) for k, v in headers])
    return flow


def _saved_requests(path: Path) -> Iterator[tuple[str, http.HTTPFlow, bytes]]:
    """The LLM requests of a flow file: (label, flow, JSON body), WebSocket `response.create` messages too."""
    from mitmproxy import exceptions, http, io

    from .. import protocols

    try:
        with path.open("rb") as f:
            for n, flow in enumerate(io.FlowReader(f).stream(), 1):
                if not isinstance(flow, http.HTTPFlow):
                    continue
                req = flow.request
                label = f"flow {n}: {req.method} {req.pretty_url}"
                if flow.websocket is not None:
                    for m in flow.websocket.messages:
                        if m.from_client and m.is_text and b'"response.create"' in m.content:
                            yield f"{label} (WebSocket message)", flow, m.content
                elif protocols.detect_path(req.method, req.path) and req.raw_content:
                    yield label, flow, req.get_content(strict=False) or b""
    except exceptions.FlowReadException as e:
        raise click.ClickException(f"{path}: not a mitmproxy flow file: {e}") from None


def _view(flow: http.HTTPFlow, content: bytes, rules: Rules, projects: PortRegistry) -> RequestView:
    """What the rules see of a request, as the addon builds it."""
    from .. import protocols
    from ..addon import OVERRIDE_KEY
    from ..rules import RequestView

    req = flow.request
    method = "POST" if flow.websocket is not None else req.method
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    adapter = protocols.detect_path(method, req.path)
    model = adapter.model(req.path, body) if adapter else None
    if model is None and isinstance(body, dict) and isinstance(body.get("model"), str):
        model = body["model"]
    headers = req.headers.copy()
    if (override := flow.metadata.get(OVERRIDE_KEY)) is not None:  # the addon strips it before the flow is saved
        headers[rules.override_header] = override
    port = flow.client_conn.sockname[1] if flow.client_conn.sockname else 0
    project = projects.project_for_port(port) if port else None
    return RequestView(
        method=method, host=req.pretty_host, path=req.path, port=port, headers=headers, body=body,
        raw_body=content.decode("utf-8", "replace") if content else None, model=model,
        project=project.path if project else None, flow=flow,
    )


# The condition fields of a compiled rule; `_conditions` tests each alone, to say which held.
CONDITIONS = ("methods", "ports", "host", "path", "headers", "model", "project", "filter", "body", "json")
MULTI = ("headers", "body", "json")  # tuples of conditions, each tested alone


def _compiled(rules: Rules) -> tuple[Any, ...]:
    """The compiled rules in order (rules.py has no public accessor for them)."""
    return rules._rules


def _conditions(rule: Any) -> Iterator[tuple[str, Any]]:
    """(label, a copy of `rule` with only that condition) for each condition of `rule`."""
    fields = {f.name: f.default for f in dataclasses.fields(rule) if f.name in CONDITIONS}
    blank = dataclasses.replace(rule, **fields)
    for name in CONDITIONS:
        value = getattr(rule, name)
        for part in (value if name in MULTI else (value,) if value else ()):
            yield _label(name, part), dataclasses.replace(blank, **{name: (part,) if name in MULTI else part})


def _label(name: str, part: Any) -> str:
    """One condition as the rules file reads it."""
    match name:
        case "methods" | "ports":
            return f"{name[:-1]} {'|'.join(sorted(map(str, part)))}"
        case "filter":
            return f"filter {getattr(part, 'pattern', part)}"
        case "headers" if part.pattern is None:
            return f"header {part.name} absent"
        case "headers":
            return f"header {part.name} {'!~' if part.negate else '~'} {part.pattern.pattern}"
        case "json":
            segs, pattern = part
            return f"json {'.'.join(s if s == '*' else s[0] for s in segs)} ~ {pattern.pattern}"
        case "body":
            return f"body ~ {part.pattern}"
        case _:
            return f"{name} ~ {part.pattern}"


def _holds(rule: Any, view: RequestView) -> bool:
    """Whether a rule's conditions hold for `view`; a regex out of time does not hold, as in `Rules.match`."""
    from ..regexes import RegexTimeout

    try:
        return rule.captures(view) is not None
    except RegexTimeout:
        return False


def _explain(rules: Rules, view: RequestView) -> None:
    """Print the route of one request, the rules tried before it and the conditions that decided."""
    route = rules.match(view)
    agent = view.headers.get("user-agent") or "-"
    console.print(escape(f"request: {view.method} {view.host}{view.path} · port {view.port or '-'} · "
                         f"model {view.model or '-'} · project {view.project or '-'} · user-agent {agent}"))
    rule_user_id = rules.default_user_id
    for rule in _compiled(rules):
        checks = [(label, _holds(one, view)) for label, one in _conditions(rule)]
        if rule.name == route.rule:
            held = " · ".join(label for label, _ in checks) or "it has no conditions"
            console.print(f"  [green]✓[/] {escape(rule.name)}: {escape(held)}")
            rule_user_id = rule.user_id(view, route.captures, rules.default_user_id)
            break
        failed = next((label for label, ok in checks if not ok), None)
        why = f"{failed} did not hold" if failed else "its user_id template has an empty variable"
        console.print(f"  [red]✗[/] {escape(rule.name)}: {escape(why)}")
    console.print(f"user id: [bold]{escape(route.user_id)}[/]  "
                  + (f"rule: [bold]{escape(route.rule)}[/]" if route.rule else "no rule matched: the default user id"))
    if route.user_id != rule_user_id:
        console.print(f"  from the {escape(rules.override_header)} header (the rule gives {escape(str(rule_user_id))})")
    if route.captures:
        console.print(escape("captured: " + ", ".join(f"{k}={v}" for k, v in route.captures.items())))
    if p := route.matched_pattern:
        console.print(escape(f"matched pattern: header {p['header']} ~ {p['pattern']}"))
    console.print(f"actions: {escape(_actions(route.actions))}")


def _actions(a: Actions) -> str:
    if a.auxiliary:
        return "auxiliary: neither recalled nor stored"
    out = [
        f"recall ({a.query} query, inject {a.inject}, up to {a.max_results} memories / {a.max_chars} chars,"
        f" threshold {a.threshold})" if a.recall else "no recall",
        "store" if a.store else "no store",
    ]
    if a.profile:
        out.append("profile")
    if a.models_allow or a.models_deny:
        out.append(f"models allow {list(a.models_allow)} deny {list(a.models_deny)}")
    return ", ".join([*out, f"route {a.route}"])
