"""CLI subcommand (placeholder until built)."""


def register(subparsers) -> None:  # noqa: ARG001
    return None
