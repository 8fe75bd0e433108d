"""Which prompt a request answers, in each wire format: every step of a tool loop (tool calls, then their
results, then the final answer) names the same prompt with the same key; tool results are never a prompt; the
same words after another history are another prompt."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from memproxy.protocols.anthropic import AnthropicAdapter
from memproxy.protocols.base import Adapter
from memproxy.protocols.common import MAX_CALLS, MAX_TRACED, answered_keys, holds_summary, summarised
from memproxy.protocols.gemini import GeminiAdapter
from memproxy.protocols.openai_chat import OpenAIChatAdapter
from memproxy.protocols.openai_responses import OpenAIResponsesAdapter

PROMPT = "Which files are in the repository?"
STEP = "I will run a shell command first."
FINAL = "There are three files."
REMINDER = "<system-reminder>The todo list is empty.</system-reminder>"


# Each format as a builder of request bodies from a conversation written once:
# ("user", text) | ("assistant", text, tool or (tool, arguments) or None) | ("result", output) | ("reminder",)
# | ("image",): a user message of an image alone


def call(turn: tuple) -> tuple[str, dict]:
    """The tool an assistant turn calls and its arguments."""
    return turn[2] if isinstance(turn[2], tuple) else (turn[2], {"command": "ls"})


def anthropic(turns: list[tuple]) -> dict:
    messages: list[dict] = [{"role": "system", "content": "Primary working directory: /repo"}]
    for turn in turns:
        if turn[0] == "user":
            messages.append({"role": "user", "content": [{"type": "text", "text": turn[1]}]})
        elif turn[0] == "assistant":
            content: list[dict] = [{"type": "text", "text": turn[1]}]
            if turn[2]:
                name, arguments = call(turn)
                content.append({"type": "tool_use", "id": "toolu_1", "name": name, "input": arguments})
            messages.append({"role": "assistant", "content": content})
        elif turn[0] == "result":
            block = {"type": "tool_result", "tool_use_id": "toolu_1", "content": turn[1], "cache_control": {"type": "ephemeral"}}
            messages.append({"role": "user", "content": [block]})
        elif turn[0] == "image":
            messages.append({"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "iVBO"}}]})
        else:  # Claude Code puts reminders in a user message of their own, or beside tool results
            messages[-1]["content"].append({"type": "text", "text": REMINDER})
    return {"model": "claude-sonnet-4-6", "messages": messages}


def chat(turns: list[tuple]) -> dict:
    messages: list[dict] = [{"role": "system", "content": "You are helpful."}]
    for turn in turns:
        if turn[0] == "user":
            messages.append({"role": "user", "content": turn[1]})
        elif turn[0] == "assistant":
            message: dict = {"role": "assistant", "content": turn[1]}
            if turn[2]:
                name, arguments = call(turn)
                function = {"name": name, "arguments": json.dumps(arguments)}
                message["tool_calls"] = [{"id": "call_1", "type": "function", "function": function}]
            messages.append(message)
        elif turn[0] == "result":
            messages.append({"role": "tool", "tool_call_id": "call_1", "content": turn[1]})
        elif turn[0] == "image":
            messages.append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]})
        else:
            messages.append({"role": "user", "content": REMINDER})
    return {"model": "gpt-4o", "messages": messages}


def responses(turns: list[tuple]) -> dict:
    items: list[dict] = [{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]}]
    for turn in turns:
        if turn[0] == "user":
            items.append({"type": "message", "role": "user", "content": [{"type": "input_text", "text": turn[1]}]})
        elif turn[0] == "assistant":
            items.append({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": turn[1]}]})
            if turn[2]:
                name, arguments = call(turn)
                items.append({"type": "function_call", "call_id": "c1", "name": name, "arguments": json.dumps(arguments)})
        elif turn[0] == "result":
            items.append({"type": "function_call_output", "call_id": "c1", "output": turn[1]})
        elif turn[0] == "image":
            items.append({"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,iVBO"}]})
        else:
            items.append({"type": "message", "role": "user", "content": [{"type": "input_text", "text": REMINDER}]})
    return {"model": "gpt-5", "input": items}


def gemini(turns: list[tuple]) -> dict:
    contents: list[dict] = []
    for turn in turns:
        if turn[0] == "user":
            contents.append({"role": "user", "parts": [{"text": turn[1]}]})
        elif turn[0] == "assistant":
            parts: list[dict] = [{"text": turn[1]}]
            if turn[2]:
                name, arguments = call(turn)
                parts.append({"functionCall": {"name": name, "args": arguments}})
            contents.append({"role": "model", "parts": parts})
        elif turn[0] == "result":
            contents.append({"role": "user", "parts": [{"functionResponse": {"name": "shell", "response": {"output": turn[1]}}}]})
        elif turn[0] == "image":
            contents.append({"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "iVBO"}}]})
        else:
            contents[-1]["parts"].append({"text": REMINDER})
    return {"contents": contents}


FORMATS: dict[str, tuple[Adapter, Callable[[list[tuple]], dict]]] = {
    "anthropic": (AnthropicAdapter(), anthropic),
    "chat": (OpenAIChatAdapter(), chat),
    "responses": (OpenAIResponsesAdapter(), responses),
    "gemini": (GeminiAdapter(), gemini),
}

LOOP = [
    [("user", PROMPT)],
    [("user", PROMPT), ("assistant", STEP, "shell"), ("result", "a.py b.py c.py")],
    [("user", PROMPT), ("assistant", STEP, "shell"), ("result", "a.py b.py c.py"), ("reminder",)],
    [("user", PROMPT), ("assistant", STEP, "shell"), ("result", "a.py"), ("assistant", "", "read"), ("result", "x")],
]


@pytest.fixture(params=list(FORMATS))
def fmt(request: pytest.FixtureRequest) -> tuple[Adapter, Callable[[list[tuple]], dict]]:
    return FORMATS[request.param]


def test_every_step_of_a_tool_loop_answers_one_prompt(fmt: Any) -> None:
    adapter, build = fmt
    prompts = [adapter.prompt(build(turns)) for turns in LOOP]
    assert {p.text for p in prompts} == {PROMPT}
    assert len({p.key for p in prompts}) == 1 and prompts[0].key
    assert [p.follows for p in prompts] == [False, True, True, True]
    assert [p.calls for p in prompts] == [(), ("shell",), ("shell",), ("shell", "read")]


def test_the_next_prompt_is_another_and_the_same_words_after_another_history_too(fmt: Any) -> None:
    adapter, build = fmt
    first = adapter.prompt(build(LOOP[1]))
    after = [*LOOP[1], ("assistant", FINAL, None), ("user", "And hidden files?")]
    second = adapter.prompt(build(after))
    assert second.text == "And hidden files?" and second.key != first.key
    assert second.calls == () and not second.follows  # the earlier loop's calls belong to the earlier prompt
    elsewhere = adapter.prompt(build([("user", "Where is the README?"), ("assistant", "At the root.", None),
                                      ("user", "And hidden files?")]))
    assert elsewhere.text == second.text and elsewhere.key != second.key
    assert adapter.prompt(build([("user", PROMPT)])).key == first.key  # the same words, the same history
    assert second.conversation == first.conversation != elsewhere.conversation  # named by its first message
    assert len(first.conversation) == 16 and adapter.prompt(build([("result", "a.py")])).conversation == ""


def test_the_prompts_a_conversation_holds_answered_are_named_by_the_keys_their_turns_have(fmt: Any) -> None:
    """`answered_keys`: what the echo check asks of a memory Supermemory wrote from stored turns."""
    adapter, build = fmt
    turns = [*LOOP[2], ("assistant", FINAL, None), ("reminder",), ("user", "And hidden files?")]
    first, second = adapter.prompt(build(LOOP[0])), adapter.prompt(build(turns))
    assert answered_keys(adapter.conversation(build(turns))) == {first.key}  # the last one has no answer yet
    answered = [*turns, ("assistant", "Two.", None)]
    assert answered_keys(adapter.conversation(build(answered))) == {first.key, second.key}
    assert answered_keys(adapter.conversation(build(LOOP[1]))) == {first.key}  # a step of it is enough
    assert answered_keys(adapter.conversation(build(LOOP[0]))) == set()


def test_what_a_client_writes_to_go_on_after_compacting_is_no_prompt_until_the_user_writes(fmt: Any) -> None:
    """opencode goes on from a compacted conversation's summary with messages of its own."""
    adapter, build = fmt
    going_on = [("user", "What did we do so far?"), ("assistant", "Summary: three files.", None),
                ("user", "Continue if you have next steps, or stop and ask for clarification if you are unsure how to proceed.")]
    assert adapter.prompt(build(going_on)).text == ""
    assert adapter.prompt(build([*going_on, ("assistant", STEP, "shell"), ("result", "a.py")])).text == ""
    later = adapter.prompt(build([*going_on, ("assistant", "Done.", None), ("user", "And hidden files?")]))
    assert later.text == "And hidden files?" and later.key


