"""State a gateway keeps beyond one request, behind interfaces another backend can serve."""
