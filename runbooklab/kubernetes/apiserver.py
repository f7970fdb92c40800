"""A Kubernetes API server stand-in for the lab: LAB SIMULATION, not a real kube-apiserver.

No real API server can run on our machines, yet the Kubernetes runbooks must be rehearsed with the
real clients. This server speaks enough of the Kubernetes HTTP API, over HTTPS with x509 client
certificates, for the official Python client and kubectl to use it without special cases:
discovery, CRUD with merge/strategic/JSON/server-side-apply patches, label and field selectors,
namespaces, ``Status`` errors (404, 409, 422), list resourceVersions and a polling watch, Table
output for kubectl, and objects validated against the official schemas (``kubernetes-validate``).
State lives in the lab's real etcd cluster (keys ``/registry/...``, resourceVersion = etcd
revision), so an etcd snapshot and restore brings the objects back.

Everything it serves says it is simulated: ``/version``, a response header, and node info.

    python -m runbooklab.kubernetes.apiserver --listen 10.77.0.11:6443 --etcd http://10.77.0.11:2379 \
        --tls-dir /etc/kubernetes/ssl --kubernetes-version v1.31.9 [--controllers]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import re
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from .etcd import EtcdClient, EtcdUnavailable

SIMULATED = "lab-simulation"
HEADER = ("X-Runbook-Lab", "simulated Kubernetes API server stand-in (runbooklab.kubernetes.apiserver)")
NODE_GRACE_SECONDS = 8.0  # a node whose heartbeat lease is older than this turns NotReady
KNOWN_PROVISIONERS = ("rook-ceph.rbd.csi.ceph.com", "rook-ceph.cephfs.csi.ceph.com", "driver.longhorn.io",
                      "rancher.io/local-path", "lab.runbook/hostpath")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    short: tuple[str, ...] = ()
    columns: tuple[tuple[str, str, int], ...] = ()  # (header, dotted path, priority: 0 default, 1 -o wide)
    subresources: tuple[str, ...] = ()
    singular: str = ""

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def key(self, namespace: str | None, name: str = "") -> str:
        base = f"/registry/{self.group or 'core'}/{self.plural}/"
        return base + (f"{namespace}/" if self.namespaced and namespace else "") + name


def _r(group, version, kind, plural, namespaced, short=(), columns=(), sub=("status",)):
    return ResourceType(group, version, kind, plural, namespaced, tuple(short), tuple(columns), tuple(sub),
                        kind.lower())


BUILTIN: tuple[ResourceType, ...] = (
    _r("", "v1", "Namespace", "namespaces", False, ["ns"], [("Status", "status.phase", 0)], ("status", "finalize")),
    _r("", "v1", "Node", "nodes", False, ["no"], [("Status", "_ready", 0), ("Roles", "_roles", 0),
       ("Version", "status.nodeInfo.kubeletVersion", 0), ("Internal-IP", "_internal_ip", 1),
       ("OS-Image", "status.nodeInfo.osImage", 1), ("Kernel-Version", "status.nodeInfo.kernelVersion", 1)]),
    _r("", "v1", "Secret", "secrets", True, (), [("Type", "type", 0), ("Data", "_data_count", 0)], ()),
    _r("", "v1", "ConfigMap", "configmaps", True, ["cm"], [("Data", "_data_count", 0)], ()),
    _r("", "v1", "ServiceAccount", "serviceaccounts", True, ["sa"], (), ()),
    _r("", "v1", "Service", "services", True, ["svc"], [("Type", "spec.type", 0), ("Cluster-IP", "spec.clusterIP", 0)]),
    _r("", "v1", "Pod", "pods", True, ["po"], [("Status", "status.phase", 0), ("Node", "spec.nodeName", 1)]),
    _r("", "v1", "Event", "events", True, ["ev"], [("Reason", "reason", 0), ("Message", "message", 0)], ()),
    _r("", "v1", "PersistentVolume", "persistentvolumes", False, ["pv"], [("Capacity", "spec.capacity.storage", 0),
       ("Status", "status.phase", 0), ("StorageClass", "spec.storageClassName", 0)]),
    _r("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", True, ["pvc"], [("Status", "status.phase", 0),
       ("Volume", "spec.volumeName", 0), ("StorageClass", "spec.storageClassName", 0)]),
    _r("apps", "v1", "Deployment", "deployments", True, ["deploy"], [("Ready", "_ready_replicas", 0)]),
    _r("apps", "v1", "DaemonSet", "daemonsets", True, ["ds"], [("Desired", "status.desiredNumberScheduled", 0),
       ("Ready", "status.numberReady", 0)]),
    _r("apps", "v1", "StatefulSet", "statefulsets", True, ["sts"], [("Ready", "_ready_replicas", 0)]),
    _r("storage.k8s.io", "v1", "StorageClass", "storageclasses", False, ["sc"], [("Provisioner", "provisioner", 0)], ()),
    _r("rbac.authorization.k8s.io", "v1", "Role", "roles", True, (), (), ()),
    _r("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", True, (), [("Role", "roleRef.name", 0)], ()),
    _r("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", False, (), (), ()),
    _r("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", False, (), [("Role", "roleRef.name", 0)], ()),
    _r("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", False, ["crd", "crds"],
       [("Group", "spec.group", 0)]),
    _r("coordination.k8s.io", "v1", "Lease", "leases", True, (), [("Holder", "spec.holderIdentity", 0)], ()),
)


class ApiError(Exception):
    """Becomes a ``Status`` response."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        out = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message,
               "reason": self.reason, "code": self.code}
        if self.details:
            out["details"] = self.details
        return out


