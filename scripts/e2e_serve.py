#!/usr/bin/env python3
"""End-to-end test of `glm5 serve` with the official `openai` and `anthropic` Python packages.

Starts the server on the bundled model on a free loopback port, drives both APIs (plain chat,
streaming, a tool-call round trip, reasoning, /v1/models, errors; the Responses API with
function calls and previous_response_id; Anthropic as Claude Code sends it: system messages in
`messages`, prefill) and exits non-zero on the first failure. Run by `crates/cli/tests/serve_e2e.rs`; `.ci/run` installs the packages into
target/e2e-venv (python3 -m venv target/e2e-venv && target/e2e-venv/bin/pip install openai anthropic).

    python scripts/e2e_serve.py --bin target/release/glm5
"""
import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request

import anthropic
import openai

KEY = "e2e-key"
# The 2026 anthropic SDK has no temperature argument; the server still reads the field.
GREEDY = {"temperature": 0}
TOOLS = [{"type": "function", "function": {
    "name": "get_verse", "description": "Look up one verse of the King James Bible.",
    "parameters": {"type": "object", "properties": {
        "book": {"type": "string", "description": "Book name, e.g. Genesis"},
        "chapter": {"type": "integer"}, "verse": {"type": "integer"}},
        "required": ["book", "chapter", "verse"]}}}]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


def openai_suite(base):
    c = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=120)
    models = c.models.list()
    name = models.data[0].id
    check(name == "glm5-tiny", f"/v1/models lists the model ({name})")

    r = c.chat.completions.create(model=name, temperature=0, max_tokens=48, messages=[
        {"role": "user", "content": "And God said, Let there be light: and there was light."}])
    msg = r.choices[0].message
    check(bool(msg.content) and "<think>" not in msg.content and "</think>" not in msg.content,
          f"plain chat answers without think tags: {msg.content!r}")
    reasoning = (msg.model_extra or {}).get("reasoning_content")
    check(bool(reasoning), f"reasoning goes to reasoning_content: {reasoning!r}")
    check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "usage adds up")

    stream = c.chat.completions.create(model=name, temperature=0, max_tokens=48, stream=True,
                                       stream_options={"include_usage": True}, messages=[
        {"role": "user", "content": "And God said, Let there be light: and there was light."}])
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            text += ch.delta.content or ""
            finish = ch.finish_reason or finish
    check(text.strip() == msg.content.strip(), "streamed text equals the non-streamed greedy text")
    check(finish in ("stop", "length") and usage is not None, f"stream ends with {finish} and usage")

    # Tool call round trip: forced call, then the tool's result goes back.
    r = c.chat.completions.create(model=name, temperature=0, max_tokens=64, tools=TOOLS,
                                  tool_choice={"type": "function", "function": {"name": "get_verse"}},
                                  messages=[{"role": "user", "content": "Read Genesis 1:3."}])
    ch = r.choices[0]
    check(ch.finish_reason == "tool_calls" and ch.message.tool_calls, "a forced tool call is returned as tool_calls")
    call = ch.message.tool_calls[0]
    args = json.loads(call.function.arguments)
    check(call.function.name == "get_verse" and isinstance(args, dict), f"tool call get_verse({args})")
    r2 = c.chat.completions.create(model=name, temperature=0, max_tokens=48, tools=TOOLS, messages=[
        {"role": "user", "content": "Read Genesis 1:3."},
        ch.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "And God said, Let there be light: and there was light."}])
    out = r2.choices[0].message.content or ""
    check("<think>" not in out and "</think>" not in out and "<tool_call>" not in out,
          f"answer after the tool result has no leaked tags: {out!r}")

    # Streaming tool call (auto): the model calls get_verse when asked for a verse.
    calls = []
    for chunk in c.chat.completions.create(model=name, temperature=0, max_tokens=64, tools=TOOLS, stream=True,
                                           messages=[{"role": "user", "content": "Read Genesis 1:3."}]):
        for ch in chunk.choices:
            calls += ch.delta.tool_calls or []
    check(len(calls) >= 1 and calls[0].function.name == "get_verse", "a streamed tool call arrives as a tool_calls delta")

    # Errors: bad parameter, unknown model, bad key; the server keeps serving.
    try:
        c.chat.completions.create(model=name, temperature="hot", messages=[{"role": "user", "content": "x"}])
        check(False, "a bad temperature is refused")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and "temperature" in str(e), "a bad temperature is a 400 naming it")
    try:
        c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
        check(False, "an unknown model is refused")
    except openai.NotFoundError as e:
        check(e.status_code == 404, "an unknown model is a 404")
    try:
        c.chat.completions.create(model=name, max_tokens=4, messages=[{"role": "user", "content": "verily " * 3000}])
        check(False, "a prompt beyond the context is refused")
    except openai.BadRequestError as e:
        check("context" in str(e), "a prompt beyond the context is a 400")
    bad = openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0)
    try:
        bad.models.list()
        check(False, "a wrong key is refused")
    except openai.AuthenticationError as e:
        check(e.status_code == 401, "a wrong API key is a 401")
    r = c.completions.create(model=name, prompt="In the beginning God created", max_tokens=8, temperature=0)
    check(len(r.choices[0].text) > 0, f"/v1/completions: {r.choices[0].text!r}")