SNAPSHOT = "<state_snapshot>\n    <primary_request_and_intent>The files.</primary_request_and_intent>\n</state_snapshot>"
SUMMARIES = {  # what a client goes on from after compacting, as the clients' sources write it
    "claude-code": "This session is being continued from a previous conversation that ran out of context. The summary"
                   " below covers the earlier portion of the conversation.\n\nSummary:\n1. Primary Request and Intent: the files.",
    "gemini-cli": SNAPSHOT,
    "qwen-code": f"{SNAPSHOT}\n\nResume the prior task using the summary above. Continue from the last in-flight step; do"
                 " not acknowledge the summary, do not re-introduce, do not greet the user again.",
    "codex": "Another language model started to solve this problem and produced a summary of its thinking process. You"
             " also have access to the state of the tools that were used by that language model. Here is the summary"
             " produced by the other language model, use the information in this summary to assist with your own"
             " analysis:\nThe user asked for the files.",
    "qwen-code restored file": "Recently accessed file (full current content embedded):\n\n## /repo/a.py\n\n```\nx = 1\n```",
}


@pytest.mark.parametrize("client", list(SUMMARIES))
def test_the_summary_a_client_goes_on_from_after_compacting_is_no_prompt(fmt: Any, client: str) -> None:
    """Steps of the tool loop that compacting cut through follow the summary; a later prompt is found; a user
    quoting the summary in a prompt of their own is heard."""
    adapter, build = fmt
    summary = SUMMARIES[client]
    going_on = [("user", f"{REMINDER}\n\n{summary}"), ("assistant", STEP, "shell"), ("result", "a.py")]
    prompt = adapter.prompt(build(going_on))
    assert prompt.text == "" and prompt.follows  # a step of no prompt this conversation holds
    # ... but of the prompt asked before the summary (requestpath.Asked). Gemini CLI's summary is all boilerplate:
    # it names no session to go on with anyway.
    assert prompt.compacted == (client != "gemini-cli")
    later = build([("user", summary), ("assistant", "Done.", None), ("user", "And hidden files?")])
    assert adapter.prompt(later).text == "And hidden files?" and adapter.prompt(later).key
    assert not adapter.prompt(later).compacted and summarised(adapter.conversation(later)) == (client != "gemini-cli")
    assert holds_summary(adapter.conversation(later)) and not holds_summary(adapter.conversation(build(LOOP[2])))
    assert not summarised(adapter.conversation(build([*LOOP[0], ("user", summary)])))  # it starts from the prompt
    assert adapter.prompt(build([("user", f"Why does my client say this?\n{summary}\nIs it broken?")])).text


