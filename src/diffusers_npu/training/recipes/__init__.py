"""Per-model training recipes: hooks over the shared loop."""
