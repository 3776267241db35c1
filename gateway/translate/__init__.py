"""Pure translation between client dialects, the canonical model and Cloud Code."""
