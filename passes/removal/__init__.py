"""Channel removal's configuration and what it did (passes/remove_channels.py): the options the CLI's flags are
made of, and the facts other passes and the CLI read."""
