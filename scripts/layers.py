"""Print the shape of the realtimed package: largest files, longest functions, upward imports.

Usage: ``python scripts/layers.py [ROOT]`` where ROOT is a checkout (default: this one).
It reads the files as text (``ast``), imports nothing, and always exits 0.

It also lists the cycles between the parts the layers name (``realtimed.broker``,
``realtimed.chat``, ``realtimed.jobs.cli``, ...: the longest declared prefix of a
module) made by runtime imports, wherever they sit in the layers.

The layers, lowest first. A module may import from its own layer and any layer below;
an import of a higher layer "points up" and is listed. Imports under
``if TYPE_CHECKING:`` are listed apart: they shape no runtime dependency, but they are
still a reader's dependency.

0. base          errors, config, clock, protocol (sans-IO wire), frames (encoded
                 once), metrics, logs, auth, deadlines, live, sdnotify, and the parsers
                 the configuration checks with (addresses, postgres_dsn, redis_url,
                 templates), outbound/ (the signed, address-checked HTTP client of
                 webhooks and HTTP jobs), outcomes (the delivery log's codes): what every layer may use.
1. store         store/: persistence, one Protocol per domain, sqlite/ and postgres/.
2. broker        broker/: the Broker Protocol between nodes, the in-process and the
                 Redis broker, the Redis client that every Redis backend shares.
3. delivery      delivery/: rooms and their history, the router (the broker's user).
4. api           api/: how a capability describes what it offers: the op registry
                 (ops.py), per-user op budgets (limits.py), typed routes (routes.py,
                 validate.py), and services.py (the typed bag of services a route
                 reaches: type-only imports). No transport, no capability.
5. capabilities  chat, presence, typing_state, room_ops, notify/, push/, email/, jobs/, webhooks/, feeds/: each
                 exposes routes() and ops(); a Redis backend sits beside its Protocol.
6. transports    gateway/ (the session lifecycle, WebSocket, SSE), http/ (listener,
                 guard, app, the REST doors), socketio/ (the Socket.IO door).
7. composition   daemon, backends (the one place in-process or Redis is chosen),
                 cli (and jobs/cli), jobs/kinds (every job kind the daemon registers,
                 from each capability), config_checks (the configuration checks that
                 need the capabilities), workers, install, listen, __main__.
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
            "realtimed.addresses",
            "realtimed.postgres_dsn",
            "realtimed.redis_url",
            "realtimed.templates",
            "realtimed.frames",
            "realtimed.outbound",
            "realtimed.outcomes",
        ),
    ),
    ("store", ("realtimed.store",)),
    ("broker", ("realtimed.broker",)),
    # realtimed.router: where the router lived before delivery/, for reports on older trees.
    ("delivery", ("realtimed.delivery", "realtimed.router")),
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
            "realtimed.webhooks",
            "realtimed.email",
            "realtimed.feeds",
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
            "realtimed.jobs.kinds",
            "realtimed.config_checks",
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


def part_of(module: str) -> str:
    """The longest declared prefix of a module (``realtimed.broker.redis`` -> ``realtimed.broker``)."""
    best = ".".join(module.split(".")[:2])
    for _, prefixes in LAYERS:
        for prefix in prefixes:
            if prefix != "realtimed" and (module == prefix or module.startswith(prefix + ".")) and len(prefix) >= len(best):
                best = prefix
    return best


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one part (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return sorted(found)


def main(root: Path) -> None:
    files = sorted((root / "realtimed").rglob("*.py"))
    sizes = sorted(((len(f.read_text().splitlines()), f) for f in files), key=lambda x: (-x[0], str(x[1])))
    print("## The 10 largest files (lines)")
    for lines, f in sizes[:10]:
        print(f"{lines:6d}  {f.relative_to(root)}")

    functions: list[tuple[int, str]] = []
    upward: list[str] = []
    type_only_up: list[str] = []
    part_edges: dict[str, set[str]] = {}
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
            if not type_only and part_of(target) != part_of(here):
                part_edges.setdefault(part_of(here), set()).add(part_of(target))
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
    found = cycles(part_edges)
    print(f"\n## Cycles between the parts (runtime imports): {len(found)}")
    for group in found:
        print("  " + " <-> ".join(group))


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
