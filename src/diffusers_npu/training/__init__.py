"""Training: the shared loop, argument groups, data, and small per-model recipes."""
