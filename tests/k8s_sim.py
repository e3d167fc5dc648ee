#!/usr/bin/env python3
"""A small Kubernetes API server simulator for end-to-end tests with the real kubectl.

Standard library only; runs on Python 3.8 - 3.13.  It serves plain HTTP on
127.0.0.1, so a kubeconfig with ``server: http://127.0.0.1:PORT`` (and an empty
user) is all kubectl needs.

Usage as a script::

    python3 tests/k8s_sim.py [--port 0] [--server-version 1.32.4] [--port-file PATH] [--verbose]

The first (and only) line printed on stdout is ``listening http://127.0.0.1:PORT``.
The server runs until SIGTERM/SIGINT and then exits 0 without a traceback.

Usage from tests::

    from k8s_sim import start_sim, stop_sim, write_kubeconfig
    proc, sim = start_sim(server_version="1.32.4")   # SimClient
    try:
        write_kubeconfig(tmp / "kubeconfig", sim.base_url, contexts=("sim", "other"))
        sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}])
        sim.set_image_behaviour("repo/web:bad", {"mode": "image_pull_backoff"})
        ...  # run kubectl --kubeconfig ... with HOME set to a temporary directory
        assert any(r["method"] == "PATCH" for r in sim.requests())
    finally:
        stop_sim(proc)

What is simulated
-----------------
* ``/version``; legacy discovery (``/api``, ``/apis``, ``/api/v1``, ``/apis/apps``,
  ``/apis/apps/v1``).  kubectl asks for *aggregated* discovery first (1.27-1.29:
  ``Accept: application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,
  application/json``; 1.30+: ``v=v2``); the simulator answers the plain
  ``application/json`` documents and kubectl silently falls back to fetching
  ``/api/v1`` and ``/apis/apps/v1`` (nothing on stderr).  ``/openapi/*`` and every
  unknown path answer a 404 ``Status``; none of the commands below needs OpenAPI.
* Resources: v1 Namespaces (``default``, ``kube-system`` and ``noetl`` always
  exist), v1 Pods,
  apps/v1 Deployments and ReplicaSets (plus their ``/status`` subresource):
  GET, LIST (``labelSelector`` with ``=``, ``==``, ``!=``, ``in``, ``notin``,
  exists/``!``; ``fieldSelector`` on any dotted path such as ``metadata.name``;
  ``limit``/``continue``), WATCH (``watch=true|1``, ``resourceVersion``,
  ``timeoutSeconds``, ``allowWatchBookmarks`` and the WatchList protocol
  ``sendInitialEvents=true&resourceVersionMatch=NotOlderThan``), POST, PUT,
  PATCH (strategic merge, JSON merge patch RFC 7386, JSON patch RFC 6902) and
  DELETE, all honouring ``?dryRun=All``; the autoscaling/v1 ``/scale``
  subresource of Deployments and ReplicaSets (``kubectl scale``).  Every write
  bumps a global ``resourceVersion`` and notifies watchers; ``metadata.generation`` of
  Deployments/ReplicaSets grows when ``spec`` changes.  Errors are ``Status``
  objects (``NotFound``, ``AlreadyExists``, ``Conflict``, ``Invalid``, ...), so
  kubectl prints e.g. ``Error from server (NotFound): deployments.apps "x" not found``.
* Controllers (one daemon thread; a pass at most every 50 ms, and only after a
  write or when a timer such as a pod's delay is due): a Deployment controller with the
  real RollingUpdate arithmetic (maxSurge/maxUnavailable, 25 %/25 % by default)
  and Recreate, ReplicaSet naming ``<deploy>-<pod-template-hash>``, revisions
  (an older ReplicaSet whose template matches is re-used and gets the next
  revision - this is what ``kubectl rollout undo`` relies on), change-cause
  copying, ``revisionHistoryLimit`` clean-up, ``paused``, progress deadline and
  the ``Progressing``/``Available``/``ReplicaFailure`` conditions; a ReplicaSet
  controller; and a "kubelet" that derives each pod's status from its behaviour.

Behaviours
----------
A behaviour is resolved for every container when its pod is created: the
image's behaviour (``set_image_behaviour``) wins, else the Deployment's default
behaviour (``add_deployment(behaviour=...)``/``set_behaviour``), else
``{"mode": "ready", "delay": 0.3}``.  Init containers run one after the other,
then the app containers start.  Modes (optional keys: ``delay`` seconds before
the mode shows, ``message`` to override the default message):

``ready``              running and ready after ``delay`` (default 0.3 s)
``hang``               stays ``ContainerCreating`` (pod Pending) forever
``image_pull_backoff`` waiting ``ErrImagePull``, 0.5 s later ``ImagePullBackOff``
                       (``Back-off pulling image "X"``)
``crash_loop``         ``CrashLoopBackOff``; ``restartCount`` grows every
                       ``interval`` seconds (default 1), ``lastState.terminated``
                       has ``exitCode`` 1 (or ``exit_code``)
``config_error``       waiting ``CreateContainerConfigError``
``replica_failure``    the ReplicaSet cannot create pods: RS and Deployment get a
                       ``ReplicaFailure`` condition, reason ``FailedCreate``,
                       message ``pods "x-..." is forbidden: exceeded quota: ...``

Behaviours are snapshotted when a pod is created; changing them later does not
touch existing pods.  ``imageID`` is ``<repo>@sha256:<digest>`` where the digest
comes from ``set_digest(image, digest)`` or defaults to sha256(image).

Admin API (JSON in and out; not recorded in the request log; wrapped by SimClient)
-------------------------------------------------------------------------------
``GET    /_sim/health``                        -> ``{"ok": true, "server_version": ...}``
``POST   /_sim/reset``                         delete all but namespaces; clear log, faults,
                                              behaviours, digests; restore server version
``POST   /_sim/deployments``                   body: the keyword arguments of
                                              ``SimClient.add_deployment`` -> the Deployment
``DELETE /_sim/deployments/{ns}/{name}``       delete it with its ReplicaSets and pods
``PUT    /_sim/behaviours/{ns}/{name}``        ``{"behaviour": {...} | null}``
``PUT    /_sim/image-behaviours``              ``{"image": ..., "behaviour": {...} | null}``
``PUT    /_sim/digests``                       ``{"image": ..., "digest": ...}``
``PUT    /_sim/server-version``                ``{"version": "1.29.3"}``
``GET    /_sim/requests`` / ``DELETE``         the API request log / clear it
``GET    /_sim/objects/{kind}/{ns}/{name}``    raw object (``ns`` = ``-`` if cluster scoped)
``GET    /_sim/objects/{kind}?namespace=&labelSelector=``  list of raw objects
``POST   /_sim/faults`` / ``DELETE``           inject a fault (-> ``{"id": n}``) / clear all

Each request-log entry is a dict: ``method``, ``path``, ``query`` (dict of
lists), ``raw_query``, ``content_type``, ``accept``, ``body`` (parsed JSON when
JSON, else text, None when empty), ``user_agent``, ``time`` (epoch seconds) and
``status`` (the HTTP status answered; None while a watch is still streaming).

A fault matches API requests by ``method`` (None = any) and ``path_regex``
(``re.search`` on ``path`` or ``path?query``; None = any).  It answers a
``Status`` with ``status``/``reason``/``message`` (a realistic message is made up
when ``message`` is None, e.g. ``deployments.apps "x" is forbidden: User
"sim-user" cannot patch resource ...``), or the text ``raw_body`` verbatim.
``delay`` sleeps first; with ``status=None`` the request is then served
normally (a slow server).  ``count`` limits how often it fires (None = forever).

kubectl on this machine (findings)
----------------------------------
``/usr/bin/kubectl`` is the Google Cloud SDK *dispatcher* (``kubectl version
--client`` says ``v1.32.4-dispatcher``).  Before running any command it sends
``GET /version?timeout=5s`` with ``User-Agent: kubectl-dispatcher/v1.0`` to the
cluster of the selected context and reads the ``major``/``minor`` fields (not
``gitVersion``; a trailing ``+`` as in GKE's ``"29+"`` is ignored).  For server
minor 27, 28, 29, 30, 31 and 33 it execs
``/usr/lib/google-cloud-sdk/bin/kubectl.1.<minor>`` with the same argv (seen
with ``strace -f -e trace=execve``; the User-Agent then is
``kubectl/v1.27.16``, ``v1.28.15``, ``v1.29.14``, ``v1.30.13``, ``v1.31.9``,
``v1.33.1``).  For 1.32, for any version outside 1.27-1.33 and when ``/version``
fails it runs its built-in ``kubectl/v1.32.4`` (no exec).  The ``/version``
answer lands in the HTTP cache under ``$HOME/.kube/cache/http`` and later runs
re-use it without asking, so give every kubectl run a fresh ``HOME`` when the
server version changes.  ``--server-version`` (or ``PUT /_sim/server-version``)
therefore selects the kubectl that runs.

Request sequences observed (discovery left out):

``kubectl rollout status deployment/X`` with kubectl 1.27-1.33 (the dispatcher's)::

    GET /apis/apps/v1/namespaces/NS/deployments/X
    GET .../deployments?fieldSelector=metadata.name%3DX&limit=500&resourceVersion=0
    GET .../deployments?allowWatchBookmarks=true&fieldSelector=metadata.name%3DX
        &resourceVersion=<the list's RV>&timeoutSeconds=<random>&watch=true

and on ``--timeout`` expiry it prints ``error: timed out waiting for the condition``.
With kubectl 1.37 the list disappears; a single WatchList request replaces it::

    GET /apis/apps/v1/namespaces/NS/deployments/X
    GET .../deployments?allowWatchBookmarks=true&fieldSelector=metadata.name%3DX
        &resourceVersionMatch=NotOlderThan&sendInitialEvents=true&timeoutSeconds=...&watch=true

which must start with ADDED events for the existing objects and then a
BOOKMARK whose object has ``metadata.annotations["k8s.io/initial-events-end"]
= "true"`` (else kubectl waits for its timeout).  The same holds for
``kubectl wait``.  ``kubectl get -w`` (all versions) lists, then watches with
``resourceVersion=<list RV>&watch=true``.

``kubectl rollout undo deployment/X`` (all versions)::

    GET   .../deployments/X            (twice)
    GET   .../replicasets?labelSelector=<deployment selector, e.g. app%3DX>
    PATCH .../deployments/X  application/json-patch+json
          [{"op": "replace", "path": "/spec/template", "value": <RS template
            without pod-template-hash>},
           {"op": "replace", "path": "/metadata/annotations", "value": {...}}]

ReplicaSets belong to the Deployment through a controller ``ownerReference``
with its uid.  Older kubectl (seen with 1.27) sends ``"creationTimestamp": null``
inside the template; the simulator drops it so the template still equals the old
ReplicaSet's, which is then re-used with the next revision number.
``kubectl set image`` sends a strategic merge patch with
``$setElementOrder/containers``; ``kubectl annotate`` a JSON merge patch.

Limitations: no authentication/RBAC; JSON only - protobuf request bodies (sent
by typed-client commands such as ``kubectl create deployment``) get a 415; no
OpenAPI, so ``kubectl create -f``/``apply -f`` need ``--validate=false`` (they
then work; the admin API is the usual way to create objects); no server-side
apply; no Table output (kubectl's human-readable ``get`` falls back to NAME/AGE
columns); no events, services or other kinds; label/field
selectors and strategic-merge keys cover the common cases only; watches replay
from a history of the last 20000 events (older ``resourceVersion`` -> 410).
"""
from __future__ import annotations

import argparse
import base64
import collections
import copy
import datetime
import hashlib
import json
import os
import queue
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_SERVER_VERSION = "1.32.4"
DEFAULT_NAMESPACES = ("default", "kube-system", "noetl")
TICK_SECONDS = 0.05
HISTORY_LIMIT = 20000
TERMINATION_GRACE_SECONDS = 0.2
POD_TEMPLATE_HASH = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
CHANGE_CAUSE = "kubernetes.io/change-cause"
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
# Deployment annotations the controller does not copy onto ReplicaSets.
ANNOTATIONS_TO_SKIP = frozenset([
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION, REVISION_HISTORY, DESIRED_REPLICAS, MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
])
MODES = ("ready", "hang", "image_pull_backoff", "crash_loop", "config_error", "replica_failure")
DEFAULT_BEHAVIOUR = {"mode": "ready", "delay": 0.3}
HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

def clone(obj):
    """Deep copy of JSON-like data."""
    return copy.deepcopy(obj)


