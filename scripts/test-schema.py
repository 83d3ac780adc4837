#!/usr/bin/env python3
"""docs/vm-definition.schema.json through a JSON Schema 2020-12 validator (python3-jsonschema):
the schema is itself valid; every example and every definition under Tests/Definitions/valid and
beyond-schema validates (beyond-schema breaks only rules a schema cannot state: the validator,
ConfigTests' SchemaTests, rejects those); every one under invalid/ fails, with an error at or
above the JSON path the validator reports (Tests/Definitions/expected-paths.json)."""
import glob, json, os, re, sys

try:
    from jsonschema import Draft202012Validator
except ImportError:
    sys.exit("test-schema.py: needs python3-jsonschema (apt-get install python3-jsonschema)")

repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
schema = json.load(open(os.path.join(repo, "docs/vm-definition.schema.json")))
Draft202012Validator.check_schema(schema)
validator = Draft202012Validator(schema)
expected = json.load(open(os.path.join(repo, "Tests/Definitions/expected-paths.json")))


def steps(path):
    """'$.disks[0].path' or jsonschema's "$.disks[0].path" / "$['$schema']" as a list of steps."""
    return [a or b or c for a, b, c in re.findall(r"\.([A-Za-z_$][\w$-]*)|\[(\d+)\]|\['([^']*)'\]", path)]


failures, passed = [], 0
def definitions(kind):
    return sorted(glob.glob(os.path.join(repo, "Tests/Definitions", kind, "*.json")))

accepted = definitions("valid") + definitions("beyond-schema") + [
    os.path.join(repo, p) for p in ("examples/hello.json", "examples/inmate-smp.json", "examples/bridge.json", "examples/daemon/example.json")]
for f in accepted:
    errors = list(validator.iter_errors(json.load(open(f))))
    if errors:
        failures.append(f"{os.path.relpath(f, repo)}: rejected: {errors[0].json_path}: {errors[0].message}")
    else:
        passed += 1
for f in definitions("invalid"):
    key = os.path.relpath(f, os.path.join(repo, "Tests/Definitions"))
    want = steps(expected.get(key, "$"))
    errors = list(validator.iter_errors(json.load(open(f))))
    # anyOf/oneOf report at their own level; their sub-errors name the deeper paths.
    paths = [steps(e.json_path) for err in errors for e in [err, *(err.context or [])]]
    if not errors:
        failures.append(f"{key}: accepted, the validator rejects it at {expected.get(key)}")
    elif not any(want[:len(p)] == p for p in paths):
        failures.append(f"{key}: rejected at {[e.json_path for e in errors]}, not at or above {expected.get(key)}")
    else:
        passed += 1
for f in failures:
    print("FAIL:", f)
print(f"schema: {passed} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
