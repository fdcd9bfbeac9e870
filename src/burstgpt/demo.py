"""`burstgpt demo`: the whole pipeline end to end on built-in defaults, offline."""


def register(subparsers) -> None:  # noqa: ARG001
    return None
