"""What channel removal (passes/remove_channels.py) did, as the facts other passes and the CLI read."""
