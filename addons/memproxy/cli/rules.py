"""`memproxy rules`: validate a rules file, and see which rule a request matches and why."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.markup import escape

from .. import config
from .common import console, load_rules, project_names_option, registry_option, rules_option

if TYPE_CHECKING:
    from mitmproxy import http

    from ..ports import PortRegistry
    from ..rules import RequestView, Rules


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
    console.print(f"ok: {len(loaded.rules)} rules in {escape(str(file or config.DEFAULT_RULES))}")


@rules.command("schema")
def rules_schema() -> None:
    """Print the JSON Schema of a rules file (what rules/memory.schema.json holds, for editors)."""
    from ..rules import json_schema

    click.echo(json.dumps(json_schema(), indent=2, ensure_ascii=False))


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
@project_names_option
def rules_explain(rules_path: Path | None, headers: tuple[str, ...], ua: str | None, method: str, req_host: str,
                  path: str, port: int, body: Path | None, flows: Path | None, registry: Path | None,
                  project_names: Path | None) -> None:
    """Show which rule a request matches, its scope and actions, and why (the conditions that held)."""
    from ..ports import PortRegistry

    loaded = load_rules(rules_path)
    projects = _Projects(PortRegistry(registry), project_names)
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


class _Projects:
    """The projects the proxy would name: the listen ports' (the port registry) and the working directories'
    (their roots, and the names the project registry holds or would give, read without writing)."""

    def __init__(self, ports: PortRegistry, names: Path | None) -> None:
        from ..repos import ProjectRegistry

        self.ports, self.names = ports, ProjectRegistry(names)

    def project_of(self, port: int) -> str | None:
        project = self.ports.project_for_port(port)
        return project.path if project else None

    def cached(self, path: str) -> tuple[str, str] | None:
        from ..repos import RegistryError, project_root

        root = project_root(path)
        if root is None:
            return None
        try:
            return root, self.names.name_for(root)
        except (RegistryError, OSError) as e:
            raise click.ClickException(f"the project registry {self.names.path}: {e}") from None


def _view(flow: http.HTTPFlow, content: bytes, rules: Rules, projects: _Projects) -> RequestView:
    """What the rules see of a request, built as the request path builds it."""
    from .. import protocols
    from ..rules import flow_headers, request_view

    method = "POST" if flow.websocket is not None else flow.request.method
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    adapter = protocols.detect_path(method, flow.request.path)
    model = adapter.model(flow.request.path, body) if adapter else None
    raw_body = content.decode("utf-8", "replace") if content else None

    headers = flow_headers(flow, rules.override_header)
    return request_view(flow, headers, projects.project_of, method, body=body, raw_body=raw_body, model=model,
                        projects=projects)


def _explain(rules: Rules, view: RequestView) -> None:
    """Print the route of one request, the rules tried before it and the conditions that decided."""
    from ..rules import describe_actions, explain

    e = explain(rules, view)
    route = e.route
    agent = view.headers.get("user-agent") or "-"
    console.print(escape(f"request: {view.method} {view.host}{view.path} · port {view.port or '-'} · "
                         f"model {view.model or '-'} · project {view.project or '-'} · user-agent {agent}"))
    for tried in e.tried:
        mark = "[green]✓[/]" if tried.matched else "[red]✗[/]"
        console.print(f"  {mark} {escape(tried.rule)}: {escape(tried.why)}")
    console.print(f"scope: [bold]{escape(route.scope)}[/]  "
                  + (f"rule: [bold]{escape(route.rule)}[/]" if route.rule else "no rule matched: the default scope"))
    if e.overridden:
        console.print(f"  from the {escape(e.override_header)} header (the rule gives {escape(str(e.rule_scope))})")
    if route.project is not None:
        console.print(escape(f"project: {route.project}"))
    if route.tool is not None:
        console.print(escape(f"tool: {route.tool}"))
    if route.layers:
        console.print(escape("also recalled: " + ", ".join(route.layers)))
    if route.captures:
        console.print(escape("captured: " + ", ".join(f"{k}={v}" for k, v in route.captures.items())))
    if p := route.matched_pattern:
        console.print(escape(f"matched pattern: header {p['header']} ~ {p['pattern']}"))
    console.print(f"actions: {escape(describe_actions(route.actions))}")
