#!/usr/bin/env python3
"""Turns rendered kustomize output into what `podman kube play` (4.3) can run, for
scripts/ci/k8s-play.sh. Writes into OUT_DIR:
  configmap-<name>.yaml    every ConfigMap (passed with --configmap: envFrom/valueFrom read them)
  secret-<name>.yaml       every Secret (k8s-play.sh makes each a `podman secret`)
  deploy-<name>[-<i>].yaml one file per Deployment, one per replica (podman plays one pod each)
  plan.tsv                 file, service alias (the Service selecting it), app label, replica
  not-checked.txt          what podman cannot express and was left out, one line each
Adaptations (each listed in not-checked.txt): Services and the Namespace are dropped (pods reach
each other by network aliases named after the Services); `$(VAR)` in args is expanded as the
kubelet does, from the container's env and envFrom ConfigMaps; probes are dropped (podman runs
httpGet probes as `curl` inside the container, and the distroless image has none); HPAs and
other kinds are dropped.
Usage: kube-adapt.py RENDERED.yaml OUT_DIR
"""
import base64, copy, json, pathlib, re, sys
import yaml

def main() -> int:
    rendered, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    cms = {c["metadata"]["name"]: c.get("data", {}) for c in by_kind.get("ConfigMap", [])}
    not_checked = set()
    for c in by_kind.get("ConfigMap", []):
        (out / f"configmap-{c['metadata']['name']}.yaml").write_text(yaml.safe_dump(c))
    for s in by_kind.get("Secret", []):
        # podman 4.3 reads the secret's value as a JSON map of base64 values (the Secret's data).
        data = dict(s.get("data", {}))
        data.update({k: base64.b64encode(v.encode()).decode() for k, v in s.get("stringData", {}).items()})
        (out / f"secret-{s['metadata']['name']}.yaml").write_text(json.dumps(data))
    services = by_kind.get("Service", [])
    for svc in services:
        kind = svc["spec"].get("type", "ClusterIP")
        not_checked.add(f"Service {svc['metadata']['name']} ({kind}): replaced by a network alias" if kind == "ClusterIP"
                        else f"Service {svc['metadata']['name']} ({kind}, nodePort "
                             f"{[p.get('nodePort') for p in svc['spec']['ports']]}): not played")
    for kind, items in by_kind.items():
        if kind not in ("ConfigMap", "Secret", "Service", "Deployment"):
            for d in items:
                not_checked.add(f"{kind} {d['metadata']['name']}: not played (podman has no equivalent)")
    plan = []
    for dep in by_kind.get("Deployment", []):
        name = dep["metadata"]["name"]
        labels = dep["spec"]["template"]["metadata"].get("labels", {})
        alias = next((s["metadata"]["name"] for s in services
                      if s["spec"].get("type", "ClusterIP") == "ClusterIP"
                      and all(labels.get(k) == v for k, v in s["spec"]["selector"].items())), name)
        spec = dep["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            env = {}
            for ef in c.get("envFrom", []):
                if "configMapRef" in ef:
                    env.update(cms.get(ef["configMapRef"]["name"], {}))
            for e in c.get("env", []):
                if "value" in e:
                    env[e["name"]] = e["value"]
            if "args" in c:
                c["args"] = [re.sub(r"\$\((\w+)\)", lambda m: str(env.get(m.group(1), m.group(0))), a) for a in c["args"]]
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if c.pop(probe, None) is not None:
                    not_checked.add(f"{probe} of {name}/{c['name']}: dropped (podman runs it inside the container)")
            # podman 4.3 publishes containerPorts on the host (here: the private namespace), so
            # two replicas would collide; pods are reached by their addresses instead.
            c.pop("ports", None)
            c["image"] = {"chokepoint:dev": "localhost/chokepoint:dev"}.get(c["image"], c["image"])
        if spec.get("initContainers"):
            not_checked.add(f"initContainers of {name}: played by podman as init containers")
        replicas = dep["spec"].get("replicas", 1)
        for i in range(replicas):
            one = copy.deepcopy(dep)
            one["metadata"]["name"] = name if replicas == 1 else f"{name}-{i + 1}"
            one["spec"]["replicas"] = 1
            f = f"deploy-{one['metadata']['name']}.yaml"
            (out / f).write_text(yaml.safe_dump(one))
            plan.append((f, alias, labels.get("app.kubernetes.io/name", name), str(i + 1)))
    (out / "plan.tsv").write_text("".join("\t".join(p) + "\n" for p in plan))
    not_checked.add("resource requests: podman applies limits only")
    (out / "not-checked.txt").write_text("".join(sorted(l + "\n" for l in not_checked)))
    return 0

if __name__ == "__main__":
    sys.exit(main())
