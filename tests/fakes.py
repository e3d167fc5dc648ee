"""Fast fakes for unit tests: an in-memory kubectl runner and CLI helpers.

``FakeKubectl`` is a runner for ``bump_image`` (``runner(argv, timeout=, env=,
tag=) -> Completed``) that interprets the handful of kubectl commands the tool
sends against a dict of Deployments.  It is for precise, fast cases; the real
kubectl against the simulated API server (``k8s_sim``) is what proves we speak
kubectl's language.
"""

import copy
import io
import json
import threading

import bump_image

IMAGE = "ghcr.io/noetl/noetl:v2.35.9"
OLD = "ghcr.io/noetl/noetl:v2.35.8"
DIGEST = "sha256:" + "d" * 64


def deployment(name, containers=None, init=None, replicas=1, paused=False, complete=True,
               revision="1", namespace="noetl", progress_deadline_exceeded=False):
    """A Deployment object as ``kubectl get -o json`` prints it."""
    containers = containers if containers is not None else {"main": OLD}
    status = {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
              "readyReplicas": replicas, "availableReplicas": replicas}
    if not complete:
        status.update(updatedReplicas=0, availableReplicas=0, readyReplicas=0)
    if progress_deadline_exceeded:
        status["conditions"] = [{"type": "Progressing", "status": "False",
                                 "reason": "ProgressDeadlineExceeded",
                                 "message": 'ReplicaSet "%s-x" has timed out progressing.' % name}]
    pod_spec = {"containers": [{"name": n, "image": i} for n, i in containers.items()]}
    if init:
        pod_spec["initContainers"] = [{"name": n, "image": i} for n, i in init.items()]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "uid": "uid-" + name,
                     "generation": 1, "annotations": {bump_image.REVISION: revision}},
        "spec": {"replicas": replicas, "paused": paused,
                 "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec}},
        "status": status,
    }


def noetl_cluster(image=OLD):
    """The three NoETL Deployments; the worker has its init container."""
    return {
        "noetl-server": deployment("noetl-server", {"server": image}),
        "noetl-worker": deployment("noetl-worker", {"worker": image},
                                   init={"wait-for-api": image}),
        "ollama-bridge": deployment("ollama-bridge", {"bridge": image}),
    }