def iso(ts=None):
    """RFC 3339 timestamp (seconds precision, UTC) for epoch seconds ``ts``."""
    if ts is None:
        ts = time.time()
    dt = datetime.datetime.fromtimestamp(int(ts), tz=datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def new_uid():
    raw = "%032x" % random.getrandbits(128)
    return "%s-%s-%s-%s-%s" % (raw[:8], raw[8:12], raw[12:16], raw[16:20], raw[20:])


def random_suffix(n=5):
    return "".join(random.choice(HASH_ALPHABET) for _ in range(n))


def safe_encode(number):
    """Render an integer with the vowel-free alphabet Kubernetes uses for hashes."""
    out = []
    while True:
        number, rem = divmod(number, len(HASH_ALPHABET))
        out.append(HASH_ALPHABET[rem])
        if number == 0:
            break
    return "".join(out)


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def parse_version(text):
    """'1.29' / 'v1.29.3' -> (major, minor, gitVersion)."""
    text = text.strip()
    if text.startswith("v"):
        text = text[1:]
    parts = text.split(".")
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
        raise ValueError("server version must look like 1.29 or 1.29.3, got %r" % text)
    if len(parts) == 2:
        parts.append("0")
    return parts[0], parts[1], "v" + ".".join(parts)


def image_repo(image):
    """The image reference without tag/digest ('reg:5000/a/b:1' -> 'reg:5000/a/b')."""
    if "@" in image:
        image = image.split("@", 1)[0]
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        image = image[:colon]
    return image


def default_pull_policy(image):
    if "@" in image:
        return "IfNotPresent"
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon <= slash or image[colon + 1:] == "latest":
        return "Always"
    return "IfNotPresent"


def get_path(obj, dotted):
    cur = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def parse_int_or_percent(value, total, round_up):
    if isinstance(value, int):
        return value
    text = str(value)
    if text.endswith("%"):
        pct = int(text[:-1])
        scaled = total * pct / 100.0
        if round_up:
            return int(-(-scaled // 1))
        return int(scaled // 1)
    return int(text)


# --------------------------------------------------------------------------
# Label and field selectors
# --------------------------------------------------------------------------

def _split_top_level(text):
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


_SET_RE = re.compile(r"^([^\s!=()]+)\s+(in|notin)\s*\(([^)]*)\)$")


def parse_label_selector(text):
    """Parse a label selector string into a list of (key, op, values) requirements."""
    reqs = []
    for part in _split_top_level(text or ""):
        m = _SET_RE.match(part)
        if m:
            values = {v.strip() for v in m.group(3).split(",") if v.strip()}
            reqs.append((m.group(1), m.group(2), values))
        elif part.startswith("!"):
            reqs.append((part[1:].strip(), "!exists", None))
        elif "!=" in part:
            key, value = part.split("!=", 1)
            reqs.append((key.strip(), "notin", {value.strip()}))
        elif "==" in part:
            key, value = part.split("==", 1)
            reqs.append((key.strip(), "in", {value.strip()}))
        elif "=" in part:
            key, value = part.split("=", 1)
            reqs.append((key.strip(), "in", {value.strip()}))
        else:
            if re.search(r"[\s()]", part):
                raise ValueError("unable to parse requirement: %r" % part)
            reqs.append((part, "exists", None))
    for key, _op, _vals in reqs:
        if not key:
            raise ValueError("invalid label selector %r" % text)
    return reqs


def selector_from_spec(selector):
    """metav1.LabelSelector (matchLabels/matchExpressions) -> requirements."""
    reqs = []
    selector = selector or {}
    for key, value in sorted((selector.get("matchLabels") or {}).items()):
        reqs.append((key, "in", {value}))
    for expr in selector.get("matchExpressions") or []:
        op = {"In": "in", "NotIn": "notin", "Exists": "exists",
              "DoesNotExist": "!exists"}.get(expr.get("operator"), "in")
        reqs.append((expr.get("key"), op, set(expr.get("values") or [])))
    return reqs


def labels_match(reqs, labels):
    labels = labels or {}
    for key, op, values in reqs:
        if op == "in" and labels.get(key) not in values:
            return False
        if op == "notin" and key in labels and labels[key] in values:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!exists" and key in labels:
            return False
    return True


def selector_to_string(selector):
    parts = []
    for key, op, values in selector_from_spec(selector):
        if op == "in" and len(values) == 1:
            parts.append("%s=%s" % (key, next(iter(values))))
        elif op in ("in", "notin"):
            parts.append("%s %s (%s)" % (key, op, ",".join(sorted(values))))
        elif op == "exists":
            parts.append(key)
        else:
            parts.append("!" + key)
    return ",".join(parts)


def parse_field_selector(text):
    reqs = []
    for part in _split_top_level(text or ""):
        if "!=" in part:
            key, value = part.split("!=", 1)
            reqs.append((key.strip(), False, value.strip()))
        elif "==" in part:
            key, value = part.split("==", 1)
            reqs.append((key.strip(), True, value.strip()))
        elif "=" in part:
            key, value = part.split("=", 1)
            reqs.append((key.strip(), True, value.strip()))
        else:
            raise ValueError("invalid field selector %r" % part)
    return reqs


def fields_match(reqs, obj):
    for path, equal, value in reqs:
        actual = get_path(obj, path)
        actual = "" if actual is None else str(actual)
        if (actual == value) != equal:
            return False
    return True


# --------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------

class PatchError(Exception):
    pass


# patchMergeKey of the list fields in the Kubernetes types we serve.
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "env": "name", "volumes": "name", "imagePullSecrets": "name",
    "resourceClaims": "name", "ports": "containerPort", "volumeMounts": "mountPath",
    "volumeDevices": "devicePath", "conditions": "type", "ownerReferences": "uid",
    "hostAliases": "ip", "topologySpreadConstraints": "topologyKey",
}
# Lists of primitives with patchStrategy=merge.
PRIMITIVE_MERGE_LISTS = frozenset(["finalizers"])


def _strip_directives(value):
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items()
                    if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value
                if not (isinstance(v, dict) and v.get("$patch") is not None and len(v) == 1)]
    return value


def strategic_merge_patch(original, patch):
    """Apply a strategic merge patch (the subset kubectl produces and people write).

    Maps merge recursively and ``null`` deletes a key; lists with a known merge
    key (containers, initContainers, env, volumes, ports, ...) merge item by
    item; other lists are replaced.  Supported directives: ``$patch:
    replace|delete`` (maps and list items), ``$setElementOrder/<list>``,
    ``$deleteFromPrimitiveList/<list>`` and ``$retainKeys``.
    Returns None when the whole map is deleted by ``$patch: delete``.
    """
    if not isinstance(patch, dict):
        raise PatchError("strategic merge patch must be a JSON object")
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip_directives(patch)
    if directive == "delete":
        return None
    if directive is not None:
        raise PatchError("unknown patch directive %r" % directive)
    result = clone(original) if isinstance(original, dict) else {}
    orders, deletions, retain = {}, {}, None
    for key, value in patch.items():
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value
        elif key.startswith("$deleteFromPrimitiveList/"):
            deletions[key.split("/", 1)[1]] = value
        elif key == "$retainKeys":
            retain = value
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            current = result.get(key)
            result[key] = _merge_list(key, current if isinstance(current, list) else [], value)
        else:
            result[key] = clone(value)
    for key, values in deletions.items():
        if isinstance(result.get(key), list):
            result[key] = [v for v in result[key] if v not in values]
    for key, order in orders.items():
        if isinstance(result.get(key), list):
            result[key] = _apply_order(key, result[key], order)
    if retain is not None:
        for key in list(result):
            if key not in retain:
                del result[key]
    return result


def _merge_list(field, original, patch):
    if any(isinstance(v, dict) and v.get("$patch") == "replace" for v in patch):
        return [_strip_directives(v) for v in patch
                if not (isinstance(v, dict) and v.get("$patch") == "replace")]
    key = MERGE_KEYS.get(field)
    if key and all(isinstance(v, dict) for v in patch):
        result = clone(original)
        for item in patch:
            ident = item.get(key)
            index = None
            for i, existing in enumerate(result):
                if isinstance(existing, dict) and existing.get(key) == ident:
                    index = i
                    break
            if item.get("$patch") == "delete":
                if index is not None:
                    del result[index]
                continue
            if ident is None:
                raise PatchError("map in list %r lacks merge key %r" % (field, key))
            if index is None:
                result.append(strategic_merge_patch({}, item))
            else:
                merged = strategic_merge_patch(result[index], item)
                if merged is None:
                    del result[index]
                else:
                    result[index] = merged
        return result
    if field in PRIMITIVE_MERGE_LISTS:
        result = list(original)
        for value in patch:
            if value not in result:
                result.append(value)
        return result
    return _strip_directives(clone(patch))


def _apply_order(field, items, order):
    key = MERGE_KEYS.get(field)

    def ident(v):
        return v.get(key) if (key and isinstance(v, dict)) else canonical(v)

    wanted = [ident(v) for v in order]
    ranked = [v for v in items if ident(v) in wanted]
    ranked.sort(key=lambda v: wanted.index(ident(v)))
    return ranked + [v for v in items if ident(v) not in wanted]


def json_merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return clone(patch)
    result = clone(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


def _pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError("invalid JSON pointer %r" % path)
    return [t.replace("~1", "/").replace("~0", "~") for t in path.split("/")[1:]]


def _index(container, token, allow_end=False):
    if allow_end and token == "-":
        return len(container)
    if not re.match(r"^(0|[1-9][0-9]*)$", token):
        raise PatchError("invalid array index %r" % token)
    index = int(token)
    limit = len(container) + (1 if allow_end else 0)
    if index >= limit:
        raise PatchError("array index %d out of bounds" % index)
    return index


def _resolve(doc, tokens):
    cur = doc
    for token in tokens:
        if isinstance(cur, dict):
            if token not in cur:
                raise PatchError("doc is missing path: /%s" % "/".join(tokens))
            cur = cur[token]
        elif isinstance(cur, list):
            cur = cur[_index(cur, token)]
        else:
            raise PatchError("doc is missing path: /%s" % "/".join(tokens))
    return cur


def _add(doc, tokens, value):
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, allow_end=True), value)
    else:
        raise PatchError("cannot add to a scalar")
    return doc


def _remove(doc, tokens):
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _resolve(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError("remove operation does not apply: doc is missing key: /%s"
                             % "/".join(tokens))
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last))
    raise PatchError("cannot remove from a scalar")


def json_patch(document, operations):
    """RFC 6902 JSON patch: add, remove, replace, move, copy, test."""
    if not isinstance(operations, list):
        raise PatchError("JSON patch must be a list of operations")
    doc = clone(document)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError("invalid JSON patch operation %r" % (op,))
        kind = op["op"]
        tokens = _pointer(op["path"])
        if kind == "add":
            doc = _add(doc, tokens, clone(op.get("value")))
        elif kind == "remove":
            _remove(doc, tokens)
        elif kind == "replace":
            if not tokens:
                doc = clone(op.get("value"))
                continue
            parent = _resolve(doc, tokens[:-1])
            last = tokens[-1]
            if isinstance(parent, dict):
                if last not in parent:
                    raise PatchError("replace operation does not apply: doc is missing key: %s"
                                     % op["path"])
                parent[last] = clone(op.get("value"))
            elif isinstance(parent, list):
                parent[_index(parent, last)] = clone(op.get("value"))
            else:
                raise PatchError("cannot replace inside a scalar")
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from", ""))
            if kind == "move":
                value = _remove(doc, source)
            else:
                value = clone(_resolve(doc, source))
            doc = _add(doc, tokens, value)
        elif kind == "test":
            if _resolve(doc, tokens) != op.get("value"):
                raise PatchError("testing value %s failed" % op["path"])
        else:
            raise PatchError("unexpected kind: %s" % kind)
    return doc


# --------------------------------------------------------------------------
# Resource types, errors, defaults, validation
# --------------------------------------------------------------------------

class ResourceType:
    def __init__(self, group, plural, kind, namespaced, short_names, categories=()):
        self.group = group
        self.version = "v1"
        self.plural = plural
        self.kind = kind
        self.namespaced = namespaced
        self.short_names = list(short_names)
        self.categories = list(categories)

    @property
    def api_version(self):
        return "%s/%s" % (self.group, self.version) if self.group else self.version

    @property
    def qualified(self):
        return "%s.%s" % (self.plural, self.group) if self.group else self.plural

    @property
    def qualified_kind(self):
        return "%s.%s" % (self.kind, self.group) if self.group else self.kind

    @property
    def has_generation(self):
        return self.plural in ("deployments", "replicasets")

    @property
    def has_scale(self):
        return self.plural in ("deployments", "replicasets")

    def discovery(self):
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        entries = [{
            "name": self.plural, "singularName": self.kind.lower(),
            "namespaced": self.namespaced, "kind": self.kind, "verbs": verbs,
            "shortNames": self.short_names,
        }]
        if self.categories:
            entries[0]["categories"] = self.categories
        if self.plural != "namespaces":
            entries.append({"name": self.plural + "/status", "singularName": "",
                            "namespaced": self.namespaced, "kind": self.kind,
                            "verbs": ["get", "patch", "update"]})
        if self.has_scale:
            entries.append({"name": self.plural + "/scale", "singularName": "",
                            "namespaced": True, "group": "autoscaling", "version": "v1",
                            "kind": "Scale", "verbs": ["get", "patch", "update"]})
        return entries


NAMESPACES = ResourceType("", "namespaces", "Namespace", False, ["ns"])
PODS = ResourceType("", "pods", "Pod", True, ["po"], ["all"])
DEPLOYMENTS = ResourceType("apps", "deployments", "Deployment", True, ["deploy"], ["all"])
REPLICASETS = ResourceType("apps", "replicasets", "ReplicaSet", True, ["rs"], ["all"])
RESOURCE_TYPES = (NAMESPACES, PODS, DEPLOYMENTS, REPLICASETS)
BY_GROUP_PLURAL = {(t.group, t.plural): t for t in RESOURCE_TYPES}


