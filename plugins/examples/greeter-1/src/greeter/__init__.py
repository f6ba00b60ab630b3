"""Version 1.0 of the side-by-side example."""

import os


def greet(name: str) -> dict[str, str]:
    return {"version": "1.0", "greeting": f"{os.environ['GREETING']}, {name}"}
