"""Print docs/asyncapi.yaml as realtimed/protocol.py describes the wire, or rewrite the file with --write."""

from __future__ import annotations

import sys
from pathlib import Path

from realtimed.protocol_docs import asyncapi_yaml

TARGET = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"


if __name__ == "__main__":
    if "--write" in sys.argv:
        TARGET.parent.mkdir(exist_ok=True)
        TARGET.write_text(asyncapi_yaml(), encoding="utf-8")
    else:
        sys.stdout.write(asyncapi_yaml())