def test_the_lines_claude_code_writes_when_a_turn_is_cut_off_are_no_prompt(fmt: Any) -> None:
    """The user stopped a tool call, then asked again (Claude Code joins the two user messages); a session whose
    turn was cut off resumed, going on with the prompt it was answering."""
    adapter, build = fmt
    stopped = [*LOOP[0], ("assistant", STEP, "shell"), ("user", "[Request interrupted by user for tool use]\nAnd hidden files?")]
    assert adapter.prompt(build(stopped)).text == "And hidden files?"
    resumed = adapter.prompt(build([*LOOP[2], ("user", "Continue from where you left off.")]))
    assert (resumed.text, resumed.key) == (PROMPT, adapter.prompt(build(LOOP[0])).key)  # the same memory
    assert adapter.prompt(build([("user", "[Request interrupted by user]")])).text == ""


def test_only_tool_results_is_no_prompt_but_a_step(fmt: Any) -> None:
    adapter, build = fmt
    prompt = adapter.prompt(build([("result", "a.py")]))
    assert prompt.text == "" and prompt.key == "" and prompt.follows


@pytest.mark.parametrize("loop", [[], [("assistant", STEP, "shell"), ("result", "a.py")]])
def test_an_image_alone_is_a_prompt_without_words_not_the_one_before(fmt: Any, loop: list[tuple]) -> None:
    """Its answer must not become the memory of the prompt before it, nor a step of that prompt's loop."""
    adapter, build = fmt
    prompt = adapter.prompt(build([("user", PROMPT), ("assistant", FINAL, None), ("image",), *loop]))
    assert (prompt.text, prompt.key, prompt.wordless, prompt.follows) == ("", "", True, bool(loop))
    assert prompt.calls == (("shell",) if loop else ())


def test_a_responses_continuation_over_a_websocket_carries_only_tool_outputs() -> None:
    """Codex's later `response.create` of a loop: `previous_response_id` and the outputs, no user text."""
    adapter = OpenAIResponsesAdapter()
    body = {"type": "response.create", "previous_response_id": "resp_1",
            "input": [{"type": "function_call_output", "call_id": "c1", "output": "a.py"}]}
    assert adapter.prompt(body) == ("", "", (), True, "", False, False)
    custom = {"type": "response.create", "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": PROMPT}]},
        {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** Begin Patch"},
        {"type": "custom_tool_call_output", "call_id": "c2", "output": "done"},
        {"type": "local_shell_call", "call_id": "c3", "action": {}},
    ]}
    assert adapter.prompt(custom).calls == ("apply_patch", "local_shell")


