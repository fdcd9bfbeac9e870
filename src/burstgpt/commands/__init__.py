"""CLI subcommands: glue between the parts. Each module defines `register(subparsers)`."""
