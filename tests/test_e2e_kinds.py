"""StatefulSets and DaemonSets, and an image per workload, end to end: the tool drives
the real kubectl (both versions) against the simulated cluster, whose controllers move
these kinds' status as the real ones do (partitions, OnDelete, ControllerRevisions)."""

import pytest
from fakes import OLD

pytestmark = pytest.mark.e2e

NEW = "ghcr.io/noetl/noetl:v2.35.9"
SERVER = "ghcr.io/noetl/noetl-server-rust:v3.1.0"
WORKER = "ghcr.io/noetl/noetl-worker-rust:v3.1.0"
REDIS_OLD, REDIS = "redis:7.2.4", "redis:7.2.5"
FAST = {"mode": "ready", "delay": 0.1}


def after_patch(cluster, plural, name, namespace="noetl"):
    """The tool's API requests after its only PATCH of ``plural/name`` (as method,
    path pairs); fails unless there was exactly one."""
    path = "/apis/apps/v1/namespaces/%s/%s/%s" % (namespace, plural, name)
    requests = cluster.api_requests()
    patches = [i for i, r in enumerate(requests) if r["method"] == "PATCH" and r["path"] == path]
    assert len(patches) == 1, [(r["method"], r["path"]) for r in requests]
    return [{"method": r["method"], "path": r["path"]} for r in requests[patches[0] + 1:]]


def noetl_v3(cluster):
    """NoETL as it runs today: server and worker images of their own, a StatefulSet."""
    cluster.sim.add_deployment("noetl-server", containers=[
        {"name": "server", "image": SERVER.replace("v3.1.0", "v3.0.0")}])
    cluster.sim.add_deployment("noetl-worker", containers=[
        {"name": "worker", "image": WORKER.replace("v3.1.0", "v3.0.0")}], replicas=2)
    cluster.sim.add_statefulset("redis", containers=[{"name": "redis", "image": REDIS_OLD}],
                                replicas=3, behaviour=FAST)


def test_two_images_and_a_statefulset_then_the_rerun(cluster):
    noetl_v3(cluster)
    revision_before = cluster.sim.get("statefulsets", "redis")["status"]["updateRevision"]
    payload = cluster.payload(images={"noetl-server": SERVER, "noetl-worker": WORKER,
                                      "statefulset/redis": REDIS}, parallel=True)
    run = cluster.bump(payload)
    assert run.code == 0, run.stdout + run.stderr
    assert [(e["image"], e["status"]) for e in run.event("probe")] == [
        (SERVER, "skipped"), (WORKER, "skipped"), (REDIS, "skipped")]
    comps = run.components
    assert [(c["component"], c["kind"], c["status"], c["image"]) for c in comps.values()] == [
        ("noetl-server", "deployment", "changed", SERVER),
        ("noetl-worker", "deployment", "changed", WORKER),
        ("redis", "statefulset", "changed", REDIS)]
    assert all(c["verified"] is True for c in comps.values()), comps
    assert cluster.image("redis", "redis", kind="statefulsets") == REDIS
    assert run.summary["image"] is None and run.summary["images"] == {
        "noetl-server": SERVER, "noetl-worker": WORKER, "statefulset/redis": REDIS}
    paths = {r["path"] for r in cluster.api_requests("GET")}
    assert "/apis/apps/v1/namespaces/noetl/statefulsets/redis" in paths
    assert "/apis/apps/v1/namespaces/noetl/deployments/noetl-server" in paths
    # the StatefulSet's rollout is complete, as kubectl's status viewer requires (no
    # partition: currentRevision has reached updateRevision), at a revision that is new
    sts = cluster.sim.get("statefulsets", "redis")
    status = sts["status"]
    assert status["observedGeneration"] == sts["metadata"]["generation"], status
    assert status["updateRevision"] != revision_before, status
    assert status["currentRevision"] == status["updateRevision"], status
    assert status["updatedReplicas"] == status["readyReplicas"] == 3, status
    pods = [p for p in cluster.sim.list("pods", namespace="noetl")
            if p["metadata"]["name"].startswith("redis-")]
    assert sorted((p["metadata"]["name"], p["metadata"]["labels"]["controller-revision-hash"],
                   p["spec"]["containers"][0]["image"]) for p in pods) == [
        ("redis-%d" % i, status["updateRevision"], REDIS) for i in range(3)]
    cluster.sim.clear_requests()
    rerun = cluster.bump(payload)
    assert rerun.code == 0
    assert {c["status"] for c in rerun.components.values()} == {"unchanged"}
    assert cluster.writes() == []


def test_daemonset_change_rerun_and_text_format(cluster):
    cluster.sim.add_daemonset("node-agent", containers=[{"name": "agent", "image": OLD}],
                              behaviour=FAST)
    run = cluster.bump(cluster.payload(image=NEW, deployment="ds/node-agent"), "--format",
                       "text")
    assert run.code == 0, run.stdout + run.stderr
    assert run.stdout == "daemonset/node-agent  changed  %s\n" % NEW
    ds = cluster.sim.get("daemonsets", "node-agent")
    assert ds["status"]["updatedNumberScheduled"] == ds["status"]["desiredNumberScheduled"] == 3
    run = cluster.bump(cluster.payload(image=NEW, deployment="daemonset/node-agent"))
    assert run.components["node-agent"]["status"] == "unchanged"
    assert run.components["node-agent"]["kind"] == "daemonset"


