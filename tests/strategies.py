"""Hypothesis strategies shared by the translator tests."""

from __future__ import annotations

import json

from hypothesis import strategies as st

from gateway.translate import canonical as c

text_pieces = st.lists(st.text(alphabet="ab \n\u00e9\U0001f600", max_size=5), max_size=4)
arg_values = st.dictionaries(
    st.text(alphabet="xyz", min_size=1, max_size=3),
    st.integers() | st.text(max_size=4) | st.lists(st.booleans(), max_size=2),
    max_size=3,
)
usages = st.builds(
    c.Usage, st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 99)
)
STOP_REASONS: list[c.StopReason] = [
    "end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"
]  # fmt: skip


@st.composite
def event_streams(draw: st.DrawFn) -> list[c.StreamEvent]:
    """Event sequences with the decoder's invariants: blocks in index order, one at a time."""
    events: list[c.StreamEvent] = []
    kinds = draw(st.lists(st.sampled_from(["text", "thinking", "redacted", "tool"]), max_size=8))
    for index, kind in enumerate(kinds):
        if kind == "text":
            events.append(c.BlockStart(index, "text"))
            events += [c.TextDelta(index, t) for t in draw(text_pieces)]
        elif kind == "thinking":
            events.append(c.BlockStart(index, "thinking"))
            events += [c.ThinkingDelta(index, t) for t in draw(text_pieces)]
            if draw(st.booleans()):
                events.append(c.SignatureDelta(index, "sig"))
        elif kind == "redacted":
            events.append(c.BlockStart(index, "redacted_thinking", data="opaque"))
        else:
            tool_id = f"call_{index}"
            name = draw(st.sampled_from(["f", "get_weather"]))
            events.append(c.BlockStart(index, "tool_use", tool_id=tool_id, tool_name=name))
            encoded = json.dumps(draw(arg_values))
            cuts = sorted(draw(st.sets(st.integers(0, len(encoded)), max_size=4)))
            bounds = zip([0, *cuts], [*cuts, len(encoded)], strict=True)
            events += [c.ToolInputDelta(index, encoded[a:b]) for a, b in bounds]
        events.append(c.BlockStop(index))
        if kind == "tool" and draw(st.booleans()):
            events.append(c.ToolSignature(f"call_{index}", "csig"))
        if draw(st.booleans()):
            events.append(c.UsageUpdate(draw(usages)))
    events.append(c.MessageEnd(draw(st.sampled_from(STOP_REASONS)), draw(usages)))
    return events
