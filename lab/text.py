"""Words the pages share."""


def plural(n: int, word: str) -> str:
    """'1 step', '5 steps', '1,200 images'."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")
