"""Module-structure metrics of augment and downstream (stdlib only): modules, imports between project modules
(top level or inside functions), import cycles, imports that point up a layer and imports between two stage
folders, by the layering of docs/architecture.md (LAYERS below). tests/test_structure.py holds the house to 0 of each.

    python research/import_metrics.py . [--json OUT]
"""

import ast
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOTS = ("augment", "downstream")
EXCLUDE_DIRS = ("augment/toy/weights",)

# Layer map: dotted-name prefix -> layer (lowest first). Longest prefix wins;
# a prefix matches a module equal to it or beneath it (dot boundary).
LAYERS = {
    "augment.errors": 0,
    "augment.devices": 0,
    "augment.version": 0,
    "augment.run": 0,
    "augment.labels": 1,
    "augment.config": 1,
    "augment.settings": 1,
    "augment.models": 2,
    "augment.data": 2,
    "augment.toy": 2,
    "augment.testing": 2,
    "augment.learn": 3,
    "augment.adapt": 3,
    "augment.generate": 3,
    "augment.metrics": 3,
    "downstream.classifier": 3,
    "downstream.synthetic": 3,
    "augment.jobs": 4,
    "downstream.learned": 4,
    "downstream.grid": 4,
    "downstream.api": 4,
    "augment.commands": 5,
    "augment.cli": 5,
    "downstream.cli": 5,
}
# Exact-name entries (not prefixes): the package facades.
EXACT_LAYERS = {"augment": 6, "downstream": 6}

# Stage folders: prefix -> stage name (same rules as LAYERS).
STAGES = {
    "augment.learn": "learn",
    "augment.adapt": "adapt",
    "augment.generate": "generate",
    "augment.metrics": "metrics",
    "downstream.classifier": "downstream",
    "downstream.synthetic": "downstream",
}


def lookup(name, table, exact=None):
    if exact and name in exact:
        return exact[name]
    best = None  # longest matching prefix
    for prefix in table:
        if name == prefix or name.startswith(prefix + "."):
            if best is None or len(prefix) > len(best):
                best = prefix
    return table[best] if best is not None else None


def discover(root):
    mods = {}
    for top in ROOTS:
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root)
            if "__pycache__" in rel.parts:
                continue
            if any(rel.as_posix().startswith(d + "/") for d in EXCLUDE_DIRS):
                continue
            parts = list(rel.with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            mods[".".join(parts)] = {"path": rel.as_posix(), "is_pkg": is_pkg}
    return mods


def is_type_checking(test):
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def walk_imports(node, in_func=False):
    """Yield (import_node, in_function); skip `if TYPE_CHECKING:` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_func
        elif isinstance(child, ast.If) and is_type_checking(child.test):
            yield from walk_imports(ast.Module(body=child.orelse, type_ignores=[]), in_func)
        else:
            func = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from walk_imports(child, in_func or func)


def resolve(name, mods):
    """Longest existing project module that is `name` or a parent of it."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in mods:
            return cand
        parts.pop()
    return None


def targets(node, importer, mods):
    if isinstance(node, ast.Import):
        return [t for a in node.names if a.name.split(".")[0] in ROOTS for t in [resolve(a.name, mods)] if t]
    base = node.module or ""
    if node.level:  # relative import
        pkg = importer.split(".") if mods[importer]["is_pkg"] else importer.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([base] if base else []))
    if base.split(".")[0] not in ROOTS:
        return []
    out = []
    for a in node.names:
        sub = f"{base}.{a.name}"
        t = sub if sub in mods else resolve(base, mods)
        if t:
            out.append(t)
    return out


def cycles(edges):
    """The import cycles: strongly connected components of more than one module (Tarjan), each sorted."""
    graph = defaultdict(list)
    for a, b in edges:
        graph[a].append(b)
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(list(graph)):
        if v not in index:
            visit(v)
    return sorted(out)