class FakeKubectl:
    """An in-memory kubectl: get (Deployments by name; ReplicaSets and Pods),
    patch, rollout undo, delete pod, config current-context.

    ``rollout`` maps a Deployment name to how its rollout goes once it is changed
    (or, for one found unfinished, from the second read on): ``"ok"`` (the
    default: complete at the next read), ``"stuck"`` (never completes),
    ``"deadline"`` (ProgressDeadlineExceeded) or ``"gone"`` (deleted right after
    the patch); after a ``rollout undo`` it is ``undo_rollout``'s mode (default
    ``"ok"``; also ``"stale_then_ok"``: the change's condition stays for one read,
    ``"stale_for_a_while"``: for ten, and ``"deadline_again"``: a new
    ProgressDeadlineExceeded).  ``fail`` maps a verb to a ``Completed`` returned instead of doing
    it: ``get`` (every read of the workloads), ``poll`` (every read but the
    first), ``patch``, ``rollout undo``, ``facts`` (ReplicaSets and Pods),
    ``delete``, ``config``; ``digests`` maps an image to the digest its pods
    report; ``nodes`` is the list ``get nodes`` answers (None: Forbidden).
    """

    def __init__(self, deployments=None, context="sim", present=True):
        self.deployments = copy.deepcopy(deployments if deployments is not None
                                         else noetl_cluster())
        self.context = context
        self.present = present
        self.calls = []
        self.rollout = {}
        self.undo_rollout = {}
        self.fail = {}
        self.digests = {}
        self.history = {name: [] for name in self.deployments}
        self.reads = 0
        self.nodes = None           # a list of Node objects; None: reading them is Forbidden

    # -- the runner protocol ----------------------------------------------

    def resolve(self, binary, env):
        return "/usr/bin/" + binary if self.present else None

    def kill(self, tag=None):
        pass

    def __call__(self, argv, timeout, env=None, tag=None):
        self.calls.append(list(argv))
        args = [a for a in argv[1:] if not a.startswith(("--request-timeout", "--context",
                                                          "--kubeconfig", "--cache-dir"))]
        if args[:2] == ["config", "current-context"]:
            if self.context is None and "config" not in self.fail:
                return bump_image.Completed(1, "", "error: current-context is not set\n")
            return self.fail.get("config") or bump_image.Completed(0, self.context + "\n")
        if args[:2] == ["get", "nodes"]:
            if self.nodes is None:
                return bump_image.Completed(1, "", 'Error from server (Forbidden): nodes is'
                                            ' forbidden: User "sim" cannot list resource'
                                            ' "nodes" in API group "" at the cluster scope\n')
            return self._json({"kind": "List", "items": self.nodes})
        if args[:1] == ["get"] and args[1] in ("replicasets,pods", "pods"):
            return self.fail.get("facts") or self._json({"kind": "List",
                                                         "items": self._facts()})
        if args[:1] == ["get"]:
            self.reads += 1
            failed = self.fail.get("get") or (self.fail.get("poll") if self.reads > 1 else None)
            return failed or self._get([a.split("/", 1)[1] for a in args[1:]
                                        if not a.startswith("-")])
        if args[:1] == ["patch"]:
            return self.fail.get("patch") or self._patch_all(
                [a for a in args[2:] if not a.startswith("-")], args)
        if args[:2] == ["rollout", "undo"]:
            return self.fail.get("rollout undo") or self._undo(args[2].split("/", 1)[1])
        if args[:2] == ["delete", "pod"]:
            return self.fail.get("delete") or bump_image.Completed(0, "")
        raise AssertionError("unexpected kubectl call: %r" % (argv,))

    # -- what tests look at ------------------------------------------------

    def verbs(self):
        """The calls as short verbs: ``get a b`` (a read of the workloads, by name),
        ``patch a b``, ``rollout undo a``, ``facts`` (ReplicaSets and Pods),
        ``config current-context``, ``delete pod p``."""
        out = []
        for argv in self.calls:
            args = [a for a in argv[1:] if not a.startswith("-")]
            if args[0] == "patch":
                out.append("patch " + " ".join(args[2:]))
            elif args[0] == "rollout":
                out.append("rollout %s %s" % (args[1], " ".join(
                    a.split("/", 1)[1] for a in args[2:])))
            elif args[0] == "get" and args[1] in ("replicasets,pods", "pods"):
                out.append("facts")
            elif args[:2] == ["get", "nodes"]:
                out.append("get nodes")
            elif args[0] == "get":
                out.append("get " + " ".join(a.split("/", 1)[1] for a in args[1:]))
            else:
                out.append(" ".join(args))
        return out

    def patches(self):
        return [json.loads(next(a for a in argv if a.startswith("--patch="))[8:])
                for argv in self.calls if argv[1:2] == ["patch"] or "patch" in argv[:3]]

    def image_of(self, name, container, key="containers"):
        spec = self.deployments[name]["spec"]["template"]["spec"]
        return next(c["image"] for c in spec.get(key, []) if c["name"] == container)

    # -- the commands --------------------------------------------------------

    @staticmethod
    def _json(obj):
        return bump_image.Completed(0, json.dumps(obj))

    def _get(self, names):
        found = []
        for name in names:
            dep = self.deployments.get(name)
            if dep is None:
                continue
            if self.reads > 1:
                self._progress(dep, self.rollout.get(name, "ok"))
            found.append(copy.deepcopy(dep))
        if len(names) == 1:
            return bump_image.Completed(0, json.dumps(found[0]) if found else "")
        return self._json({"apiVersion": "v1", "kind": "List", "items": found})

    @staticmethod
    def _progress(dep, mode):
        """The rollout's state as a read sees it, by ``mode``."""
        status, replicas = dep["status"], dep["spec"]["replicas"]
        status["observedGeneration"] = dep["metadata"]["generation"]
        if mode == "ok":
            status.update(replicas=replicas, updatedReplicas=replicas, readyReplicas=replicas,
                          availableReplicas=replicas)
            status.pop("conditions", None)
        elif mode == "stuck":
            status.update(replicas=replicas + 1, updatedReplicas=1 if replicas else 0,
                          availableReplicas=replicas)
            status.pop("conditions", None)
        elif mode in ("deadline", "deadline_again"):
            status["conditions"] = [{"type": "Progressing", "status": "False",
                                     "reason": "ProgressDeadlineExceeded",
                                     "lastUpdateTime": "2026-12-05T10:00:0%d Z" % (
                                         mode == "deadline_again"),
                                     "message": 'ReplicaSet "x" has timed out progressing.'}]
        elif mode in ("replica_failure", "replica_failure_for_a_while"):
            # quota exceeded: the new ReplicaSet cannot create its pod; after an undo the
            # controller still shows it for six reads (about 3 s of polls)
            dep["metadata"]["stale_read"] = dep["metadata"].get("stale_read", 0) + 1
            if mode == "replica_failure_for_a_while" and dep["metadata"]["stale_read"] > 6:
                FakeKubectl._progress(dep, "ok")
            else:
                status.update(replicas=replicas, updatedReplicas=0,
                              availableReplicas=replicas)
                status["conditions"] = [{"type": "ReplicaFailure", "status": "True",
                                         "reason": "FailedCreate",
                                         "message": "exceeded quota"}]
        elif mode in ("stale_then_ok", "stale_for_a_while"):
            # the controller has seen the undo but not yet its progress: the change's
            # ProgressDeadlineExceeded is still there (kubernetes' syncRolloutStatus),
            # for one read, or for ten (past the first look at the pods)
            dep["metadata"]["stale_read"] = dep["metadata"].get("stale_read", 0) + 1
            if dep["metadata"]["stale_read"] > (1 if mode == "stale_then_ok" else 10):
                FakeKubectl._progress(dep, "ok")
            else:                   # still rolling back: the failed pod not yet gone
                status.update(replicas=replicas + 1, updatedReplicas=replicas,
                              availableReplicas=replicas)

    def _patch_all(self, names, args):
        """Like kubectl: each in turn (``-o name`` prints it), stopping at the first
        that fails."""
        out = ""
        for name in names:
            done = self._patch(name, args)
            if done.returncode != 0:
                return bump_image.Completed(done.returncode, out, done.stderr)
            out += "deployment.apps/%s\n" % name
        return bump_image.Completed(0, out)

    def _patch(self, name, args):
        if name not in self.deployments:
            return bump_image.Completed(
                1, "", 'Error from server (NotFound): deployments.apps "%s" not found\n' % name)
        patch = json.loads(next(a for a in args if a.startswith("--patch="))[8:])
        dep = self.deployments[name]
        self.history[name].append(copy.deepcopy(dep))
        spec = dep["spec"]["template"]["spec"]
        for key, entries in patch["spec"]["template"]["spec"].items():
            for entry in entries:
                for c in spec.get(key, []):
                    if c["name"] == entry["name"]:
                        c["image"] = entry["image"]
        dep["metadata"].setdefault("annotations", {}).update(patch["metadata"]["annotations"])
        dep["metadata"]["generation"] += 1
        revision = int(dep["metadata"]["annotations"][bump_image.REVISION]) + 1
        dep["metadata"]["annotations"][bump_image.REVISION] = str(revision)
        if self.rollout.get(name) == "gone":
            del self.deployments[name]
        return bump_image.Completed(0, "deployment.apps/%s patched\n" % name)

    def _undo(self, name):
        if not self.history.get(name):
            return bump_image.Completed(1, "", "error: no rollout history found\n")
        previous = self.history[name].pop()
        dep = self.deployments[name]
        dep["spec"]["template"] = previous["spec"]["template"]
        dep["metadata"]["generation"] += 1
        self.rollout[name] = self.undo_rollout.get(name, "ok")
        dep["metadata"].pop("stale_read", None)         # the rollback's reads count anew
        return bump_image.Completed(0, "deployment.apps/%s rolled back\n" % name)

    def _facts(self):
        items = []
        for name, dep in self.deployments.items():
            revision = dep["metadata"]["annotations"][bump_image.REVISION]
            template = copy.deepcopy(dep["spec"]["template"])
            rs = {"kind": "ReplicaSet",
                  "metadata": {"name": name + "-rs" + revision, "uid": "rs-" + name,
                               "annotations": {bump_image.REVISION: revision},
                               "ownerReferences": [{"uid": dep["metadata"]["uid"]}]},
                  "spec": {"template": template}}
            items.append(rs)
            spec = template["spec"]
            for i in range(dep["spec"]["replicas"]):
                statuses = {}
                for key, skey in (("containers", "containerStatuses"),
                                  ("initContainers", "initContainerStatuses")):
                    statuses[skey] = [{
                        "name": c["name"], "image": c["image"],
                        "imageID": c["image"].split(":")[0] + "@" + self.digests.get(
                            c["image"], DIGEST),
                        "state": {"running": {}} if key == "containers" else
                        {"terminated": {"exitCode": 0}}} for c in spec.get(key, [])]
                items.append({"kind": "Pod",
                              "metadata": {"name": "%s-%s" % (name, i),
                                           "ownerReferences": [{"uid": "rs-" + name}]},
                              "spec": copy.deepcopy(spec),
                              "status": dict(phase="Running", **statuses)})
        return items