def resource_type_for(kind):
    """Find a type by kind, plural, singular or short name, case-insensitively."""
    wanted = kind.lower()
    for rtype in RESOURCE_TYPES:
        names = [rtype.kind.lower(), rtype.plural, rtype.qualified] + rtype.short_names
        if wanted in names:
            return rtype
    raise KeyError(kind)


class ApiError(Exception):
    """An error answered as a metav1.Status."""

    def __init__(self, code, reason, message, details=None):
        Exception.__init__(self, message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self):
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


def not_found(rtype, name):
    return ApiError(404, "NotFound", '%s "%s" not found' % (rtype.qualified, name),
                    {"name": name, "group": rtype.group, "kind": rtype.plural})


def invalid(rtype, name, causes):
    text = ", ".join("%s: %s" % (field, msg) for field, msg in causes)
    if len(causes) > 1:
        text = "[%s]" % text
    return ApiError(422, "Invalid", '%s "%s" is invalid: %s' % (rtype.qualified_kind, name, text),
                    {"name": name, "group": rtype.group, "kind": rtype.kind,
                     "causes": [{"reason": "FieldValueInvalid", "message": msg, "field": field}
                                for field, msg in causes]})


def apply_pod_spec_defaults(spec):
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for field in ("initContainers", "containers"):
        for container in spec.get(field) or []:
            if not isinstance(container, dict):
                continue
            container.setdefault("resources", {})
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            if isinstance(container.get("image"), str):
                container.setdefault("imagePullPolicy", default_pull_policy(container["image"]))
            for port in container.get("ports") or []:
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")


def apply_defaults(rtype, obj):
    meta = obj.setdefault("metadata", {})
    if rtype is NAMESPACES:
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        obj.setdefault("status", {"phase": "Active"})
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name")
        return obj
    spec = obj.setdefault("spec", {})
    if rtype is PODS:
        apply_pod_spec_defaults(spec)
        obj.setdefault("status", {"phase": "Pending", "qosClass": "BestEffort"})
        return obj
    spec.setdefault("replicas", 1)
    template = spec.setdefault("template", {})
    template_meta = template.setdefault("metadata", {})
    if template_meta.get("creationTimestamp", "") is None:
        del template_meta["creationTimestamp"]  # older kubectl sends null; it means "unset"
    apply_pod_spec_defaults(template.setdefault("spec", {}))
    if rtype is DEPLOYMENTS:
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxSurge", "25%")
            rolling.setdefault("maxUnavailable", "25%")
        if not meta.get("labels") and template["metadata"].get("labels"):
            meta["labels"] = clone(template["metadata"]["labels"])
    obj.setdefault("status", {})
    return obj


def _validate_pod_spec(spec, prefix):
    causes = []
    if not isinstance(spec, dict):
        return [(prefix, "Required value")]
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        causes.append((prefix + ".containers", "Required value"))
    for field in ("initContainers", "containers"):
        seen = set()
        for i, container in enumerate(spec.get(field) or []):
            where = "%s.%s[%d]" % (prefix, field, i)
            if not isinstance(container, dict):
                causes.append((where, "Invalid value: must be an object"))
                continue
            name = container.get("name")
            if not name:
                causes.append((where + ".name", "Required value"))
            elif name in seen:
                causes.append((where + ".name", 'Duplicate value: "%s"' % name))
            seen.add(name)
            if not container.get("image"):
                causes.append((where + ".image", "Required value"))
    return causes


def validate(rtype, obj, old=None):
    name = obj["metadata"].get("name", "")
    causes = []
    if not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", name or "") or len(name) > 253:
        causes.append(("metadata.name", 'Invalid value: "%s": a lowercase RFC 1123 subdomain '
                       "must consist of lower case alphanumeric characters, '-' or '.'" % name))
    if rtype is PODS:
        causes += _validate_pod_spec(obj.get("spec"), "spec")
    elif rtype in (DEPLOYMENTS, REPLICASETS):
        spec = obj.get("spec") or {}
        replicas = spec.get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            causes.append(("spec.replicas", "Invalid value: %r: must be greater than or equal to 0"
                           % (replicas,)))
        selector = spec.get("selector")
        if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
            causes.append(("spec.selector", "Required value"))
        else:
            labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
            if not labels_match(selector_from_spec(selector), labels):
                causes.append(("spec.template.metadata.labels",
                               "Invalid value: %s: `selector` does not match template `labels`"
                               % json.dumps(labels, sort_keys=True)))
            if old is not None and rtype is DEPLOYMENTS and \
                    canonical(selector) != canonical(old["spec"].get("selector")):
                causes.append(("spec.selector", "Invalid value: %s: field is immutable"
                               % json.dumps(selector, sort_keys=True)))
        causes += _validate_pod_spec((spec.get("template") or {}).get("spec"),
                                     "spec.template.spec")
    if causes:
        raise invalid(rtype, name, causes)


# --------------------------------------------------------------------------
# Object store with watch support
# --------------------------------------------------------------------------

class Watcher:
    """A registered watch: events are queued here by the store."""

    def __init__(self, rtype, namespace):
        self.rtype = rtype
        self.namespace = namespace
        self.events = queue.Queue()

    def wants(self, rtype, obj):
        if rtype is not self.rtype:
            return False
        return self.namespace is None or obj["metadata"].get("namespace") == self.namespace


class Store:
    """All objects, a global resourceVersion counter, event history and watchers.

    Everything runs under ``self.lock`` (re-entrant).  Objects are kept with
    ``kind``/``apiVersion`` set; callers receive copies.
    """

    def __init__(self):
        self.lock = threading.RLock()
        self.rv = 0
        self.objects = {}  # (plural, namespace, name) -> object
        self.history = collections.deque()  # (rv, type, rtype, obj, old)
        self.history_floor = 0
        self.watchers = set()
        self.changed = threading.Event()  # set on every write; wakes the controllers

    # -- reading ---------------------------------------------------------
    def get(self, rtype, namespace, name):
        with self.lock:
            obj = self.objects.get((rtype.plural, namespace or "", name))
            return clone(obj) if obj is not None else None

    def raw(self, rtype, namespace=None):
        """The stored objects themselves (no copies, unsorted): read-only use."""
        with self.lock:
            return [obj for key, obj in self.objects.items()
                    if key[0] == rtype.plural and (namespace is None or key[1] == namespace)]

    def list(self, rtype, namespace=None, label_reqs=None, field_reqs=None):
        with self.lock:
            out = []
            for key in sorted(self.objects):
                if key[0] != rtype.plural or (namespace is not None and key[1] != namespace):
                    continue
                obj = self.objects[key]
                if label_reqs and not labels_match(label_reqs, obj["metadata"].get("labels")):
                    continue
                if field_reqs and not fields_match(field_reqs, obj):
                    continue
                out.append(clone(obj))
            return out

    # -- writing ---------------------------------------------------------
    def _record(self, etype, rtype, obj, old):
        self.changed.set()
        self.history.append((self.rv, etype, rtype, obj, old))
        while len(self.history) > HISTORY_LIMIT:
            self.history_floor = self.history.popleft()[0]
        for watcher in list(self.watchers):
            if watcher.wants(rtype, obj) or (old is not None and watcher.wants(rtype, old)):
                watcher.events.put((self.rv, etype, obj, old))

    def create(self, rtype, obj, dry_run=False):
        with self.lock:
            obj = clone(obj)
            meta = obj["metadata"]
            key = (rtype.plural, meta.get("namespace", ""), meta["name"])
            if key in self.objects:
                raise ApiError(409, "AlreadyExists", '%s "%s" already exists'
                               % (rtype.qualified, meta["name"]),
                               {"name": meta["name"], "group": rtype.group, "kind": rtype.plural})
            obj["kind"], obj["apiVersion"] = rtype.kind, rtype.api_version
            meta["uid"] = new_uid()
            meta["creationTimestamp"] = iso()
            if rtype.has_generation:
                meta["generation"] = 1
            for field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
                meta.pop(field, None)
            if dry_run:
                return clone(obj)
            self.rv += 1
            meta["resourceVersion"] = str(self.rv)
            self.objects[key] = obj
            self._record("ADDED", rtype, clone(obj), None)
            return clone(obj)

    def update(self, rtype, obj, dry_run=False):
        """Store ``obj`` over the existing object; a no-op update is not written."""
        with self.lock:
            obj = clone(obj)
            meta = obj["metadata"]
            key = (rtype.plural, meta.get("namespace", ""), meta["name"])
            old = self.objects.get(key)
            if old is None:
                raise not_found(rtype, meta["name"])
            obj["kind"], obj["apiVersion"] = rtype.kind, rtype.api_version
            for field in ("uid", "creationTimestamp", "resourceVersion"):
                meta[field] = old["metadata"].get(field)
            if rtype.has_generation:
                generation = old["metadata"].get("generation", 1)
                if canonical(obj.get("spec")) != canonical(old.get("spec")):
                    generation += 1
                meta["generation"] = generation
            if canonical(obj) == canonical(old) or dry_run:
                return clone(obj)
            self.rv += 1
            meta["resourceVersion"] = str(self.rv)
            self.objects[key] = obj
            self._record("MODIFIED", rtype, clone(obj), clone(old))
            return clone(obj)

    def delete(self, rtype, namespace, name, dry_run=False):
        with self.lock:
            key = (rtype.plural, namespace or "", name)
            old = self.objects.get(key)
            if old is None:
                raise not_found(rtype, name)
            if dry_run:
                return clone(old)
            del self.objects[key]
            self.rv += 1
            gone = clone(old)
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self._record("DELETED", rtype, gone, None)
            return clone(gone)

    # -- watching --------------------------------------------------------
    def watch(self, rtype, namespace, since):
        """Register a watcher.  ``since``: None = current state as ADDED events,
        an int = replay history after that resourceVersion.  Returns
        (watcher, initial events, current resourceVersion)."""
        with self.lock:
            watcher = Watcher(rtype, namespace)
            initial = []
            if since is None:
                for obj in self.list(rtype, namespace):
                    initial.append((int(obj["metadata"]["resourceVersion"]), "ADDED", obj, None))
            else:
                if since < self.history_floor:
                    raise ApiError(410, "Expired", "too old resource version: %d (%d)"
                                   % (since, self.history_floor + 1))
                for rv, etype, ev_rtype, obj, old in self.history:
                    if rv > since and (watcher.wants(ev_rtype, obj) or
                                       (old is not None and watcher.wants(ev_rtype, old))):
                        initial.append((rv, etype, obj, old))
            self.watchers.add(watcher)
            return watcher, initial, self.rv

    def unwatch(self, watcher):
        with self.lock:
            self.watchers.discard(watcher)

    def close_watchers(self):
        with self.lock:
            for watcher in self.watchers:
                watcher.events.put(None)
            self.watchers.clear()


# --------------------------------------------------------------------------
# Behaviours, kubelet and controllers
# --------------------------------------------------------------------------

def normalize_behaviour(behaviour):
    """Validate a behaviour; returns a new dict (or None)."""
    if behaviour is None:
        return None
    if isinstance(behaviour, str):
        behaviour = {"mode": behaviour}
    if not isinstance(behaviour, dict):
        raise ValueError("behaviour must be an object, got %r" % (behaviour,))
    out = dict(behaviour)
    out.setdefault("mode", "ready")
    if out["mode"] not in MODES:
        raise ValueError("unknown behaviour mode %r (known: %s)" % (out["mode"], ", ".join(MODES)))
    out["delay"] = float(out.get("delay", DEFAULT_BEHAVIOUR["delay"] if out["mode"] == "ready"
                                 else 0.1))
    return out


def _container_id(pod_uid, name, restarts):
    raw = "%s/%s/%d" % (pod_uid, name, restarts)
    return "containerd://" + hashlib.sha256(raw.encode()).hexdigest()


