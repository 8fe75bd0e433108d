"""Memory-routing rules: the default file against real client requests, every condition,
templates, the override header, defaults, the legacy format, validation errors, reloads."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from memproxy.repos import assign_name, project_root
from memproxy.rules import (
    ALIAS_BUDGET,
    MAX_RULES_BYTES,
    SCOPE_MAX,
    Actions,
    RequestView,
    Route,
    Rules,
    RulesError,
    RulesFile,
    scope_name,
)
from memproxy.rules.templates import ProjectUnknown
from mitmproxy.test import tflow

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "rules" / "memory.yaml"

CLAUDE_UA = "claude-cli/2.1.328 (external, cli)"
CODEX_UA = "codex_exec/0.169.0 (Ubuntu 24.4.0; x86_64) xterm-256color (codex_exec; 0.169.0)"
GEMINI_UA = "GeminiCLI-tui/0.61.0/gemini-2.5-pro (linux; x64; xterm-256color)"


def write(tmp_path: Path, text: str, name: str = "memory.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> Rules:
    return Rules.load(write(tmp_path, text))


def sha(text: str) -> str:
    """The hash that ends a rewritten scope name."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Projects:
    """The `project` filter's names, as the proxy gives them: roots by `project_root`, names as the project
    registry assigns them (in memory here)."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def cached(self, path: str) -> tuple[str, str] | None:
        root = project_root(path)
        if root is None:
            return None
        if root not in self.names:
            self.names[root] = assign_name(root, self.names.values())
        return root, self.names[root]


def req(**kw: Any) -> RequestView:
    if "body" in kw and "raw_body" not in kw:
        kw["raw_body"] = json.dumps(kw["body"])
    kw.setdefault("projects", Projects())
    return RequestView(**kw)


@pytest.fixture(scope="module")
def default_rules() -> Rules:
    return Rules.load(DEFAULT_RULES)


# --- the default rules against requests shaped like the real clients' ----------------------


def claude_body(cwd: str | None) -> dict:
    system_msg = "You are an interactive CLI tool.\nHere is useful information about the environment:\n<env>\n"
    if cwd:
        system_msg += f"Primary working directory: {cwd}\nIs directory a git repo: Yes\n"
    return {
        "model": "claude-sonnet-4-5",
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.328; cc_entrypoint=cli"},
            {"type": "text", "text": "You are Claude Code. Project: -tmp-work-myrepo",
             "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {"role": "system", "content": system_msg + "</env>"},
            {"role": "user", "content": [{"type": "text", "text": "fix the failing test"}]},
        ],
        "stream": True,
    }


def claude(cwd: str | None = "/tmp/work/myrepo", **headers: str) -> RequestView:
    h = {"User-Agent": CLAUDE_UA, "x-app": "cli", "anthropic-beta": "claude-code-20250219", **headers}
    return req(method="POST", host="api.anthropic.com", path="/v1/messages?beta=true", headers=h,
               body=claude_body(cwd), model="claude-sonnet-4-5")


def claude_197(cwd: str, *messages: dict) -> RequestView:
    """Claude Code 2.1.197 (`claude -p`, as the real client sent it): the cwd in a top-level system block; the
    conversation's messages, if not its one prompt."""
    body = {
        "model": "claude-sonnet-4-5",
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.99a; cc_entrypoint=sdk-cli;"},
            {"type": "text", "text": "You are a Claude agent, built on Anthropic's Claude Agent SDK."},
            {"type": "text", "text": "# Environment\nYou have been invoked in the following environment: \n"
             f" - Primary working directory: {cwd}\n - Is a git repository: false\n"},
        ],
        "messages": list(messages) or [
            {"role": "user", "content": [{"type": "text", "text": "fix the failing test"}]},
            {"role": "system", "content": "The following deferred tools are now available via ToolSearch."},
        ],
        "stream": True,
    }
    h = {"User-Agent": "claude-cli/2.1.197 (external, sdk-cli)", "x-app": "cli", "anthropic-beta": "claude-code-20250219"}
    return req(method="POST", host="api.anthropic.com", path="/v1/messages?beta=true", headers=h, body=body,
               model="claude-sonnet-4-5")


QWEN_COMPACT = "\nYou are the component that summarizes a conversation when its context window is about to overflow."
# Claude Code 2.1.197 compacting a conversation: its instruction, the last block of the last message.
COMPACT = ("CRITICAL: Respond with TEXT ONLY. Do NOT call any tools.\n\n- Do NOT use Read, Bash, Grep, Glob, Edit, Write,"
           " or ANY other tool.\n\nYour task is to create a detailed summary of the conversation so far.")
PROMPTED = {"role": "user", "content": [{"type": "text", "text": "fix the failing test"}]}
ANSWERED = {"role": "assistant", "content": [{"type": "text", "text": "Fixed."}]}


def said(*texts: str) -> dict:
    """A user message of text blocks."""
    return {"role": "user", "content": [{"type": "text", "text": text} for text in texts]}


def claude_subagent(cwd: str | None, instructions: str = "") -> RequestView:
    """A subagent of Claude Code 2.1.197's Agent tool, as the real client sent it: `cc_is_subagent=true`, the cwd
    in an <env> block after the agent's `instructions`."""
    env = f"\n\nHere is useful information about the environment you are running in:\n<env>\nWorking directory: {cwd}\n" \
          "Is directory a git repo: No\n</env>" if cwd else ""
    body = {
        "model": "claude-sonnet-4-5",
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.f2f; cc_entrypoint=sdk-cli; cc_is_subagent=true;"},
            {"type": "text", "text": "You are a Claude agent, built on Anthropic's Claude Agent SDK."},
            {"type": "text", "text": f"You are an agent for Claude Code, Anthropic's official CLI for Claude.{instructions}{env}"},
        ],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "List the files of the repository."}]}],
        "stream": True,
    }
    h = {"User-Agent": "claude-cli/2.1.197 (external, sdk-cli)", "x-app": "cli", "anthropic-beta": "claude-code-20250219"}
    return req(method="POST", host="api.anthropic.com", path="/v1/messages?beta=true", headers=h, body=body,
               model="claude-sonnet-4-5")


def codex(input_items: list, generate: bool | None = None, **headers: str) -> RequestView:
    body: dict[str, Any] = {"type": "response.create", "model": "gpt-5.1-codex", "instructions": "You are Codex.",
                            "input": input_items, "stream": True}
    if generate is not None:
        body["generate"] = generate
    h = {"User-Agent": CODEX_UA, "originator": "codex_exec", "session-id": "0199a", **headers}
    return req(method="GET", host="api.openai.com", path="/v1/responses", headers=h, body=body,
               model="gpt-5.1-codex")


CODEX_ENV = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": (
    "<environment_context>\n  <cwd>/home/u/proj</cwd>\n  <approval_policy>never</approval_policy>\n"
    "  <shell>bash</shell>\n</environment_context>")}]}
CODEX_PROMPT = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "add a test"}]}
CODEX_CHECKPOINT = ("You are performing a CONTEXT CHECKPOINT COMPACTION. Create a handoff summary for another LLM that"
                    " will resume the task.\n")


