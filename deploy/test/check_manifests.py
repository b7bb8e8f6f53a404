#!/usr/bin/env python3
"""Policy checks for deploy/kubernetes that a schema cannot express.

usage: check_manifests.py DEPLOY_KUBERNETES_DIR
Prints one line per failed rule and exits 1 if any failed.
"""
import os
import sys
import tomllib

import yaml

base = sys.argv[1]
docs = {}
for name in os.listdir(base):
    if name.endswith(".yaml") and name != "kustomization.yaml":
        with open(os.path.join(base, name), encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                docs[doc["kind"]] = doc
errors = []


def rule(ok, msg):
    if not ok:
        errors.append(msg)


kust = yaml.safe_load(open(os.path.join(base, "kustomization.yaml"), encoding="utf-8"))
files = sorted(n for n in os.listdir(base) if n.endswith(".yaml") and n != "kustomization.yaml")
rule(sorted(kust["resources"]) == files, f"kustomization resources {kust['resources']} != files {files}")

dep = docs["Deployment"]
pod = dep["spec"]["template"]["spec"]
labels = dep["spec"]["template"]["metadata"]["labels"]
(c,) = pod["containers"]
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
rule(ports == {"http": 8080, "admin": 9901}, f"container ports {ports}")
rule(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}, "liveness must GET /healthz on admin")
rule(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}, "readiness must GET /readyz on admin")

psc, csc = pod["securityContext"], c["securityContext"]
rule(psc.get("runAsNonRoot") is True and csc.get("runAsNonRoot") is True, "runAsNonRoot")
rule(csc.get("runAsUser") == 65532 and psc.get("runAsUser") == 65532, "runAsUser 65532 (the image's user)")
rule(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
rule(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
rule(csc.get("capabilities", {}).get("drop") == ["ALL"], "drop ALL capabilities")
rule(not csc.get("capabilities", {}).get("add"), "no added capabilities")
rule(psc.get("seccompProfile") == {"type": "RuntimeDefault"}, "pod seccomp RuntimeDefault")
rule(pod.get("automountServiceAccountToken") is False, "no service account token")
res = c.get("resources", {})
rule({"cpu", "memory"} <= set(res.get("requests", {})), "cpu and memory requests (the HPA needs cpu)")
rule("memory" in res.get("limits", {}), "memory limit")

# Graceful termination: preStop sleep + drain must fit in the grace period.
cm = docs["ConfigMap"]
conf = tomllib.loads(cm["data"]["guestgate.toml"])
with open(os.path.join(base, "..", "..", "config", "default.toml"), "rb") as f:
    default_shutdown = tomllib.load(f)["server"]["shutdown_timeout_secs"]
shutdown = conf.get("server", {}).get("shutdown_timeout_secs", default_shutdown)
pre = c["lifecycle"]["preStop"]
rule(set(pre) == {"sleep"}, "preStop must be the kubelet sleep action (the image has no shell)")
sleep = pre.get("sleep", {}).get("seconds", 0)
grace = pod["terminationGracePeriodSeconds"]
rule(1 <= sleep <= 15, f"preStop sleep {sleep}s should be short")
rule(sleep + shutdown < grace, f"preStop {sleep}s + shutdown_timeout_secs {shutdown}s must be < terminationGracePeriodSeconds {grace}s")
rule(conf.get("guest_messages", {}).get("to", {}).get("id"), "ConfigMap must set guest_messages.to.id")
rule("listen" not in conf.get("server", {}) and "listen" not in conf.get("admin", {}),
     "listen addresses come from the image env (the env would override the file anyway)")

# Config file: mounted as a directory (subPath mounts never see ConfigMap updates).
(mount,) = [m for m in c["volumeMounts"] if m["name"] == "config"]
rule(mount["mountPath"] == "/etc/guestgate" and "subPath" not in mount, "config mounted as a directory at /etc/guestgate")
(vol,) = [v for v in pod["volumes"] if v["name"] == "config"]
rule(vol["configMap"]["name"] == cm["metadata"]["name"], "config volume uses the ConfigMap")
rule(c["args"] == ["--config", "/etc/guestgate/guestgate.toml"], f"args {c['args']}")
rule("command" not in c, "keep the image's ENTRYPOINT")

sel = dep["spec"]["selector"]["matchLabels"]
rule(all(labels.get(k) == v for k, v in sel.items()), "deployment selector matches pod labels")
svc = docs["Service"]
rule(all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), "service selector matches pod labels")
rule([p["targetPort"] for p in svc["spec"]["ports"]] == ["http"], "service targets the http port")
pdb = docs["PodDisruptionBudget"]
rule(pdb["spec"]["selector"]["matchLabels"] == sel, "PDB selector = deployment selector")
hpa = docs["HorizontalPodAutoscaler"]
ref = hpa["spec"]["scaleTargetRef"]
rule(ref == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}, "HPA targets the Deployment")
rule(hpa["spec"]["minReplicas"] >= 2, "HPA keeps at least 2 replicas (PDB with maxUnavailable 1)")
rule(dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, "rolling updates never go below the replica count")

for e in errors:
    print("policy:", e)
sys.exit(1 if errors else 0)