class Cluster:
    """Controllers and kubelet on top of the Store, plus the test-controlled knobs."""

    def __init__(self, store):
        self.store = store
        self.image_behaviours = {}
        self.deployment_behaviours = {}  # (namespace, name) -> behaviour
        self.digests = {}
        self.pod_runtime = {}  # pod uid -> {"start", "init", "app", "ready_at"}
        self.progress_at = {}  # deployment uid -> epoch seconds of last progress
        self.instant = set()  # (namespace, name) of deployments converging instantly
        self._wake_at = float("inf")  # earliest time-based change seen by reconcile()
        self._stop = threading.Event()
        self._thread = None

    # -- lifecycle -------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name="k8s-sim-controllers")
        self._thread.daemon = True
        self._thread.start()

    def stop(self):
        self._stop.set()
        self.store.changed.set()
        if self._thread is not None:
            self._thread.join(2)

    def wake(self, at):
        """Ask for a reconcile at time ``at`` (a timer: pod delays, deadlines...)."""
        self._wake_at = min(self._wake_at, at)

    def _run(self):
        """Reconcile at most every TICK_SECONDS, and only when something was
        written or a timer is due - an idle simulator uses no CPU."""
        while not self._stop.wait(TICK_SECONDS):
            try:
                with self.store.lock:
                    self.store.changed.clear()
                    self._wake_at = float("inf")
                    self.reconcile(time.time())
                    wake_at = self._wake_at
            except Exception as exc:  # keep the controllers alive; report the bug
                sys.stderr.write("k8s_sim: controller error: %r\n" % (exc,))
                continue
            timeout = wake_at - time.time()
            if not self.store.changed.is_set() and timeout > TICK_SECONDS:
                self.store.changed.wait(min(timeout, 60.0))

    def reset(self):
        self.image_behaviours.clear()
        self.deployment_behaviours.clear()
        self.digests.clear()
        self.pod_runtime.clear()
        self.progress_at.clear()

    # -- helpers ---------------------------------------------------------
    def digest_for(self, image):
        if "@sha256:" in image:
            return image.split("@sha256:", 1)[1]
        digest = self.digests.get(image)
        if digest is None:
            digest = hashlib.sha256(image.encode()).hexdigest()
        if digest.startswith("sha256:"):
            digest = digest[len("sha256:"):]
        return digest

    def image_id(self, image):
        return "%s@sha256:%s" % (image_repo(image), self.digest_for(image))

    def owned(self, rtype, owner, namespace):
        uid = owner["metadata"]["uid"]
        return [o for o in self.store.raw(rtype, namespace)
                if any(ref.get("uid") == uid and ref.get("controller")
                       for ref in o["metadata"].get("ownerReferences") or [])]

    def owner_of(self, obj, kind):
        for ref in obj["metadata"].get("ownerReferences") or []:
            if ref.get("controller") and ref.get("kind") == kind:
                return ref
        return None

    def resolve_behaviours(self, pod_spec, namespace, deployment_name):
        """Per-container behaviours (init containers, app containers)."""
        fallback = self.deployment_behaviours.get((namespace, deployment_name)) or DEFAULT_BEHAVIOUR

        def pick(container):
            return normalize_behaviour(self.image_behaviours.get(container.get("image"))
                                       or fallback)

        return ([pick(c) for c in pod_spec.get("initContainers") or []],
                [pick(c) for c in pod_spec.get("containers") or []])

    def _deployment_name_of_rs(self, rs):
        ref = self.owner_of(rs, "Deployment")
        return ref["name"] if ref else None

    # -- the control loop ------------------------------------------------
    def reconcile(self, now):
        """One pass of every controller.  Objects handed around are the stored
        ones (not copies): controllers clone before they change anything."""
        for deployment in self.store.raw(DEPLOYMENTS):
            self.sync_deployment(deployment, now)
        for rs in self.store.raw(REPLICASETS):
            self.sync_replicaset(rs, now)
        for pod in self.store.raw(PODS):
            self.sync_pod(pod, now)
        for rs in self.store.raw(REPLICASETS):
            self.update_replicaset_status(rs, now)
        self.collect_garbage()

    def converge(self, namespace, name, rounds=40):
        """Run the controllers until the Deployment's rollout is complete, with
        pods becoming ready at once (used by the admin API)."""
        self.instant.add((namespace, name))
        try:
            for _ in range(rounds):
                self.reconcile(time.time())
                deployment = self.store.get(DEPLOYMENTS, namespace, name)
                if deployment is None or self.is_complete(deployment):
                    break
            self.reconcile(time.time())
        finally:
            self.instant.discard((namespace, name))

    @staticmethod
    def is_complete(deployment):
        spec, status = deployment["spec"], deployment.get("status") or {}
        replicas = spec.get("replicas", 1)
        return (status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 1)
                and status.get("updatedReplicas", 0) == replicas
                and status.get("replicas", 0) == replicas
                and status.get("availableReplicas", 0) == replicas)

    # -- Deployment controller ------------------------------------------
    @staticmethod
    def template_hash(template, collision_count=0):
        template = clone(template)
        labels = (template.get("metadata") or {}).get("labels") or {}
        labels.pop(POD_TEMPLATE_HASH, None)
        digest = hashlib.sha256((canonical(template) + str(collision_count)).encode()).digest()
        return safe_encode(int.from_bytes(digest[:6], "big"))[:10]

    @staticmethod
    def equal_ignore_hash(a, b):
        a, b = clone(a), clone(b)
        for template in (a, b):
            template.setdefault("metadata", {})
            labels = template["metadata"].get("labels") or {}
            labels.pop(POD_TEMPLATE_HASH, None)
            template["metadata"]["labels"] = labels
        return canonical(a) == canonical(b)

    @staticmethod
    def revision_of(obj):
        try:
            return int((obj["metadata"].get("annotations") or {}).get(REVISION, "0"))
        except ValueError:
            return 0

    def max_surge_unavailable(self, deployment):
        spec = deployment["spec"]
        replicas = spec.get("replicas", 1)
        strategy = spec.get("strategy") or {}
        if strategy.get("type") == "Recreate":
            return 0, 0
        rolling = strategy.get("rollingUpdate") or {}
        surge = parse_int_or_percent(rolling.get("maxSurge", "25%"), replicas, True)
        unavailable = parse_int_or_percent(rolling.get("maxUnavailable", "25%"), replicas, False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        return surge, min(unavailable, replicas)

    def _set_rs_replicas(self, rs, replicas, deployment):
        if rs["spec"].get("replicas") == replicas:
            return rs
        surge, _ = self.max_surge_unavailable(deployment)
        rs = clone(rs)
        rs["spec"]["replicas"] = replicas
        annotations = rs["metadata"].setdefault("annotations", {})
        annotations[DESIRED_REPLICAS] = str(deployment["spec"].get("replicas", 1))
        annotations[MAX_REPLICAS] = str(deployment["spec"].get("replicas", 1) + surge)
        return self.store.update(REPLICASETS, rs)

    def _create_new_replicaset(self, deployment, revision, now):
        meta, spec = deployment["metadata"], deployment["spec"]
        template = clone(spec["template"])
        collision = 0
        while True:
            pod_hash = self.template_hash(spec["template"], collision)
            name = "%s-%s" % (meta["name"], pod_hash)
            if self.store.get(REPLICASETS, meta["namespace"], name) is None:
                break
            collision += 1
        template.setdefault("metadata", {}).setdefault("labels", {})[POD_TEMPLATE_HASH] = pod_hash
        selector = clone(spec["selector"])
        selector.setdefault("matchLabels", {})[POD_TEMPLATE_HASH] = pod_hash
        surge, _ = self.max_surge_unavailable(deployment)
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                           if k not in ANNOTATIONS_TO_SKIP}
        annotations[REVISION] = str(revision)
        annotations[DESIRED_REPLICAS] = str(spec.get("replicas", 1))
        annotations[MAX_REPLICAS] = str(spec.get("replicas", 1) + surge)
        rs = {
            "metadata": {
                "name": name, "namespace": meta["namespace"],
                "labels": clone(template["metadata"]["labels"]),
                "annotations": annotations,
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"],
                    "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": {"replicas": 0, "minReadySeconds": spec.get("minReadySeconds", 0),
                     "selector": selector, "template": template},
            "status": {"replicas": 0},
        }
        apply_defaults(REPLICASETS, rs)
        return self.store.create(REPLICASETS, rs)

    def _sync_new_rs_annotations(self, rs, deployment, revision):
        """Copy Deployment annotations onto the new RS and bump its revision."""
        annotations = dict(rs["metadata"].get("annotations") or {})
        for key, value in (deployment["metadata"].get("annotations") or {}).items():
            if key not in ANNOTATIONS_TO_SKIP:
                annotations[key] = value
        old_revision = self.revision_of(rs)
        if old_revision < revision:
            annotations[REVISION] = str(revision)
            if old_revision:
                history = [h for h in annotations.get(REVISION_HISTORY, "").split(",") if h]
                history.append(str(old_revision))
                annotations[REVISION_HISTORY] = ",".join(history)
        if annotations != (rs["metadata"].get("annotations") or {}):
            rs = clone(rs)
            rs["metadata"]["annotations"] = annotations
            rs = self.store.update(REPLICASETS, rs)
        return rs

    def sync_deployment(self, deployment, now):
        meta, spec = deployment["metadata"], deployment["spec"]
        namespace, uid = meta["namespace"], meta["uid"]
        old_status = deployment.get("status") or {}
        conditions = clone(old_status.get("conditions") or [])
        all_rs = self.owned(REPLICASETS, deployment, namespace)
        new_rs = None
        for rs in sorted(all_rs, key=self.revision_of, reverse=True):
            if self.equal_ignore_hash(rs["spec"]["template"], spec["template"]):
                new_rs = rs
                break
        old_rss = [rs for rs in all_rs
                   if new_rs is None or rs["metadata"]["uid"] != new_rs["metadata"]["uid"]]
        max_old_revision = max([self.revision_of(rs) for rs in old_rss] or [0])
        paused = bool(spec.get("paused"))
        progress_cond = self._condition(conditions, "Progressing")

        if paused:
            if progress_cond is None or progress_cond.get("reason") != "DeploymentPaused":
                self._set_condition(conditions, "Progressing", "Unknown", "DeploymentPaused",
                                    "Deployment is paused", now)
                self.progress_at[uid] = now
            self._scale_paused(deployment, new_rs, all_rs)
        else:
            if progress_cond is not None and progress_cond.get("reason") == "DeploymentPaused":
                self._set_condition(conditions, "Progressing", "Unknown", "DeploymentResumed",
                                    "Deployment is resumed", now)
                self.progress_at[uid] = now
            if new_rs is None:
                new_rs = self._create_new_replicaset(deployment, max_old_revision + 1, now)
                self._set_condition(conditions, "Progressing", "True", "NewReplicaSetCreated",
                                    'Created new replica set "%s"' % new_rs["metadata"]["name"],
                                    now)
                self.progress_at[uid] = now
            else:
                new_rs = self._sync_new_rs_annotations(new_rs, deployment, max_old_revision + 1)
                if self._condition(conditions, "Progressing") is None:
                    self._set_condition(conditions, "Progressing", "True", "FoundNewReplicaSet",
                                        'Found new replica set "%s"' % new_rs["metadata"]["name"],
                                        now)
                    self.progress_at[uid] = now
            if (spec.get("strategy") or {}).get("type") == "Recreate":
                new_rs, old_rss = self._rollout_recreate(deployment, new_rs, old_rss)
            else:
                new_rs, old_rss = self._rollout_rolling(deployment, new_rs, old_rss)
            self._cleanup_old(deployment, old_rss)

        # Revision annotation on the Deployment follows the new ReplicaSet.
        if new_rs is not None:
            revision = (new_rs["metadata"].get("annotations") or {}).get(REVISION)
            annotations = meta.get("annotations") or {}
            if revision and annotations.get(REVISION) != revision:
                deployment = clone(deployment)
                deployment["metadata"].setdefault("annotations", {})[REVISION] = revision
                deployment = self.store.update(DEPLOYMENTS, deployment)

        all_rs = self.owned(REPLICASETS, deployment, namespace)
        self._write_deployment_status(deployment, new_rs, all_rs, conditions, paused, now)

    def _scale_paused(self, deployment, new_rs, all_rs):
        desired = deployment["spec"].get("replicas", 1)
        current = new_rs
        if current is None and all_rs:
            current = max(all_rs, key=self.revision_of)
        if current is None:
            return
        total = sum(rs["spec"].get("replicas", 0) for rs in all_rs)
        if total != desired:
            target = max(0, current["spec"].get("replicas", 0) + desired - total)
            self._set_rs_replicas(current, target, deployment)

    def _rollout_rolling(self, deployment, new_rs, old_rss):
        desired = deployment["spec"].get("replicas", 1)
        surge, max_unavailable = self.max_surge_unavailable(deployment)
        all_rs = [new_rs] + old_rss
        # Scale up the new ReplicaSet within maxSurge.
        new_replicas = new_rs["spec"].get("replicas", 0)
        if new_replicas > desired:
            new_rs = self._set_rs_replicas(new_rs, desired, deployment)
        elif new_replicas < desired:
            current_total = sum(rs["spec"].get("replicas", 0) for rs in all_rs)
            room = desired + surge - current_total
            if room > 0:
                new_rs = self._set_rs_replicas(
                    new_rs, new_replicas + min(room, desired - new_replicas), deployment)
        # Scale down old ReplicaSets within maxUnavailable.
        old_total = sum(rs["spec"].get("replicas", 0) for rs in old_rss)
        if old_total > 0:
            all_pods = sum(rs["spec"].get("replicas", 0) for rs in [new_rs] + old_rss)
            min_available = desired - max_unavailable
            new_status = new_rs.get("status") or {}
            new_unavailable = (new_rs["spec"].get("replicas", 0)
                               - new_status.get("availableReplicas", 0))
            budget = all_pods - min_available - new_unavailable
            updated = []
            # First remove unhealthy old replicas, then healthy ones.
            for rs in sorted(old_rss, key=self.revision_of):
                replicas = rs["spec"].get("replicas", 0)
                unhealthy = replicas - (rs.get("status") or {}).get("availableReplicas", 0)
                cut = max(0, min(budget, unhealthy, replicas))
                if cut:
                    rs = self._set_rs_replicas(rs, replicas - cut, deployment)
                    budget -= cut
                updated.append(rs)
            old_rss = updated
            total_available = sum((rs.get("status") or {}).get("availableReplicas", 0)
                                  for rs in [new_rs] + old_rss)
            budget = total_available - min_available
            updated = []
            for rs in sorted(old_rss, key=self.revision_of):
                replicas = rs["spec"].get("replicas", 0)
                cut = max(0, min(budget, replicas))
                if cut:
                    rs = self._set_rs_replicas(rs, replicas - cut, deployment)
                    budget -= cut
                updated.append(rs)
            old_rss = updated
        return new_rs, old_rss

    def _rollout_recreate(self, deployment, new_rs, old_rss):
        updated = [self._set_rs_replicas(rs, 0, deployment) for rs in old_rss]
        old_pods = [p for rs in updated for p in self.owned(PODS, rs, rs["metadata"]["namespace"])]
        if not old_pods:
            desired = deployment["spec"].get("replicas", 1)
            new_rs = self._set_rs_replicas(new_rs, desired, deployment)
        return new_rs, updated

    def _cleanup_old(self, deployment, old_rss):
        limit = deployment["spec"].get("revisionHistoryLimit", 10)
        idle = [rs for rs in old_rss if rs["spec"].get("replicas", 0) == 0
                and (rs.get("status") or {}).get("replicas", 0) == 0]
        idle.sort(key=self.revision_of)
        for rs in idle[:max(0, len(idle) - limit)]:
            self.store.delete(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"])

    @staticmethod
    def _condition(conditions, ctype):
        for cond in conditions:
            if cond.get("type") == ctype:
                return cond
        return None

    @staticmethod
    def _set_condition(conditions, ctype, status, reason, message, now, keep_transition=False):
        """Like util.SetDeploymentCondition: a changed condition moves to the end."""
        current = Cluster._condition(conditions, ctype)
        if current is not None and current.get("status") == status and \
                current.get("reason") == reason and current.get("message") == message \
                and not keep_transition:
            return
        cond = {"type": ctype, "status": status, "lastUpdateTime": iso(now),
                "lastTransitionTime": iso(now), "reason": reason, "message": message}
        if current is not None and current.get("status") == status:
            cond["lastTransitionTime"] = current.get("lastTransitionTime", iso(now))
        conditions[:] = [c for c in conditions if c.get("type") != ctype] + [cond]

    def _write_deployment_status(self, deployment, new_rs, all_rs, conditions, paused, now):
        spec, meta = deployment["spec"], deployment["metadata"]
        uid = meta["uid"]
        desired = spec.get("replicas", 1)
        _, max_unavailable = self.max_surge_unavailable(deployment)
        old_status = deployment.get("status") or {}

        def total(rs_list, field):
            return sum((rs.get("status") or {}).get(field, 0) for rs in rs_list)

        replicas = total(all_rs, "replicas")
        updated = total([new_rs], "replicas") if new_rs is not None else 0
        ready = total(all_rs, "readyReplicas")
        available = total(all_rs, "availableReplicas")
        spec_total = sum(rs["spec"].get("replicas", 0) for rs in all_rs)
        unavailable = max(0, spec_total - available)
        status = {"observedGeneration": meta.get("generation", 1)}
        for key, value in (("replicas", replicas), ("updatedReplicas", updated),
                           ("readyReplicas", ready), ("availableReplicas", available),
                           ("unavailableReplicas", unavailable)):
            if value:
                status[key] = value
        if old_status.get("collisionCount"):
            status["collisionCount"] = old_status["collisionCount"]

        if available >= desired - max_unavailable:
            self._set_condition(conditions, "Available", "True", "MinimumReplicasAvailable",
                                "Deployment has minimum availability.", now)
        else:
            self._set_condition(conditions, "Available", "False", "MinimumReplicasUnavailable",
                                "Deployment does not have minimum availability.", now)

        if not paused and new_rs is not None and spec.get("progressDeadlineSeconds") is not None:
            rs_name = new_rs["metadata"]["name"]
            complete = (updated == desired and replicas == desired and available == desired)
            old_old = old_status.get("replicas", 0) - old_status.get("updatedReplicas", 0)
            progressing = (updated > old_status.get("updatedReplicas", 0)
                           or replicas - updated < old_old
                           or ready > old_status.get("readyReplicas", 0)
                           or available > old_status.get("availableReplicas", 0))
            cond = self._condition(conditions, "Progressing")
            if complete:
                self._set_condition(conditions, "Progressing", "True", "NewReplicaSetAvailable",
                                    'ReplicaSet "%s" has successfully progressed.' % rs_name, now)
            elif progressing:
                self._set_condition(conditions, "Progressing", "True", "ReplicaSetUpdated",
                                    'ReplicaSet "%s" is progressing.' % rs_name, now,
                                    keep_transition=True)
                self.progress_at[uid] = now
            elif cond is not None and cond.get("reason") not in ("NewReplicaSetAvailable",
                                                                 "ProgressDeadlineExceeded"):
                since = self.progress_at.get(uid, now)
                self.wake(since + spec["progressDeadlineSeconds"] + TICK_SECONDS)
                if now - since > spec["progressDeadlineSeconds"]:
                    self._set_condition(conditions, "Progressing", "False",
                                        "ProgressDeadlineExceeded",
                                        'ReplicaSet "%s" has timed out progressing.' % rs_name, now)

        failure = None
        for rs in ([new_rs] if new_rs is not None else []) + all_rs:
            failure = self._condition((rs.get("status") or {}).get("conditions") or [],
                                      "ReplicaFailure")
            if failure is not None:
                break
        if failure is not None:
            self._set_condition(conditions, "ReplicaFailure", "True", failure.get("reason"),
                                failure.get("message"), now)
        else:
            conditions[:] = [c for c in conditions if c.get("type") != "ReplicaFailure"]
        status["conditions"] = conditions

        if canonical(status) != canonical(old_status):
            current = self.store.get(DEPLOYMENTS, meta["namespace"], meta["name"])
            if current is not None:
                current["status"] = status
                self.store.update(DEPLOYMENTS, current)

    # -- ReplicaSet controller ------------------------------------------
    def creation_failure(self, rs):
        """The FailedCreate message if pods of ``rs`` cannot be created, else None."""
        namespace = rs["metadata"]["namespace"]
        deployment = self._deployment_name_of_rs(rs)
        if (namespace, deployment) in self.instant:
            return None
        init, app = self.resolve_behaviours(rs["spec"]["template"]["spec"], namespace, deployment)
        for behaviour in init + app:
            if behaviour["mode"] == "replica_failure":
                return behaviour.get("message") or (
                    'pods "%s-%s" is forbidden: exceeded quota: compute-resources, requested: '
                    "limits.cpu=500m, used: limits.cpu=2, limited: limits.cpu=2"
                    % (rs["metadata"]["name"], random_suffix()))
        return None

    def sync_replicaset(self, rs, now):
        namespace = rs["metadata"]["namespace"]
        pods = [p for p in self.owned(PODS, rs, namespace)
                if not p["metadata"].get("deletionTimestamp")]
        want = rs["spec"].get("replicas", 0)
        failure = None
        if len(pods) < want:
            failure = self.creation_failure(rs)
            if failure is None:
                for _ in range(want - len(pods)):
                    self.create_pod(rs, now)
        elif len(pods) > want:
            def victim_rank(pod):
                ready = self._pod_ready(pod)
                return (ready, pod["metadata"].get("creationTimestamp", ""))
            for pod in sorted(pods, key=victim_rank)[:len(pods) - want]:
                self.terminate_pod(pod, now)
        conditions = [c for c in (rs.get("status") or {}).get("conditions") or []
                      if c.get("type") != "ReplicaFailure"]
        if failure is not None:
            previous = self._condition((rs.get("status") or {}).get("conditions") or [],
                                       "ReplicaFailure")
            if previous is not None:
                failure = previous.get("message")  # keep the first message stable
            conditions.append({"type": "ReplicaFailure", "status": "True",
                               "lastTransitionTime": iso(now), "reason": "FailedCreate",
                               "message": failure})
            if previous is not None:
                conditions[-1]["lastTransitionTime"] = previous.get("lastTransitionTime")
        current = self.store.get(REPLICASETS, namespace, rs["metadata"]["name"])
        if current is not None:
            status = current.setdefault("status", {})
            if conditions:
                status["conditions"] = conditions
            else:
                status.pop("conditions", None)
            self.store.update(REPLICASETS, current)

    def update_replicaset_status(self, rs, now):
        namespace = rs["metadata"]["namespace"]
        pods = [p for p in self.owned(PODS, rs, namespace)
                if not p["metadata"].get("deletionTimestamp")]
        min_ready = rs["spec"].get("minReadySeconds", 0) or 0
        ready = [p for p in pods if self._pod_ready(p)]
        available = []
        for pod in ready:
            ready_at = (self.pod_runtime.get(pod["metadata"]["uid"]) or {}).get("ready_at")
            if ready_at is not None and now - ready_at >= min_ready:
                available.append(pod)
            elif ready_at is not None:
                self.wake(ready_at + min_ready)
        old = rs.get("status") or {}
        status = {"replicas": len(pods),
                  "observedGeneration": rs["metadata"].get("generation", 1)}
        if pods:
            status["fullyLabeledReplicas"] = len(pods)
        if ready:
            status["readyReplicas"] = len(ready)
        if available:
            status["availableReplicas"] = len(available)
        if old.get("conditions"):
            status["conditions"] = old["conditions"]
        if canonical(status) != canonical(old):
            rs = clone(rs)
            rs["status"] = status
            self.store.update(REPLICASETS, rs)

    @staticmethod
    def _pod_ready(pod):
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Ready":
                return cond.get("status") == "True"
        return False

    def create_pod(self, rs, now):
        meta = rs["metadata"]
        template = clone(rs["spec"]["template"])
        pod_meta = template.get("metadata") or {}
        while True:
            name = "%s-%s" % (meta["name"], random_suffix())
            if self.store.get(PODS, meta["namespace"], name) is None:
                break
        pod = {
            "metadata": {
                "name": name, "generateName": meta["name"] + "-",
                "namespace": meta["namespace"],
                "labels": clone(pod_meta.get("labels") or {}),
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": meta["name"],
                    "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": template.get("spec") or {},
        }
        if pod_meta.get("annotations"):
            pod["metadata"]["annotations"] = clone(pod_meta["annotations"])
        pod["spec"]["nodeName"] = "sim-node-1"
        apply_defaults(PODS, pod)
        pod = self.store.create(PODS, pod)
        deployment = self._deployment_name_of_rs(rs)
        instant = (meta["namespace"], deployment) in self.instant
        init, app = self.resolve_behaviours(pod["spec"], meta["namespace"], deployment)
        if instant:
            init = [{"mode": "ready", "delay": 0.0} for _ in init]
            app = [{"mode": "ready", "delay": 0.0} for _ in app]
        self.pod_runtime[pod["metadata"]["uid"]] = {"start": now, "init": init, "app": app,
                                                    "ready_at": None}
        self.sync_pod(pod, now)
        return pod

    def terminate_pod(self, pod, now):
        pod = clone(pod)
        pod["metadata"]["deletionTimestamp"] = iso(now + TERMINATION_GRACE_SECONDS)
        pod["metadata"]["deletionGracePeriodSeconds"] = 0
        runtime = self.pod_runtime.setdefault(pod["metadata"]["uid"], {})
        runtime["delete_at"] = now + TERMINATION_GRACE_SECONDS
        self.store.update(PODS, pod)

    def collect_garbage(self):
        """Delete objects whose controlling owner is gone (background cascading)."""
        uids = set()
        for rtype in (DEPLOYMENTS, REPLICASETS):
            uids.update(o["metadata"]["uid"] for o in self.store.raw(rtype))
        for rtype in (REPLICASETS, PODS):
            for obj in self.store.raw(rtype):
                ref = self.owner_of(obj, "Deployment" if rtype is REPLICASETS else "ReplicaSet")
                if ref is not None and ref.get("uid") not in uids:
                    self.store.delete(rtype, obj["metadata"]["namespace"], obj["metadata"]["name"])
                    self.pod_runtime.pop(obj["metadata"]["uid"], None)

    # -- kubelet ---------------------------------------------------------
    def sync_pod(self, pod, now):
        uid = pod["metadata"]["uid"]
        runtime = self.pod_runtime.get(uid)
        if runtime is None:  # created through the API: resolve behaviours now
            deployment = None
            ref = self.owner_of(pod, "ReplicaSet")
            if ref is not None:
                rs = self.store.get(REPLICASETS, pod["metadata"]["namespace"], ref["name"])
                deployment = self._deployment_name_of_rs(rs) if rs else None
            init, app = self.resolve_behaviours(pod["spec"], pod["metadata"]["namespace"],
                                                deployment)
            runtime = {"start": now, "init": init, "app": app, "ready_at": None}
            self.pod_runtime[uid] = runtime
        if "delete_at" in runtime:
            if now >= runtime["delete_at"]:
                self.store.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
                self.pod_runtime.pop(uid, None)
            else:
                self.wake(runtime["delete_at"])
            return
        if "init" not in runtime:
            return
        status, ready_at = self.pod_status(pod, runtime, now)
        runtime["ready_at"] = ready_at
        if canonical(status) != canonical(pod.get("status")):
            pod = clone(pod)
            pod["status"] = status
            self.store.update(PODS, pod)

    def _container(self, pod, container, behaviour, local_t, start, is_init):
        """(status dict, state) for one container; state is one of
        'waiting', 'running', 'ready', 'done'; plus the time it became ready/done."""
        name, image = container.get("name"), container.get("image", "")
        base = {"name": name, "image": image, "imageID": "", "ready": False,
                "restartCount": 0, "started": False, "lastState": {}}
        mode, delay = behaviour["mode"], behaviour["delay"]
        message = behaviour.get("message")
        if mode in ("hang", "replica_failure") or local_t < delay:
            if mode not in ("hang", "replica_failure"):
                self.wake(start + delay)
            base["state"] = {"waiting": {"reason": "ContainerCreating"}}
            return base, "waiting", None
        began = start + delay
        if mode == "ready":
            base.update(imageID=self.image_id(image), containerID=_container_id(
                pod["metadata"]["uid"], name, 0))
            if is_init:
                base.update(ready=True, started=False, state={"terminated": {
                    "exitCode": 0, "reason": "Completed", "startedAt": iso(began),
                    "finishedAt": iso(began), "containerID": base["containerID"]}})
                return base, "done", began
            base.update(ready=True, started=True, state={"running": {"startedAt": iso(began)}})
            return base, "ready", began
        if mode == "image_pull_backoff":
            if local_t < delay + 0.5:
                self.wake(start + delay + 0.5)
                base["state"] = {"waiting": {"reason": "ErrImagePull", "message": message or (
                    'failed to pull and unpack image "%s": failed to resolve reference "%s": '
                    "%s: not found" % (image, image, image))}}
            else:
                base["state"] = {"waiting": {
                    "reason": "ImagePullBackOff",
                    "message": message or 'Back-off pulling image "%s"' % image}}
            return base, "waiting", None
        if mode == "config_error":
            base["state"] = {"waiting": {"reason": "CreateContainerConfigError",
                                         "message": message or 'secret "app-secrets" not found'}}
            return base, "waiting", None
        # crash_loop
        interval = float(behaviour.get("interval", 1.0))
        restarts = int((local_t - delay) / interval)
        self.wake(began + (restarts + 1) * interval)
        base.update(imageID=self.image_id(image), restartCount=restarts,
                    containerID=_container_id(pod["metadata"]["uid"], name, restarts))
        if restarts == 0:
            base.update(started=True, state={"running": {"startedAt": iso(began)}})
            return base, "running", None
        last_start = began + (restarts - 1) * interval
        base["lastState"] = {"terminated": {
            "exitCode": int(behaviour.get("exit_code", 1)), "reason": "Error",
            "startedAt": iso(last_start), "finishedAt": iso(last_start + interval / 2),
            "containerID": _container_id(pod["metadata"]["uid"], name, restarts - 1)}}
        base["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": message or (
            "back-off 10s restarting failed container=%s pod=%s_%s(%s)" % (
                name, pod["metadata"]["name"], pod["metadata"]["namespace"],
                pod["metadata"]["uid"]))}}
        return base, "running", None

    @staticmethod
    def _initializing(container):
        """Status of a container waiting for init containers to finish."""
        return {"name": container.get("name"), "image": container.get("image"), "imageID": "",
                "ready": False, "restartCount": 0, "started": False, "lastState": {},
                "state": {"waiting": {"reason": "PodInitializing"}}}

    def pod_status(self, pod, runtime, now):
        """Derive the pod status purely from the elapsed time and the behaviours."""
        start = runtime["start"]
        elapsed = now - start
        spec = pod["spec"]
        init_statuses, app_statuses = [], []
        offset, initialized = 0.0, True
        for container, behaviour in zip(spec.get("initContainers") or [], runtime["init"]):
            if not initialized:
                init_statuses.append(self._initializing(container))
                continue
            status, state, done_at = self._container(pod, container, behaviour,
                                                     elapsed - offset, start + offset, True)
            init_statuses.append(status)
            if state == "done":
                offset = done_at - start
            else:
                initialized = False
        states, ready_times = [], []
        for container, behaviour in zip(spec.get("containers") or [], runtime["app"]):
            if not initialized:
                app_statuses.append(self._initializing(container))
                states.append("waiting")
                continue
            status, state, ready_time = self._container(pod, container, behaviour,
                                                        elapsed - offset, start + offset, False)
            app_statuses.append(status)
            states.append(state)
            if ready_time is not None:
                ready_times.append(ready_time)
        all_ready = bool(states) and all(s == "ready" for s in states)
        ready_at = max(ready_times) if all_ready else None
        running = bool(states) and all(s in ("ready", "running") for s in states)
        phase = "Running" if running else "Pending"
        started = iso(start)
        not_ready = [s["name"] for s in app_statuses if not s["ready"]]
        pending_init = [s["name"] for s in init_statuses if not s["ready"]]

        def condition(ctype, ok, reason, message, at):
            cond = {"type": ctype, "status": "True" if ok else "False",
                    "lastProbeTime": None, "lastTransitionTime": iso(at)}
            if not ok:
                cond.update(reason=reason, message=message)
            return cond

        init_at = start + offset if initialized else start
        conditions = [
            condition("Initialized", initialized, "ContainersNotInitialized",
                      "containers with incomplete status: [%s]" % " ".join(pending_init), init_at),
            condition("Ready", all_ready, "ContainersNotReady",
                      "containers with unready status: [%s]" % " ".join(not_ready),
                      ready_at or start),
            condition("ContainersReady", all_ready, "ContainersNotReady",
                      "containers with unready status: [%s]" % " ".join(not_ready),
                      ready_at or start),
            condition("PodScheduled", True, "", "", start),
        ]
        status = {"phase": phase, "conditions": conditions, "hostIP": "10.0.0.10",
                  "podIP": "10.244.0.%d" % (1 + int(pod["metadata"]["uid"][:2], 16) % 250),
                  "startTime": started, "qosClass": "BestEffort",
                  "containerStatuses": app_statuses}
        status["podIPs"] = [{"ip": status["podIP"]}]
        status["hostIPs"] = [{"ip": status["hostIP"]}]
        if init_statuses:
            status["initContainerStatuses"] = init_statuses
        return status, ready_at


# --------------------------------------------------------------------------
# The simulator state shared by the HTTP handlers
# --------------------------------------------------------------------------

class Simulator:
    def __init__(self, server_version=DEFAULT_SERVER_VERSION, verbose=False):
        parse_version(server_version)
        self.default_version = server_version
        self.server_version = server_version
        self.verbose = verbose
        self.store = Store()
        self.cluster = Cluster(self.store)
        self.log_lock = threading.Lock()
        self.request_log = []
        self.faults = []
        self.fault_ids = 0
        self.stopping = threading.Event()
        for name in DEFAULT_NAMESPACES:
            self.store.create(NAMESPACES, apply_defaults(NAMESPACES, {"metadata": {"name": name}}))

    def version_info(self):
        major, minor, git = parse_version(self.server_version)
        return {"major": major, "minor": minor, "gitVersion": git,
                "gitCommit": hashlib.sha256(git.encode()).hexdigest()[:40],
                "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23.8",
                "compiler": "gc", "platform": "linux/amd64"}

    # -- admin operations -------------------------------------------------
    def reset(self):
        with self.store.lock:
            for rtype in (DEPLOYMENTS, REPLICASETS, PODS):
                for obj in self.store.list(rtype):
                    meta = obj["metadata"]
                    self.store.delete(rtype, meta.get("namespace"), meta["name"])
            self.cluster.reset()
            self.server_version = self.default_version
        with self.log_lock:
            self.request_log[:] = []
            self.faults[:] = []

    ADD_DEPLOYMENT_KEYS = frozenset([
        "name", "namespace", "containers", "init_containers", "replicas", "behaviour",
        "paused", "progress_deadline_seconds", "labels", "annotations", "ready", "strategy",
        "min_ready_seconds", "revision_history_limit"])

    def add_deployment(self, spec):
        """Create a Deployment (selector ``app=<name>``) from the admin API's
        keyword arguments; see ``SimClient.add_deployment``."""
        unknown = set(spec) - self.ADD_DEPLOYMENT_KEYS
        if unknown:
            raise ValueError("unknown add_deployment arguments: %s" % ", ".join(sorted(unknown)))
        name = spec["name"]
        namespace = spec.get("namespace") or "noetl"
        if self.store.get(NAMESPACES, "", namespace) is None:
            raise ApiError(404, "NotFound", 'namespaces "%s" not found' % namespace)
        containers = spec.get("containers") or [{"name": name, "image": "%s:1" % name}]
        selector = {"app": name}
        pod_labels = dict(selector)
        deployment = {
            "metadata": {"name": name, "namespace": namespace,
                         "labels": spec.get("labels") or dict(selector),
                         "annotations": dict(spec.get("annotations") or {})},
            "spec": {
                "replicas": spec.get("replicas", 1),
                "selector": {"matchLabels": selector},
                "progressDeadlineSeconds": spec.get("progress_deadline_seconds", 600),
                "revisionHistoryLimit": spec.get("revision_history_limit", 10),
                "minReadySeconds": spec.get("min_ready_seconds", 0),
                "template": {"metadata": {"labels": pod_labels},
                             "spec": {"containers": clone(containers)}},
            },
        }
        if not deployment["spec"]["minReadySeconds"]:
            del deployment["spec"]["minReadySeconds"]
        if spec.get("init_containers"):
            pod_spec = deployment["spec"]["template"]["spec"]
            pod_spec["initContainers"] = clone(spec["init_containers"])
        if spec.get("strategy"):
            deployment["spec"]["strategy"] = clone(spec["strategy"])
        apply_defaults(DEPLOYMENTS, deployment)
        validate(DEPLOYMENTS, deployment)
        with self.store.lock:
            behaviour = normalize_behaviour(spec.get("behaviour"))
            if behaviour is not None:
                self.cluster.deployment_behaviours[(namespace, name)] = behaviour
            self.store.create(DEPLOYMENTS, deployment)
            if spec.get("ready", True):
                self.cluster.converge(namespace, name)
            if spec.get("paused"):
                current = self.store.get(DEPLOYMENTS, namespace, name)
                current["spec"]["paused"] = True
                self.store.update(DEPLOYMENTS, current)
                self.cluster.reconcile(time.time())
            return self.store.get(DEPLOYMENTS, namespace, name)

    def delete_deployment(self, namespace, name):
        with self.store.lock:
            deployment = self.store.get(DEPLOYMENTS, namespace, name)
            if deployment is None:
                raise not_found(DEPLOYMENTS, name)
            for rs in self.cluster.owned(REPLICASETS, deployment, namespace):
                for pod in self.cluster.owned(PODS, rs, namespace):
                    self.store.delete(PODS, namespace, pod["metadata"]["name"])
                    self.cluster.pod_runtime.pop(pod["metadata"]["uid"], None)
                self.store.delete(REPLICASETS, namespace, rs["metadata"]["name"])
            self.store.delete(DEPLOYMENTS, namespace, name)
            self.cluster.deployment_behaviours.pop((namespace, name), None)

    def add_fault(self, spec):
        fault = {
            "method": (spec.get("method") or "").upper() or None,
            "path_regex": spec.get("path_regex"),
            "status": spec.get("status", 403), "reason": spec.get("reason", "Forbidden"),
            "message": spec.get("message"), "count": spec.get("count"),
            "delay": spec.get("delay"), "raw_body": spec.get("raw_body"),
        }
        if fault["path_regex"]:
            re.compile(fault["path_regex"])
        with self.log_lock:
            self.fault_ids += 1
            fault["id"] = self.fault_ids
            self.faults.append(fault)
        return fault["id"]

    def take_fault(self, method, path, raw_query):
        full = path + ("?" + raw_query if raw_query else "")
        with self.log_lock:
            for fault in self.faults:
                if fault["method"] and fault["method"] != method:
                    continue
                if fault["path_regex"] and not (re.search(fault["path_regex"], path)
                                                or re.search(fault["path_regex"], full)):
                    continue
                if fault["count"] is not None:
                    if fault["count"] <= 0:
                        continue
                    fault["count"] -= 1
                return dict(fault)
        return None

    def log_request(self, entry):
        with self.log_lock:
            self.request_log.append(entry)

    def requests(self):
        with self.log_lock:
            return clone(self.request_log)


# --------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------

_RESOURCE_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/v1)"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$")
JSON_TYPES = ("application/json", "application/strategic-merge-patch+json",
              "application/merge-patch+json", "application/json-patch+json")