def responses_suite(base):
    c = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=120)
    r = c.responses.create(model="glm5-tiny", instructions="You know the King James Bible.",
                           input="And God said, Let there be light: and there was light.",
                           temperature=0, max_output_tokens=48)
    kinds = [i.type for i in r.output]
    check(r.status in ("completed", "incomplete") and "message" in kinds and "reasoning" in kinds,
          f"responses.create: {r.status} {kinds}")
    check(bool(r.output_text) and "<think>" not in r.output_text, f"output_text: {r.output_text!r}")
    check(r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens, "responses usage adds up")
    check(c.responses.retrieve(r.id).id == r.id, "a stored response can be retrieved")

    deltas, types, final = [], [], None
    for ev in c.responses.create(model="glm5-tiny", instructions="You know the King James Bible.",
                                 input="And God said, Let there be light: and there was light.",
                                 temperature=0, max_output_tokens=48, stream=True):
        types.append(ev.type)
        if ev.type == "response.output_text.delta":
            deltas.append(ev.delta)
        if ev.type in ("response.completed", "response.incomplete"):
            final = ev.response
    check(types[:2] == ["response.created", "response.in_progress"] and final is not None,
          f"the stream opens with created/in_progress and ends with the response: {types[:3]}...{types[-1:]}")
    check("".join(deltas).strip() == r.output_text.strip(), "streamed text equals the non-streamed text")
    check(final.output_text.strip() == r.output_text.strip(), "the final streamed response holds the text")

    tools = [{"type": "function", "name": "get_verse", "description": TOOLS[0]["function"]["description"],
              "parameters": TOOLS[0]["function"]["parameters"]}]
    with c.responses.stream(model="glm5-tiny", input="Read Genesis 1:3.", tools=tools, temperature=0,
                            tool_choice={"type": "function", "name": "get_verse"}, max_output_tokens=64) as s:
        for _ in s:
            pass
        fr = s.get_final_response()
    calls = [i for i in fr.output if i.type == "function_call"]
    check(calls and calls[0].name == "get_verse" and isinstance(json.loads(calls[0].arguments), dict),
          f"a forced function_call item: {calls[0].arguments if calls else None}")
    follow = c.responses.create(model="glm5-tiny", previous_response_id=fr.id, tools=tools, temperature=0,
                                max_output_tokens=32, input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                                                              "output": "And God said, Let there be light."}])
    check(follow.status in ("completed", "incomplete") and follow.usage.input_tokens > fr.usage.input_tokens,
          f"previous_response_id continues the conversation ({fr.usage.input_tokens} -> {follow.usage.input_tokens} tokens)")
    schema = {"type": "object", "properties": {"book": {"type": "string", "maxLength": 20},
              "chapter": {"type": "integer", "minimum": 1, "maximum": 150}},
              "required": ["book", "chapter"], "additionalProperties": False}
    j = c.responses.create(model="glm5-tiny", input="Name a book and a chapter.", temperature=1, max_output_tokens=120,
                           reasoning={"effort": "none"},
                           text={"format": {"type": "json_schema", "name": "pick", "schema": schema, "strict": True}})
    v = json.loads(j.output_text)
    check(set(v) == {"book", "chapter"} and isinstance(v["chapter"], int), f"a json_schema response follows it: {v}")
    cc = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=120).chat.completions.create(
        model="glm5-tiny", temperature=1, max_tokens=120, messages=[{"role": "user", "content": "Name a book."}],
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
        response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": schema, "strict": True}})
    v = json.loads(cc.choices[0].message.content)
    check(set(v) == {"book", "chapter"}, f"a json_schema chat completion follows it: {v}")
    r = c.responses.create(model="glm5-tiny", input="x", max_output_tokens=4, tools=[{"type": "web_search"}])
    check(r.status in ("completed", "incomplete"), "a hosted tool (web_search, sent by Codex) is not offered, not refused")
    try:
        c.responses.create(model="glm5-tiny", input=[{"type": "mystery_item"}])
        check(False, "an unknown input item is refused")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and "input[0].type" in str(e), "an unknown input item is a 400 naming it")