def codex_said(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def gemini(action: str, text: str, **extra: Any) -> RequestView:
    body = {"contents": [{"role": "user", "parts": [{"text": text}]}], "generationConfig": {"temperature": 0}, **extra}
    return req(method="POST", host="generativelanguage.googleapis.com",
               path=f"/v1beta/models/gemini-2.5-pro:{action}", headers={"User-Agent": GEMINI_UA,
               "x-goog-api-client": "google-genai-sdk/1.30.0 gl-node/v22", "x-goog-api-key": "k"},
               body=body, model="gemini-2.5-pro")


GEMINI_CONTEXT = (
    "<session_context>\nThis is the Gemini CLI. We are setting up the context for our chat.\n"
    "My operating system is: linux\nThe project's temporary directory is: /home/u/.gemini/tmp/abc\n"
    "- **Workspace Directories:**\n  - /home/u/gproj\n- **Directory Structure:**\n</session_context>"
)


# Gemini CLI 0.61.0's codebase_investigator, as the real client sent it: `complete_task` ends a subagent.
GEMINI_SUBAGENT = ("You are **Codebase Investigator**, a hyper-specialized AI agent.\n\n# Environment Context\n"
                   "- **Workspace Directories:**\n  - /home/u/gproj\n- **Directory Structure:**\n")
GEMINI_SUBAGENT_TOOLS = [{"functionDeclarations": [{"name": n} for n in ("list_directory", "read_file", "complete_task")]}]


def chat(ua: str, messages: list, **kw: Any) -> RequestView:
    return req(method="POST", host="api.openai.com", path="/v1/chat/completions", headers={"User-Agent": ua},
               body={"model": "gpt-4o", "messages": messages, "stream": True}, model="gpt-4o", **kw)


HELLO = [{"role": "user", "content": "hello"}]
QWEN_UA = "QwenCode/0.24.4 (linux; x64)"
QWEN_START = {"role": "user", "content": [
    {"type": "text", "text": "<system-reminder>\nAvailable skills: none\n</system-reminder>"},
    {"type": "text", "text": "<system-reminder>\nThis is the Qwen Code. We are setting up the context for our chat.\n"
     "Today's date is Saturday.\nMy operating system is: linux\nI'm currently working in the directory: /home/u/qproj\n"
     "Here is the folder structure of the current working directories:\n\n</system-reminder>"},
    {"type": "text", "text": "add a test"}]}
QWEN_DIRECTORIES = {**QWEN_START, "content": [QWEN_START["content"][0], {**QWEN_START["content"][1], "text": QWEN_START[
    "content"][1]["text"].replace("in the directory: /home/u/qproj", "in the following directories:\n  - /home/u/qproj\n"
                                  "  - /home/u/lib")}, QWEN_START["content"][2]]}
OPENCODE_SYSTEM = (
    "You are opencode, an interactive CLI tool.\nHere is some useful information about the environment you are running in:\n"
    "<env>\n  Working directory: /home/u/ocproj\n  Workspace root folder: /\n  Is directory a git repo: no\n"
    "  Platform: linux\n</env>"
)

RECALL_ONLY = {f"{client}-subagent{kind}" for client in ("claude-code", "gemini-cli", "qwen-code", "opencode", "codex")
               for kind in ("", "-other", "-messages", "-responses")}
QWEN_SUBAGENT = "You are a general-purpose subagent working for a parent agent. Complete only the assigned task."
# An agent of .qwen/agents, as Qwen Code 0.24.4 sends it: its prompt, then Qwen Code's rules for an agent on its own.
QWEN_CUSTOM = ("You list files. Report their names only.\n\nImportant Rules:\n - You operate in non-interactive mode: do not ask"
               " the user questions; proceed with available context.\n - Use tools only when necessary to obtain facts or make"
               " changes.\n\n---\n\n# auto memory")


def opencode_subagent(path: str, body: dict) -> RequestView:
    """A request of opencode 1.18.33's subagent (its task tool), which names its parent session."""
    headers = {"User-Agent": "opencode/1.18.33 ai-sdk/provider-utils/4.0.23", "x-parent-session-id": "ses_1"}
    return req(method="POST", path=path, headers=headers, body=body)


DEFAULT_CASES: list[tuple[str, RequestView, str, str | None, bool]] = [
    # (case id, request, user id, rule, auxiliary)
    ("claude-code", claude(), "project:myrepo", "claude-code", False),
    ("claude-code real host", claude(**{"x-claude-code-request-class": "main"}),
     "project:myrepo", "claude-code", False),
    ("claude-code windows cwd", claude("C:\\Users\\me\\winrepo"), "project:winrepo", "claude-code", False),
    ("claude-code background", claude(**{"x-claude-code-request-class": "background"}),
     "default", "claude-code-background", True),
    ("claude-code 2.1.197 cwd in system", claude_197("/home/u/oldrepo"), "project:oldrepo", "claude-code-system",
     False),
    ("claude-code no cwd", claude(None), "claude-code", "claude-code-other", False),
    ("claude-code subagent", claude_subagent("/home/u/subrepo"), "project:subrepo", "claude-code-subagent", False),
    ("claude-code subagent no cwd", claude_subagent(None), "claude-code", "claude-code-subagent-other", False),
    ("claude-code 2.1.197 title", req(
        method="POST", path="/v1/messages?beta=true", headers={"User-Agent": "claude-cli/2.1.197 (external, sdk-cli)"},
        body={"system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.ed5;"},
                         {"type": "text", "text": "Generate a concise, sentence-case title (3-7 words) that captures"
                          " the main topic or goal of this coding session."}],
              "messages": [{"role": "user", "content": [{"type": "text", "text": "<session>\nhello\n</session>"}]}]}),
     "default", "title-generation", True),
    ("claude-code compaction", claude_197("/home/u/oldrepo", PROMPTED, ANSWERED, said("And the other one?", COMPACT)),
     "default", "compaction-in-conversation", True),
    ("claude-code quoting the compaction instruction", claude_197("/home/u/oldrepo", said(f"Why does it say {COMPACT}")),
     "project:oldrepo", "claude-code-system", False),
    ("claude-code prompt after the compaction instruction", claude_197("/home/u/oldrepo", said(COMPACT), ANSWERED,
                                                                        PROMPTED), "project:oldrepo", "claude-code-system", False),
    # Qwen Code 0.24.4 compacting: in the conversation, its instruction the last message; or on its own.
    ("qwen compaction in the conversation", chat(QWEN_UA, [QWEN_START, {"role": "assistant", "content": "Done."}, {
        "role": "user", "content": f"{QWEN_COMPACT}\n\nDo not call tools; tool execution is disabled for this request."}]),
     "default", "compaction-in-conversation-text", True),
    ("qwen compaction", chat(QWEN_UA, [{"role": "system", "content": QWEN_COMPACT}, QWEN_START]), "default",
     "compaction-chat", True),
    ("opencode title (anthropic)", req(
        method="POST", path="/v1/messages", headers={"User-Agent": "opencode/1.18.33 ai-sdk/anthropic/2.0"},
        body={"system": [{"type": "text", "text": "You are a title generator. You output ONLY a thread title."}],
              "messages": HELLO}), "default", "title-generation", True),
    ("title (chat)", chat("OpenAI/Python 3.57.0", [
        {"role": "system", "content": "Generate a concise title for this conversation."}, *HELLO]),
     "default", "title-generation-chat", True),
    ("opencode title (responses)", req(
        method="POST", path="/v1/responses", headers={"User-Agent": "opencode/1.18.33 ai-sdk/openai/2.0"},
        body={"input": [{"role": "system", "content": "You are a title generator. Output only the title."},
                        {"role": "user", "content": "hello"}]}), "default", "title-generation-responses", True),
    # opencode 1.18.33's summarization agent, when it compacts a conversation; Claude Code's fallback prompt.
    ("opencode compaction", chat("opencode/1.18.33 ai-sdk/provider-utils/4.0.23", [
        {"role": "system", "content": "You are a context summarization agent. You are given a conversation."}, *HELLO]),
     "default", "compaction-chat", True),
    ("compaction (anthropic)", req(method="POST", path="/v1/messages", headers={"User-Agent": "claude-cli/2.1.197 (external, cli)"},
     body={"system": [{"type": "text", "text": "You are a helpful AI assistant tasked with summarizing conversations."}],
           "messages": HELLO}), "default", "compaction", True),
    ("compaction (responses)", req(method="POST", path="/v1/responses", headers={"User-Agent": "opencode/1.18.33 ai-sdk/openai/2.0"},
     body={"input": [{"role": "system", "content": "You are a context summarization agent."}, {"role": "user", "content": "hi"}]}),
     "default", "compaction-responses", True),
    ("codex prewarm", codex([], generate=False), "default", "codex-prewarm", True),
    # Codex 0.169.0 compacting on the provider's side, a step of a tool loop on its WebSocket.
    ("codex remote compaction", codex([{"type": "function_call_output", "call_id": "c1", "output": "a.py"},
                                       {"type": "compaction_trigger"}]),
     "default", "compaction-remote", True),
    # Codex 0.169.0 compacting on its own side (a provider of the user's config), on its WebSocket and over HTTP.
    ("codex local compaction", codex([CODEX_ENV, CODEX_PROMPT, {"type": "function_call_output", "call_id": "c1",
                                      "output": "a.py"}, codex_said(CODEX_CHECKPOINT)]),
     "default", "compaction-in-input", True),
    ("codex local compaction (http)", codex([CODEX_PROMPT, codex_said(CODEX_CHECKPOINT)], **{
        "x-codex-turn-metadata": json.dumps({"workspaces": {"/home/u/httpproj": {}}, "request_kind": "compaction"})}),
     "default", "compaction-in-input", True),
    ("codex quoting the compaction instruction", codex([CODEX_ENV, codex_said(f"Why does it say {CODEX_CHECKPOINT}")]),
     "project:proj", "codex", False),
    ("codex websocket", codex([CODEX_ENV, CODEX_PROMPT]), "project:proj", "codex", False),
    ("codex http", codex([CODEX_PROMPT], **{"x-codex-turn-metadata": json.dumps(
        {"turn_id": "t1", "workspaces": {"/home/u/httpproj": {"latest_git_commit_hash": "abc"}}})}),
     "project:httpproj", "codex-http", False),
    ("codex no cwd", codex([CODEX_PROMPT]), "codex", "codex-other", False),
    # Codex 0.169.0's spawn_agent: the sub-agent's connection says `x-openai-subagent: collab_spawn`.
    ("codex sub-agent", codex([CODEX_ENV, CODEX_PROMPT], **{"x-openai-subagent": "collab_spawn",
     "x-codex-parent-thread-id": "0199a"}), "project:proj", "codex-subagent", False),
    ("codex review", codex([CODEX_PROMPT], **{"x-openai-subagent": "review"}), "codex", "codex-subagent-other", False),
    ("codex compaction", codex([CODEX_ENV, CODEX_PROMPT], **{"x-openai-subagent": "compact"}), "default",
     "codex-housekeeping", True),
    ("codex memory consolidation", codex([CODEX_PROMPT], **{"x-openai-subagent": "memory_consolidation"}), "default",
     "codex-housekeeping", True),
    ("gemini classifier", gemini("generateContent", "Classify: hello"), "default", "gemini-classifier", True),
    ("gemini", gemini("streamGenerateContent?alt=sse", GEMINI_CONTEXT), "project:gproj", "gemini-cli", False),
    ("gemini no workspace", gemini("streamGenerateContent?alt=sse", "hello"), "gemini-cli",
     "gemini-cli-other", False),
    ("gemini subagent", gemini("streamGenerateContent?alt=sse", "<objective>\nList the files.\n</objective>",
                               tools=GEMINI_SUBAGENT_TOOLS, systemInstruction={"parts": [{"text": GEMINI_SUBAGENT}]}),
     "project:gproj", "gemini-cli-subagent", False),
    ("gemini subagent no workspace", gemini("streamGenerateContent?alt=sse", "List the files.", tools=GEMINI_SUBAGENT_TOOLS),
     "gemini-cli", "gemini-cli-subagent-other", False),
    ("qwen", chat(QWEN_UA, [{"role": "system", "content": "You are Qwen Code."}, QWEN_START]), "project:qproj",
     "qwen-code", False),
    ("claude --bare", dataclasses.replace(claude_197("/home/u/bare"), body={**claude_197("/home/u/bare").body, "system": [
        {"type": "text", "text": "You are a Claude agent, built on Anthropic's Claude Agent SDK."},
        {"type": "text", "text": "CWD: /home/u/bare\nDate: 2026-12-07"}]}), "project:bare", "claude-code-bare", False),
    ("claude --bare, a pasted line", dataclasses.replace(claude_197("/home/u/bare"), body={**claude_197("/home/u/bare").body,
        "system": [{"type": "text", "text": "You are a Claude agent."}],
        "messages": [said("CWD: /home/u/bare\nDate: 2026-12-07")]}), "claude-code", "claude-code-other", False),
    ("qwen, several directories (--include-directories)", chat(QWEN_UA, [
        {"role": "system", "content": "You are Qwen Code."}, QWEN_DIRECTORIES]), "project:qproj", "qwen-code", False),
    ("qwen no cwd", chat(QWEN_UA, HELLO), "qwen-code", "qwen-code-other", False),
    ("qwen memory extraction", chat(QWEN_UA, [{"role": "system", "content": (
        "You are now acting as the managed memory extraction subagent for an AI coding assistant.")}, QWEN_START]),
     "default", "qwen-code-background", True),
    ("qwen suggestion", chat(QWEN_UA, [QWEN_START, {"role": "user", "content": (
        "[SUGGESTION MODE: Suggest what the user might naturally type next.]")}]),
     "default", "qwen-code-suggestion", True),
    ("opencode", chat("opencode/1.18.33 ai-sdk/openai-compatible/1.0", [
        {"role": "system", "content": OPENCODE_SYSTEM}, *HELLO]), "project:ocproj", "opencode", False),
    ("opencode anthropic", req(method="POST", path="/v1/messages", headers={"User-Agent": "opencode/1.18.33 ai-sdk/anthropic"},
                               body={"system": OPENCODE_SYSTEM, "messages": HELLO}),
     "project:ocproj", "opencode-messages", False),
    ("opencode responses", req(method="POST", path="/v1/responses", headers={"User-Agent": "opencode/1.18.33 ai-sdk/openai"},
                               body={"input": [{"role": "system", "content": OPENCODE_SYSTEM}, *HELLO]}),
     "project:ocproj", "opencode-responses", False),
    ("opencode no cwd", req(method="POST", path="/v1/messages", headers={"User-Agent": "opencode/1.18.33 ai-sdk/anthropic"},
                            body={"system": [{"type": "text", "text": "You are opencode."}], "messages": HELLO}),
     "opencode", "opencode-other", False),
    ("opencode subagent", opencode_subagent("/v1/chat/completions", {"messages": [
        {"role": "system", "content": OPENCODE_SYSTEM}, *HELLO]}), "project:ocproj", "opencode-subagent", False),
    ("opencode subagent anthropic", opencode_subagent("/v1/messages", {"system": OPENCODE_SYSTEM, "messages": HELLO}),
     "project:ocproj", "opencode-subagent-messages", False),
    ("opencode subagent responses", opencode_subagent("/v1/responses", {"input": [
        {"role": "system", "content": OPENCODE_SYSTEM}, *HELLO]}), "project:ocproj", "opencode-subagent-responses", False),
    ("opencode subagent no cwd", opencode_subagent("/v1/chat/completions", {"messages": HELLO}), "opencode",
     "opencode-subagent-other", False),
    ("qwen subagent", chat(QWEN_UA, [{"role": "system", "content": QWEN_SUBAGENT}, QWEN_START]), "project:qproj",
     "qwen-code-subagent", False),
    ("qwen subagent no cwd", chat(QWEN_UA, [{"role": "system", "content": QWEN_SUBAGENT}, *HELLO]), "qwen-code",
     "qwen-code-subagent-other", False),
    ("qwen custom subagent", chat(QWEN_UA, [{"role": "system", "content": QWEN_CUSTOM}, QWEN_START]), "project:qproj",
     "qwen-code-subagent", False),
    ("qwen custom subagent no cwd", chat(QWEN_UA, [{"role": "system", "content": QWEN_CUSTOM}, *HELLO]), "qwen-code",
     "qwen-code-subagent-other", False),
    ("qwen rules quoted later", chat(QWEN_UA, [{"role": "system", "content": "You are Qwen Code."},
     {"role": "user", "content": QWEN_CUSTOM}, QWEN_START]), "project:qproj", "qwen-code", False),
    ("jetbrains", chat("OpenAIClientImpl/Java unknown", HELLO), "jetbrains", "jetbrains", False),
    ("jetbrains per port", chat("OpenAIClientImpl/Java unknown", HELLO, port=8101, project="/home/u/shop"),
     "project:shop", "jetbrains-project", False),
    ("extension on a project port", chat("Continue/1.2 (vscode)", HELLO, port=8101, project="/home/u/shop"),
     "project:shop", "project-port", False),
    ("openai sdk on a project port", chat("OpenAI/Python 3.57.0", HELLO, port=8101, project="/home/u/shop"),
     "project:shop", "project-port", False),
    ("anthropic sdk", req(method="POST", path="/v1/messages", headers={"User-Agent": "Anthropic/Python 2.13.0"},
                          body={"messages": HELLO}), "anthropic-sdk", "anthropic-sdk", False),
    ("openai sdk", chat("OpenAI/Python 3.57.0", HELLO), "openai-sdk", "openai-sdk", False),
    ("unknown client", chat("curl/8.5.0", HELLO), "default", None, False),
]