UNKNOWN_FORMAT = "the body of the request was in an unknown format"
VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


class Route:
    def __init__(self, rtype, namespace, name, subresource):
        self.rtype = rtype
        self.namespace = namespace
        self.name = name
        self.subresource = subresource


def parse_route(path):
    """Map a resource URL to a Route, or None if it is not one."""
    if path.startswith("/api/v1/namespaces/") and path.count("/") == 4:
        return Route(NAMESPACES, None, path.rsplit("/", 1)[1], None)
    if path.startswith("/api/v1/namespaces/") and path.count("/") == 5 and \
            path.rsplit("/", 1)[1] in ("status", "finalize"):
        parts = path.split("/")
        return Route(NAMESPACES, None, parts[4], parts[5])
    m = _RESOURCE_PATH.match(path)
    if not m:
        return None
    rtype = BY_GROUP_PLURAL.get((m.group("group") or "", m.group("plural")))
    if rtype is None:
        return None
    if m.group("ns") and not rtype.namespaced:
        return None
    return Route(rtype, urllib.parse.unquote(m.group("ns")) if m.group("ns") else None,
                 urllib.parse.unquote(m.group("name")) if m.group("name") else None,
                 m.group("sub"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "k8s-sim/1"
    sim = None  # set on the subclass made by make_server()

    # -- plumbing --------------------------------------------------------
    def log_message(self, fmt, *args):
        if self.sim.verbose:
            sys.stderr.write("k8s_sim: %s\n" % (fmt % args))

    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, code, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        if self._log_entry is not None:
            self._log_entry["status"] = code

    def _dispatch(self):
        self._log_entry = None
        url = urllib.parse.urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        raw = self._read_body()
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        body, body_error = self._decode_body(raw, content_type)
        try:
            if path == "/_sim" or path.startswith("/_sim/"):
                if body_error is not None:
                    raise body_error
                code, result = self._admin(path, query, body)
                self._send(code, result)
                return
            self._log_entry = {
                "method": self.command, "path": path, "query": query, "raw_query": url.query,
                "content_type": content_type or None, "accept": self.headers.get("Accept"),
                "body": body, "user_agent": self.headers.get("User-Agent"),
                "time": time.time(), "status": None}
            self.sim.log_request(self._log_entry)
            fault = self.sim.take_fault(self.command, path, url.query)
            if fault is not None and self._apply_fault(fault, path, query):
                return
            if body_error is not None:
                raise body_error
            self._api(path, query, body, content_type)
        except ApiError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away
        except Exception as exc:  # a simulator bug: answer 500 and say why
            import traceback
            traceback.print_exc()
            self._send_error(ApiError(500, "InternalError",
                                      "Internal error occurred: k8s_sim: %r" % (exc,)))

    def _send_error(self, err):
        try:
            self._send(err.code, err.status())
        except OSError:
            self.close_connection = True  # the client went away

    @staticmethod
    def _decode_body(raw, content_type):
        """(parsed body, ApiError to answer if the body is unusable).  JSON bodies
        are parsed; anything else is kept as text (for the request log)."""
        if not raw:
            return None, None
        text = raw.decode("utf-8", "replace")
        if "protobuf" in content_type or "cbor" in content_type:
            return text, ApiError(415, "UnsupportedMediaType", "the body of the request was in "
                                  "an unknown format - k8s_sim only accepts JSON (got %s)"
                                  % content_type)
        if content_type in JSON_TYPES or content_type.endswith("+json") or not content_type:
            try:
                return json.loads(text), None
            except ValueError as exc:
                if content_type:
                    return text, ApiError(400, "BadRequest", "invalid JSON in request body: %s"
                                          % exc)
        return text, None

    def _apply_fault(self, fault, path, query):
        """Serve an injected fault; returns False when the request should proceed."""
        if fault.get("delay"):
            if self.sim.stopping.wait(float(fault["delay"])) or self._peer_closed():
                self.close_connection = True
                return True  # shutting down, or the client gave up waiting
        if fault.get("status") is None:
            return False
        code = int(fault["status"])
        if fault.get("raw_body") is not None:
            text = fault["raw_body"]
            ctype = "text/html" if text.lstrip().startswith("<") else "text/plain"
            self._send(code, text.encode(), ctype)
            return True
        reason = fault.get("reason") or "Forbidden"
        message = fault.get("message") or self._fault_message(reason, code, path, query)
        route = parse_route(path)
        details = None
        if route is not None:
            details = {"group": route.rtype.group, "kind": route.rtype.plural}
            if route.name:
                details["name"] = route.name
        self._send(code, ApiError(code, reason, message, details).status())
        return True

    def _fault_message(self, reason, code, path, query):
        route = parse_route(path)
        if reason == "Forbidden" and route is not None:
            if self.command == "GET":
                verb = "watch" if query.get("watch") else ("get" if route.name else "list")
            else:
                verb = VERBS.get(self.command, self.command.lower())
            where = (' in the namespace "%s"' % route.namespace if route.namespace
                     else " at the cluster scope")
            subject = route.rtype.qualified
            if route.name:
                subject = '%s "%s"' % (subject, route.name)
            return ('%s is forbidden: User "sim-user" cannot %s resource "%s" in API group "%s"%s'
                    % (subject, verb, route.rtype.plural + ("/" + route.subresource
                                                            if route.subresource else ""),
                       route.rtype.group, where))
        if reason == "InternalError":
            return "Internal error occurred: injected fault"
        return "injected fault (%s %d)" % (reason, code)

    # -- admin API -------------------------------------------------------
    def _admin(self, path, query, body):
        sim, method = self.sim, self.command
        parts = path.split("/")[2:]
        body = body if isinstance(body, dict) else {}
        try:
            if parts == ["health"]:
                return 200, {"ok": True, "server_version": sim.server_version}
            if parts == ["reset"] and method == "POST":
                sim.reset()
                return 200, {"ok": True}
            if parts == ["deployments"] and method == "POST":
                return 201, sim.add_deployment(body)
            if parts[:1] == ["deployments"] and len(parts) == 3 and method == "DELETE":
                sim.delete_deployment(parts[1], parts[2])
                return 200, {"ok": True}
            if parts[:1] == ["behaviours"] and len(parts) == 3 and method == "PUT":
                behaviour = normalize_behaviour(body.get("behaviour"))
                with sim.store.lock:
                    if behaviour is None:
                        sim.cluster.deployment_behaviours.pop((parts[1], parts[2]), None)
                    else:
                        sim.cluster.deployment_behaviours[(parts[1], parts[2])] = behaviour
                return 200, {"ok": True}
            if parts == ["image-behaviours"] and method == "PUT":
                behaviour = normalize_behaviour(body.get("behaviour"))
                with sim.store.lock:
                    if behaviour is None:
                        sim.cluster.image_behaviours.pop(body["image"], None)
                    else:
                        sim.cluster.image_behaviours[body["image"]] = behaviour
                return 200, {"ok": True}
            if parts == ["digests"] and method == "PUT":
                with sim.store.lock:
                    sim.cluster.digests[body["image"]] = body["digest"]
                return 200, {"ok": True, "image_id": sim.cluster.image_id(body["image"])}
            if parts == ["server-version"] and method == "PUT":
                parse_version(body["version"])
                sim.server_version = body["version"]
                return 200, {"ok": True}
            if parts == ["requests"]:
                if method == "DELETE":
                    with sim.log_lock:
                        sim.request_log[:] = []
                    return 200, {"ok": True}
                return 200, sim.requests()
            if parts == ["faults"]:
                if method == "DELETE":
                    with sim.log_lock:
                        sim.faults[:] = []
                    return 200, {"ok": True}
                if method == "POST":
                    return 201, {"id": sim.add_fault(body)}
                with sim.log_lock:
                    return 200, clone(sim.faults)
            if parts[:1] == ["objects"] and len(parts) in (2, 4):
                try:
                    rtype = resource_type_for(parts[1])
                except KeyError:
                    raise ApiError(400, "BadRequest", "unknown kind %r" % parts[1]) from None
                if len(parts) == 4:
                    namespace = "" if parts[2] == "-" or not rtype.namespaced else parts[2]
                    obj = sim.store.get(rtype, namespace, parts[3])
                    if obj is None:
                        raise not_found(rtype, parts[3])
                    return 200, obj
                namespace = (query.get("namespace") or [None])[0]
                labels = parse_label_selector((query.get("labelSelector") or [""])[0])
                return 200, sim.store.list(rtype, namespace, labels)
        except (KeyError, ValueError, TypeError) as exc:
            raise ApiError(400, "BadRequest", "bad admin request: %s" % (exc,)) from None
        raise ApiError(404, "NotFound", "no admin endpoint %s %s" % (method, path))

    # -- Kubernetes API --------------------------------------------------
    def _api(self, path, query, body, content_type):
        sim, method = self.sim, self.command
        if method == "GET":
            doc = self._discovery(path)
            if doc is not None:
                self._send(200, doc)
                return
        route = parse_route(path)
        if route is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {})
        dry_run = "All" in query.get("dryRun", [])
        rtype = route.rtype
        if route.subresource not in (None, "status", "scale") or \
                (route.subresource == "scale" and not rtype.has_scale):
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {})
        if route.namespace is None and rtype.namespaced and route.name is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace = route.namespace if rtype.namespaced else ""
        if route.subresource == "scale":
            self._send(200, self._scale(route, namespace, body, content_type, dry_run))
            return
        if method == "GET" and route.name is None:
            if (query.get("watch") or [""])[0] in ("1", "true", "True"):
                self._watch(rtype, route.namespace, query)
            else:
                self._send(200, self._list(rtype, route.namespace, query))
            return
        if method == "GET":
            obj = sim.store.get(rtype, namespace, route.name)
            if obj is None:
                raise not_found(rtype, route.name)
            self._send(200, obj)
            return
        if method == "POST" and route.name is None:
            self._send(201, self._create(rtype, namespace, body, dry_run))
            return
        if method == "DELETE" and route.name is not None:
            with sim.store.lock:
                obj = sim.store.delete(rtype, namespace, route.name, dry_run)
                if rtype is DEPLOYMENTS and not dry_run:
                    sim.cluster.deployment_behaviours.pop((namespace, route.name), None)
            self._send(200, obj)
            return
        if method in ("PUT", "PATCH") and route.name is not None:
            self._send(200, self._update(route, namespace, body, content_type, dry_run))
            return
        raise ApiError(405, "MethodNotAllowed",
                       "the server does not allow this method on the requested resource")

    def _discovery(self, path):
        if path == "/version":
            return self.sim.version_info()
        if path == "/api":
            host = "127.0.0.1:%d" % self.server.server_address[1]
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                    "serverAddress": host}]}
        group = {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}
        if path == "/apis/apps":
            doc = dict(group)
            doc.update(kind="APIGroup", apiVersion="v1")
            return doc
        for group_version, prefix in (("v1", "/api/v1"), ("apps/v1", "/apis/apps/v1")):
            if path == prefix:
                resources = []
                for rtype in RESOURCE_TYPES:
                    if rtype.api_version == group_version:
                        resources.extend(rtype.discovery())
                return {"kind": "APIResourceList", "apiVersion": "v1",
                        "groupVersion": group_version, "resources": resources}
        return None

    @staticmethod
    def _selectors(query):
        try:
            labels = parse_label_selector((query.get("labelSelector") or [""])[0])
            fields = parse_field_selector((query.get("fieldSelector") or [""])[0])
        except ValueError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from None
        return labels, fields

    def _list(self, rtype, namespace, query):
        labels, fields = self._selectors(query)
        with self.sim.store.lock:
            items = self.sim.store.list(rtype, namespace, labels, fields)
            rv = self.sim.store.rv
        for item in items:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        meta = {"resourceVersion": str(rv)}
        limit = int((query.get("limit") or ["0"])[0] or 0)
        start = 0
        token = (query.get("continue") or [""])[0]
        if token:
            try:
                start = int(json.loads(base64.b64decode(token).decode())["start"])
            except (ValueError, KeyError, TypeError):
                raise ApiError(400, "BadRequest", "invalid continue token") from None
        if limit > 0 or start:
            end = start + limit if limit > 0 else len(items)
            if end < len(items):
                meta["continue"] = base64.b64encode(json.dumps({"start": end}).encode()).decode()
                meta["remainingItemCount"] = len(items) - end
            items = items[start:end]
        return {"kind": rtype.kind + "List", "apiVersion": rtype.api_version,
                "metadata": meta, "items": items}

    def _watch(self, rtype, namespace, query):
        labels, fields = self._selectors(query)
        store = self.sim.store
        send_initial = (query.get("sendInitialEvents") or [""])[0] == "true"
        rv_text = (query.get("resourceVersion") or [""])[0]
        since = None
        if not send_initial and rv_text not in ("", "0"):
            try:
                since = int(rv_text)
            except ValueError:
                raise ApiError(400, "BadRequest", "invalid resource version %r" % rv_text) from None
        timeout = (query.get("timeoutSeconds") or [""])[0]
        deadline = time.time() + (float(timeout) if timeout else 1800.0)
        watcher, initial, start_rv = store.watch(rtype, namespace, since)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-cache, private")
            self.end_headers()
            self._log_entry["status"] = 200

            def matches(obj):
                return obj is not None and labels_match(labels, obj["metadata"].get("labels")) \
                    and fields_match(fields, obj)

            def emit(etype, obj):
                obj = clone(obj)
                obj["kind"], obj["apiVersion"] = rtype.kind, rtype.api_version
                self._chunk(json.dumps({"type": etype, "object": obj}).encode() + b"\n")

            def deliver(etype, obj, old):
                now_in, was_in = matches(obj), matches(old) if old is not None else None
                if etype == "MODIFIED" and was_in is not None:
                    if now_in and not was_in:
                        etype = "ADDED"
                    elif was_in and not now_in:
                        emit("DELETED", obj)
                        return
                if now_in:
                    emit(etype, obj)

            for _rv, etype, obj, old in initial:
                deliver(etype, obj, old)
            if send_initial:
                emit("BOOKMARK", {"metadata": {"resourceVersion": str(start_rv),
                                               "annotations": {INITIAL_EVENTS_END: "true"}}})
            while True:
                remaining = deadline - time.time()
                if remaining <= 0:
                    break
                try:
                    item = watcher.events.get(timeout=min(remaining, 1.0))
                except queue.Empty:
                    if self._peer_closed():
                        return
                    continue
                if item is None:  # server shutting down
                    break
                _rv, etype, obj, old = item
                deliver(etype, obj, old)
            self._chunk(b"")
        finally:
            store.unwatch(watcher)

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _peer_closed(self):
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if readable:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True
        return False

    def _create(self, rtype, namespace, body, dry_run):
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", UNKNOWN_FORMAT)
        obj = clone(body)
        meta = obj.setdefault("metadata", {})
        if rtype.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise ApiError(400, "BadRequest", "the namespace of the provided object does "
                               "not match the namespace sent on the request")
            meta["namespace"] = namespace
            if self.sim.store.get(NAMESPACES, "", namespace) is None:
                raise ApiError(404, "NotFound", 'namespaces "%s" not found' % namespace,
                               {"name": namespace, "kind": "namespaces"})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + random_suffix()
        if not meta.get("name"):
            raise ApiError(422, "Invalid", "%s is invalid: metadata.name: Required value: name "
                           "or generateName is required" % rtype.kind)
        obj.pop("status", None)  # status is the controllers' business
        apply_defaults(rtype, obj)
        validate(rtype, obj)
        return self.sim.store.create(rtype, obj, dry_run)

    @staticmethod
    def _scale_of(obj):
        meta = obj["metadata"]
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid",
                                                        "resourceVersion", "creationTimestamp")
                                 if k in meta},
                "spec": {"replicas": obj["spec"].get("replicas", 1)},
                "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                           "selector": selector_to_string(obj["spec"].get("selector"))}}

    def _scale(self, route, namespace, body, content_type, dry_run):
        """The autoscaling/v1 Scale subresource (``kubectl scale``)."""
        rtype, store = route.rtype, self.sim.store
        with store.lock:
            obj = store.get(rtype, namespace, route.name)
            if obj is None:
                raise not_found(rtype, route.name)
            scale = self._scale_of(obj)
            if self.command == "GET":
                return scale
            if self.command not in ("PUT", "PATCH"):
                raise ApiError(405, "MethodNotAllowed",
                               "the server does not allow this method on the requested resource")
            new = body if self.command == "PUT" else self._patch(rtype, scale, body, content_type)
            if not isinstance(new, dict):
                raise ApiError(400, "BadRequest", UNKNOWN_FORMAT)
            wanted_rv = (new.get("metadata") or {}).get("resourceVersion")
            if wanted_rv and wanted_rv != obj["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", 'Operation cannot be fulfilled on %s "%s": the '
                               "object has been modified; please apply your changes to the "
                               "latest version and try again" % (rtype.qualified, route.name))
            replicas = (new.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                raise invalid(rtype, route.name, [("spec.replicas", "Invalid value: %r: must be "
                                                   "greater than or equal to 0" % (replicas,))])
            obj["spec"]["replicas"] = replicas
            return self._scale_of(store.update(rtype, obj, dry_run))

    def _update(self, route, namespace, body, content_type, dry_run):
        rtype, store = route.rtype, self.sim.store
        with store.lock:
            old = store.get(rtype, namespace, route.name)
            if old is None:
                raise not_found(rtype, route.name)
            if self.command == "PUT":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", UNKNOWN_FORMAT)
                new = clone(body)
            else:
                new = self._patch(rtype, old, body, content_type)
            meta = new.setdefault("metadata", {})
            if meta.get("name") != route.name:
                raise ApiError(400, "BadRequest", "the name of the object (%s) does not match "
                               "the name on the URL (%s)" % (meta.get("name"), route.name))
            if rtype.namespaced and meta.get("namespace") not in (None, "", namespace):
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not "
                               "match the namespace sent on the request")
            meta["namespace"] = namespace
            wanted_rv = meta.get("resourceVersion")
            if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", 'Operation cannot be fulfilled on %s "%s": the '
                               "object has been modified; please apply your changes to the "
                               "latest version and try again" % (rtype.qualified, route.name),
                               {"name": route.name, "group": rtype.group, "kind": rtype.plural})
            if route.subresource == "status":
                status = new.get("status")
                new = clone(old)
                new["status"] = status
            elif "status" in old:
                new["status"] = old["status"]  # the main resource ignores status changes
            apply_defaults(rtype, new)
            validate(rtype, new, old)
            return store.update(rtype, new, dry_run)

    @staticmethod
    def _patch(rtype, old, body, content_type):
        try:
            if content_type == "application/strategic-merge-patch+json":
                if not isinstance(body, dict):
                    raise PatchError("strategic merge patch must be a JSON object")
                result = strategic_merge_patch(old, body)
            elif content_type == "application/merge-patch+json":
                result = json_merge_patch(old, body)
            elif content_type == "application/json-patch+json":
                result = json_patch(old, body)
            else:
                raise ApiError(415, "UnsupportedMediaType",
                               '415: Unsupported Media Type: the body of the request was in an '
                               'unknown format - accepted media types include: '
                               'application/json-patch+json, application/merge-patch+json, '
                               'application/strategic-merge-patch+json')
        except PatchError as exc:
            raise ApiError(422, "Invalid", str(exc)) from None
        if not isinstance(result, dict):
            raise ApiError(422, "Invalid", "patch did not produce an object")
        return result


