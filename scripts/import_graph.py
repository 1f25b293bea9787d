#!/usr/bin/env python3
"""The crate's import graph, file by file: which module imports which, the import circles
(strongly connected components) and the arrows that run back up (imports that point against
the layering; a minimal-ish feedback arc set of each circle, found greedily).

    python3 scripts/import_graph.py            # summary: arrows, back-up arrows, circles
    python3 scripts/import_graph.py --arrows   # every arrow, and which run back up
    python3 scripts/import_graph.py --check    # exit 1 unless the house keeps its rules

An arrow A -> B means a file A names an item of module B (`use crate::b::..`,
`crate::b::Name` in code, `super::..`). Only `src/` is read; tests, benches and fuzz targets
are leaves and not counted. The rules `--check` holds (issue 12): at most 10 back-up
arrows, no circle of more than 6 files, and no circle through config/, telemetry.rs or
routes/.
"""

import os
import re
import sys
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
MAX_BACK_ARROWS = 10
MAX_CIRCLE = 6
NO_CIRCLE_THROUGH = ("config/", "telemetry.rs", "routes/")


def module_files():
    """Module path (tuple) -> file path relative to src/."""
    modules = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(folder, name), ROOT).replace(os.sep, "/")
            parts = rel[:-3].split("/")
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            modules[tuple(parts)] = rel
    return modules


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def strip_tests(text):
    """Drops `#[cfg(test)] mod tests { ... }` blocks: test code may import anything."""
    out, i = [], 0
    for match in re.finditer(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*mod\s+\w+\s*\{", text):
        if match.start() < i:
            continue
        out.append(text[i : match.start()])
        depth, j = 1, match.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree = tree.strip()
    brace = tree.find("{")
    if brace < 0:
        return [tree.split(" as ")[0].strip()]
    prefix = tree[:brace]
    inner = tree[brace + 1 : tree.rfind("}")]
    parts, depth, start = [], 0, 0
    for k, ch in enumerate(inner):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[start:k])
            start = k + 1
    parts.append(inner[start:])
    paths = []
    for part in parts:
        if part.strip():
            for sub in expand_use(part):
                paths.append((prefix + sub).replace("::self", ""))
    return paths


def resolve(path, current, modules):
    """The file a path points into: the longest module prefix that is a file."""
    segments = [s for s in path.split("::") if s]
    if not segments:
        return None
    if segments[0] == "crate":
        base, rest = [], segments[1:]
    elif segments[0] in ("super", "self"):
        base = list(current)
        rest = segments
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super":
                base = base[:-1]
            rest = rest[1:]
    else:
        return None
    full = base + rest
    for end in range(len(full), -1, -1):
        target = modules.get(tuple(full[:end]))
        if target is not None:
            return target
    return None


def edges(modules):
    graph = defaultdict(set)
    for module, rel in modules.items():
        text = strip_tests(strip_comments(open(os.path.join(ROOT, rel)).read()))
        # A file that is a module folder's mod.rs is its own module; others' `super` is
        # their folder.
        current = list(module)
        paths = []
        for use in re.finditer(r"\buse\s+([^;]+);", text):
            paths.extend(expand_use(use.group(1)))
        paths.extend(re.findall(r"\b((?:crate|super)(?:::\w+)+)", text))
        for path in paths:
            target = resolve(path, current, modules)
            if target and target != rel and target not in ("lib.rs", "main.rs"):
                graph[rel].add(target)
        graph.setdefault(rel, set())
    return graph


def circles(graph):
    """Tarjan's strongly connected components of more than one file."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def back_arrows(graph, component):
    """Arrows inside a circle that run against a greedy order (Eades-Lin-Smyth)."""
    nodes = set(component)
    sub = {n: {m for m in graph[n] if m in nodes} for n in nodes}
    left, right, rest = [], [], set(nodes)
    while rest:
        changed = True
        while changed:
            changed = False
            for n in sorted(rest):
                if not any(m in rest for m in sub[n]):  # imports nothing left: bottom
                    right.insert(0, n)
                    rest.discard(n)
                    changed = True
            for n in sorted(rest):
                if not any(n in sub[m] for m in rest):  # imported by nothing left: top
                    left.append(n)
                    rest.discard(n)
                    changed = True
        if rest:
            best = max(
                sorted(rest),
                key=lambda n: sum(m in rest for m in sub[n])
                - sum(n in sub[m] for m in rest),
            )
            left.append(best)
            rest.discard(best)
    order = {n: i for i, n in enumerate(left + right)}
    return sorted((a, b) for a in nodes for b in sub[a] if order[b] < order[a])


def main():
    modules = module_files()
    graph = edges(modules)
    found = circles(graph)
    backs = [arrow for component in found for arrow in back_arrows(graph, component)]
    arrows = sum(len(targets) for targets in graph.values())
    print(f"files: {len(graph)}, arrows: {arrows}, back-up arrows: {len(backs)}")
    for component in found:
        print(f"circle of {len(component)}: {', '.join(component)}")
    if "--arrows" in sys.argv:
        for source in sorted(graph):
            for target in sorted(graph[source]):
                mark = "  (back up)" if (source, target) in backs else ""
                print(f"  {source} -> {target}{mark}")
    elif backs:
        print("back-up arrows:")
        for source, target in backs:
            print(f"  {source} -> {target}")
    if "--check" in sys.argv:
        problems = []
        if len(backs) > MAX_BACK_ARROWS:
            problems.append(f"{len(backs)} back-up arrows (at most {MAX_BACK_ARROWS})")
        for component in found:
            if len(component) > MAX_CIRCLE:
                problems.append(f"a circle of {len(component)} files (at most {MAX_CIRCLE})")
            for place in NO_CIRCLE_THROUGH:
                if any(f.startswith(place) or f == place for f in component):
                    problems.append(f"a circle through {place}")
        for problem in problems:
            print(f"FAIL: {problem}")
        sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
