"""HTTP routes: OpenAI, Anthropic and admin endpoints."""
