"""Gemini API <-> canonical: golden wire fixtures, validation, and properties.

Golden files live in tests/fixtures/gemini/. `request_*.json` hold a generateContent body
(with the model named in its path) and the canonical request it parses to; `response_*.json`
hold a `ChatResponse` and the GenerateContentResponse it renders to; `stream_*.json` hold
batches of canonical events and the chunks they encode to. Run with GATEWAY_UPDATE_GOLDEN=1
to rewrite the `expected` halves after an intended change (then review the diff: these
files are the protocol). Every rendered object is validated by the google-genai SDK's own
types.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import attrs
import pytest
from google.genai import types
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import errors
from gateway.translate import canonical as c
from gateway.translate import gemini as wire
from tests.strategies import event_streams
from tests.support import GoldenFiles, event_from_json, response_from_json

GOLDEN = GoldenFiles(Path(__file__).resolve().parent.parent / "fixtures" / "gemini")
load, fixture_names, check_golden = GOLDEN.load, GOLDEN.names, GOLDEN.check








def parse(body: Any, model: str = "gemini-3-flash", stream: bool = False) -> wire.GeminiRequest:
    return wire.parse_generate_request(body, model=model, stream=stream)


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "parts": list(parts)}


def model_turn(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "model", "parts": list(parts)}


def refused(body: Any, *words: str) -> errors.InvalidRequest:
    with pytest.raises(errors.InvalidRequest) as caught:
        parse(body)
    for word in words:
        assert word in caught.value.message
    return caught.value


def wrapped(tagged: str) -> str:
    return base64.b64encode(tagged.encode()).decode()


# ---------------------------------------------------------------------------------------------
# Golden files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", fixture_names("request"))
def test_request_golden(name: str) -> None:
    data = load(name)
    parsed = parse(data["body"], data["model"], data["stream"])
    check_golden(name, {"chat": attrs.asdict(parsed.chat),
                        "include_thoughts": parsed.include_thoughts})


@pytest.mark.parametrize("name", fixture_names("response"))
def test_response_golden(name: str) -> None:
    data = load(name)
    body = wire.render_response(response_from_json(data["response"]), response_id="r1",
                                model_version="gemini-3-flash",
                                include_thoughts=data["include_thoughts"])
    types.GenerateContentResponse.model_validate(body)
    check_golden(name, body)


@pytest.mark.parametrize("name", fixture_names("stream"))
def test_stream_golden(name: str) -> None:
    data = load(name)
    encoder = wire.GeminiStreamEncoder(response_id="r1", model_version="gemini-3-flash",
                                       include_thoughts=data["include_thoughts"])
    chunks = [encoder.encode([event_from_json(e) for e in batch]) for batch in data["batches"]]
    for chunk in (one for batch in chunks for one in batch):
        types.GenerateContentResponse.model_validate(chunk)
    check_golden(name, chunks)


def test_fixture_sets_are_present() -> None:
    assert len(fixture_names("request")) >= 3
    assert len(fixture_names("response")) >= 3
    assert len(fixture_names("stream")) >= 2


# ---------------------------------------------------------------------------------------------
# Request mapping details
# ---------------------------------------------------------------------------------------------


def test_a_tool_loop_pairs_calls_and_keeps_signatures() -> None:
    chat = parse(load("request_tool_loop")["body"]).chat
    assert [m.role for m in chat.messages] == ["user", "assistant", "user", "assistant", "user"]
    thought, text, paris, oslo = chat.messages[1].content
    # two thought parts are one thought; its signature comes back unwrapped, as tagged
    assert thought == c.ThinkingBlock("The user wants two cities.", "gemini.thought-sig")
    assert text == c.TextBlock("Checking both.")
    # a call without an id gets one from its place; URL-safe base64 unwraps the same
    assert paris == c.ToolUseBlock("call_1_3", "get_weather", {"city": "Paris"},
                                   signature="gemini.call-sig")
    assert oslo == c.ToolUseBlock("own-id", "get_weather", {"city": "Oslo"})
    rain, clear = chat.messages[2].content
    assert isinstance(rain, c.ToolResultBlock) and isinstance(clear, c.ToolResultBlock)
    # by id first, then by name among the calls not yet answered
    assert (rain.tool_use_id, rain.content) == ("own-id", (c.TextBlock("Rain"),))
    assert clear.tool_use_id == "call_1_3"
    assert clear.content == (c.TextBlock('{"temperature":21,"sky":"clear"}'),)
    # a signature Google made (not one of ours) is passed on as it is
    lookup = chat.messages[3].content[0]
    assert isinstance(lookup, c.ToolUseBlock) and lookup.signature == "CiQBraw+Google/sig=="
    failed = chat.messages[4].content[0]
    assert isinstance(failed, c.ToolResultBlock) and failed.is_error
    assert chat.tool_choice == c.ToolChoice("tool", "get_weather")
    assert chat.effort == "high" and chat.thinking == c.Thinking(True)
    # Gemini's capitalised Schema types become the JSON Schema the core speaks
    weather = chat.tools[0].input_schema
    assert weather["properties"]["days"] == {"type": "integer", "nullable": True}
    assert chat.response_format == c.ResponseFormat(
        "json_schema", {"type": "object", "properties": {"summary": {"type": "string"}}})


def test_snake_case_and_the_function_role_are_understood() -> None:
    request = parse(load("request_snake_case_media")["body"], "claude-sonnet-4-6")
    chat = request.chat
    assert [b.text for b in chat.system] == ["You see images."]
    image, pdf, _ = chat.messages[0].content
    assert isinstance(image, c.ImageBlock) and "-" not in image.data  # standard alphabet
    assert isinstance(pdf, c.DocumentBlock) and pdf.media_type == "application/pdf"
    result = chat.messages[2].content[0]
    assert isinstance(result, c.ToolResultBlock) and chat.messages[2].role == "user"
    assert [type(b) for b in result.content] == [c.TextBlock, c.ImageBlock]
    assert chat.thinking == c.Thinking(False) and chat.tool_choice == c.ToolChoice("none")
    assert chat.max_tokens == 1000


@pytest.mark.parametrize(
    ("config", "thinking", "effort", "shown"),
    [
        (None, None, None, False),
        ({}, None, None, False),
        ({"includeThoughts": True}, c.Thinking(True), None, True),
        ({"includeThoughts": False}, None, None, False),
        ({"thinkingBudget": 0}, c.Thinking(False), None, False),
        ({"thinkingBudget": -1, "includeThoughts": True}, c.Thinking(True), None, True),
        ({"thinkingBudget": 2048}, c.Thinking(True, 2048), None, False),
        ({"thinking_budget": "4096", "include_thoughts": True}, c.Thinking(True, 4096), None,
         True),
        ({"thinkingLevel": "low"}, c.Thinking(True), "low", False),
        ({"thinkingLevel": "MINIMAL", "includeThoughts": True}, c.Thinking(True), "low", True),
    ],
)
def test_thinking_config(config: Any, thinking: Any, effort: Any, shown: bool) -> None:
    generation = {} if config is None else {"thinkingConfig": config}
    request = parse({"contents": [user({"text": "hi"})], "generationConfig": generation})
    assert (request.chat.thinking, request.chat.effort, request.include_thoughts) == (
        thinking, effort, shown)


@pytest.mark.parametrize("tool", ["googleSearch", "google_search", "codeExecution", "urlContext",
                                  "googleSearchRetrieval", "computerUse"])
def test_builtin_tools_are_refused_by_name(tool: str) -> None:
    error = refused({"contents": [user({"text": "hi"})], "tools": [{tool: {}}]},
                    "built-in", "declare a function")
    assert error.param == f"tools[0].{tool}"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, ["contents", "required"]),
        ({"contents": []}, ["at least one"]),
        ({"contents": "hi"}, ["contents", "array"]),
        ({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}, ["user or model"]),
        ({"contents": [user({"fileData": {"fileUri": "gs://b/x", "mimeType": "image/png"}})]},
         ["inlineData"]),
        ({"contents": [user({"inlineData": {"mimeType": "image/png", "data": "!!"}})]},
         ["base64"]),
        ({"contents": [user({"executableCode": {"code": "1"}})]}, ["unsupported part"]),
        ({"contents": [user({"functionResponse": {"name": "f", "response": {}}})]},
         ["answers no functionCall", "'f'"]),
        ({"contents": [user({"functionCall": {"name": "f"}})]}, ["belong in model turns"]),
        ({"contents": [user({"text": "hi"})], "generationConfig": {"candidateCount": 2}},
         ["only 1 candidate"]),
        ({"contents": [user({"text": "hi"})],
          "generationConfig": {"responseModalities": ["TEXT", "IMAGE"]}}, ["only TEXT"]),
        ({"contents": [user({"text": "hi"})], "generationConfig": {"temperature": 3}},
         ["temperature", "between 0 and 2"]),
        ({"contents": [user({"text": "hi"})], "generationConfig": {"maxOutputTokens": 0}},
         ["maxOutputTokens"]),
        ({"contents": [user({"text": "hi"})],
          "generationConfig": {"responseMimeType": "text/x.enum"}}, ["application/json"]),
        ({"contents": [user({"text": "hi"})], "cachedContent": "cachedContents/1"},
         ["cached contents"]),
        ({"contents": [user({"text": "hi"})],
          "tools": [{"functionDeclarations": [{"name": "f"}, {"name": "f"}]}]},
         ["declared twice"]),
        ({"contents": [user({"text": "hi"})],
          "tools": [{"functionDeclarations": [{"name": "9bad name"}]}]}, ["must start"]),
        ({"contents": [user({"text": "hi"})],
          "tools": [{"functionDeclarations": [{"name": "f"}]}],
          "toolConfig": {"functionCallingConfig": {"mode": "ANY",
                                                   "allowedFunctionNames": ["nope"]}}},
         ["not a declared function"]),
        ({"contents": [user({"text": "hi"})],
          "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}, ["needs declared"]),
        ({"contents": [user({"text": "go"}),
                       model_turn({"functionCall": {"name": "f"}}, {"functionCall": {"name": "g"}}),
                       user({"functionResponse": {"name": "f", "response": {}}})]},
         ["answers 1 of the 2", "'g'"]),
        ({"contents": [user({"text": "go"}),
                       model_turn({"functionCall": {"id": "x", "name": "f"}},
                                  {"functionCall": {"id": "x", "name": "g"}})]},
         ["share the id 'x'"]),
        ({"contents": [user({"text": "x", "inlineData": {"mimeType": "image/png",
                                                          "data": "AA=="}})]},
         ["not text and inlineData"]),
        ({"contents": [model_turn({"functionResponse": {"name": "f", "response": {}}})]},
         ["belong in user turns"]),
        ({"contents": [{"role": 0, "parts": [{"text": "x"}]}]}, ["user or model"]),
        ({"contents": [{"role": "user", "parts": {}}]}, ["parts", "array"]),
        ({"contents": [user({"text": "hi"})], "tools": [{"functionDeclarations": {}}]},
         ["functionDeclarations", "array"]),
        ({"contents": [user({"text": "hi"})],
          "tools": [{"functionDeclarations": [{"name": "f"}],
                     "function_declarations": [{"name": "g"}]}]}, ["given twice"]),
        ({"contents": [user({"text": "hi"})], "safetySettings": [{"category": "X"}]},
         ["category and a threshold"]),
        ({"contents": [user({"text": "hi"})],
          "systemInstruction": {"parts": [{"inlineData": {"mimeType": "image/png",
                                                          "data": "AA=="}}]}},
         ["text parts only"]),
    ],
)
def test_bad_requests_are_refused_clearly(body: Any, words: list[str]) -> None:
    refused(body, *words)


def test_count_tokens_takes_either_shape() -> None:
    contents = {"contents": [user({"text": "hello"})]}
    direct = wire.parse_count_tokens_request(contents, model="gemini-3-flash")
    nested = wire.parse_count_tokens_request(
        {"generateContentRequest": {"model": "models/gemini-3-flash", **contents}},
        model="gemini-3-flash")
    assert direct == nested


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

tagged_signatures = st.builds(
    lambda family, raw: f"{family}.{raw}",
    st.sampled_from(["claude", "gemini", "other"]),
    st.text(alphabet="abcXYZ019+/=", min_size=1, max_size=40),
)


@given(tagged_signatures, st.booleans(), st.booleans())
def test_signatures_survive_either_base64_alphabet(tagged: str, url_safe: bool,
                                                   strip: bool) -> None:
    sent = wire.wrap_signature(tagged)
    base64.b64decode(sent, validate=True)  # what a bytes field must hold
    back = sent.replace("+", "-").replace("/", "_") if url_safe else sent
    back = back.rstrip("=") if strip else back
    assert wire.unwrap_signature(back) == tagged


@given(st.text(alphabet="ABCabc012+/", min_size=4, max_size=40).map(
    lambda s: base64.b64encode(s.encode()).decode()))
def test_a_signature_of_google_own_passes_untouched(raw: str) -> None:
    assert wire.unwrap_signature(wire.wrap_signature(raw)) == raw


def _stream_text(chunks: list[dict[str, Any]]) -> tuple[str, str, list[Any]]:
    text, thoughts, calls = "", "", []
    for chunk in chunks:
        for part in chunk["candidates"][0]["content"]["parts"]:
            if "functionCall" in part:
                calls.append((part["functionCall"], part.get("thoughtSignature")))
            elif part.get("thought"):
                thoughts += part["text"]
            else:
                text += part["text"]
    return text, thoughts, calls


@settings(max_examples=150, deadline=None)
@given(event_streams(), st.booleans(), st.data())
def test_stream_chunks_say_what_the_whole_response_says(
    events: list[c.StreamEvent], include: bool, data: st.DataObject
) -> None:
    encoder = wire.GeminiStreamEncoder(response_id="r", model_version="m",
                                       include_thoughts=include)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(events)), max_size=5)))
    chunks: list[dict[str, Any]] = []
    for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True):
        chunks += encoder.encode(events[a:b])
    for chunk in chunks:
        types.GenerateContentResponse.model_validate(chunk)
    # exactly one finish reason, on the last chunk
    finishes = [ch["candidates"][0].get("finishReason") for ch in chunks]
    assert finishes[-1] is not None and not any(finishes[:-1])
    whole = wire.render_response(c.collect(events, response_id="r", model="m"),
                                 response_id="r", model_version="m", include_thoughts=include)
    assert _stream_text(chunks)[:2] == _stream_text([whole])[:2]
    # calls: same ids, names and arguments; a signature given in the same batch shows
    streamed_calls = [call for call, _ in _stream_text(chunks)[2]]
    assert streamed_calls == [call for call, _ in _stream_text([whole])[2]]
    assert chunks[-1]["usageMetadata"] == whole["usageMetadata"]
    if not include:
        assert not _stream_text(chunks)[1]


blocks_out = st.lists(
    st.one_of(
        st.builds(c.TextBlock, st.text(alphabet="ab \u00e9", min_size=1, max_size=6)),
        st.builds(c.ThinkingBlock, st.text(alphabet="xy ", min_size=1, max_size=6),
                  tagged_signatures),
        st.builds(lambda i, name, args, sig: c.ToolUseBlock(f"call_{i}", name, args,
                                                             signature=sig),
                  st.integers(0, 3), st.sampled_from(["f", "get_weather"]),
                  st.dictionaries(st.sampled_from("abc"), st.integers(), max_size=2),
                  st.none() | tagged_signatures),
    ),
    min_size=1, max_size=6,
).filter(lambda blocks: len({b.id for b in blocks if isinstance(b, c.ToolUseBlock)}) == len(
    [b for b in blocks if isinstance(b, c.ToolUseBlock)]))


@settings(max_examples=150, deadline=None)
@given(blocks_out)
def test_what_the_client_is_given_comes_back_the_same(blocks: list[Any]) -> None:
    """A model turn rendered to the client and sent back in its history parses to the same
    blocks: thoughts with their signatures, text, calls with their ids and signatures."""
    # consecutive text blocks are separate parts and stay separate blocks
    response = c.ChatResponse("r", "m", tuple(blocks), "end_turn", c.Usage())
    body = wire.render_response(response, response_id="r", model_version="m",
                                include_thoughts=True)
    content = body["candidates"][0]["content"]
    answers = [{"functionResponse": {"id": b.id, "name": b.name, "response": {"output": "ok"}}}
               for b in blocks if isinstance(b, c.ToolUseBlock)]
    history = {"contents": [user({"text": "go"}), content, user(*answers, {"text": "and?"})]}
    chat = parse(history).chat
    back = chat.messages[1].content
    expected: list[Any] = []
    for block in blocks:  # consecutive thoughts with signatures stay apart
        expected.append(block)
    assert list(back) == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["contents", "parts", "role", "text", "functionCall", "name", "args",
                         "functionResponse", "response", "id", "thought", "thoughtSignature",
                         "inlineData", "data", "mimeType", "tools", "functionDeclarations",
                         "parameters", "generationConfig", "thinkingConfig", "toolConfig",
                         "systemInstruction", "safetySettings", "model", "user"]),
        inner, max_size=4),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_parsing_is_total(body: Any) -> None:
    """Any JSON is a request or a clear 400, never another exception."""
    try:
        parse(body)
    except errors.InvalidRequest as err:
        assert err.message
