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
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import k8s_sim  # noqa: E402
from conftest import DISPATCHER, newer_kubectl  # noqa: E402
from k8s_sim import start_sim, stop_sim, write_kubeconfig  # noqa: E402

pytestmark = pytest.mark.e2e

NS = "noetl"
KUBECTLS = [pytest.param(DISPATCHER, id="dispatcher"), pytest.param(newer_kubectl(), id="new")]


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
    result = kubectl("rollout", "status", "deployment/web", "-n", NS, "--timeout=2s")
    assert result.returncode == 1
    assert 1.5 < time.time() - started < 15
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
        match = re.match(r"^listening http://127\.0\.0\.1:(\d+)\n$", first)
        assert match, first
        assert port_file.read_text().strip() == match.group(1)
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
        # An open watch must not block the shutdown.
        watch = urllib.request.urlopen(base + "/api/v1/namespaces/noetl/pods?watch=1", timeout=5)
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        watch.close()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0
    assert out == b""
    assert b"Traceback" not in err


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
