#!/usr/bin/env python3
"""Validates docker/compose.yaml without a container engine: against the Compose specification
schema (shipped inside the docker-compose 1.29.2 wheel from PyPI, downloaded once, never
installed), plus the checks a schema cannot make: every bind-mounted file exists, every image
is pinned to a tag, and every service with `build` uses the repository's Dockerfile.

    python3 scripts/ci/check-compose.py docker/compose.yaml
"""

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import jsonschema
import yaml

CACHE = Path.home() / ".cache" / "chokepoint-ci"
WHEEL_SPEC = "docker-compose==1.29.2"


def compose_schema() -> dict:
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = list(CACHE.glob("docker_compose-1.29.2-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(CACHE), WHEEL_SPEC],
                       check=True)
        wheels = list(CACHE.glob("docker_compose-1.29.2-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        return json.loads(z.read("compose/config/compose_spec.json"))


def main():
    path = Path(sys.argv[1])
    doc = yaml.safe_load(path.read_text())
    errors = []
    # The top-level `name` came to the specification after this schema; it is valid today.
    checked = {k: v for k, v in doc.items() if k != "name"}
    for e in jsonschema.Draft7Validator(compose_schema()).iter_errors(checked):
        errors.append(f"{'/'.join(map(str, e.path)) or '(top)'}: {e.message}")
    base = path.parent
    for name, svc in doc["services"].items():
        image = svc.get("image", "")
        if ":" not in image:
            errors.append(f"services/{name}: image {image!r} is not pinned to a tag")
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith(".") and not (base / src).exists():
                errors.append(f"services/{name}: mounted {src} does not exist")
        if "build" in svc:
            b = svc["build"]
            dockerfile = (base / b["context"] / b["dockerfile"]).resolve()
            if not dockerfile.exists():
                errors.append(f"services/{name}: {dockerfile} does not exist")
    if errors:
        print(f"{path}:", *errors, sep="\n  ", file=sys.stderr)
        sys.exit(1)
    print(f"{path}: {len(doc['services'])} services valid against the Compose schema; mounts exist, images pinned")


if __name__ == "__main__":
    main()