class CliRun:
    """What one ``bump_image.main`` call produced."""

    def __init__(self, code, stdout, stderr):
        self.code = code
        self.stdout = stdout
        self.stderr = stderr

    @property
    def events(self):
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def event(self, kind):
        return [e for e in self.events if e["event"] == kind]

    @property
    def components(self):
        return {e["component"]: e for e in self.event("component")}

    @property
    def summary(self):
        return self.event("summary")[0]


class VirtualClock:
    """A monotonic clock that its ``sleep`` moves, and each read by ``tick``."""

    def __init__(self, now=1000.0, tick=0.0):
        self.now = now
        self.tick = tick
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.now += self.tick
            return self.now

    def sleep(self, seconds):
        self.now += max(seconds, 0.0)


def run_cli(argv, stdin="", **effects):
    """Call ``bump_image.main`` with captured streams; returns a ``CliRun``."""
    out, err = io.StringIO(), io.StringIO()
    if isinstance(effects.get("runner"), FakeKubectl) and not {"clock", "sleeper"} & set(effects):
        # a fake cluster answers at once: its waits run on a clock that moves by a
        # twentieth of a second each time it is read, so that no test waits for a
        # poll in real time
        clock = VirtualClock(tick=0.05)
        effects.update(clock=clock, sleeper=clock.sleep)
    effects.setdefault("sleeper", lambda seconds: None)
    code = bump_image.main(list(argv), stdin=io.StringIO(stdin), stdout=out, stderr=err,
                           **effects)
    return CliRun(code, out.getvalue(), err.getvalue())


class NoNetwork:
    """An opener that fails the test if the probe tries to use it."""

    def __init__(self):
        self.used = []

    def open(self, request, timeout=None):
        self.used.append(request.full_url)
        raise AssertionError("the network was contacted: %s" % request.full_url)
