"""Measuring latency: timing loops and statistics, GPU timing, latency pairs by backend, speed-ups."""
