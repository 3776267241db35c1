"""The Cloud Code upstream: HTTP client, SSE parsing, rate-limit parsing, dispatch."""
