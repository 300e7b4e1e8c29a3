"""Per-layer latency tables: each prunable layer timed at the widths pruning can give it, cached on disk."""
