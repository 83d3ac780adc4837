#!/usr/bin/env python3
"""Checks that Package.swift and docs/architecture.md agree with the code (issue 15):
- docs/architecture.md's module graph is the one Package.swift declares (`--write` regenerates it);
- every target is named in docs/architecture.md;
- every dependency a target declares is imported by one of its files (no dead arrows);
- every project module a target's files import is declared (no undeclared, transitive imports).
Reads `swift package dump-package`; exits 1 with one line per problem."""
import json, os, re, subprocess, sys

repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
dump = json.loads(subprocess.run(["swift", "package", "dump-package"], cwd=repo, check=True,
                                 capture_output=True, text=True).stdout)
doc = open(os.path.join(repo, "docs/architecture.md")).read()
targets = {t["name"]: t for t in dump["targets"]}
problems = []
# Modules of the package dependencies' products (a product and its module share the name here).
PRODUCT_MODULES = {d["product"][0] for t in dump["targets"] for d in t.get("dependencies", []) if "product" in d}

def target_dir(t):
    if t.get("path"):
        return os.path.join(repo, t["path"])
    base = "Tests" if t["type"] == "test" else "Sources"
    return os.path.join(repo, base, t["name"])

def c_module_name(t):
    # C targets and system libraries are imported by their target name.
    return t["name"]

def imports(t):
    found = set()
    for root, _, files in os.walk(target_dir(t)):
        for f in files:
            if f.endswith(".swift"):
                for m in re.finditer(r"^\s*(?:@testable\s+|@_exported\s+)?import\s+(?:struct\s+|enum\s+|class\s+)?(\w+)",
                                     open(os.path.join(root, f)).read(), re.M):
                    found.add(m.group(1))
    return found

def declared(t):
    names = []
    for d in t.get("dependencies", []):
        if "byName" in d:
            names.append(d["byName"][0])
        elif "product" in d:
            names.append(d["product"][0])
        elif "target" in d:
            names.append(d["target"][0])
    return names

for name, t in targets.items():
    if t["type"] != "test" and f"`{name}`" not in doc:
        problems.append(f"docs/architecture.md: target {name} is not named (as `{name}`)")
    if t["type"] == "system":
        continue
    has_swift = any(f.endswith(".swift") for _, _, fs in os.walk(target_dir(t)) for f in fs)
    used = imports(t) if has_swift else set()
    for dep in declared(t):
        if not has_swift:
            continue  # a C target's dependencies are its headers' business
        if dep not in used:
            problems.append(f"Package.swift: {name} declares {dep} but no file of it imports {dep}")
    for module in used & (set(targets) | PRODUCT_MODULES):
        if module not in declared(t) and module != name:
            problems.append(f"Package.swift: {name} imports {module} without declaring it")

BEGIN, END = "<!-- module-graph:begin -->", "<!-- module-graph:end -->"


def mermaid():
    """Non-test targets and their project dependencies, C targets marked."""
    lines = ["```mermaid", "flowchart BT"]
    ids = {n: re.sub(r"[^A-Za-z0-9]", "_", n) for n in targets}
    for n in sorted(targets):
        t = targets[n]
        if t["type"] == "test" or n == "TestSupport":
            continue
        c = t["type"] == "system" or not any(f.endswith(".swift") for _, _, fs in os.walk(target_dir(t)) for f in fs)
        lines.append(f'    {ids[n]}["{n}{" (C)" if c else ""}"]')
    for n in sorted(targets):
        t = targets[n]
        if t["type"] == "test" or n == "TestSupport":
            continue
        for d in sorted(set(declared(t)) & set(targets)):
            lines.append(f"    {ids[n]} --> {ids[d]}")
    lines.append("```")
    return "\n".join(lines)


graph = mermaid()
start, end = doc.find(BEGIN), doc.find(END)
if start < 0 or end < 0:
    problems.append(f"docs/architecture.md: no {BEGIN} … {END} block")
else:
    current = doc[start + len(BEGIN):end].strip()
    if current != graph:
        if "--write" in sys.argv:
            doc = doc[:start + len(BEGIN)] + "\n" + graph + "\n" + doc[end:]
            open(os.path.join(repo, "docs/architecture.md"), "w").write(doc)
            print("docs/architecture.md: module graph rewritten")
        else:
            problems.append("docs/architecture.md: the module graph is not Package.swift's (run scripts/check-architecture.py --write)")

for p in problems:
    print(p)
print(f"architecture check: {len(targets)} targets, {len(problems)} problem(s)")
sys.exit(1 if problems else 0)