def make_server(sim, port=0):
    handler = type("SimHandler", (Handler,), {"sim": sim})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    return server


# --------------------------------------------------------------------------
# Test-side helpers: client, process control, kubeconfig
# --------------------------------------------------------------------------

class SimError(Exception):
    def __init__(self, code, body):
        Exception.__init__(self, "k8s_sim admin call failed (%s): %s" % (code, body))
        self.code = code
        self.body = body


class SimClient:
    """Python client for the admin API (``/_sim/...``) of a running simulator."""

    def __init__(self, base_url, timeout=10.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _call(self, method, path, body=None, query=None):
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read().decode() or "null")
        except urllib.error.HTTPError as err:
            try:
                text = err.read().decode("utf-8", "replace")
            finally:
                err.close()
            try:
                payload = json.loads(text)
            except ValueError:
                payload = text
            raise SimError(err.code, payload) from None

    def health(self):
        return self._call("GET", "/_sim/health")

    def reset(self):
        self._call("POST", "/_sim/reset")

    def add_deployment(self, name, namespace="noetl", containers=None, init_containers=None,
                       replicas=1, behaviour=None, paused=False, progress_deadline_seconds=600,
                       labels=None, annotations=None, ready=True, strategy=None,
                       min_ready_seconds=0, revision_history_limit=10):
        """Create a Deployment with selector and pod labels ``app=<name>``.

        ``containers``/``init_containers`` are lists of container specs
        (default: one container ``<name>`` running ``<name>:1``); ``labels``
        are the Deployment's own labels (default ``app=<name>``); ``strategy``
        is a ``spec.strategy`` such as ``{"type": "Recreate"}``; ``behaviour``
        is the default behaviour of its pods.  With ``ready=True`` revision 1
        is rolled out and available on return, whatever the behaviour; with
        ``ready=False`` that first rollout runs in the background per behaviour.
        ``paused=True`` pauses it after revision 1.  Returns the Deployment."""
        return self._call("POST", "/_sim/deployments", {
            "name": name, "namespace": namespace, "containers": containers,
            "init_containers": init_containers, "replicas": replicas, "behaviour": behaviour,
            "paused": paused, "progress_deadline_seconds": progress_deadline_seconds,
            "labels": labels, "annotations": annotations, "ready": ready, "strategy": strategy,
            "min_ready_seconds": min_ready_seconds,
            "revision_history_limit": revision_history_limit})

    def delete_deployment(self, name, namespace="noetl"):
        self._call("DELETE", "/_sim/deployments/%s/%s" % (namespace, name))

    def set_behaviour(self, name, namespace, behaviour):
        """Default behaviour of new pods of Deployment ``namespace/name`` (None clears)."""
        self._call("PUT", "/_sim/behaviours/%s/%s" % (namespace, name), {"behaviour": behaviour})

    def set_image_behaviour(self, image, behaviour):
        """Behaviour of every new container running ``image`` (None clears)."""
        self._call("PUT", "/_sim/image-behaviours", {"image": image, "behaviour": behaviour})

    def set_digest(self, image, digest):
        """Digest reported in ``imageID`` for ``image``; returns that imageID."""
        return self._call("PUT", "/_sim/digests", {"image": image, "digest": digest})["image_id"]

    def set_server_version(self, version):
        self._call("PUT", "/_sim/server-version", {"version": version})

    def requests(self):
        return self._call("GET", "/_sim/requests")

    def clear_requests(self):
        self._call("DELETE", "/_sim/requests")

    def get(self, kind, name, namespace="noetl"):
        """The raw stored object, or None if it does not exist."""
        try:
            return self._call("GET", "/_sim/objects/%s/%s/%s" % (kind, namespace or "-", name))
        except SimError as err:
            if err.code == 404:
                return None
            raise

    def list(self, kind, namespace=None, label_selector=None):
        return self._call("GET", "/_sim/objects/%s" % kind,
                          query={"namespace": namespace, "labelSelector": label_selector})

    def inject_fault(self, method=None, path_regex=None, status=403, reason="Forbidden",
                     message=None, count=None, delay=None, raw_body=None):
        """Make matching API requests fail (see the module docstring); returns its id."""
        return self._call("POST", "/_sim/faults", {
            "method": method, "path_regex": path_regex, "status": status, "reason": reason,
            "message": message, "count": count, "delay": delay, "raw_body": raw_body})["id"]

    def clear_faults(self):
        self._call("DELETE", "/_sim/faults")

    def wait_for(self, predicate, timeout=10.0, interval=0.05, what="condition"):
        """Poll ``predicate(self)`` until it returns a truthy value; return it."""
        deadline = time.time() + timeout
        while True:
            value = predicate(self)
            if value:
                return value
            if time.time() > deadline:
                raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
            time.sleep(interval)