def not_found(rt: ResourceType, name: str) -> ApiError:
    what = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
    return ApiError(404, "NotFound", f'{what} "{name}" not found',
                    {"name": name, "group": rt.group, "kind": rt.plural})


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- patches ------------------------------------------------------------------------------------

def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def strategic_merge(target: Any, patch: Any) -> Any:
    """Strategic merge patch, approximated: lists of named objects merge by ``name`` (containers,
    env, ports, volumes...), ``$patch: delete`` removes an item, other lists are replaced."""
    if isinstance(patch, dict) and isinstance(target, dict):
        result = copy.deepcopy(target)
        for k, v in patch.items():
            if k.startswith("$"):
                continue
            if v is None:
                result.pop(k, None)
            else:
                result[k] = strategic_merge(result.get(k), v)
        return result
    if isinstance(patch, list) and isinstance(target, list) and patch and all(
            isinstance(i, dict) and "name" in i for i in patch + target):
        merged = {i["name"]: copy.deepcopy(i) for i in target}
        order = [i["name"] for i in target]
        for item in patch:
            if item.get("$patch") == "delete":
                merged.pop(item["name"], None)
                continue
            if item["name"] in merged:
                merged[item["name"]] = strategic_merge(merged[item["name"]], item)
            else:
                merged[item["name"]] = {k: v for k, v in item.items() if not k.startswith("$")}
                order.append(item["name"])
        return [merged[n] for n in order if n in merged]
    if isinstance(patch, dict):
        return {k: v for k, v in patch.items() if not k.startswith("$") and v is not None}
    return copy.deepcopy(patch)


