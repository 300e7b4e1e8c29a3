"""The training engine used by recovery passes: configuration, data, losses, schedule, checkpoints and the loop itself."""
