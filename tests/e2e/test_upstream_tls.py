"""The upstream over TLS, with a network's round trip: the emulator serves HTTPS with a
certificate made at run time (trustme), the gateway trusts its CA through
`upstream.ca_file`, and every request pays a round trip (a new connection two more, for
its TCP and TLS handshakes), so a handshake costs what it costs on a real network."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme

from gateway.config import ConfigError, load_config
from tests.support import RunningEmulator, RunningGateway

RTT = 0.02
BODY = {"model": "gemini-3-flash", "messages": [{"role": "user", "content": "over TLS"}]}


@pytest.fixture
def ca(tmp_path: Path) -> tuple[Path, tuple[str, str]]:
    """A CA file to trust, and the server's (certificate, key) files it signed."""
    authority = trustme.CA()
    cert = authority.issue_cert("127.0.0.1", "localhost")
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    chain, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.private_key_pem.write_to_path(str(key))
    with chain.open("wb") as out:
        for blob in cert.cert_chain_pems:
            out.write(blob.bytes())
    return ca_file, (str(chain), str(key))


@pytest.fixture
async def emulator(nursery: trio.Nursery, ca: tuple[Path, tuple[str, str]]) -> RunningEmulator:
    """This module's emulator: HTTPS, with a round trip (overrides the plain one)."""
    from gateway.emulator import EmulatorState, serve_emulator

    state = EmulatorState.with_demo_accounts()
    state.rtt_seconds = RTT
    url = await nursery.start(partial(serve_emulator, state, host="127.0.0.1", tls=ca[1]))
    assert url.startswith("https://")
    return RunningEmulator(url, state)


@pytest.fixture
async def oauth(nursery: trio.Nursery, emulator: RunningEmulator) -> dict[str, str]:
    """Google's OAuth endpoints (a public CA's, which upstream.ca_file is not for) served
    in plain HTTP from the same emulator state."""
    from gateway.emulator import serve_emulator

    url = await nursery.start(partial(serve_emulator, emulator.state, host="127.0.0.1"))
    return {"token_url": f"{url}/token", "auth_url": f"{url}/o/oauth2/v2/auth",
            "userinfo_url": f"{url}/oauth2/v1/userinfo"}


async def test_the_gateway_speaks_tls_to_the_upstream_and_keeps_its_connection(
    start_gateway: Callable[..., Any], ca: tuple[Path, tuple[str, str]], oauth: dict[str, str],
) -> None:
    gateway: RunningGateway = await start_gateway(upstream={"ca_file": str(ca[0])},
                                                  oauth=oauth)
    state = gateway.emulator.state
    async with httpx.AsyncClient(timeout=30) as http:
        first = await http.post(gateway.url + "/v1/chat/completions", json=BODY)
        assert first.status_code == 200, first.text
        opened = state.connections_opened
        for i in range(20):
            answer = await http.post(gateway.url + "/v1/chat/completions",
                                     json={**BODY, "stream": i % 2 == 0})
            assert answer.status_code == 200
    # steady state: no handshake on the request path (the supervisor's probes may share or
    # add a connection, never one per request)
    assert state.connections_opened - opened <= 1


async def test_an_upstream_certificate_nobody_trusts_is_a_clear_error(
    start_gateway: Callable[..., Any], oauth: dict[str, str],
) -> None:
    gateway: RunningGateway = await start_gateway(upstream={"max_retries": 0}, oauth=oauth)
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.post(gateway.url + "/v1/chat/completions", json=BODY)
    assert answer.status_code >= 500
    assert "Traceback" not in answer.text
    assert "certificate is not trusted" in answer.json()["error"]["message"]


def test_a_ca_file_that_is_not_one_is_a_config_error(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"upstream\.ca_file"):
        load_config(environ={"GATEWAY_UPSTREAM_CA_FILE": str(bogus)})
    with pytest.raises(ConfigError, match=r"upstream\.ca_file"):
        load_config(environ={"GATEWAY_UPSTREAM_CA_FILE": str(tmp_path / "missing.pem")})


@pytest.mark.parametrize("http2", [True, False], ids=["h2", "h1"])
async def test_a_client_gone_mid_stream_closes_its_upstream_stream_at_once(
    start_gateway: Callable[..., Any], ca: tuple[Path, tuple[str, str]], oauth: dict[str, str],
    http2: bool,
) -> None:
    """Over HTTP/2 the stream is reset and the connection kept for the next request; over
    HTTP/1.1 (upstream.http2 off) the connection is closed. Either way the emulator sees the
    stream end as the client leaves, and the gateway holds no upstream stream open."""
    gateway: RunningGateway = await start_gateway(
        upstream={"ca_file": str(ca[0]), "http2": http2}, oauth=oauth)
    state = gateway.emulator.state
    state.rtt_seconds = 0.0
    async with httpx.AsyncClient(timeout=30) as http:  # a warm connection first
        assert (await http.post(gateway.url + "/v1/chat/completions",
                                json=BODY)).status_code == 200
    state.configure({"chunk_delay_seconds": 0.2, "text_chunks": 100})
    for _ in range(3):
        async with httpx.AsyncClient(timeout=30) as http, http.stream(
                "POST", gateway.url + "/v1/chat/completions",
                json={**BODY, "stream": True}) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    break  # the first event: the client goes
        with trio.fail_after(2):
            while state.open_streams:
                await trio.sleep(0.005)
    transport = gateway.services.client.transport
    assert transport.stats()["h2_streams"] == 0
    if http2:
        assert transport.stats()["h2_connections"] == 1