def json_patch(target: Any, ops: list) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    doc = copy.deepcopy(target)

    def split(path):
        return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]

    def walk(path):
        parts = split(path)
        node = doc
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        return node, parts[-1]

    def get(path):
        node, last = walk(path)
        return node[int(last)] if isinstance(node, list) else node[last]

    def put(path, value, replace=False):
        node, last = walk(path)
        if isinstance(node, list):
            if last == "-":
                node.append(value)
            elif replace:
                node[int(last)] = value
            else:
                node.insert(int(last), value)
        else:
            node[last] = value

    def remove(path):
        node, last = walk(path)
        return node.pop(int(last)) if isinstance(node, list) else node.pop(last)

    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        try:
            if kind == "add":
                put(path, copy.deepcopy(op["value"]))
            elif kind == "replace":
                get(path)
                put(path, copy.deepcopy(op["value"]), replace=True)
            elif kind == "remove":
                remove(path)
            elif kind == "move":
                put(path, remove(op["from"]))
            elif kind == "copy":
                put(path, copy.deepcopy(get(op["from"])))
            elif kind == "test":
                if get(path) != op.get("value"):
                    raise ApiError(422, "Invalid", f"JSON patch test failed at {path}")
            else:
                raise ApiError(400, "BadRequest", f"unknown JSON patch op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError):
            raise ApiError(422, "Invalid", f"JSON patch {kind} at {path}: no such location") from None
    return doc


# -- selectors ----------------------------------------------------------------------------------

_REQ = re.compile(r"^\s*(!?)([\w./-]+)\s*(?:(==|=|!=)\s*([\w.-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def _split_selector(selector: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def label_matcher(selector: str | None):
    if not selector:
        return lambda labels: True
    reqs = []
    for part in _split_selector(selector):
        m = _REQ.match(part)
        if not m:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        neg, key, op, value, setop, values = m.groups()
        reqs.append((neg, key, op, value, setop, [v.strip() for v in (values or "").split(",") if v.strip()]))

    def match(labels: dict) -> bool:
        labels = labels or {}
        for neg, key, op, value, setop, values in reqs:
            if op in ("=", "=="):
                ok = labels.get(key) == value
            elif op == "!=":
                ok = labels.get(key) != value
            elif setop == "in":
                ok = labels.get(key) in values
            elif setop == "notin":
                ok = labels.get(key) not in values
            else:
                ok = (key in labels) != bool(neg)
            if not ok:
                return False
        return True
    return match


def dotted(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def field_matcher(selector: str | None):
    if not selector:
        return lambda obj: True
    reqs = []
    for part in selector.split(","):
        m = re.match(r"^\s*([\w.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: {part!r}")
        reqs.append(m.groups())

    def match(obj: dict) -> bool:
        for path, op, value in reqs:
            got = dotted(obj, path)
            got = "" if got is None else str(got)
            if (got == value) != (op != "!="):
                return False
        return True
    return match


# -- the server ---------------------------------------------------------------------------------

@dataclass
class ApiServer:
    etcd: EtcdClient
    kubernetes_version: str = "v1.31.9"
    address: str = "127.0.0.1:6443"
    validate: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def minor(self) -> str:
        return self.kubernetes_version.lstrip("v").split(".")[1]

    # -- type registry ---------------------------------------------------------------------
    def types(self) -> list[ResourceType]:
        out = list(BUILTIN)
        items, _ = self.etcd.range(BUILTIN[-2].key(None))  # CRDs
        for _, raw, _ in items:
            crd = json.loads(raw)
            spec = crd.get("spec", {})
            names = spec.get("names", {})
            for v in spec.get("versions", []):
                if v.get("served", True):
                    out.append(ResourceType(spec["group"], v["name"], names.get("kind", ""), names.get("plural", ""),
                                            spec.get("scope") == "Namespaced", tuple(names.get("shortNames", [])),
                                            (), ("status",) if v.get("subresources", {}).get("status") is not None else (),
                                            names.get("singular", "")))
        return out

    def find(self, group: str, version: str, plural: str) -> ResourceType:
        for rt in self.types():
            if rt.group == group and rt.version == version and rt.plural == plural:
                return rt
        raise ApiError(404, "NotFound", f"the server could not find the requested resource ({group}/{version} {plural})")

    # -- discovery -------------------------------------------------------------------------
    def version(self) -> dict:
        return {"major": "1", "minor": self.minor, "gitVersion": f"{self.kubernetes_version}+{SIMULATED}",
                "gitCommit": SIMULATED, "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": f"{SIMULATED} (python)", "compiler": SIMULATED, "platform": "linux/amd64"}

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for rt in self.types():
            if rt.group and rt.version not in out.setdefault(rt.group, []):
                out[rt.group].append(rt.version)
        return out

    def api_group(self, name: str, versions: list[str]) -> dict:
        vs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": vs, "preferredVersion": vs[0]}

    def resource_list(self, group: str, version: str) -> dict:
        resources = []
        for rt in self.types():
            if rt.group == group and rt.version == version:
                verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
                resources.append({"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced,
                                  "kind": rt.kind, "verbs": verbs, "shortNames": list(rt.short)})
                for sub in rt.subresources:
                    resources.append({"name": f"{rt.plural}/{sub}", "singularName": "", "namespaced": rt.namespaced,
                                      "kind": rt.kind, "verbs": ["get", "patch", "update"]})
        if not resources:
            raise ApiError(404, "NotFound", f"no resources in {group}/{version}")
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": resources}

    def openapi_v3_index(self) -> dict:
        paths = {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=lab"}}
        for g, vs in self.groups().items():
            for v in vs:
                paths[f"apis/{g}/{v}"] = {"serverRelativeURL": f"/openapi/v3/apis/{g}/{v}?hash=lab"}
        return {"paths": paths}

    def openapi_v3(self, group: str, version: str) -> dict:
        """Just enough OpenAPI for kubectl to find each kind and leave validation to the server."""
        paths = {}
        param = {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}}
        for rt in self.types():
            if rt.group != group or rt.version != version:
                continue
            prefix = f"/api/{version}" if not group else f"/apis/{group}/{version}"
            path = f"{prefix}/namespaces/{{namespace}}/{rt.plural}/{{name}}" if rt.namespaced else f"{prefix}/{rt.plural}/{{name}}"
            gvk = {"group": group, "version": version, "kind": rt.kind}
            paths[path] = {"patch": {"x-kubernetes-group-version-kind": gvk, "parameters": [param],
                                     "x-kubernetes-action": "patch"},
                           "put": {"x-kubernetes-group-version-kind": gvk, "parameters": [param]}}
        return {"openapi": "3.0.0", "info": {"title": f"Kubernetes ({SIMULATED})", "version": self.kubernetes_version},
                "paths": paths, "components": {"schemas": {}}}

    # -- storage ---------------------------------------------------------------------------
    def _load(self, raw: bytes, rev: int) -> dict:
        obj = json.loads(raw)
        obj["metadata"]["resourceVersion"] = str(rev)
        return obj

    def _store(self, obj: dict) -> bytes:
        clean = copy.deepcopy(obj)
        clean["metadata"].pop("resourceVersion", None)
        return json.dumps(clean, sort_keys=True).encode()

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict:
        found = self.etcd.get(rt.key(namespace, name))
        if found is None:
            raise not_found(rt, name)
        return self._load(*found)

    def list(self, rt: ResourceType, namespace: str | None, labels: str | None = None,
             fields: str | None = None) -> tuple[list[dict], int]:
        prefix = rt.key(namespace) if namespace else rt.key(None)
        items, revision = self.etcd.range(prefix)
        lm, fm = label_matcher(labels), field_matcher(fields)
        out = []
        for _, raw, rev in items:
            obj = self._load(raw, rev)
            if lm(obj["metadata"].get("labels")) and fm(obj):
                out.append(obj)
        out.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return out, revision

    def _validate(self, rt: ResourceType, obj: dict, strict: bool) -> None:
        if not self.validate or rt not in BUILTIN:
            return
        import kubernetes_validate
        from kubernetes_validate.utils import ValidationError as KVError

        try:
            kubernetes_validate.validate(obj, self.kubernetes_version.lstrip("v"), strict=strict)
        except KVError as e:
            err = e.caused_by if hasattr(e, "caused_by") else e
            parts = [str(p) for p in getattr(err, "path", [])]
            message = getattr(err, "message", str(err)).split("\n")[0]
            unknown = re.findall(r"'([^']+)' (?:was|were) unexpected", message)
            if getattr(err, "validator", "") == "additionalProperties" and unknown:
                # name the field the way the real server's strict decoding does
                parts.append(unknown[0])
                message = f'unknown field "{".".join(parts)}"'
            path = ".".join(parts) or "<root>"
            name = obj.get("metadata", {}).get("name", "")
            raise ApiError(422, "Invalid", f'{rt.kind} "{name}" is invalid: {path}: {message}',
                           {"name": name, "group": rt.group, "kind": rt.kind,
                            "causes": [{"reason": "FieldValueInvalid", "message": message, "field": path}]}) from None
        except Exception as e:  # an unknown kind/version for the schema bundle: accept, but say why
            if "not found" not in str(e).lower() and "version" not in str(e).lower():
                raise

    def _check_body(self, rt: ResourceType, obj: Any, namespace: str | None, name: str | None = None) -> dict:
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the request body is not a JSON object")
        obj.setdefault("apiVersion", rt.group_version)
        obj.setdefault("kind", rt.kind)
        if obj["apiVersion"] != rt.group_version or obj["kind"] != rt.kind:
            raise ApiError(400, "BadRequest", f"the body is a {obj['apiVersion']} {obj['kind']}, this endpoint serves "
                                              f"{rt.group_version} {rt.kind}")
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(422, "Invalid", "metadata must be an object")
        if name and meta.get("name") and meta["name"] != name:
            raise ApiError(400, "BadRequest", f"the name in the body ({meta['name']}) does not match the URL ({name})")
        if name:
            meta.setdefault("name", name)
        if rt.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise ApiError(400, "BadRequest", f"the namespace of the object ({meta['namespace']}) does not match "
                                                  f"the namespace on the request ({namespace})")
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        return obj

    def _namespace_exists(self, namespace: str) -> None:
        if self.etcd.get(BUILTIN[0].key(None, namespace)) is None:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                           {"name": namespace, "kind": "namespaces"})

    def create(self, rt: ResourceType, namespace: str | None, obj: Any, strict: bool = True, dry_run: bool = False) -> dict:
        obj = self._check_body(rt, obj, namespace)
        meta = obj["metadata"]
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            else:
                raise ApiError(422, "Invalid", f"{rt.kind}: metadata.name: Required value: name or generateName is required",
                               {"kind": rt.kind, "causes": [{"reason": "FieldValueRequired", "field": "metadata.name",
                                                             "message": "Required value"}]})
        if rt.namespaced:
            self._namespace_exists(meta["namespace"])
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso()
        if "spec" in obj:
            meta["generation"] = 1
        meta.pop("resourceVersion", None)
        self._defaults(rt, obj)
        self._validate(rt, obj, strict)
        if dry_run:
            return obj
        rev = self.etcd.create(rt.key(meta.get("namespace"), meta["name"]), self._store(obj))
        if rev is None:
            what = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
            raise ApiError(409, "AlreadyExists", f'{what} "{meta["name"]}" already exists',
                           {"name": meta["name"], "group": rt.group, "kind": rt.plural})
        meta["resourceVersion"] = str(rev)
        return obj

    def _defaults(self, rt: ResourceType, obj: dict) -> None:
        if rt.kind == "Namespace":
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
        elif rt.kind == "Service":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            spec.setdefault("clusterIP", "None" if spec.get("clusterIP") == "None" else f"10.43.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}")
        elif rt.kind == "Secret":
            obj.setdefault("type", "Opaque")
        elif rt.kind == "PersistentVolumeClaim":
            obj.setdefault("status", {"phase": "Pending"})

    def replace(self, rt: ResourceType, namespace: str | None, name: str, obj: Any, strict: bool = True,
                subresource: str = "", dry_run: bool = False) -> dict:
        obj = self._check_body(rt, obj, namespace, name)
        current = self.get(rt, namespace, name)
        wanted_rv = obj["metadata"].get("resourceVersion")
        if wanted_rv and wanted_rv != current["metadata"]["resourceVersion"]:
            raise self._conflict(rt, name)
        if subresource == "status":
            merged = copy.deepcopy(current)
            merged["status"] = obj.get("status", {})
            obj = merged
        for keep in ("uid", "creationTimestamp", "generation"):
            if keep in current["metadata"]:
                obj["metadata"][keep] = current["metadata"][keep]
        if "spec" in obj and obj.get("spec") != current.get("spec"):
            obj["metadata"]["generation"] = int(current["metadata"].get("generation", 0)) + 1
        if rt.kind == "Namespace":
            obj["status"] = current.get("status", {"phase": "Active"})
        self._validate(rt, obj, strict)
        if dry_run:
            return obj
        rev = self.etcd.update(rt.key(namespace, name), self._store(obj), int(current["metadata"]["resourceVersion"]))
        if rev is None:
            raise self._conflict(rt, name)
        obj["metadata"]["resourceVersion"] = str(rev)
        return obj

    def _conflict(self, rt: ResourceType, name: str) -> ApiError:
        what = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
        return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {what} "{name}": the object has been '
                                         "modified; please apply your changes to the latest version and try again",
                        {"name": name, "group": rt.group, "kind": rt.plural})

    def patch(self, rt: ResourceType, namespace: str | None, name: str, body: bytes, content_type: str,
              strict: bool = True, subresource: str = "", dry_run: bool = False) -> dict:
        """Apply a patch; server-side apply is a strategic merge here (no field ownership, so no conflicts)."""
        ctype = content_type.split(";")[0].strip()
        try:
            patch = yaml.safe_load(body) if ctype == "application/apply-patch+yaml" else json.loads(body or b"{}")
        except (ValueError, yaml.YAMLError) as e:
            raise ApiError(400, "BadRequest", f"the patch is not valid: {e}") from None
        for _ in range(5):  # retry on a concurrent writer, as the real server does for patches
            try:
                current = self.get(rt, namespace, name)
            except ApiError as e:
                if e.code == 404 and ctype == "application/apply-patch+yaml":
                    return self.create(rt, namespace, patch, strict, dry_run)
                raise
            if ctype == "application/merge-patch+json":
                new = merge_patch(current, patch)
            elif ctype in ("application/strategic-merge-patch+json", "application/apply-patch+yaml"):
                new = strategic_merge(current, patch)
            elif ctype == "application/json-patch+json":
                new = json_patch(current, patch)
            else:
                raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                                                            "accepted media types include: application/json-patch+json, "
                                                            "application/merge-patch+json, application/apply-patch+yaml, "
                                                            "application/strategic-merge-patch+json")
            wanted_rv = (patch.get("metadata") or {}).get("resourceVersion") if isinstance(patch, dict) else None
            if wanted_rv and wanted_rv != current["metadata"]["resourceVersion"]:
                raise self._conflict(rt, name)
            new.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
            try:
                return self.replace(rt, namespace, name, new, strict, subresource, dry_run)
            except ApiError as e:
                if e.reason != "Conflict" or wanted_rv:
                    raise
        raise self._conflict(rt, name)

    def delete(self, rt: ResourceType, namespace: str | None, name: str) -> dict:
        current = self.get(rt, namespace, name)
        if not self.etcd.delete(rt.key(namespace, name)):
            raise not_found(rt, name)
        if rt.kind == "Namespace":  # cascade, at once (no finalizers in the lab)
            for other in self.types():
                if other.namespaced:
                    self.etcd.delete_prefix(other.key(name))
        return current

    # -- tables ----------------------------------------------------------------------------
    def table(self, rt: ResourceType, items: list[dict], revision: int) -> dict:
        cols = [{"name": "Name", "type": "string", "format": "name", "priority": 0, "description": "name"}]
        cols += [{"name": h, "type": "string", "format": "", "priority": p, "description": h} for h, _, p in rt.columns]
        cols.append({"name": "Age", "type": "string", "format": "", "priority": 0, "description": "age"})
        rows = []
        for obj in items:
            cells = [obj["metadata"]["name"]] + [self._cell(obj, path) for _, path, _ in rt.columns] + [_age(obj)]
            rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                    "metadata": obj["metadata"]}})
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": str(revision)},
                "columnDefinitions": cols, "rows": rows}

    def _cell(self, obj: dict, path: str) -> Any:
        if path == "_ready":
            cond = next((c for c in obj.get("status", {}).get("conditions", []) if c.get("type") == "Ready"), {})
            return "Ready" if cond.get("status") == "True" else "NotReady"
        if path == "_roles":
            roles = [k.split("/", 1)[1] for k in obj["metadata"].get("labels", {}) if k.startswith("node-role.kubernetes.io/")]
            return ",".join(sorted(roles)) or "<none>"
        if path == "_internal_ip":
            return next((a["address"] for a in obj.get("status", {}).get("addresses", []) if a.get("type") == "InternalIP"), "")
        if path == "_data_count":
            return len(obj.get("data") or {}) + len(obj.get("binaryData") or {})
        if path == "_ready_replicas":
            s = obj.get("status", {})
            return f"{s.get('readyReplicas', 0)}/{obj.get('spec', {}).get('replicas', 1)}"
        value = dotted(obj, path)
        return "" if value is None else value

    # -- the control loop (runs on one server only) ----------------------------------------
    def reconcile_once(self) -> None:
        nodes, _ = self.list(BUILTIN[1], None)
        leases = {o["metadata"]["name"]: o for o in self.list(self.find("coordination.k8s.io", "v1", "leases"), "kube-node-lease")[0]}
        now = time.time()
        ready_nodes = []
        for node in nodes:
            lease = leases.get(node["metadata"]["name"])
            renewed = _parse_time((lease or {}).get("spec", {}).get("renewTime"))
            ready = renewed is not None and now - renewed < NODE_GRACE_SECONDS
            status = "True" if ready else "Unknown"
            conds = node.setdefault("status", {}).setdefault("conditions", [])
            ready_cond = next((c for c in conds if c.get("type") == "Ready"), None)
            if ready_cond is None or ready_cond.get("status") != status:
                reason = "KubeletReady" if ready else "NodeStatusUnknown"
                msg = ("heartbeat received (lab simulation)" if ready else
                       "Kubelet stopped posting node status (no heartbeat from the lab VM)")
                conds[:] = [c for c in conds if c.get("type") != "Ready"] + [{
                    "type": "Ready", "status": status, "reason": reason, "message": msg,
                    "lastHeartbeatTime": now_iso(), "lastTransitionTime": now_iso()}]
                try:
                    self.replace(BUILTIN[1], None, node["metadata"]["name"], node, strict=False, subresource="status")
                except ApiError:
                    pass
            if ready and not node.get("spec", {}).get("unschedulable"):
                ready_nodes.append(node)
        self._reconcile_workloads(ready_nodes)
        self._reconcile_claims()

    def _schedulable(self, nodes: list[dict], pod_spec: dict) -> list[dict]:
        selector = pod_spec.get("nodeSelector") or {}
        tolerations = pod_spec.get("tolerations") or []
        out = []
        for n in nodes:
            labels = n["metadata"].get("labels", {})
            if any(labels.get(k) != v for k, v in selector.items()):
                continue
            taints = [t for t in n.get("spec", {}).get("taints", []) if t.get("effect") in ("NoSchedule", "NoExecute")]
            if all(any(tol.get("operator") == "Exists" and (not tol.get("key") or tol.get("key") == t.get("key"))
                       or (tol.get("key") == t.get("key") and tol.get("value") == t.get("value")) for tol in tolerations)
                   for t in taints):
                out.append(n)
        return out

    def _reconcile_workloads(self, ready_nodes: list[dict]) -> None:
        for plural in ("deployments", "statefulsets", "daemonsets"):
            rt = self.find("apps", "v1", plural)
            for obj in self.list(rt, None)[0]:
                pod_spec = obj.get("spec", {}).get("template", {}).get("spec", {})
                fit = self._schedulable(ready_nodes, pod_spec)
                gen = obj["metadata"].get("generation", 1)
                if plural == "daemonsets":
                    status = {"desiredNumberScheduled": len(fit), "currentNumberScheduled": len(fit),
                              "numberReady": len(fit), "numberAvailable": len(fit), "updatedNumberScheduled": len(fit),
                              "numberMisscheduled": 0, "observedGeneration": gen}
                else:
                    want = obj.get("spec", {}).get("replicas", 1)
                    ready = want if fit else 0
                    status = {"replicas": want, "readyReplicas": ready, "availableReplicas": ready,
                              "updatedReplicas": want, "observedGeneration": gen}
                    if plural == "statefulsets":
                        status["currentReplicas"] = want
                if obj.get("status") != status:
                    obj["status"] = status
                    try:
                        self.replace(rt, obj["metadata"]["namespace"], obj["metadata"]["name"], obj, strict=False,
                                     subresource="status")
                    except ApiError:
                        pass

    def _reconcile_claims(self) -> None:
        classes = {o["metadata"]["name"]: o for o in self.list(self.find("storage.k8s.io", "v1", "storageclasses"), None)[0]}
        pvc_rt, pv_rt = BUILTIN[9], BUILTIN[8]
        for pvc in self.list(pvc_rt, None)[0]:
            if pvc.get("status", {}).get("phase") == "Bound":
                continue
            sc = classes.get(pvc.get("spec", {}).get("storageClassName") or "")
            if not sc or sc.get("provisioner") not in KNOWN_PROVISIONERS:
                continue
            ns, name = pvc["metadata"]["namespace"], pvc["metadata"]["name"]
            volume = f"pvc-{pvc['metadata']['uid']}"
            size = pvc.get("spec", {}).get("resources", {}).get("requests", {}).get("storage", "1Gi")
            pv = {"apiVersion": "v1", "kind": "PersistentVolume",
                  "metadata": {"name": volume, "annotations": {"pv.kubernetes.io/provisioned-by": sc["provisioner"],
                                                               "runbook.lab/simulated": "true"}},
                  "spec": {"capacity": {"storage": size}, "accessModes": pvc["spec"].get("accessModes", ["ReadWriteOnce"]),
                           "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy", "Delete"),
                           "storageClassName": sc["metadata"]["name"],
                           "claimRef": {"namespace": ns, "name": name, "uid": pvc["metadata"]["uid"]},
                           "csi": {"driver": sc["provisioner"], "volumeHandle": volume}},
                  "status": {"phase": "Bound"}}
            try:
                self.create(pv_rt, None, pv, strict=False)
            except ApiError as e:
                if e.code != 409:
                    continue
            pvc["spec"]["volumeName"] = volume
            pvc["status"] = {"phase": "Bound", "accessModes": pv["spec"]["accessModes"], "capacity": {"storage": size}}
            try:
                self.replace(pvc_rt, ns, name, pvc, strict=False)
            except ApiError:
                pass

    def controller_loop(self, interval: float = 1.0) -> None:
        while True:
            try:
                self.reconcile_once()
            except (EtcdUnavailable, ApiError, KeyError, ValueError):
                pass
            time.sleep(interval)


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _age(obj: dict) -> str:
    created = _parse_time(obj["metadata"].get("creationTimestamp"))
    if created is None:
        return "<unknown>"
    s = int(time.time() - created)
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h" if s < 172800 else f"{s // 86400}d"


# -- HTTP ---------------------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    server_version = f"kube-apiserver-{SIMULATED}"
    protocol_version = "HTTP/1.1"
    api: ApiServer

    def log_message(self, fmt, *args):  # quiet; the lab keeps its own log
        pass

    def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header(*HEADER)
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            body = self._body() if method in ("POST", "PUT", "PATCH", "DELETE") else b""
            ctype = self.headers.get("Content-Type", "application/json")
            if "protobuf" in ctype:
                raise ApiError(415, "UnsupportedMediaType", "the lab API server stand-in speaks JSON only "
                                                            "(use kubectl 1.31 or older, or --output json)")
            result = self._route(method, url.path.rstrip("/") or "/", query, body, ctype)
            if result is not None:
                code, payload = result
                self._send(code, payload)
        except ApiError as e:
            self._send(e.code, e.status())
        except EtcdUnavailable as e:
            self._send(503, ApiError(503, "ServiceUnavailable", f"etcd is unavailable: {e}").status())
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # a stand-in bug must surface as a 500 the client can read, not a dropped connection
            self._send(500, ApiError(500, "InternalError", f"lab API server stand-in: {type(e).__name__}: {e}").status())

    def _route(self, method, path, query, body, ctype):
        api = self.api
        if path in ("/healthz", "/livez", "/readyz"):
            return 200, b"ok"
        if path == "/version":
            return 200, api.version()
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": api.address}]}
        if path == "/apis":
            return 200, {"kind": "APIGroupList", "apiVersion": "v1",
                         "groups": [api.api_group(g, vs) for g, vs in sorted(api.groups().items())]}
        if path == "/openapi/v3":
            return 200, api.openapi_v3_index()
        m = re.fullmatch(r"/openapi/v3/(?:api/(v1)|apis/([^/]+)/([^/]+))", path)
        if m:
            return 200, api.openapi_v3(m.group(2) or "", m.group(1) or m.group(3))
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 2:
            if len(parts) == 2:
                versions = api.groups().get(parts[1])
                if not versions:
                    raise ApiError(404, "NotFound", f"no API group {parts[1]}")
                return 200, api.api_group(parts[1], versions)
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        if not rest:
            return 200, api.resource_list(group, version)
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and not (group == "" and len(rest) == 3 and rest[2] in ("status", "finalize")):
            namespace, rest = rest[1], rest[2:]
        rt = api.find(group, version, rest[0])
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else ""
        if sub and sub not in rt.subresources:
            raise ApiError(404, "NotFound", f"{rt.plural} has no subresource {sub}")
        strict = query.get("fieldValidation", "Strict") == "Strict"
        dry = query.get("dryRun") == "All"
        if method == "GET" and name:
            return 200, api.get(rt, namespace, name)
        if method == "GET":
            if query.get("watch") in ("1", "true"):
                self._watch(rt, namespace, query)
                return None
            items, revision = api.list(rt, namespace, query.get("labelSelector"), query.get("fieldSelector"))
            if "as=Table" in self.headers.get("Accept", ""):
                return 200, api.table(rt, items, revision)
            for obj in items:
                obj.setdefault("apiVersion", rt.group_version)
                obj.setdefault("kind", rt.kind)
            return 200, {"kind": f"{rt.kind}List", "apiVersion": rt.group_version,
                         "metadata": {"resourceVersion": str(revision)}, "items": items}
        if method == "POST" and not name:
            return 201, api.create(rt, namespace, self._json(body), strict, dry)
        if method == "PUT" and name:
            return 200, api.replace(rt, namespace, name, self._json(body), strict, sub, dry)
        if method == "PATCH" and name:
            return 200, api.patch(rt, namespace, name, body, ctype, strict, sub, dry)
        if method == "DELETE" and name:
            return 200, api.delete(rt, namespace, name)
        if method == "DELETE":
            items, _ = api.list(rt, namespace, query.get("labelSelector"), query.get("fieldSelector"))
            for obj in items:
                api.delete(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"])
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {path}")

    def _json(self, body: bytes) -> Any:
        try:
            return json.loads(body or b"null")
        except ValueError as e:
            raise ApiError(400, "BadRequest", f"the request body is not JSON: {e}") from None

    def _watch(self, rt: ResourceType, namespace: str | None, query: dict) -> None:
        """A polling watch: diffs the store every 0.3 s and streams ADDED/MODIFIED/DELETED events."""
        timeout = min(float(query.get("timeoutSeconds", 60)), 300)
        since = int(query.get("resourceVersion") or 0)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header(*HEADER)
        self.end_headers()

        def emit(kind: str, obj: dict) -> None:
            obj.setdefault("apiVersion", rt.group_version)
            obj.setdefault("kind", rt.kind)
            data = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        lm, fm = label_matcher(query.get("labelSelector")), field_matcher(query.get("fieldSelector"))
        seen: dict[str, dict] = {}
        deadline = time.monotonic() + timeout
        first = True
        try:
            while time.monotonic() < deadline:
                items, _ = self.api.list(rt, namespace)
                current = {f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}": o for o in items
                           if lm(o["metadata"].get("labels")) and fm(o)}
                for key, obj in current.items():
                    rv = int(obj["metadata"]["resourceVersion"])
                    if key not in seen:
                        if not first or rv > since or since == 0:
                            emit("ADDED", obj)
                    elif seen[key]["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"]:
                        emit("MODIFIED", obj)
                for key, obj in seen.items():
                    if key not in current:
                        emit("DELETED", obj)
                seen, first = current, False
                time.sleep(0.3)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass


def make_server(api: ApiServer, host: str, port: int, tls_dir: str | None) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"api": api})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    if tls_dir:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(f"{tls_dir}/kube-apiserver.pem", f"{tls_dir}/kube-apiserver-key.pem")
        ctx.load_verify_locations(f"{tls_dir}/ca.pem")
        ctx.verify_mode = ssl.CERT_REQUIRED  # x509 client certificates, as RKE's authentication.strategy
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Kubernetes API server stand-in (lab simulation)")
    parser.add_argument("--listen", default="127.0.0.1:6443")
    parser.add_argument("--etcd", required=True, help="comma-separated etcd client URLs")
    parser.add_argument("--tls-dir", help="ca.pem, kube-apiserver.pem and -key.pem (omit for plain HTTP in tests)")
    parser.add_argument("--kubernetes-version", default="v1.31.9")
    parser.add_argument("--controllers", action="store_true", help="run the control loop (on one server only)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    api = ApiServer(EtcdClient(args.etcd.split(",")), args.kubernetes_version, args.listen)
    server = make_server(api, host, int(port), args.tls_dir)
    if args.controllers:
        threading.Thread(target=api.controller_loop, daemon=True, name="controllers").start()
    print(f"lab API server stand-in ({SIMULATED}) on https://{args.listen}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
