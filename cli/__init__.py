"""The `hoe` command line (the top layer): the entry point, `hoe assemble`/`convert-gguf`, `hoe demo`, `hoe train`.

Every other package contributes its own subcommands through its `cli` module (`register(subparsers)`);
this package imports them by name, so nothing below it imports the command line.
"""