def test_partitioned_statefulset_is_done_when_its_partition_is(cluster):
    cluster.sim.add_statefulset("db", containers=[{"name": "db", "image": OLD}], replicas=3,
                                partition=2, behaviour=FAST)
    run = cluster.bump(cluster.payload(image=NEW, deployment="sts/db"))
    assert run.code == 0, run.stdout + run.stderr
    assert run.components["db"]["status"] == "changed"
    assert run.components["db"]["verified"] is True        # the one new pod (db-2)
    pods = {p["metadata"]["name"]: p["spec"]["containers"][0]["image"]
            for p in cluster.sim.list("pods", namespace="noetl")
            if p["metadata"]["name"].startswith("db-")}
    assert pods == {"db-0": OLD, "db-1": OLD, "db-2": NEW}


@pytest.mark.parametrize("kind, add", [
    ("statefulset", "add_statefulset"), ("daemonset", "add_daemonset")])
def test_on_delete_is_changed_not_waited_for(cluster, kind, add):
    getattr(cluster.sim, add)("x", containers=[{"name": "x", "image": OLD}],
                              update_strategy="OnDelete", behaviour=FAST)
    run = cluster.bump(cluster.payload(image=NEW, deployment=kind + "/x"))
    assert run.code == 0, run.stdout + run.stderr
    comp = run.components["x"]
    assert comp["status"] == "changed" and comp["verified"] is None
    assert "OnDelete" in run.stderr
    # not waited for: after its one PATCH the tool read neither the workload (a rollout
    # wait polls it by name) nor any Pods or ControllerRevisions (fail fast, verification)
    later = after_patch(cluster, kind + "s", "x")
    assert not [r for r in later if r["path"].endswith("/%ss/x" % kind)], later
    assert not [r for r in later if r["path"].endswith(("/pods", "/controllerrevisions"))], \
        later
    assert cluster.image("x", "x", kind=kind + "s") == NEW
    run = cluster.bump(cluster.payload(image=NEW, deployment=kind + "/x"))
    assert run.code == 0 and run.components["x"]["status"] == "unchanged"


@pytest.mark.parametrize("kind, add", [
    ("statefulset", "add_statefulset"), ("daemonset", "add_daemonset")])
def test_fail_fast_and_rollback_for_the_new_kinds(cluster, kind, add):
    getattr(cluster.sim, add)("x", containers=[{"name": "x", "image": OLD}], behaviour=FAST)
    bad = "ghcr.io/noetl/noetl:v9-broken"
    cluster.sim.set_image_behaviour(bad, {"mode": "image_pull_backoff"})
    run = cluster.bump(cluster.payload(image=bad, deployment=kind + "/x", fail_fast_seconds=1,
                                       rollback_on_failure=True, rollout_timeout_seconds=60))
    assert run.code == 1, run.stdout
    comp = run.components["x"]
    assert comp["error"]["code"] == "rollout_failed"
    # the pod alternates between the two reasons, as a kubelet's does: either may be seen
    message = comp["error"]["message"]
    assert message.startswith(("ImagePullBackOff: ", "ErrImagePull: ")), message
    assert bad in message and "(pod x-" in message, message
    assert comp["rolled_back"] is True and comp["restored_image"] == OLD, comp
    assert cluster.image("x", "x", kind=kind + "s") == OLD


def test_change_cause_reaches_the_controller_revisions(cluster):
    cluster.sim.add_statefulset("db", containers=[{"name": "db", "image": OLD}],
                                behaviour=FAST)
    assert cluster.bump(cluster.payload(image=NEW, deployment="sts/db")).code == 0
    revisions = cluster.sim.list("controllerrevisions", namespace="noetl")
    causes = [r["metadata"].get("annotations", {}).get("kubernetes.io/change-cause")
              for r in revisions]
    assert "bump_image " + NEW in causes


def test_missing_kinds_are_reported_by_kind(cluster):
    cluster.noetl()
    run = cluster.bump(cluster.payload(image=NEW, deployments=["noetl-server", "sts/nope",
                                                               "ds/nope"]))
    assert run.code == 1
    assert run.components["noetl-server"]["status"] == "changed"
    errors = [e["error"]["message"] for e in run.event("component") if e["error"]]
    assert errors == ['StatefulSet "nope" not found in namespace "noetl"',
                      'DaemonSet "nope" not found in namespace "noetl"']
    assert run.summary["error"] is None          # something was found


def test_statefulset_scaled_to_zero(cluster):
    cluster.sim.add_statefulset("idle", containers=[{"name": "w", "image": OLD}], replicas=0)
    run = cluster.bump(cluster.payload(image=NEW, deployment="sts/idle"))
    assert run.code == 0 and run.components["idle"]["status"] == "changed"
    assert cluster.sim.get("statefulsets", "idle")["spec"]["replicas"] == 0
    run = cluster.bump(cluster.payload(image=NEW, deployment="sts/idle"))
    assert run.code == 0 and run.components["idle"]["status"] == "unchanged"
