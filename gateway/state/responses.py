"""Stored Responses (`store: true`): what `previous_response_id`, `GET` and `DELETE
/v1/responses/{id}` and the input-items listing read.

Each stored response keeps its own input items, its output items (thoughts sealed) and the
id of the response it continued, so a conversation is a chain and every turn costs only
what it added. `history` walks the chain back to its start. The in-memory store is bounded
by count, bytes and age, evicting the least recently used first; walking a chain touches
every response on it, so a conversation in use keeps its beginning. Nothing survives a
restart. The interface is async so a shared backend (`gateway.state.shared`, Redis) can stand
in for it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import attrs

__all__ = ["BrokenChain", "MemoryResponseStore", "ResponseStore", "StoredResponse"]

JSONDict = dict[str, Any]
_MAX_CHAIN = 10_000


@attrs.frozen(slots=True)
class StoredResponse:
    id: str
    created_at: float
    response: JSONDict  # the response object as the client got it
    input_items: tuple[JSONDict, ...]
    output_items: tuple[JSONDict, ...]  # as kept: thoughts sealed
    previous_id: str | None
    size: int  # bytes it holds, roughly (its JSON)
    owner: str = ""  # whose it is (a digest of the API key that made it; "" without keys)


class BrokenChain(Exception):
    """A response on the chain is gone (deleted, or evicted)."""

    def __init__(self, missing: str) -> None:
        super().__init__(missing)
        self.missing = missing


class ResponseStore(Protocol):
    async def put(self, stored: StoredResponse) -> None: ...
    async def get(self, response_id: str) -> StoredResponse | None: ...
    async def delete(self, response_id: str) -> bool: ...
    async def history(self, response_id: str) -> list[JSONDict]: ...


class MemoryResponseStore:
    def __init__(
        self,
        *,
        max_responses: int,
        max_bytes: int,
        ttl_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self.max_responses = max_responses
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def put(self, stored: StoredResponse) -> None:
        if stored.size > self.max_bytes:
            return  # bigger than the whole store: kept nowhere rather than evicting all
        self._drop(stored.id)
        self._entries[stored.id] = stored
        self.bytes += stored.size
        while self._entries and (
            len(self._entries) > self.max_responses or self.bytes > self.max_bytes
        ):
            self._drop(next(iter(self._entries)))

    async def get(self, response_id: str) -> StoredResponse | None:
        stored = self._entries.get(response_id)
        if stored is None:
            return None
        if self._clock() - stored.created_at > self.ttl_seconds:
            self._drop(response_id)
            return None
        self._entries.move_to_end(response_id)
        return stored

    async def delete(self, response_id: str) -> bool:
        return self._drop(response_id)

    async def history(
        self,
        response_id: str,
        *,
        get: Callable[[str], Awaitable[StoredResponse | None]] | None = None,
    ) -> list[JSONDict]:
        """Every item of the chain ending at `response_id`, oldest first (inputs, then
        outputs, of each response); raises BrokenChain naming the first missing one.
        `get` reads each response (a shared store's, which falls back on this one)."""
        read = self.get if get is None else get
        chain: list[StoredResponse] = []
        seen: set[str] = set()
        current: str | None = response_id
        while current is not None and current not in seen and len(chain) < _MAX_CHAIN:
            seen.add(current)
            stored = await read(current)
            if stored is None:
                raise BrokenChain(current)
            chain.append(stored)
            current = stored.previous_id
        items: list[JSONDict] = []
        for stored in reversed(chain):
            items.extend(stored.input_items)
            items.extend(stored.output_items)
        return items

    def forget(self, response_id: str) -> bool:
        """Drop a response (deleted on another replica): `delete` without the await."""
        return self._drop(response_id)

    def _drop(self, response_id: str) -> bool:
        stored = self._entries.pop(response_id, None)
        if stored is None:
            return False
        self.bytes -= stored.size
        return True


def items_size(*groups: Sequence[JSONDict]) -> int:
    """A cheap upper-bound-ish size of items: their string content, plus a little each."""
    total = 0
    stack: list[Any] = [item for group in groups for item in group]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            total += len(value) + 2
        elif isinstance(value, dict):
            total += 2 + 4 * len(value)
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            total += 2 + len(value)
            stack.extend(value)
        else:
            total += 8
    return total