def test_a_responses_reply_names_the_tools_it_calls() -> None:
    reply = OpenAIResponsesAdapter().accumulator()
    item = {"type": "function_call", "name": "shell", "call_id": "c1", "arguments": "{}"}
    reply.feed(None, json.dumps({"type": "response.output_item.done", "output_index": 0, "item": item}))
    assert reply.calls() == ("shell",)


def test_an_injected_memory_or_boilerplate_alone_is_no_prompt() -> None:
    adapter, build = FORMATS["chat"]
    body = build([("user", PROMPT), ("assistant", STEP, "shell"), ("result", "ok")])
    body["messages"].append({"role": "user", "content": '<recalled-memories scope="s">- x</recalled-memories>'})
    assert adapter.prompt(body).text == PROMPT and adapter.prompt(body).follows


def test_a_background_subagents_notification_is_no_prompt_but_a_step_of_the_one_before() -> None:
    adapter, build = FORMATS["chat"]
    body = build([("user", PROMPT), ("assistant", STEP, "agent"), ("result", "Background agent launched.")])
    before = adapter.prompt(body)
    body["messages"].append({"role": "user", "content": [{"type": "text", "text": (  # as Qwen Code 0.24.4 sends it
        "<task-notification>\n<task-id>general-purpose-call_1</task-id>\n<status>completed</status>\n"
        "<result>The repository holds three files.</result>\n</task-notification>")}]})
    assert (adapter.prompt(body).text, adapter.prompt(body).key) == (PROMPT, before.key)


def test_trace_keeps_a_few_names_each_once() -> None:
    adapter, build = FORMATS["chat"]
    turns: list[tuple] = [("user", PROMPT)]
    for i in range(3 * MAX_CALLS):
        turns += [("assistant", "", f"tool{i % (MAX_CALLS + 2)}"), ("result", "x")]
    calls = adapter.prompt(build(turns)).calls
    assert calls == tuple(f"tool{i}" for i in range(MAX_CALLS))
    turns = [("user", PROMPT), *[("assistant", "", "Bash"), ("result", "x")] * MAX_TRACED, ("assistant", "", "Edit")]
    assert adapter.prompt(build(turns)).calls == ("Bash",)  # the steps of a loop's first MAX_TRACED calls


def test_trace_names_the_files_a_loops_calls_name_and_nothing_else_of_their_arguments(fmt: Any) -> None:
    adapter, build = fmt
    patch = "*** Begin Patch\n*** Update File: src/app.py\n@@\n-old\n+new\n*** Add File: docs/notes.md\n+hi\n*** End Patch"
    turns: list[tuple] = [
        ("user", "Earlier prompt"), ("assistant", "", ("Read", {"file_path": "/repo/old.py"})), ("result", "x"),
        ("assistant", "Done.", None), ("user", PROMPT),
        ("assistant", STEP, ("Read", {"file_path": "/repo/src/session.py", "limit": 40})), ("result", "x"),
        ("assistant", "", ("Bash", {"command": "cat /repo/secret.py", "description": "Show it"})), ("result", "x"),
        ("assistant", "", ("Write", {"filePath": "src/new.py", "content": "TOKEN = 'kept out'"})), ("result", "x"),
        ("assistant", "", ("read_many_files", {"paths": ["a.md", "b.md"], "file_text": "not a path"})), ("result", "x"),
        ("assistant", "", ("apply_patch", {"input": patch})), ("result", "x"),
        ("assistant", "", ("Read", {"file_path": "/repo/src/session.py"})), ("result", "x"),
    ]
    prompt = adapter.prompt(build(turns))
    assert prompt.calls == ("Read /repo/src/session.py", "Bash", "Write src/new.py", "read_many_files a.md",
                            "read_many_files b.md", "apply_patch src/app.py", "apply_patch docs/notes.md")
    reply = build([("user", PROMPT), ("assistant", "", ("Edit", {"file_path": "src/app.py", "old_string": "a"}))])
    assert adapter.prompt(reply).calls == ("Edit src/app.py",)


def test_codexs_patches_name_their_files_in_the_trace() -> None:
    """Codex edits with apply_patch: a freeform tool whose input is the patch's text (`custom_tool_call`), or a
    shell command whose arguments hold it."""
    adapter, build = FORMATS["responses"]
    patch = "*** Begin Patch\n*** Update File: src/app.py\n@@\n-a\n+b\n*** Delete File: old.txt\n*** End Patch"
    body = build([("user", PROMPT)])
    body["input"] += [
        {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": patch},
        {"type": "custom_tool_call_output", "call_id": "c1", "output": "Done"},
        {"type": "function_call", "call_id": "c2", "name": "shell",
         "arguments": json.dumps({"command": ["apply_patch", patch.replace("app.py", "cli.py")], "workdir": "/repo"})},
    ]
    assert adapter.prompt(body).calls == ("apply_patch src/app.py", "apply_patch old.txt", "shell src/cli.py",
                                          "shell old.txt")
