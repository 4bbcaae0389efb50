"""Print the shape of the realtimed package: largest files, longest functions, upward imports.

Usage: ``python scripts/layers.py [ROOT]`` where ROOT is a checkout (default: this one).
It reads the files as text (``ast``), imports nothing, and always exits 0.

The layers, lowest first. A module may import from its own layer and any layer below;
an import of a higher layer "points up" and is listed. Imports under
``if TYPE_CHECKING:`` are listed apart: they shape no runtime dependency, but they are
still a reader's dependency.

0. base          errors, config, clock, protocol (sans-IO wire), metrics, logs, auth,
                 deadlines, live, sdnotify: what every layer may use.
1. store         store/: persistence, one Protocol per domain, sqlite/ and postgres/.
2. delivery      delivery/ (frames encoded once, rooms and their history, the router)
                 and broker/ (the Broker Protocol between nodes, the in-process and the
                 Redis broker, the Redis client that every Redis backend shares).
3. api           api/: how a capability describes what it offers: the op registry
                 (ops.py), per-user op budgets (limits.py), typed routes (routes.py,
                 validate.py), and services.py (the typed bag of services a route
                 reaches: type-only imports). No transport, no capability.
4. capabilities  chat, presence, typing_state, room_ops, notify/, push/, jobs/: each
                 exposes routes() and ops(); a Redis backend sits beside its Protocol.
5. transports    gateway/ (the session lifecycle, WebSocket, SSE), http/ (listener,
                 guard, app, the REST doors), socketio/ (the Socket.IO door).
6. composition   daemon, backends (the one place in-process or Redis is chosen),
                 cli (and jobs/cli), workers, install, listen, __main__.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "realtimed",
            "realtimed.errors",
            "realtimed.config",
            "realtimed.clock",
            "realtimed.protocol",
            "realtimed.protocol_docs",
            "realtimed.metrics",
            "realtimed.logs",
            "realtimed.auth",
            "realtimed.deadlines",
            "realtimed.live",
            "realtimed.sdnotify",
        ),
    ),
    ("store", ("realtimed.store",)),
    ("delivery", ("realtimed.delivery", "realtimed.broker", "realtimed.router")),
    ("api", ("realtimed.api", "realtimed.services")),
    (
        "capabilities",
        (
            "realtimed.chat",
            "realtimed.presence",
            "realtimed.typing_state",
            "realtimed.redis_presence",
            "realtimed.redis_typing",
            "realtimed.room_ops",
            "realtimed.notify",
            "realtimed.push",
            "realtimed.jobs",
        ),
    ),
    ("transports", ("realtimed.gateway", "realtimed.http", "realtimed.socketio")),
    (
        "composition",
        (
            "realtimed.daemon",
            "realtimed.backends",
            "realtimed.cli",
            "realtimed.jobs.cli",
            "realtimed.workers",
            "realtimed.install",
            "realtimed.listen",
            "realtimed.__main__",
        ),
    ),
]


def layer_of(module: str) -> int:
    """The layer of a module: the longest declared prefix wins (``realtimed`` alone is base)."""
    best, best_len = 0, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "realtimed" and module.startswith(prefix + "."))
            if matches and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                inside.update(id(n) for n in ast.walk(child))
    return inside


def imports(root: Path, path: Path, tree: ast.AST) -> list[tuple[str, int, bool]]:
    """(imported module, line, type-only) for every realtimed import in a file."""
    type_only = _type_checking_nodes(tree)
    found: list[tuple[str, int, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = []
            for alias in node.names:
                sub = root / Path(*node.module.split("."), alias.name)
                if sub.with_suffix(".py").exists() or (sub / "__init__.py").exists():
                    names.append(f"{node.module}.{alias.name}")
                else:
                    names.append(node.module)
        else:
            continue
        for name in dict.fromkeys(names):
            if name == "realtimed" or name.startswith("realtimed."):
                found.append((name, node.lineno, id(node) in type_only))
    return found


def main(root: Path) -> None:
    files = sorted((root / "realtimed").rglob("*.py"))
    sizes = sorted(((len(f.read_text().splitlines()), f) for f in files), key=lambda x: (-x[0], str(x[1])))
    print("## The 10 largest files (lines)")
    for lines, f in sizes[:10]:
        print(f"{lines:6d}  {f.relative_to(root)}")

    functions: list[tuple[int, str]] = []
    upward: list[str] = []
    type_only_up: list[str] = []
    trees = {f: ast.parse(f.read_text(), filename=str(f)) for f in files}
    for f, tree in trees.items():
        rel = f.relative_to(root)

        def visit(node: ast.AST, prefix: str, rel: Path = rel) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    name = f"{prefix}{child.name}"
                    length = (child.end_lineno or child.lineno) - child.lineno + 1
                    functions.append((length, f"{rel}:{child.lineno} {name}"))
                    visit(child, name + ".")
                elif isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}{child.name}.")
                else:
                    visit(child, prefix)

        visit(tree, "")
        here = module_name(root, f)
        mine = layer_of(here)
        for target, line, type_only in imports(root, f, tree):
            theirs = layer_of(target)
            if theirs > mine:
                row = (
                    f"{rel}:{line}  {here} ({LAYERS[mine][0]}) -> {target} ({LAYERS[theirs][0]})"
                )
                (type_only_up if type_only else upward).append(row)

    print("\n## The 10 longest functions (lines)")
    for length, where in sorted(functions, key=lambda x: (-x[0], x[1]))[:10]:
        print(f"{length:6d}  {where}")

    print(f"\n## Imports that point up: {len(upward)}")
    for row in sorted(upward):
        print("  " + row)
    print(f"\n## Type-only imports that point up (under TYPE_CHECKING): {len(type_only_up)}")
    for row in sorted(type_only_up):
        print("  " + row)


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