SCRIPT = os.path.abspath(__file__)


def start_sim(server_version=None, timeout=15.0, python=None, extra_args=()):
    """Spawn the simulator script; returns (Popen, SimClient) once it listens."""
    cmd = [python or sys.executable, SCRIPT, "--port", "0"]
    if server_version:
        cmd += ["--server-version", server_version]
    cmd += list(extra_args)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    deadline = time.time() + timeout
    line = b""
    try:
        while not line.endswith(b"\n"):
            remaining = deadline - time.time()
            if remaining <= 0:
                raise RuntimeError("k8s_sim did not start within %.0fs" % timeout)
            readable, _, _ = select.select([proc.stdout], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(proc.stdout.fileno(), 1)
            if not chunk:
                raise RuntimeError("k8s_sim exited early with code %s" % proc.wait(5))
            line += chunk
        text = line.decode().strip()
        if not text.startswith("listening "):
            raise RuntimeError("unexpected first line from k8s_sim: %r" % text)
        client = SimClient(text.split(" ", 1)[1])
        return proc, client
    except BaseException:
        stop_sim(proc)
        raise


def stop_sim(proc, timeout=5.0):
    """Terminate the simulator process by pid; kill it if it does not exit in time."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
        except ProcessLookupError:
            pass
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


def write_kubeconfig(path, base_url, contexts=("sim",), current="sim", namespace=None):
    """Write a kubeconfig with one cluster and user and the given context names."""
    q = json.dumps
    lines = ["apiVersion: v1", "kind: Config", "preferences: {}", "clusters:",
             "- name: sim-cluster", "  cluster:", "    server: %s" % q(base_url),
             "users:", "- name: sim-user", "  user: {}", "contexts:"]
    for name in contexts:
        lines += ["- name: %s" % q(name), "  context:", "    cluster: sim-cluster",
                  "    user: sim-user"]
        if namespace:
            lines.append("    namespace: %s" % q(namespace))
    lines.append("current-context: %s" % q(current))
    with open(str(path), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return str(path)


# --------------------------------------------------------------------------
# Script entry point
# --------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description="Kubernetes API server simulator for tests")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0 = ephemeral)")
    parser.add_argument("--server-version", default=DEFAULT_SERVER_VERSION,
                        help="version reported by /version (selects the dispatcher's kubectl)")
    parser.add_argument("--port-file", help="also write the port number to this file")
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args(argv)
    try:
        parse_version(args.server_version)
    except ValueError as exc:
        parser.error(str(exc))

    sim = Simulator(args.server_version, verbose=args.verbose)
    server = make_server(sim, args.port)
    port = server.server_address[1]
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sim.cluster.start()
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                               name="k8s-sim-http")
    serving.daemon = True
    serving.start()
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as handle:
            handle.write("%d\n" % port)
        os.replace(tmp, args.port_file)
    sys.stdout.write("listening http://127.0.0.1:%d\n" % port)
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    sim.stopping.set()
    sim.store.close_watchers()
    server.shutdown()
    server.server_close()
    sim.cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
