"""One LangChain round trip: `ChatOpenAI` against the gateway, with a tool call and its result."""

from __future__ import annotations

import trio
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from tests.support import RunningGateway


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"sunny in {city}"


async def test_chat_openai_tool_round_trip(gateway: RunningGateway) -> None:
    def run() -> tuple[str, str]:
        llm = ChatOpenAI(
            model="gemini-3-flash", base_url=gateway.url + "/v1", api_key="unused",
            max_retries=0, temperature=0.2, stop=["NEVER-SEEN"],
        )
        plain = llm.invoke("Hello from LangChain")
        with_tools = llm.bind_tools([get_weather])
        history = [HumanMessage("Use the tool get_weather for Paris")]
        call = with_tools.invoke(history)
        assert call.tool_calls, call
        tool_call = call.tool_calls[0]
        assert tool_call["name"] == "get_weather"
        result = get_weather.invoke(tool_call["args"])
        history += [call, ToolMessage(result, tool_call_id=tool_call["id"])]
        final = with_tools.invoke(history)
        streamed = "".join(str(chunk.content) for chunk in llm.stream("Stream to LangChain"))
        assert streamed.startswith("Echo")
        return str(plain.content), str(final.content)

    plain, final = await trio.to_thread.run_sync(run)
    assert plain.startswith("Echo")
    assert "get_weather returned" in final
