#!/usr/bin/env python3
"""Checks k8s/load/testrun.yaml against the k6-operator TestRun fields it uses (k6.io/v1alpha1),
and that every load-tests/ script packs with `k6 archive` (the form the TestRun and
scripts/dev/k6-cluster.sh ship, ./lib imports included).

The schema below is written from the operator's documented API (its CRD,
config/crd/bases/k6.io_testruns.yaml in grafana/k6-operator: `parallelism` and `script` required;
`script.configMap.{name,file}`; `arguments` a string; `separate` a bool; `cleanup` only "post";
`runner.resources` a ResourceRequirements). The CRD itself is not fetched: no registry this
project's CI reaches carries it.
"""
import pathlib, subprocess, sys, tempfile
import jsonschema, yaml

QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": r"^[0-9.]+(m|Mi|Gi|Ki)?$"}]}
RESOURCES = {"type": "object", "additionalProperties": False, "properties": {
    "requests": {"type": "object", "additionalProperties": QUANTITY},
    "limits": {"type": "object", "additionalProperties": QUANTITY}}}
SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "k6.io/v1alpha1"},
        "kind": {"const": "TestRun"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["parallelism", "script"],
            "properties": {
                "parallelism": {"type": "integer", "minimum": 1},
                "script": {"type": "object", "additionalProperties": False, "properties": {
                    "configMap": {"type": "object", "additionalProperties": False,
                                  "required": ["name"], "properties": {
                                      "name": {"type": "string"}, "file": {"type": "string"}}}}},
                "arguments": {"type": "string"},
                "separate": {"type": "boolean"},
                "cleanup": {"enum": ["post"]},
                "runner": {"type": "object", "additionalProperties": False, "properties": {
                    "resources": RESOURCES, "image": {"type": "string"}}},
            },
        },
    },
}

def main() -> int:
    root = pathlib.Path(__file__).resolve().parent.parent.parent
    doc = yaml.safe_load((root / "k8s/load/testrun.yaml").read_text())
    jsonschema.validate(doc, SCHEMA)
    args = doc["spec"]["arguments"]
    assert "--type archive" in args and "BASE_URL=http://chokepoint." in args, args
    scripts = sorted((root / "load-tests").rglob("*.js"))
    scripts = [s for s in scripts if "lib" not in s.relative_to(root / "load-tests").parts and s.name != "lib.js"]
    with tempfile.TemporaryDirectory() as tmp:
        for s in scripts:
            out = pathlib.Path(tmp) / (s.stem + ".tar")
            r = subprocess.run(["k6", "archive", "--quiet", "-O", str(out), str(s)],
                               capture_output=True, text=True, cwd=tmp)
            if r.returncode != 0 or not out.exists():
                print(f"k6 archive {s.relative_to(root)} failed: {r.stderr.strip()[-500:]}")
                return 1
    print(f"k8s/load/testrun.yaml valid (TestRun k6.io/v1alpha1, parallelism "
          f"{doc['spec']['parallelism']}); {len(scripts)} load-tests scripts pack with k6 archive")
    return 0

if __name__ == "__main__":
    sys.exit(main())
