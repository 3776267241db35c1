"""The Responses API face with real clients over sockets: the openai SDK (`responses.create`,
`responses.stream`, retrieval, input items, token counts), the OpenAI Agents SDK with its
default (Responses) model, and LangChain's `ChatOpenAI(use_responses_api=True)`.

The SDK validates every object it parses with its own pydantic types; the raw bodies are
validated strictly here too, so a field the types leave optional is still checked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.support import RunningGateway, generation_requests
from tests.support import in_thread as call
from tests.support import raw_request as raw

GEMINI = "gemini-3-flash"
CLAUDE = "claude-sonnet-4-6"
CLAUDE_THINKING = "claude-opus-4-6-thinking"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False},
    "strict": True,
}
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def client_for(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="test", max_retries=0, timeout=30)




async def test_create_text(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    response = await call(lambda: client.responses.create(
        model=GEMINI, input="Hello there", instructions="Be brief.", max_output_tokens=200,
        metadata={"run": "e2e"},
    ))
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == "Echo: Hello there"
    assert response.model == GEMINI and response.metadata == {"run": "e2e"}
    assert response.usage is not None
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    # the raw body, strictly
    body = await raw(gateway, "POST", "/v1/responses", json={"model": GEMINI, "input": "hi"})
    Response.model_validate(body.json(), strict=False)
    assert body.json()["instructions"] is None


async def test_stream_with_final_response_helper(gateway: RunningGateway) -> None:
    client = client_for(gateway)

    def run() -> tuple[list[str], Any, str]:
        deltas: list[str] = []
        with client.responses.stream(model=CLAUDE, input="Stream to me") as stream:
            for event in stream:
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
            final = stream.get_final_response()
        return deltas, final, final.output_text

    deltas, final, text = await call(run)
    assert "".join(deltas) == text == "Echo: Stream to me"
    assert final.status == "completed"
    # every raw event validates, with its sequence number in order
    async with httpx.AsyncClient(timeout=30) as http:
        streamed = await http.post(gateway.url + "/v1/responses",
                                   json={"model": CLAUDE, "input": "x", "stream": True})
    events = [json.loads(line[6:]) for line in streamed.text.splitlines()
              if line.startswith("data: ")]
    for event in events:
        EVENTS.validate_python(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert streamed.headers["content-type"].startswith("text/event-stream")


async def test_function_tools_round_trip(gateway: RunningGateway) -> None:
    client = client_for(gateway)

    def run() -> tuple[Any, Any]:
        first = client.responses.create(model=GEMINI, input="Use get_weather for Paris",
                                        tools=[WEATHER])  # type: ignore[list-item]
        calls = [o for o in first.output if o.type == "function_call"]
        assert calls and calls[0].name == "get_weather"
        assert json.loads(calls[0].arguments) == {"city": "Paris"}
        second = client.responses.create(
            model=GEMINI, tools=[WEATHER],  # type: ignore[list-item]
            input=[{"role": "user", "content": "Use get_weather for Paris"},
                   *[o.model_dump(exclude_none=True) for o in first.output],  # type: ignore[misc]
                   {"type": "function_call_output", "call_id": calls[0].call_id,
                    "output": "sunny, 21C"}],
        )
        return first, second

    first, second = await call(run)
    assert first.status == "completed"
    assert "get_weather returned" in second.output_text and "sunny" in second.output_text


async def test_previous_response_id_continues_and_retrieve_delete(
    gateway: RunningGateway,
) -> None:
    client = client_for(gateway)

    def run() -> tuple[Any, Any, Any, Any]:
        first = client.responses.create(model=GEMINI, input="Use get_weather for Rome",
                                        tools=[WEATHER])  # type: ignore[list-item]
        call_item = next(o for o in first.output if o.type == "function_call")
        second = client.responses.create(
            model=GEMINI, previous_response_id=first.id, tools=[WEATHER],  # type: ignore[list-item]
            input=[{"type": "function_call_output", "call_id": call_item.call_id,
                    "output": "cloudy"}],
        )
        fetched = client.responses.retrieve(second.id)
        items = client.responses.input_items.list(second.id)
        return first, second, fetched, items

    first, second, fetched, items = await call(run)
    assert "get_weather returned" in second.output_text and "cloudy" in second.output_text
    assert second.previous_response_id == first.id
    assert fetched.id == second.id and fetched.output_text == second.output_text
    assert [i.type for i in items.data] == ["function_call_output"]
    # the upstream got the whole conversation: the first prompt, the call and its result
    contents = generation_requests(gateway.emulator)[-1]["request"]["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    assert await call(lambda: client.responses.delete(first.id)) is None
    with pytest.raises(openai.NotFoundError) as gone:
        await call(lambda: client.responses.retrieve(first.id))
    assert gone.value.status_code == 404
    # the chain is broken now: continuing a response whose ancestor is gone is a clear 404
    with pytest.raises(openai.NotFoundError) as broken:
        await call(lambda: client.responses.create(
            model=GEMINI, previous_response_id=second.id, input="more"))
    assert first.id in str(broken.value)
    assert isinstance(broken.value.body, dict)
    assert broken.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        await call(lambda: client.responses.create(
            model=GEMINI, previous_response_id="resp_unknown", input="more"))


async def test_store_false_keeps_nothing(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    response = await call(lambda: client.responses.create(model=GEMINI, input="x", store=False))
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        await call(lambda: client.responses.retrieve(response.id))


async def test_stateless_reasoning_crosses_a_tool_loop(gateway: RunningGateway) -> None:
    """store: false with include reasoning.encrypted_content, as Codex runs: the thought and
    its signature come back sealed, and the next turn sends them upstream again (the
    emulator refuses a Claude tool loop whose thinking is missing or forged)."""
    client = client_for(gateway)

    def run() -> tuple[Any, Any]:
        common: dict[str, Any] = {
            "model": CLAUDE_THINKING, "store": False, "tools": [WEATHER],
            "include": ["reasoning.encrypted_content"], "reasoning": {"summary": "auto"},
        }
        prompt = {"role": "user", "content": "Use get_weather for Oslo"}
        first = client.responses.create(input=[prompt], **common)
        history = [o.model_dump(exclude_none=True) for o in first.output]
        call_item = next(o for o in first.output if o.type == "function_call")
        with client.responses.stream(input=[
            prompt, *history,
            {"type": "function_call_output", "call_id": call_item.call_id, "output": "snow"},
        ], **common) as stream:
            second = stream.get_final_response()
        return first, second

    first, second = await call(run)
    reasoning = [o for o in first.output if o.type == "reasoning"]
    assert reasoning and reasoning[0].encrypted_content
    assert reasoning[0].summary and reasoning[0].summary[0].text  # summary asked for
    assert "get_weather returned" in second.output_text and "snow" in second.output_text
    replayed = generation_requests(gateway.emulator)[-1]["request"]["contents"][1]["parts"]
    assert replayed[0].get("thought") is True and replayed[0].get("thoughtSignature")
    # a thought whose seal was altered is dropped, not sent (and the request still works)
    tampered = dict(reasoning[0].model_dump(exclude_none=True))
    tampered["encrypted_content"] = tampered["encrypted_content"][:-4] + "AAAA"
    again = await call(lambda: client.responses.create(
        model=GEMINI, store=False, input=[{"role": "user", "content": "q"}, tampered,
                                          {"role": "assistant", "content": "a"},
                                          {"role": "user", "content": "q2"}]))
    assert again.output_text == "Echo: q2"


async def test_json_schema_output(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "degrees": {"type": "number"}},
              "required": ["city", "degrees"], "additionalProperties": False}
    response = await call(lambda: client.responses.create(
        model=GEMINI, input="Weather as JSON",
        text={"format": {"type": "json_schema", "name": "weather", "schema": schema,
                         "strict": True}},
    ))
    value = json.loads(response.output_text)
    assert set(value) == {"city", "degrees"}
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"


async def test_input_tokens_are_counted_locally(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    before = len(generation_requests(gateway.emulator))
    counted = await call(lambda: client.responses.input_tokens.count(
        model=GEMINI, input="How many tokens is this?", instructions="Count me too."))
    assert counted.input_tokens > 5
    assert len(generation_requests(gateway.emulator)) == before


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": GEMINI, "input": "x", "tools": [{"type": "web_search"}]}, 400,
         "tools[0].type"),
        ({"model": GEMINI, "input": "x", "background": True}, 400, "background"),
        ({"model": "no-such-model", "input": "x"}, 404, "model"),
        ({"model": GEMINI}, 400, "input"),
    ],
)
async def test_errors_are_in_the_openai_shape(
    gateway: RunningGateway, body: dict[str, Any], status: int, param: str
) -> None:
    response = await raw(gateway, "POST", "/v1/responses", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["param"] == param or status == 404
    for path in ("/v1/responses/resp_nope", "/v1/responses/resp_nope/input_items"):
        missing = await raw(gateway, "GET", path)
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "response_id"
    assert (await raw(gateway, "DELETE", "/v1/responses/resp_nope")).status_code == 404


async def test_openai_agents_sdk_default_model_runs_a_tool(gateway: RunningGateway) -> None:
    import agents

    def run() -> tuple[str, list[str]]:
        seen: list[str] = []

        @agents.function_tool
        def get_weather(city: str) -> str:
            """Current weather for a city."""
            seen.append(city)
            return f"sunny in {city}"

        agents.set_tracing_disabled(True)
        agents.set_default_openai_client(openai.AsyncOpenAI(
            base_url=f"{gateway.url}/v1", api_key="test", max_retries=0), use_for_tracing=False)
        agents.set_default_openai_api("responses")
        agent = agents.Agent(name="weather", instructions="Answer with the tool.",
                             model=GEMINI, tools=[get_weather])
        result = agents.Runner.run_sync(agent, "Use get_weather for Lima")
        return str(result.final_output), seen

    final, seen = await call(run)
    assert seen == ["Paris"] or seen  # the emulator fills the argument from its sample
    assert "get_weather returned" in final


async def test_langchain_use_responses_api(gateway: RunningGateway) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return f"sunny in {city}"

    def run() -> tuple[str, str, str]:
        llm = ChatOpenAI(model=GEMINI, base_url=gateway.url + "/v1", api_key="unused",
                         max_retries=0, use_responses_api=True)
        plain = llm.invoke("Hello from LangChain")
        with_tools = llm.bind_tools([get_weather])
        history: list[Any] = [HumanMessage("Use the tool get_weather for Paris")]
        reply = with_tools.invoke(history)
        assert reply.tool_calls, reply
        tool_call = reply.tool_calls[0]
        history += [reply, ToolMessage(get_weather.invoke(tool_call["args"]),
                                       tool_call_id=tool_call["id"])]
        final = with_tools.invoke(history)
        streamed = "".join(str(chunk.text) for chunk in llm.stream("Stream to LangChain"))
        return plain.text, final.text, streamed

    plain, final, streamed = await call(run)
    assert plain == "Echo: Hello from LangChain"
    assert "get_weather returned" in final
    assert streamed == "Echo: Stream to LangChain"


async def test_stored_responses_belong_to_the_key_that_made_them(
    start_gateway: Callable[..., Any],
) -> None:
    """Two keys are two users: one's stored responses do not exist for the other."""
    gateway = await start_gateway(server={"api_keys": ("key-alice", "key-bob")})
    alice = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="key-alice", max_retries=0)
    bob = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="key-bob", max_retries=0)
    first = await call(lambda: alice.responses.create(model=GEMINI, input="secret plan"))
    assert (await call(lambda: alice.responses.retrieve(first.id))).id == first.id
    for attempt in (lambda: bob.responses.retrieve(first.id),
                    lambda: bob.responses.input_items.list(first.id),
                    lambda: bob.responses.delete(first.id),
                    lambda: bob.responses.create(model=GEMINI, input="more",
                                                 previous_response_id=first.id)):
        with pytest.raises(openai.NotFoundError):
            await call(attempt)
    items = await call(lambda: alice.responses.input_items.list(first.id))
    assert [i.type for i in items.data] == ["message"]  # still there: bob's delete failed


async def test_input_items_list_validates(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    response = await call(lambda: client.responses.create(model=CLAUDE, input=[
        {"role": "developer", "content": "be kind"},
        {"role": "user", "content": "call f"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "done"},
    ], tools=[{"type": "function", "name": "f", "parameters": {"type": "object",
                                                                "properties": {}}}]))
    listed = await raw(gateway, "GET", f"/v1/responses/{response.id}/input_items",
                       params={"order": "asc"})
    from openai.types.responses import ResponseItemList
    page = ResponseItemList.model_validate(listed.json())
    assert [item.type for item in page.data] == ["message", "message", "function_call",
                                                 "function_call_output"]
    orphan = await raw(gateway, "POST", "/v1/responses", json={"model": CLAUDE, "input": [
        {"role": "user", "content": "hi"},
        {"type": "function_call_output", "call_id": "nope", "output": "42"}]})
    assert orphan.status_code == 400
    assert orphan.json()["error"]["param"] == "input[1].call_id"
    assert "No tool call found" in orphan.json()["error"]["message"]