def analyse(root):
    mods = discover(root)
    edges = defaultdict(lambda: {"top": 0, "func": 0})
    func_stmts = 0
    for mod, info in mods.items():
        src = (root / info["path"]).read_text(encoding="utf-8")
        info["lines"] = len(src.splitlines())
        tree = ast.parse(src, filename=info["path"])
        for node, in_func in walk_imports(tree):
            ts = [t for t in targets(node, mod, mods) if t != mod]
            if in_func and ts:
                func_stmts += 1
            for t in set(ts):
                edges[(mod, t)]["func" if in_func else "top"] += 1
    top = sorted(e for e, c in edges.items() if c["top"])
    func_only = sorted(e for e, c in edges.items() if not c["top"])
    up, unmapped = [], set()
    for a, b in sorted(edges):
        la, lb = lookup(a, LAYERS, EXACT_LAYERS), lookup(b, LAYERS, EXACT_LAYERS)
        unmapped.update(m for m, layer in ((a, la), (b, lb)) if layer is None)
        if la is not None and lb is not None and la < lb:
            up.append({"importer": a, "imported": b, "layers": [la, lb], "in_function_only": not edges[(a, b)]["top"]})
    cross = []
    for a, b in sorted(edges):
        sa, sb = lookup(a, STAGES), lookup(b, STAGES)
        if sa and sb and sa != sb:
            cross.append(
                {"importer": a, "imported": b, "stages": [sa, sb], "in_function_only": not edges[(a, b)]["top"]}
            )
    largest = sorted(mods.items(), key=lambda kv: -kv[1]["lines"])[:10]
    return {
        "modules": len(mods),
        "packages": sum(1 for i in mods.values() if i["is_pkg"]),
        "package_names": sorted(m for m, i in mods.items() if i["is_pkg"]),
        "total_lines": sum(i["lines"] for i in mods.values()),
        "edges_total": len(edges),
        "edges_top_level": len(top),
        "edges_in_function_only": len(func_only),
        "edges_in_function_any": sum(1 for c in edges.values() if c["func"]),
        "in_function_import_statements": func_stmts,
        "in_function_only_edge_list": [f"{a} -> {b}" for a, b in func_only],
        "up_layer_edges": up,
        "import_cycles": cycles(edges),
        "cross_stage_edges": cross,
        "unmapped_modules": sorted(unmapped),
        "largest_modules": [{"module": m, "path": i["path"], "lines": i["lines"]} for m, i in largest],
    }


def report(r):
    p = print
    p(f"modules:  {r['modules']}  ({r['total_lines']} lines)")
    p(f"packages: {r['packages']}  ({', '.join(r['package_names'])})")
    p(f"edges (distinct importer->imported): {r['edges_total']}")
    p(f"  top-level edges (>=1 module-level import): {r['edges_top_level']}")
    p(f"  in-function-only edges:                     {r['edges_in_function_only']}")
    p(f"  edges with >=1 in-function import:          {r['edges_in_function_any']}")
    p(f"in-function import statements of project modules: {r['in_function_import_statements']}")
    p(f"up-layer edges: {len(r['up_layer_edges'])}")
    for e in r["up_layer_edges"]:
        tag = "  (in-function)" if e["in_function_only"] else ""
        p(f"    {e['importer']} -> {e['imported']}  L{e['layers'][0]} -> L{e['layers'][1]}{tag}")
    p(f"import cycles (any import, top level or in a function): {len(r['import_cycles'])}")
    for c in r["import_cycles"]:
        p(f"    {' <-> '.join(c)}")
    p(f"cross-stage edges: {len(r['cross_stage_edges'])}")
    for e in r["cross_stage_edges"]:
        tag = "  (in-function)" if e["in_function_only"] else ""
        p(f"    {e['importer']} -> {e['imported']}  [{e['stages'][0]} -> {e['stages'][1]}]{tag}")
    if r["unmapped_modules"]:
        p(f"modules with no layer: {', '.join(r['unmapped_modules'])}")
    p("largest modules (lines):")
    for m in r["largest_modules"]:
        p(f"    {m['lines']:5d}  {m['path']}")


def main(argv):
    args, out = list(argv), None
    if "--json" in args:
        i = args.index("--json")
        out = args.pop(i + 1) if i + 1 < len(args) else sys.exit("--json needs OUT")
        del args[i]
    if len(args) != 1:
        sys.exit(__doc__)
    result = analyse(Path(args[0]).resolve())
    report(result)
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"json written: {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
