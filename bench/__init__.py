"""Load benchmark for the gateway: `python -m bench`.

The harness starts the Cloud Code emulator and the gateway each in its own process on
loopback, drives them with a trio + httpx load generator, and measures what the gateway adds
over a baseline of the same client talking to the emulator directly: latency to first and last
byte, requests per second, SSE chunks relayed per CPU-second, memory per open stream and how
fast a client disconnect reaches the upstream. Results go to `bench/results/` as JSON and
Markdown; see bench/README.md for what each figure means.
"""