def anthropic_suite(base):
    c = anthropic.Anthropic(base_url=base, api_key=KEY, max_retries=0, timeout=120)
    m = c.messages.create(model="glm5-tiny", max_tokens=64, extra_body=GREEDY,
                          system="You are a helpful assistant who knows the King James Bible.",
                          messages=[{"role": "user", "content": "And God said, Let there be light: and there was light."}])
    kinds = [b.type for b in m.content]
    check("thinking" in kinds and "text" in kinds, f"messages returns thinking and text blocks: {kinds}")
    check(m.stop_reason in ("end_turn", "max_tokens"), f"stop_reason {m.stop_reason}")

    with c.messages.stream(model="glm5-tiny", max_tokens=64, extra_body=GREEDY,
                           system="You are a helpful assistant who knows the King James Bible.",
                           messages=[{"role": "user", "content": "And God said, Let there be light: and there was light."}]) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    text = "".join(b.text for b in m.content if b.type == "text")
    check(streamed.strip() == text.strip(), "streamed text equals the non-streamed text")
    check(final.stop_reason == m.stop_reason, "the stream ends with the same stop_reason")

    tools = [{"name": "get_verse", "description": TOOLS[0]["function"]["description"],
              "input_schema": TOOLS[0]["function"]["parameters"]}]
    with c.messages.stream(model="glm5-tiny", max_tokens=64, extra_body=GREEDY, tools=tools,
                           tool_choice={"type": "tool", "name": "get_verse"},
                           messages=[{"role": "user", "content": "Read Genesis 1:3."}]) as s:
        msg = s.get_final_message()
    uses = [b for b in msg.content if b.type == "tool_use"]
    check(msg.stop_reason == "tool_use" and uses and uses[0].name == "get_verse" and isinstance(uses[0].input, dict),
          f"a streamed forced tool_use block: {uses[0].input if uses else None}")
    r = c.messages.create(model="glm5-tiny", max_tokens=48, extra_body=GREEDY, tools=tools, messages=[
        {"role": "user", "content": "Read Genesis 1:3."},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                      "content": "And God said, Let there be light: and there was light."}]}])
    texts = "".join(b.text for b in r.content if b.type == "text")
    check("<think>" not in texts and "<tool_call>" not in texts, f"tool_result round trip: {texts!r}")
    m = c.messages.create(model="glm5-tiny", max_tokens=8, extra_body=GREEDY,
                          extra_headers={"anthropic-beta": "claude-code-20250219"},
                          messages=[{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "Say a verse."},
                                    {"role": "assistant", "content": "In the beginning"}])
    check(m.stop_reason in ("end_turn", "max_tokens") and all(b.type != "thinking" for b in m.content),
          "a system message inside messages and an assistant prefill are served")
    try:
        c.messages.create(model="glm5-tiny", max_tokens=8, messages=[{"role": "robot", "content": "x"}])
        check(False, "a bad role is refused")
    except anthropic.BadRequestError as e:
        check(e.status_code == 400 and e.body["error"]["type"] == "invalid_request_error", "a bad role is an Anthropic 400")
    try:
        anthropic.Anthropic(base_url=base, api_key="wrong", max_retries=0).messages.create(
            model="glm5-tiny", max_tokens=8, messages=[{"role": "user", "content": "x"}])
        check(False, "a wrong key is refused")
    except anthropic.AuthenticationError as e:
        check(e.status_code == 401, "a wrong key is an Anthropic 401")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="the glm5 executable")
    ap.add_argument("--model", help="model folder (default: the bundled one)")
    a = ap.parse_args()
    port = free_port()
    cmd = [a.bin, "serve", "--port", str(port), "--api-key", KEY, "--ctx", "1024", "--threads", "2"]
    if a.model:
        cmd += ["--model", a.model]
    server = subprocess.Popen(cmd)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1).read()
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit(f"glm5 serve exited with {server.returncode}")
                time.sleep(0.1)
        openai_suite(base)
        responses_suite(base)
        anthropic_suite(base)
        check(urllib.request.urlopen(f"{base}/health").read() == b"ok", "the server still serves")
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("e2e: all checks passed")


if __name__ == "__main__":
    main()
