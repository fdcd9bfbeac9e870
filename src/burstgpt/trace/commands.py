"""CLI subcommands of this part (placeholder until the part is built)."""


def register(subparsers) -> None:  # noqa: ARG001
    return None
