"""CLI sub-commands: each module has NAME, HELP, add_arguments(parser) and run(args) -> exit code."""