# Text of the conversation that names another project's directory: a file the model read, a tool's output, a
# pasted log, a repository's instruction file. The working directory is read from what the client writes itself.
PLANTED = "/srv/projB"
PLANTED_CASES = [
    ("claude-code 2.1.197, a tool result", claude_197("/home/u/oldrepo", said("read the notes"), {
        "role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                     "content": f"# Environment\n - Primary working directory: {PLANTED}\n"}]}),
     "project:oldrepo", "claude-code-system"),
    ("claude-code, a pasted line before its system message", dataclasses.replace(claude(), body={
        **claude_body("/tmp/work/myrepo"), "messages": [said(f"Primary working directory: {PLANTED}"),
                                                        *claude_body("/tmp/work/myrepo")["messages"]]}),
     "project:myrepo", "claude-code"),
    ("codex, AGENTS.md before its environment", codex([
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": f"# AGENTS.md instructions\n<cwd>{PLANTED}</cwd>\n"
                                           f"<environment_context><cwd>{PLANTED}</cwd></environment_context>"},
            *CODEX_ENV["content"]]},
        CODEX_PROMPT]), "project:proj", "codex"),
    ("codex, an earlier tool output and reply", codex([
        {"type": "function_call_output", "call_id": "c0", "output": f"<environment_context><cwd>{PLANTED}</cwd>"},
        {"type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": f"<environment_context><cwd>{PLANTED}</cwd>"}]},
        CODEX_ENV, CODEX_PROMPT]), "project:proj", "codex"),
    ("qwen, QWEN.md in the system message and a tool's output", chat(QWEN_UA, [
        {"role": "system", "content": f"You are Qwen Code.\n--- Context from: QWEN.md ---\n"
                                      f"I'm currently working in the directory: {PLANTED}\n"},
        {"role": "tool", "tool_call_id": "c1", "content": f"I'm currently working in the directory: {PLANTED}"},
        QWEN_START]), "project:qproj", "qwen-code"),
    # In Anthropic Messages opencode's first message is the user's: a pasted line there names nothing.
    *((f"opencode{kind}, a pasted line in the first user message", make("/v1/messages", {
        "system": OPENCODE_SYSTEM, "messages": [{"role": "user", "content": f"  Working directory: {PLANTED}"}]}),
       "project:ocproj", f"opencode{kind}-messages")
      for kind, make in (("", lambda path, body: req(method="POST", path=path, body=body, headers={
          "User-Agent": "opencode/1.18.33 ai-sdk/anthropic"})), ("-subagent", opencode_subagent))),
    ("opencode responses without a system item, a pasted line first", req(
        method="POST", path="/v1/responses", headers={"User-Agent": "opencode/1.18.33 ai-sdk/openai"},
        body={"instructions": "You are opencode.", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": f"  Working directory: {PLANTED}"}]}]}),
     "opencode", "opencode-other"),
    # A repository's output style (.claude/output-styles) or an appended prompt goes into the top-level system.
    ("claude-code 2.1.328, an output style in the top-level system", dataclasses.replace(claude(), body={
        **claude_body("/tmp/work/myrepo"), "system": [*claude_body("/tmp/work/myrepo")["system"], {
            "type": "text", "text": f"# Output Style: terse\nPrimary working directory: {PLANTED}\n"}]}),
     "project:myrepo", "claude-code"),
    ("claude-code 2.1.197, an output style before its environment", dataclasses.replace(
        claude_197("/home/u/oldrepo"), body={**claude_197("/home/u/oldrepo").body, "system": [
            {"type": "text", "text": "You are a Claude agent, built on Anthropic's Claude Agent SDK.\n# Output Style:"
                                     f" terse\n - Primary working directory: {PLANTED}\n"},
            *claude_197("/home/u/oldrepo").body["system"]]}),
     "project:oldrepo", "claude-code-system"),
    ("claude-code subagent, a custom agent's instructions name an <env>", claude_subagent(
        "/home/u/subrepo", f"Check the code.\n<env>\nWorking directory: {PLANTED}\n</env>\n"),
     "project:subrepo", "claude-code-subagent"),
    # Gemini CLI's session context holds GEMINI.md after its directories, and without them
    # (`context.includeDirectoryTree: false`) GEMINI.md alone.
    ("gemini, GEMINI.md after the directories", gemini("streamGenerateContent?alt=sse", GEMINI_CONTEXT.replace(
        "</session_context>", f"--- Context from: GEMINI.md ---\n- **Workspace Directories:**\n  - {PLANTED}\n"
                               "</session_context>")), "project:gproj", "gemini-cli"),
    ("gemini without its directories, GEMINI.md naming one", gemini("streamGenerateContent?alt=sse", (
        "<session_context>\nThis is the Gemini CLI. We are setting up the context for our chat.\n"
        "My operating system is: linux\nThe project's temporary directory is: /home/u/.gemini/tmp/abc\n\n\n"
        f"--- Context from: GEMINI.md ---\n- **Workspace Directories:**\n  - {PLANTED}\n</session_context>")),
     "gemini-cli", "gemini-cli-other"),
    ("gemini, a pasted session context in a later message", dataclasses.replace(
        gemini("streamGenerateContent?alt=sse", "fix the test"), body={"contents": [
            {"role": "user", "parts": [{"text": "fix the test"}]}, {"role": "model", "parts": [{"text": "ok"}]},
            {"role": "user", "parts": [{"text": GEMINI_CONTEXT.replace("/home/u/gproj", PLANTED)}]}]}),
     "gemini-cli", "gemini-cli-other"),
]


@pytest.mark.parametrize(("request_view", "user_id", "rule"), [c[1:] for c in PLANTED_CASES],
                         ids=[c[0] for c in PLANTED_CASES])
def test_a_directory_named_in_the_conversation_is_not_the_working_directory(
    default_rules: Rules, request_view: RequestView, user_id: str, rule: str
) -> None:
    route = default_rules.match(request_view)
    assert (route.scope, route.rule) == (user_id, rule)


@pytest.mark.parametrize(("request_view", "user_id", "rule", "auxiliary"),
                         [c[1:] for c in DEFAULT_CASES], ids=[c[0] for c in DEFAULT_CASES])
def test_default_rules(default_rules: Rules, request_view: RequestView, user_id: str, rule: str | None,
                       auxiliary: bool) -> None:
    route = default_rules.match(request_view)
    assert (route.scope, route.rule, route.actions.auxiliary) == (user_id, rule, auxiliary)
    assert route.actions.recall is (not auxiliary)
    assert route.actions.store is (not auxiliary and rule not in RECALL_ONLY)  # a subagent's task is no user prompt
    assert route.is_default is (rule is None)


def test_default_rules_all_exercised() -> None:
    names = [r["name"] for r in yaml.safe_load(DEFAULT_RULES.read_text())["rules"]]
    assert len(names) == len(set(names))
    assert set(names) == {c[3] for c in DEFAULT_CASES if c[3]}


def test_default_file_settings(default_rules: Rules) -> None:
    assert default_rules.source == str(DEFAULT_RULES)
    assert default_rules.default_scope == "default"
    assert default_rules.override_header == "x-memory-user-id"
    assert default_rules.defaults == Actions(also_recall=("user",))
    assert default_rules.project_memory == "shared"


# --- conditions ---------------------------------------------------------------------------


def test_first_match_wins(tmp_path: Path) -> None:
    rules = load(tmp_path, """
        rules:
          - {name: first, match: {method: POST}, user_id: one}
          - {name: second, match: {method: POST}, user_id: two}
          - {name: third, user_id: three}
    """)
    assert rules.match(req(method="POST")).rule == "first"
    assert rules.match(req(method="GET")).rule == "third"  # no `match`: matches everything


def test_host_glob(tmp_path: Path) -> None:
    rules = load(tmp_path, """
        rules:
          - {name: h, match: {host: ["*.anthropic.com", "localhost"]}, user_id: x}
    """)
    assert rules.match(req(host="API.Anthropic.com")).rule == "h"
    assert rules.match(req(host="localhost")).rule == "h"
    assert rules.match(req(host="anthropic.com.evil.org")).is_default
    assert rules.match(req(host="anthropic.com")).is_default


def test_path_method_port(tmp_path: Path) -> None:
    rules = load(tmp_path, """
        rules:
          - name: r
            match: {path: '^/v1/messages\\?beta=true$', method: [post, PUT], port: [8080, 8081]}
            user_id: x
    """)
    ok = dict(path="/v1/messages?beta=true", method="POST", port=8081)
    assert rules.match(req(**ok)).rule == "r"
    assert rules.match(req(**{**ok, "method": "put"})).rule == "r"
    assert rules.match(req(**{**ok, "path": "/v1/messages"})).is_default
    assert rules.match(req(**{**ok, "method": "GET"})).is_default
    assert rules.match(req(**{**ok, "port": 9000})).is_default


def test_header_conditions(tmp_path: Path) -> None:
    rules = load(tmp_path, """
        rules:
          - name: r
            match:
              headers:
                User-Agent: '^claude-cli/'
                x-api-key: null            # must be absent
                x-claude-code-request-class: '!^main$'   # must not be "main"; absent is fine
            user_id: x
    """)
    assert rules.match(req(headers={"user-agent": "claude-cli/2"})).rule == "r"
    assert rules.match(req(headers={"USER-AGENT": "claude-cli/2", "X-Claude-Code-Request-Class": "bg"})).rule == "r"
    assert rules.match(req(headers={"user-agent": "claude-cli/2", "x-claude-code-request-class": "main"})).is_default
    assert rules.match(req(headers={"user-agent": "claude-cli/2", "x-api-key": "k"})).is_default
    assert rules.match(req(headers={"user-agent": "curl/8"})).is_default
    assert rules.match(req(headers={})).is_default


def test_mitmproxy_headers_are_case_insensitive(tmp_path: Path) -> None:
    rules = load(tmp_path, "rules: [{name: r, match: {headers: {user-agent: '^Anthropic/'}}, user_id: x}]")
    flow = tflow.tflow()
    flow.request.headers["User-Agent"] = "Anthropic/Python 2.13.0"
    assert rules.match(RequestView(headers=flow.request.headers)).rule == "r"


def test_body_regexes_all_must_match(tmp_path: Path) -> None:
    rules = load(tmp_path, "rules: [{name: r, match: {body: ['alpha', 'beta']}, user_id: x}]")
    assert rules.match(req(raw_body="alpha and beta")).rule == "r"
    assert rules.match(req(raw_body="alpha only")).is_default
    assert rules.match(req(raw_body=None)).is_default


def test_json_paths(tmp_path: Path) -> None:
    rules = load(tmp_path, """
        rules:
          - {name: last, match: {json: {messages.-1.content: '^bye$'}}, user_id: x}
          - {name: star, match: {json: {messages.*.content: 'needle'}}, user_id: x}
          - {name: nested, match: {json: {meta: '^a\\nb$'}}, user_id: x}
          - {name: scalar, match: {json: {generate: '^false$', n: '^3$', gone: '^null$'}}, user_id: x}
    """)
    assert rules.match(req(body={"messages": [{"content": "hi"}, {"content": "bye"}]})).rule == "last"
    # `*` matches any one node; block content is all its string leaves joined
    needle = {"messages": [{"content": "hi"}, {"content": [{"text": "a needle"}]}]}
    assert rules.match(req(body=needle)).rule == "star"
    assert rules.match(req(body={"meta": {"k": "a", "l": ["b"]}})).rule == "nested"
    assert rules.match(req(body={"generate": False, "n": 3, "gone": None})).rule == "scalar"
    assert rules.match(req(body={"generate": True, "n": 3, "gone": None})).is_default
    assert rules.match(req(body={"messages": "needle"})).is_default  # wrong shape
    assert rules.match(req(body=None)).is_default


def test_json_index_on_dict_key(tmp_path: Path) -> None:
    rules = load(tmp_path, "rules: [{name: r, match: {json: {a.0: 'x'}}, user_id: x}]")
    assert rules.match(req(body={"a": {"0": "x"}})).rule == "r"
    assert rules.match(req(body={"a": ["x"]})).rule == "r"
    assert rules.match(req(body={"a": []})).is_default


def test_model_and_project(tmp_path: Path) -> None:
    rules = load(tmp_path, """
        rules:
          - {name: r, match: {model: '^claude-', project: 'shop$'}, user_id: x}
    """)
    assert rules.match(req(model="claude-opus-4", project="/w/shop")).rule == "r"
    assert rules.match(req(model="gpt-4o", project="/w/shop")).is_default
    assert rules.match(req(model=None, project="/w/shop")).is_default
    assert rules.match(req(model="claude-opus-4")).is_default


def test_flow_filter(tmp_path: Path) -> None:
    rules = load(tmp_path, """
        rules:
          - {name: r, match: {filter: '~hq x-app & ~m POST', path: '^/v1/'}, user_id: x}
    """)
    flow = tflow.tflow()
    flow.request.method = "POST"
    flow.request.path = "/v1/messages"
    flow.request.headers["x-app"] = "cli"
    view = RequestView(method="POST", path="/v1/messages", headers=flow.request.headers, flow=flow)
    assert rules.match(view).rule == "r"
    assert rules.match(RequestView(method="POST", path="/v1/messages", headers={"x-app": "cli"})).is_default
    del flow.request.headers["x-app"]
    assert rules.match(view).is_default


# --- templates ----------------------------------------------------------------------------


def test_template_filters_and_builtins(tmp_path: Path) -> None:
    rules = load(tmp_path, """
        rules:
          - name: r
            match: {path: '^/(?P<dir>.*)$'}
            user_id: '{dir|basename}:{dir|slug}:{dir|basename|upper}:{host|lower}:{port}:{method|lower}:{model}:{dir|hash}'
    """)
    route = rules.match(req(path="/My Stuff/Repo Name/", host="API.X.com", port=8080, method="POST", model="m1"))
    digest = hashlib.sha256(b"My Stuff/Repo Name/").hexdigest()[:12]
    rendered = f"Repo Name:my-stuff-repo-name:REPO NAME:api.x.com:8080:post:m1:{digest}"
    # the basename's space makes the name rewritten: "-" for the space, and the rendered text's hash
    assert route.scope == scope_name(rendered) == rendered.replace(" ", "-") + "~" + sha(rendered)
    assert route.captures == {"dir": "My Stuff/Repo Name/"}


def test_missing_variable_tries_next_rule(tmp_path: Path) -> None:
    rules = load(tmp_path, """
        rules:
          - {name: optional-group, match: {path: '^/v1(?:/(?P<ws>[a-z]+))?'}, user_id: 'ws:{ws}'}
          - {name: project, user_id: 'p:{project|basename}'}
          - {name: fallback, user_id: plain}
    """)
    assert rules.match(req(path="/v1/abc")).scope == "ws:abc"
    assert rules.match(req(path="/v1", project="/w/shop")).scope == "p:shop"
    assert rules.match(req(path="/v1", project="/")).rule == "fallback"  # empty after basename
    assert rules.match(req(path="/v1")).rule == "fallback"


def test_user_id_rewritten_with_a_hash_and_capped(tmp_path: Path) -> None:
    rules = load(tmp_path, "rules: [{name: r, match: {path: '^/(?P<p>.*)'}, user_id: 'u:{p}'}]")
    assert rules.match(req(path="/a b$c")).scope == f"u:a-b-c~{sha('u:a b$c')}"
    assert rules.match(req(path="/проект_1.2")).scope == "u:проект_1.2"  # Unicode letters stay
    long = rules.match(req(path="/" + "x" * 300)).scope
    assert len(long) == 128 and long.endswith("~" + sha("u:" + "x" * 300))


def test_slug_keeps_unicode_letters(tmp_path: Path) -> None:
    rules = load(tmp_path, "rules: [{name: r, match: {path: '^/(?P<p>.*)'}, user_id: 'u:{p|slug}'}]")
    assert rules.match(req(path="/Проект Ärger_1")).scope == "u:проект-ärger_1"


# --- scope names: injective -----------------------------------------------------------------

# Project directories that an earlier sanitiser mapped to one scope ("------", "caf-", "my-repo").
LOOKALIKE_PROJECTS = [
    ("/home/u/проект", "/home/u/задача"),
    ("/home/u/café", "/home/u/cafè"),
    ("/home/u/café", "/home/u/cafe\u0301"),  # NFC and NFD: distinct names on Linux
    ("/home/u/my repo", "/home/u/my-repo"),
    ("/home/u/my repo", "/home/u/my\trepo"),
    ("/home/u/a~b", "/home/u/a-b"),
    ("/home/u/" + "x" * 200 + "1", "/home/u/" + "x" * 200 + "2"),  # alike once cut to the length limit
]


@pytest.mark.parametrize(("one", "other"), LOOKALIKE_PROJECTS)
def test_lookalike_projects_get_distinct_scopes(default_rules: Rules, one: str, other: str) -> None:
    projects = Projects()  # one proxy's names
    scopes = [default_rules.match(dataclasses.replace(claude(cwd), projects=projects)).scope for cwd in (one, other)]
    assert scopes[0] != scopes[1]
    assert all(scope.startswith("project:") and len(scope) <= SCOPE_MAX for scope in scopes)


def test_scope_names_kept_or_rewritten() -> None:
    for kept in ("claude-code:проект", "codex:日本語", "claude-code:café", "a_b.c:d@e/f+g-h", "x" * SCOPE_MAX):
        assert scope_name(kept) == kept
    rewritten = {  # original -> the readable part before "~" and its hash
        "claude-code:my repo": "claude-code:my-repo",
        "claude-code:cafe\u0301": "claude-code:café",  # NFC for reading; the hash tells the forms apart
        "a~b": "a-b",
        "zero\u200bwidth": "zero-width",
        "rtl\u202eflip": "rtl-flip",
        "lone\ud800": "lone-",
        "": "",
        "x" * (SCOPE_MAX + 1): "x" * (SCOPE_MAX - 17),
    }
    for original, base in rewritten.items():
        digest = hashlib.sha256(original.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        assert scope_name(original) == f"{base}~{digest}"


NAME_PARTS = st.sampled_from(["a", "-", " ", "~", "é", "e\u0301", "проект", "_", ":", "/", "0", "\u200b", "x" * 60])
NAMES = st.lists(NAME_PARTS, max_size=6).map("".join) | st.text(max_size=140)


@given(NAMES, NAMES)
def test_scope_name_is_injective(one: str, other: str) -> None:
    assert (scope_name(one) == scope_name(other)) is (one == other)
    assert len(scope_name(one)) <= SCOPE_MAX


@given(NAMES)
def test_a_name_shaped_like_a_rewritten_one_is_rewritten_again(name: str) -> None:
    """A directory named like another project's rewritten scope does not get that scope."""
    rewritten = scope_name(name)
    if rewritten != name:
        assert scope_name(rewritten) != rewritten


# --- override header ----------------------------------------------------------------------

OVERRIDE_RULES = """
    rules:
      - {name: open, match: {path: '^/open'}, user_id: rule-user, max_results: 9}
      - {name: locked, match: {path: '^/locked'}, user_id: locked-user, allow_override: false}
"""


@pytest.mark.parametrize(("path", "value", "user_id", "rule"), [
    ("/open", " team:alice ", "team:alice", "open"),
    ("/open", "has space", f"has-space~{sha('has space')}", "open"),  # named as a template would name it
    ("/open", f"has-space~{sha('has space')}", f"has-space~{sha('has space')}", "open"),  # a rewritten name
    ("/open", "", "rule-user", "open"),
    ("/open", "x" * 129, "x" * 111 + "~" + sha("x" * 129), "open"),
    ("/locked", "team:alice", "locked-user", "locked"),
    ("/other", "team:alice", "team:alice", None),
])
def test_override_header(tmp_path: Path, path: str, value: str, user_id: str, rule: str | None) -> None:
    rules = load(tmp_path, OVERRIDE_RULES)
    route = rules.match(req(path=path, headers={"X-Memory-User-Id": value}))
    assert (route.scope, route.rule, route.custom_header_present) == (user_id, rule, True)
    assert route.is_default is (rule is None)
    if rule == "open":
        assert route.actions.max_results == 9  # actions still come from the matched rule


def test_no_override_header(tmp_path: Path) -> None:
    route = load(tmp_path, OVERRIDE_RULES).match(req(path="/open"))
    assert (route.scope, route.custom_header_present) == ("rule-user", False)


@pytest.mark.parametrize("path", ["/open", "/locked", "/other"])
def test_override_turned_off_for_all_rules(tmp_path: Path, path: str) -> None:
    rules = load(tmp_path, "allow_override: false\n" + textwrap.dedent(OVERRIDE_RULES))
    route = rules.match(req(path=path, headers={"x-memory-user-id": "team:alice"}))
    assert route.scope == {"/open": "rule-user", "/locked": "locked-user", "/other": "default"}[path]
    assert route.custom_header_present  # the header is still seen (and stripped), never obeyed


def test_override_allowed_by_default_and_explicitly(tmp_path: Path, default_rules: Rules) -> None:
    assert default_rules.allow_override
    rules = load(tmp_path, "allow_override: true\n" + textwrap.dedent(OVERRIDE_RULES))
    assert rules.allow_override and rules.match(req(path="/open", headers={"x-memory-user-id": "me"})).scope == "me"


def test_custom_override_header_name(tmp_path: Path) -> None:
    rules = load(tmp_path, "override_header: X-Scope\ndefault_user_id: dflt\n")
    assert rules.match(req(headers={"x-scope": "mine"})).scope == "mine"
    assert rules.match(req(headers={"x-memory-user-id": "mine"})).scope == "dflt"


# --- actions and defaults -----------------------------------------------------------------


def test_defaults_inheritance(tmp_path: Path) -> None:
    rules = load(tmp_path, """
        defaults: {query: first_user, inject: system, max_results: 3, threshold: 0.5, models: {deny: [mini]}}
        rules:
          - name: r
            match: {method: POST}
            max_results: 7
            models: {allow: ['^gpt-']}
            route: sdk
            sdk: {model: anthropic/claude-sonnet-4-5, api_key: '${ANTHROPIC_API_KEY}', api_base: os.environ/BASE}
          - {name: aux, match: {method: GET}, auxiliary: true, store: true}
    """)
    a = rules.match(req(method="POST")).actions
    assert (a.query, a.inject, a.max_results, a.threshold, a.max_chars, a.recall) == ("first_user", "system", 7, 0.5,
                                                                                      4000, True)
    assert (a.models_allow, a.models_deny, a.route) == (("^gpt-",), ("mini",), "sdk")
    assert dict(a.sdk) == {"model": "anthropic/claude-sonnet-4-5", "api_key": "${ANTHROPIC_API_KEY}",
                           "api_base": "os.environ/BASE"}
    assert a.allows_model("gpt-4o") and not a.allows_model("gpt-4o-mini") and not a.allows_model("o3")
    assert not a.allows_model(None)
    aux = rules.match(req(method="GET")).actions
    assert (aux.auxiliary, aux.recall, aux.store, aux.max_results) == (True, False, False, 3)
    default = rules.match(req(method="PUT"))
    assert default.actions == rules.defaults
    assert (default.actions.query, default.actions.max_results, default.actions.models_allow) == ("first_user", 3, ())


def test_allows_model_without_lists() -> None:
    assert Actions().allows_model(None) and Actions().allows_model("anything")


def test_route_info_shape(tmp_path: Path) -> None:
    route = load(tmp_path, "rules: [{name: r, user_id: u, inject: user_prefix}]").match(req())
    assert route.info() == {
        "user_id": "u", "matched_pattern": None, "rule": "r", "is_default": False, "custom_header_present": False,
        "recall": True, "store": True, "auxiliary": False, "query": "last_user", "inject": "user_prefix",
        "route": "passthrough",
    }
    json.dumps(route.info())


# --- legacy format ------------------------------------------------------------------------

LEGACY = """
    model_list:
      - model_name: claude-sonnet-4.5
        litellm_params: {model: anthropic/claude-sonnet-4-5, api_key: os.environ/ANTHROPIC_API_KEY}
    litellm_settings: {drop_params: true}
    general_settings: {master_key: sk-1234}
    user_id_mappings:
      custom_header: "x-memory-user-id"
      header_patterns:
        - header: "user-agent"
          pattern: "OpenAIClientImpl/Java"
          user_id: "pycharm-ai"
        - header: "user-agent"
          pattern: "^claude-cli"
          user_id: "claude-cli"
      default_user_id: "default-dev"
    context_retrieval:
      enabled: true
      api_key: os.environ/SUPERMEMORY_API_KEY
      query_strategy: last_user
      injection_strategy: system
      container_tag: supermemory
      max_context_length: 4000
      max_results: 5
      enabled_for_models: [claude-sonnet-4.5]
"""


def test_legacy_file(tmp_path: Path) -> None:
    rules = load(tmp_path, LEGACY)
    assert (rules.default_scope, rules.override_header) == ("default-dev", "x-memory-user-id")
    assert rules.legacy == {"api_key": "os.environ/SUPERMEMORY_API_KEY", "container_tag": "supermemory"}
    route = rules.match(req(headers={"User-Agent": "OpenAIClientImpl/Java unknown"}))
    assert route.info() == {
        "user_id": "pycharm-ai",
        "matched_pattern": {"header": "user-agent", "value": "OpenAIClientImpl/Java unknown",
                            "pattern": "OpenAIClientImpl/Java", "user_id": "pycharm-ai"},
        "rule": "header_patterns[0]", "is_default": False, "custom_header_present": False,
        "recall": True, "store": True, "auxiliary": False, "query": "last_user", "inject": "system",
        "route": "passthrough",
    }
    assert rules.match(req(headers={"user-agent": "claude-cli/2"})).rule == "header_patterns[1]"
    default = rules.match(req(headers={"user-agent": "curl/8"}))
    assert default.info()["user_id"] == "default-dev"
    assert (default.info()["matched_pattern"], default.info()["is_default"]) == (None, True)
    overridden = rules.match(req(headers={"user-agent": "OpenAIClientImpl/Java", "x-memory-user-id": "me"}))
    assert (overridden.scope, overridden.custom_header_present) == ("me", True)
    assert overridden.matched_pattern["user_id"] == "pycharm-ai"
    a = rules.defaults
    assert (a.recall, a.max_chars, a.max_results, a.models_allow) == (True, 4000, 5, (r"^claude\-sonnet\-4\.5$",))
    assert a.allows_model("claude-sonnet-4.5") and not a.allows_model("claude-sonnet-4-5")
    assert route.actions == a


def test_legacy_disabled_and_mixed(tmp_path: Path) -> None:
    rules = load(tmp_path, """
        default_user_id: new-default
        rules:
          - {name: new, match: {headers: {user-agent: '^pycharm'}}, user_id: new-rule}
        user_id_mappings:
          header_patterns: [{header: user-agent, pattern: pycharm, user_id: legacy}]
          default_user_id: old-default
        context_retrieval: {enabled: false, query_strategy: all_user}
        defaults: {query: first_user}
    """)
    assert rules.default_scope == "new-default"
    assert rules.match(req(headers={"user-agent": "pycharm 1"})).rule == "new"
    assert rules.match(req(headers={"user-agent": "my pycharm"})).scope == "legacy"
    assert (rules.defaults.recall, rules.defaults.query) == (False, "first_user")


# --- validation ---------------------------------------------------------------------------

ERROR_CASES = [
    # (yaml, text on the offending line, key path, message fragment)
    ("rulez: []\n", "rulez", "rulez", "unknown key (did you mean 'rules'?)"),
    ("version: 2\n", "version", "version", "unsupported version 2"),
    ("rules:\n  - name: r\n    usr_id: x\n", "usr_id", "rules[0].usr_id", "did you mean 'user_id'?"),
    ("rules:\n  - name: r\n    match:\n      hots: x\n", "hots", "rules[0].match.hots", "unknown key"),
    ("rules:\n  - name: r\n    recall: 'yes'\n", "recall", "rules[0].recall", "expected true or false"),
    ("rules:\n  - name: r\n    match:\n      headers:\n        user-agent: '(['\n", "user-agent",
     "rules[0].match.headers.user-agent", "invalid regex '(['"),
    ("rules:\n  - name: r\n    match:\n      headers: {x: '!(['}\n", "headers", "rules[0].match.headers.x",
     "invalid regex"),
    ("rules:\n  - name: r\n    match:\n      headers: {'bad name': x}\n", "headers",
     "rules[0].match.headers.bad name", "invalid header name"),
    ("rules:\n  - name: r\n    match:\n      host: [ok.com, 'bad host']\n", "host", "rules[0].match.host[1]",
     "invalid host glob"),
    ("rules:\n  - name: r\n    match:\n      filter: '~zz x'\n", "filter", "rules[0].match.filter",
     "invalid filter expression"),
    ("rules:\n  - name: r\n    match:\n      filter: '~b secret'\n", "filter", "rules[0].match.filter",
     "~b searches bodies with no time limit; use the rule's 'body' or 'json' conditions"),
    ("rules:\n  - name: r\n    match:\n      filter: '~m POST & !(~bq x)'\n", "filter", "rules[0].match.filter",
     "~bq searches bodies"),
    ("rules:\n  - name: r\n    match:\n      filter: '~q | ~bs x'\n", "filter", "rules[0].match.filter",
     "~bs searches bodies"),
    ("rules:\n  - name: r\n    match:\n      filter: \"~hq '^x: (a+)+$'\"\n", "filter", "rules[0].match.filter",
     "a repetition inside a repetition can take exponential time"),
    ("rules:\n  - name: r\n    match:\n      filter: '~d ''(\\w+\\.)*example'''\n", "filter",
     "rules[0].match.filter", "filters have no time limit; use the rule's host, path or headers conditions"),
    ("allow_override: 'no'\n", "allow_override", "allow_override", "expected true or false"),
    ("version: 2024-13-01\n", "version", "version", "invalid value: month must be in 1..12"),
    ("rules:\n  - name: r\n    match:\n      json:\n        a..b: x\n", "a..b", "rules[0].match.json.a..b",
     "empty segment"),
    ("rules:\n  - name: r\n    match:\n      method: [GET, 'P O']\n", "method", "rules[0].match.method[1]",
     "invalid method"),
    ("rules:\n  - name: r\n    match:\n      port: -1\n", "port", "rules[0].match.port", "must not be negative"),
    ("rules:\n  - name: r\n    match:\n      port: [80, 70000]\n", "port", "rules[0].match.port[1]",
     "at most 65535"),
    ("rules:\n  - name: r\n    query: latest\n", "query", "rules[0].query", "unknown query strategy 'latest'"),
    ("defaults:\n  inject: systen\n", "inject", "defaults.inject", "did you mean 'system'?"),
    ("rules:\n  - name: r\n    route: proxy\n", "route", "rules[0].route", "unknown route"),
    ("defaults:\n  max_results: -3\n", "max_results", "defaults.max_results", "must not be negative"),
    ("defaults:\n  max_chars: lots\n", "max_chars", "defaults.max_chars", "expected a whole number"),
    ("defaults:\n  threshold: 1.5\n", "threshold", "defaults.threshold", "between 0 and 1"),
    ("defaults:\n  models: {allow: ['([']}\n", "models", "defaults.models.allow[0]", "invalid regex"),
    ("rules:\n  - name: r\n    sdk: {model: x, region: y}\n", "sdk", "rules[0].sdk.region", "unknown key"),
    ("rules:\n  - name: r\n    sdk:\n      model: 3\n", "model: 3", "rules[0].sdk.model", "expected a string"),
    ("rules:\n  - name: r\n    user_id: 'a:{cwd}'\n", "user_id", "rules[0].user_id",
     "unknown template variable 'cwd'"),
    ("rules:\n  - name: r\n    match: {path: '(?P<p>.*)'}\n    user_id: '{p|base}'\n", "user_id",
     "rules[0].user_id", "unknown template filter 'base'"),
    ("rules:\n  - name: r\n    match:\n      headers: {a: '!(?P<n>x)'}\n    user_id: '{n}'\n", "user_id",
     "rules[0].user_id", "unknown template variable 'n'"),  # a negated regex captures nothing
    ("rules:\n  - name: r\n    user_id: 'a{b'\n", "user_id", "rules[0].user_id", "unbalanced braces"),
    ("rules:\n  - {name: r}\n  - {name: r}\n", "- {name: r}\n  - {name: r}", "rules[1].name",
     "duplicate rule name 'r'"),
    ("defaults:\n  recall: true\n  recall: false\n", "recall: false", "defaults.recall", "duplicate key"),
    ("rules: {a: 1}\n", "rules: {", "rules", "expected a list"),
    ("user_id_mappings:\n  header_patterns:\n    - header: user-agent\n      pattern: '(['\n      user_id: x\n",
     "pattern: '", "user_id_mappings.header_patterns[0].pattern", "invalid regex"),
    ("user_id_mappings:\n  header_patterns:\n    - header: user-agent\n      user_id: x\n", "- header",
     "user_id_mappings.header_patterns[0]", "missing key 'pattern'"),
    ("context_retrieval:\n  enabled: true\n  injection_strategy: top\n", "injection_strategy",
     "context_retrieval.injection_strategy", "unknown injection strategy"),
    ("context_retrieval:\n  cache: 1\n", "cache", "context_retrieval.cache", "unknown key"),
]


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing needle (or where a multi-line needle ends)."""
    return text[:text.index(needle) + len(needle)].count("\n") + 1


@pytest.mark.parametrize(("text", "needle", "key_path", "message"), ERROR_CASES,
                         ids=[c[2] + ":" + c[3][:20] for c in ERROR_CASES])
def test_validation_errors(tmp_path: Path, text: str, needle: str, key_path: str, message: str) -> None:
    text = "# my rules\n" + text  # the offending line is never line 1
    path = write(tmp_path, text, "bad-rules.yaml")
    with pytest.raises(RulesError) as e:
        Rules.load(path)
    first = str(e.value).splitlines()[0]
    assert first.startswith(f"{path}:{line_of(text, needle)}: {key_path}: "), first
    assert message in first


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "rules:\n  - name: r\n    user_id: [unclosed\n  - name: s\n", "broken.yaml")
    with pytest.raises(RulesError) as e:
        Rules.load(path)
    assert str(e.value).startswith(f"{path}:4: invalid YAML: ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="nope.yaml: cannot read rules file"):
        Rules.load(tmp_path / "nope.yaml")


# A 6-level "billion laughs": 9**6 (531,441) strings from a few hundred bytes.
ALIAS_BOMB = "".join(
    f"  {name}: &{name} [{', '.join([f'*{prev}' if prev else '\"lol\"'] * 9)}]\n"
    for prev, name in zip(["", "a", "b", "c", "d", "e"], "abcdef", strict=True)
)


@pytest.mark.timeout(30)
def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "rules: [{name: r, user_id: x}]\nlitellm_settings:\n" + ALIAS_BOMB)
    assert len(path.read_bytes()) < 600
    with pytest.raises(RulesError) as e:
        Rules.load(path)
    assert str(e.value) == (
        f"{path}:1: invalid YAML: aliases expand the document by more than {ALIAS_BUDGET} nodes"
        " (refused: an alias bomb?)"
    )


def test_aliases_within_the_budget_load(tmp_path: Path) -> None:
    rules = "".join(f"  - {{name: r{i}, match: {{headers: {{x-n: *pattern}}}}, models: *models}}\n" for i in range(200))
    text = "defaults:\n  models: &models {allow: ['^claude-', '^gpt-'], deny: [haiku]}\n" \
           "x-anchors: {p: &pattern '^(?P<n>[a-z]+)$'}\nrules:\n" + rules
    with pytest.raises(RulesError, match="x-anchors: unknown key"):  # the aliases themselves are fine
        Rules.from_text(text)
    loaded = Rules.from_text(text.replace("x-anchors", "litellm_settings"))
    assert loaded.match(req(headers={"x-n": "abc"})).rule == "r0"


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(RulesError, match=r"^<string>:2: invalid YAML: an alias refers to a node that holds it"):
        Rules.from_text("rules:\n  - &r {name: r, match: {json: {a: *r}}}\n")


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(RulesError, match="invalid YAML: nested too deeply"):
        Rules.from_text("rules: " + "[" * 1500)


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), tmp_path):  # a FIFO would block, /dev/zero never ends
        with pytest.raises(RulesError) as e:
            Rules.load(path)
        assert str(e.value) == f"{path}: cannot read rules file: not a regular file"
    link = tmp_path / "link.yaml"
    link.symlink_to(write(tmp_path, "default_user_id: linked\n", "real.yaml"))
    assert Rules.load(link).default_scope == "linked"  # a symlink to a regular file is fine


def test_rules_file_size_and_encoding(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * (MAX_RULES_BYTES // 10 + 1))
    with pytest.raises(RulesError, match=rf"big.yaml: cannot read rules file: \d+ bytes, more than {MAX_RULES_BYTES}"):
        Rules.load(big)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("default_user_id: café\n".encode("latin-1"))
    with pytest.raises(RulesError, match="latin.yaml: cannot read rules file: not UTF-8 text"):
        Rules.load(latin)


def test_several_errors_reported_in_line_order(tmp_path: Path) -> None:
    path = write(tmp_path, "defaults:\n  threshold: 2\nrules:\n  - name: r\n    query: x\n  - name: s\n    bogus: 1\n")
    with pytest.raises(RulesError) as e:
        Rules.load(path)
    assert [line.split(": ")[0] for line in e.value.errors] == [f"{path}:2", f"{path}:5", f"{path}:7"]
    assert str(e.value).count("\n") == 2


def test_from_text_source_name() -> None:
    with pytest.raises(RulesError, match=r"^<string>:1: rules: expected a list"):
        Rules.from_text("rules: 3")
    assert Rules.from_text("").default_scope == "default"


# --- robustness ---------------------------------------------------------------------------


def test_match_never_raises_on_odd_input(default_rules: Rules) -> None:
    odd = [
        RequestView(method=None, host=None, path=None, headers=None, body=[1, {"messages": 3}], raw_body=None),
        RequestView(headers={"user-agent": b"claude-cli/1", "x-memory-user-id": 5}, body={"messages": [None, 7]}),
        RequestView(headers={"user-agent": "claude-cli/1"}, body={"messages": [{"content": {"a": [[[]]]}}]}),
    ]
    for view in odd:
        route = default_rules.match(view)
        assert isinstance(route, Route) and route.scope


# --- regexes have a time limit -------------------------------------------------------------

SLOW = r"^(\w|\w)+$"  # exponential in re and regex alike: 2**40 ways to fail on "a" * 40 + "!"
SLOW_TEXT = "a" * 40 + "!"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("condition", "view"), [
    ("json: {messages.-1.content: '%s'}", req(body={"messages": [{"role": "user", "content": SLOW_TEXT}]})),
    ("body: '%s'", req(raw_body=SLOW_TEXT)),
    ("headers: {x-note: '%s'}", req(headers={"x-note": SLOW_TEXT})),
    ("headers: {x-note: '!%s'}", req(headers={"x-note": SLOW_TEXT})),
    ("path: '%s'", req(path=SLOW_TEXT)),
    ("model: '%s'", req(model=SLOW_TEXT)),
    ("project: '%s'", req(project=SLOW_TEXT)),
])
def test_a_regex_out_of_time_does_not_match_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, condition: str, view: RequestView
) -> None:
    rules = load(tmp_path, f"""
        rules:
          - {{name: slow, match: {{{condition % SLOW}}}, user_id: slow}}
          - {{name: next, user_id: next}}
    """)
    with caplog.at_level(logging.WARNING, logger="memproxy.rules"):
        assert rules.match(view, budget=0.05).scope == "next"
        assert rules.match(view, budget=0.05).scope == "next"
    logged = [r.getMessage() for r in caplog.records]
    assert logged == [f"memproxy: rule 'slow' did not match: a regex ran out of the time budget for routing: {SLOW!r}"]


@pytest.mark.timeout(30)
def test_the_budget_is_shared_by_all_rules(tmp_path: Path) -> None:
    rules = load(tmp_path, f"""
        rules:
          - {{name: slow1, match: {{body: '{SLOW}'}}, user_id: slow1}}
          - {{name: slow2, match: {{body: '{SLOW[:-1]}x?$'}}, user_id: slow2}}
          - {{name: cheap, match: {{body: 'a{{40}}!$'}}, user_id: cheap}}
          - {{name: header, match: {{headers: {{x-a: '^b$'}}}}, user_id: header}}
    """)
    # The first rule spends the budget; regexes on long texts then fail at once, short header checks still run.
    assert rules.match(req(raw_body=SLOW_TEXT, headers={"x-a": "b"}), budget=0.05).scope == "header"


@pytest.mark.timeout(30)
def test_the_issue_pattern_answers_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """'^(\\w+\\s?)+$' took 9 s on a 27-character message with re; the regex engine does not backtrack there."""
    rules = load(tmp_path, r"rules: [{name: words, match: {json: {messages.-1.content: '^(\w+\s?)+$'}}, user_id: w}]")
    long = req(body={"messages": [{"role": "user", "content": "a" * 100 + "!"}]})  # re: 2**100 steps
    with caplog.at_level(logging.WARNING, logger="memproxy.rules"):
        assert rules.match(long, budget=10).is_default
        assert rules.match(req(body={"messages": [{"content": "two words"}]}), budget=10).rule == "words"
    assert not caplog.records


def test_a_zero_budget_still_routes(default_rules: Rules) -> None:
    assert default_rules.match(claude("/w/shop"), budget=0).scope == "project:shop"


@pytest.mark.timeout(30)
def test_models_regex_out_of_time_does_not_match() -> None:
    assert not Actions(models_allow=(SLOW,)).allows_model(SLOW_TEXT)
    assert Actions(models_deny=(SLOW,)).allows_model(SLOW_TEXT)
    assert Actions(models_allow=(SLOW,)).allows_model("abc")


# --- reloading ----------------------------------------------------------------------------


def test_rules_file_reload(tmp_path: Path) -> None:
    path = write(tmp_path, "rules: [{name: one, user_id: first}]\n")
    watched = RulesFile(path)
    assert watched.check() == (False, None)
    assert watched.rules.match(req()).scope == "first"

    stamp = os.stat(path).st_mtime_ns

    def edit(text: str, step: int) -> None:
        path.write_text(text)
        os.utime(path, ns=(stamp + step * 10**9, stamp + step * 10**9))

    edit("rules: [{name: one, user_id: first, query: nonsense}]\n", 1)
    ok, message = watched.check()
    assert not ok and message.startswith(f"{path}:1: rules[0].query: unknown query strategy")
    assert watched.rules.match(req()).scope == "first"  # last good rules kept
    assert watched.check() == (False, None)  # a bad edit is reported once

    edit("rules: [{name: two, user_id: second}]\n", 2)
    assert watched.check() == (True, None)
    assert watched.rules.match(req()).scope == "second"

    path.unlink()
    ok, message = watched.check()
    assert not ok and "cannot read rules file" in message
    assert watched.rules.match(req()).scope == "second"


def test_rules_file_initial_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError):
        RulesFile(write(tmp_path, "rules: 1\n"))


@pytest.mark.timeout(30)
def test_rules_file_replaced_by_special_files_keeps_the_last_good(tmp_path: Path) -> None:
    path = write(tmp_path, "rules: [{name: one, user_id: first}]\n")
    watched = RulesFile(path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    bomb = write(tmp_path, "litellm_settings:\n" + ALIAS_BOMB, "bomb.yaml")
    for target, why in ((fifo, "not a regular file"), (Path("/dev/zero"), "not a regular file"),
                        (bomb, "alias bomb")):
        link = tmp_path / "new-link"
        link.symlink_to(target)
        link.replace(path)
        ok, message = watched.check()
        assert not ok and message.startswith(str(path)) and why in message
        assert watched.rules.match(req()).scope == "first"
    path.unlink()
    write(tmp_path, "rules: [{name: two, user_id: second}]\n")
    assert watched.check() == (True, None)
    assert watched.rules.match(req()).scope == "second"


# --- project memory -------------------------------------------------------------------------


def test_one_project_for_every_tool_and_its_subdirectories(default_rules: Rules, tmp_path: Path) -> None:
    repo = tmp_path / "api"
    (repo / "src" / "deep").mkdir(parents=True)
    (repo / ".git").mkdir()
    projects = Projects()
    views = [claude(str(repo)), claude(str(repo / "src" / "deep")), claude_197(str(repo / "src")),
             codex([{**CODEX_ENV, "content": [{"type": "input_text", "text": f"<environment_context><cwd>{repo}</cwd>"}]}, CODEX_PROMPT]),
             gemini("streamGenerateContent?alt=sse", GEMINI_CONTEXT.replace("/home/u/gproj", str(repo / "src")))]
    routes = [default_rules.match(dataclasses.replace(v, projects=projects)) for v in views]
    assert {r.scope for r in routes} == {"project:api"}
    assert {r.project for r in routes} == {str(repo)}
    assert [r.tool for r in routes] == ["Claude Code", "Claude Code", "Claude Code", "Codex", "Gemini CLI"]
    assert all(r.layers == ("user",) for r in routes)


def test_same_named_projects_never_share_a_scope(default_rules: Rules, tmp_path: Path) -> None:
    projects = Projects()
    for parent in ("work", "oss"):
        (tmp_path / parent / "api" / ".git").mkdir(parents=True)
    first, second = (default_rules.match(dataclasses.replace(claude(str(tmp_path / p / "api")), projects=projects))
                     for p in ("work", "oss"))
    assert first.scope == "project:api"
    assert second.scope.startswith("project:api@") and second.scope != first.scope


def test_a_clients_own_state_dir_is_no_project(default_rules: Rules) -> None:
    home = os.path.expanduser("~")
    route = default_rules.match(claude(f"{home}/.claude/projects/-home-u-api"))
    assert (route.scope, route.rule, route.project) == ("claude-code", "claude-code-other", None)


class Unknown:
    """Names no project yet: the route says which directory to look up."""

    def cached(self, path: str) -> tuple[str, str] | None:
        raise ProjectUnknown(path)


def test_an_unknown_project_is_looked_up_before_its_rule_matches(default_rules: Rules) -> None:
    route = default_rules.match(dataclasses.replace(claude("/w/api/src"), projects=Unknown()))
    assert (route.unresolved, route.rule, route.scope) == ("/w/api/src", "claude-code-other", "claude-code")
    assert default_rules.match(dataclasses.replace(claude("/w/api/src"), projects=None)).unresolved is None


def test_per_tool_project_memory(tmp_path: Path) -> None:
    text = DEFAULT_RULES.read_text().replace("project_memory: shared ", "project_memory: per_tool")
    rules = Rules.from_text(text)
    assert rules.project_memory == "per_tool"
    projects = Projects()
    scopes = [rules.match(dataclasses.replace(v, projects=projects)).scope
              for v in (claude("/w/api"), codex([CODEX_ENV, CODEX_PROMPT]),
                        chat("OpenAIClientImpl/Java unknown", HELLO, port=8101, project="/w/api"))]
    assert scopes == ["claude-code:api", "codex:proj", "jetbrains:api"]


def test_layered_scopes(tmp_path: Path) -> None:
    rules = load(tmp_path, """
        defaults: {also_recall: [user]}
        rules:
          - name: team
            match: {headers: {x-team: '(?P<team>\\w+)'}}
            scope: 'project:{team}'
            also_recall: [user, 'team:{team}', 'project:{team}', 'org:{model}']
          - {name: plain, scope: x}
    """)
    assert rules.match(req(headers={"x-team": "red"})).layers == ("user", "team:red")  # not its own, not missing
    assert rules.match(req()).layers == ("user",)
    assert load(tmp_path, "rules: [{name: r, scope: user}]").match(req()).layers == ()


@pytest.mark.parametrize(("text", "error"), [
    ("defaults: {also_recall: 'user'}", None),  # one scope is a list of one
    ("defaults: {also_recall: ['{x']}", "unbalanced braces"),
    ("rules: [{name: r, scope: s, also_recall: ['team:{team}']}]", "unknown template variable 'team'"),
    ("rules: [{name: r, scope: 's:{cwd|projects}', match: {body: '(?P<cwd>x)'}}]", "unknown template filter 'projects'"),
    ("project_memory: silo", "unknown project_memory 'silo'"),
    ("rules: [{name: r, scope: s, tool: 3}]", "expected a string"),
])
def test_project_settings_are_checked(tmp_path: Path, text: str, error: str | None) -> None:
    if error is None:
        assert load(tmp_path, text).defaults.also_recall == ("user",)
        return
    with pytest.raises(RulesError, match=re.escape(error)):
        load(tmp_path, text)
