"""Print the configuration reference (the README's table), or rewrite it in place with --write."""

from __future__ import annotations

import sys
from pathlib import Path

from realtimed.config import reference_rows

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def table() -> str:
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, default, help_text in reference_rows():
        shown = default.replace("|", "\\|")
        lines.append(f"| `{key}` | `{shown}` | {help_text.replace('|', '/')} |")
    return "\n".join(lines)


def rewrite(text: str) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table()}\n{END}{tail}"


if __name__ == "__main__":
    if "--write" in sys.argv:
        README.write_text(rewrite(README.read_text()))
    else:
        print(table())
