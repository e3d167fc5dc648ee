"""Pure decisions as tables: rollout verdicts, container plans, decide(), diagnosis,
the pods of a new revision, verification, the union selector."""

import pytest

from bump_image import (
    ContainerAmbiguous,
    ContainerNotFound,
    Workload,
    build_patch,
    decide,
    diagnose,
    new_pods,
    parse_image,
    plan_containers,
    rollout_verdict,
    union_selector,
    verify_pods,
)

TARGET = parse_image("ghcr.io/noetl/noetl:v2")
DIGEST = "sha256:" + "a" * 64
DEPLOY = Workload("deployment", "d")


# -- rollout verdicts ---------------------------------------------------------------

def dep(generation=2, observed=2, replicas=3, updated=3, total=3, available=3,
        conditions=(), revision="2", **spec):
    return {"kind": "Deployment",
            "metadata": {"name": "d", "uid": "u-d", "generation": generation,
                         "annotations": {"deployment.kubernetes.io/revision": revision}},
            "spec": dict({"replicas": replicas}, **spec),
            "status": {"observedGeneration": observed, "updatedReplicas": updated,
                       "replicas": total, "availableReplicas": available,
                       "conditions": list(conditions)}}


def sts(replicas=3, ready=3, updated=3, current=3, partition=None, rolling=True,
        update_rev="s-2", current_rev="s-2", generation=2, observed=2, on_delete=False):
    strategy = {"type": "OnDelete"} if on_delete else {"type": "RollingUpdate"}
    if rolling and not on_delete:
        strategy["rollingUpdate"] = {} if partition is None else {"partition": partition}
    return {"kind": "StatefulSet", "metadata": {"name": "s", "uid": "u-s",
                                                "generation": generation},
            "spec": {"replicas": replicas, "updateStrategy": strategy},
            "status": {"observedGeneration": observed, "readyReplicas": ready,
                       "updatedReplicas": updated, "currentReplicas": current,
                       "updateRevision": update_rev, "currentRevision": current_rev}}


def ds(desired=3, updated=3, available=3, generation=2, observed=2):
    return {"kind": "DaemonSet", "metadata": {"name": "x", "uid": "u-x",
                                              "generation": generation},
            "spec": {"updateStrategy": {"type": "RollingUpdate"}},
            "status": {"observedGeneration": observed, "desiredNumberScheduled": desired,
                       "updatedNumberScheduled": updated, "numberAvailable": available}}


DEADLINE = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": 'ReplicaSet "d-1" has timed out progressing.'}


@pytest.mark.parametrize("obj, done, failed, message", [
    (dep(generation=3, observed=2), False, False, "Waiting for deployment spec update to be"
                                                  " observed"),
    (dep(conditions=[DEADLINE]), False, True, 'deployment "d" exceeded its progress deadline'),
    (dep(updated=1), False, False, "1 out of 3 new replicas have been updated"),
    (dep(total=4), False, False, "1 old replicas are pending termination"),
    (dep(available=2), False, False, "2 of 3 updated replicas are available"),
    # the review's finding: 3 of 3 available is done, not "updated replicas are available"
    (dep(), True, False, 'deployment "d" successfully rolled out'),
    (dep(replicas=0, updated=0, total=0, available=0), True, False, "successfully"),
    # spec.replicas null: kubectl skips that step (no TypeError)
    (dep(replicas=None, updated=2, total=2, available=2), True, False, "successfully"),
    (dep(replicas=None, updated=2, total=3, available=2), False, False, "1 old replicas"),
    (sts(generation=3, observed=2), False, False, "Waiting for statefulset spec update"),
    (sts(observed=0, generation=0), False, False, "Waiting for statefulset spec update"),
    (sts(ready=1), False, False, "Waiting for 2 pods to be ready"),
    (sts(partition=2, updated=0), False, False, "Waiting for partitioned roll out to finish:"
                                                " 0 out of 1 new pods have been updated"),
    (sts(partition=2, updated=1), True, False, "partitioned roll out complete: 1 new pods"),
    (sts(partition=0, updated=3), True, False, "partitioned roll out complete: 3 new pods"),
    (sts(rolling=False, update_rev="s-3"), False, False, "waiting for statefulset rolling"
                                                         " update to complete 3 pods at"
                                                         " revision s-3"),
    (sts(rolling=False), True, False, "statefulset rolling update complete 3 pods at"
                                      " revision s-2"),
    (ds(generation=3, observed=2), False, False, "Waiting for daemon set spec update"),
    (ds(updated=1), False, False, 'daemon set "x" rollout to finish: 1 out of 3 new pods'),
    (ds(available=2), False, False, "2 of 3 updated pods are available"),
    (ds(), True, False, 'daemon set "x" successfully rolled out'),
    (ds(desired=0, updated=0, available=0), True, False, "successfully rolled out"),
])
def test_rollout_verdict(obj, done, failed, message):
    got_done, got_message, got_failed = rollout_verdict(obj)
    assert (got_done, got_failed) == (done, failed)
    assert message in got_message


# -- containers ---------------------------------------------------------------------

def pod_spec(containers, init=None, template_annotations=None, annotations=None):
    spec = {"containers": [{"name": n, "image": i} for n, i in containers]}
    if init:
        spec["initContainers"] = [{"name": n, "image": i} for n, i in init]
    template = {"spec": spec}
    if template_annotations:
        template["metadata"] = {"annotations": template_annotations}
    return {"kind": "Deployment", "metadata": {"name": "d", "annotations": annotations or {}},
            "spec": {"template": template}}


DEFAULT = "kubectl.kubernetes.io/default-container"


@pytest.mark.parametrize("obj, container, names, changes, previous", [
    (pod_spec([("worker", "ghcr.io/noetl/noetl:v1")], [("wait-for-api",
                                                        "ghcr.io/noetl/noetl:v1")]),
     None, ["worker", "wait-for-api"],
     [("containers", "worker"), ("initContainers", "wait-for-api")], "ghcr.io/noetl/noetl:v1"),
    (pod_spec([("worker", "ghcr.io/noetl/noetl:v2")], [("wait-for-api", "curlimages/curl:8")]),
     None, ["worker"], [], "ghcr.io/noetl/noetl:v2"),
    # only one regular container: that one, whatever the init containers run
    (pod_spec([("a", "busybox")], [("i", "curl")]), None, ["a"], [("containers", "a")],
     "busybox"),
    (pod_spec([("a", "busybox")], [("i", "ghcr.io/noetl/noetl:v1")]), None, ["i"],
     [("initContainers", "i")], "ghcr.io/noetl/noetl:v1"),
    (pod_spec([("a", "ghcr.io/noetl/noetl:v1"), ("b", "ghcr.io/noetl/noetl:v1")]), "b", ["b"],
     [("containers", "b")], "ghcr.io/noetl/noetl:v1"),
    (pod_spec([("a", "not a valid ref!")]), None, ["a"], [("containers", "a")],
     "not a valid ref!"),
    # the default-container annotation, on the pod template or on the workload
    (pod_spec([("proxy", "envoy:1"), ("app", "busybox")], template_annotations={
        DEFAULT: "app"}), None, ["app"], [("containers", "app")], "busybox"),
    (pod_spec([("proxy", "envoy:1"), ("app", "busybox")], annotations={DEFAULT: "app"}),
     None, ["app"], [("containers", "app")], "busybox"),
    # the same repository wins over the annotation
    (pod_spec([("proxy", "envoy:1"), ("app", "ghcr.io/noetl/noetl:v1")],
              template_annotations={DEFAULT: "proxy"}), None, ["app"], [("containers", "app")],
     "ghcr.io/noetl/noetl:v1"),
    # GHCR.io is ghcr.io: registry hosts compare case-insensitively
    (pod_spec([("a", "GHCR.io/noetl/noetl:v2")]), None, ["a"], [], "GHCR.io/noetl/noetl:v2"),
])
def test_plan(obj, container, names, changes, previous):
    plan = plan_containers(obj, DEPLOY, TARGET, container)
    assert plan.containers == names
    assert plan.changes == changes
    assert plan.previous_image == previous
    assert plan.at_target is (not changes)


def test_plan_errors():
    with pytest.raises(ContainerNotFound, match='Deployment "d" has no container "b"'):
        plan_containers(pod_spec([("a", "x")]), DEPLOY, TARGET, "b")
    with pytest.raises(ContainerNotFound, match="has no containers"):
        plan_containers({"metadata": {"name": "d"}, "spec": {}}, DEPLOY, TARGET)
    with pytest.raises(ContainerAmbiguous, match=r"2 containers \(containers: cloudsql-proxy,"
                                                 r" app\), none runs ghcr.io/noetl/noetl"):
        plan_containers(pod_spec([("cloudsql-proxy", "gcr.io/x/proxy:1"), ("app", "busybox")]),
                        DEPLOY, TARGET)
    with pytest.raises(ContainerAmbiguous, match='annotation names "gone"'):
        plan_containers(pod_spec([("a", "x"), ("b", "y")], template_annotations={
            DEFAULT: "gone"}), DEPLOY, TARGET)


def test_build_patch():
    plan = plan_containers(pod_spec([("w", "ghcr.io/noetl/noetl:v1")],
                                    [("i", "ghcr.io/noetl/noetl:v1")]), DEPLOY, TARGET)
    assert build_patch(plan, "IMG", "cause") == {
        "metadata": {"annotations": {"kubernetes.io/change-cause": "cause"}},
        "spec": {"template": {"spec": {"containers": [{"name": "w", "image": "IMG"}],
                                       "initContainers": [{"name": "i", "image": "IMG"}]}}}}


# -- decide: what to do with one workload --------------------------------------------

OLD = "ghcr.io/noetl/noetl:v1"
NEW = "ghcr.io/noetl/noetl:v2"


def workload_obj(image=OLD, kind="Deployment", replicas=3, paused=False, complete=True,
                 on_delete=False, deadline=False):
    obj = dep(conditions=[DEADLINE] if deadline else (),
              **({"paused": True} if paused else {}))
    obj["kind"] = kind
    obj["spec"]["template"] = {"spec": {"containers": [{"name": "c", "image": image}]}}
    obj["spec"]["replicas"] = replicas
    if not complete:
        obj["status"]["updatedReplicas"] = 1
    if kind == "StatefulSet":
        obj["status"].update(readyReplicas=replicas if complete else 0, currentReplicas=replicas,
                             updateRevision="r", currentRevision="r")
        obj["spec"]["updateStrategy"] = {"type": "OnDelete" if on_delete else "RollingUpdate"}
    if kind == "DaemonSet":
        del obj["spec"]["replicas"]
        obj["status"].update(desiredNumberScheduled=3, updatedNumberScheduled=3 if complete
                             else 1, numberAvailable=3)
        obj["spec"]["updateStrategy"] = {"type": "OnDelete" if on_delete else "RollingUpdate"}
    return obj


STS, DS = Workload("statefulset", "d"), Workload("daemonset", "d")


@pytest.mark.parametrize("workload, obj, listed, dry_run, action, code, wait", [
    (DEPLOY, None, True, False, "refuse", "not_found", False),
    (DEPLOY, None, False, False, "skip", None, False),
    (STS, None, True, False, "refuse", "not_found", False),
    (DEPLOY, workload_obj(NEW), True, False, "unchanged", None, False),
    (DEPLOY, workload_obj(NEW, complete=False), True, False, "wait", None, False),
    (DEPLOY, workload_obj(NEW, complete=False), True, True, "unchanged", None, False),
    (DEPLOY, workload_obj(NEW, deadline=True), True, False, "refuse", "rollout_failed", False),
    (DEPLOY, workload_obj(NEW, complete=False, paused=True), True, False, "refuse",
     "deployment_paused", False),
    (DEPLOY, workload_obj(NEW, paused=True), True, False, "unchanged", None, False),
    (DEPLOY, workload_obj(paused=True), True, False, "refuse", "deployment_paused", False),
    (DEPLOY, workload_obj(), True, True, "plan", None, False),
    (DEPLOY, workload_obj(), True, False, "patch", None, True),
    # scaled to zero: at the target is unchanged; otherwise patched, nothing to wait for
    (DEPLOY, workload_obj(NEW, replicas=0), True, False, "unchanged", None, False),
    (DEPLOY, workload_obj(NEW, replicas=0, complete=False), True, False, "unchanged", None,
     False),
    (DEPLOY, workload_obj(replicas=0), True, False, "patch", None, False),
    (STS, workload_obj(kind="StatefulSet", replicas=0), True, False, "patch", None, False),
    # StatefulSets and DaemonSets: waited for, except OnDelete
    (STS, workload_obj(kind="StatefulSet"), True, False, "patch", None, True),
    (STS, workload_obj(NEW, kind="StatefulSet", complete=False), True, False, "wait", None,
     False),
    (STS, workload_obj(kind="StatefulSet", on_delete=True), True, False, "patch", None, False),
    (STS, workload_obj(NEW, kind="StatefulSet", on_delete=True, complete=False), True, False,
     "unchanged", None, False),
    (DS, workload_obj(kind="DaemonSet"), True, False, "patch", None, True),
    (DS, workload_obj(NEW, kind="DaemonSet", complete=False), True, False, "wait", None,
     False),
    (DS, workload_obj(kind="DaemonSet", on_delete=True), True, False, "patch", None, False),
    # paused is a Deployment's only
    (STS, dict(workload_obj(kind="StatefulSet"), spec=dict(
        workload_obj(kind="StatefulSet")["spec"], paused=True)), True, False, "patch", None,
     True),
])
def test_decide(workload, obj, listed, dry_run, action, code, wait):
    decision = decide(workload, obj, TARGET, None, dry_run, "noetl", listed)
    assert (decision.action, decision.code, decision.wait) == (action, code, wait)
    if action == "patch" and not wait:
        assert "nothing to wait for" in decision.note
    if code == "not_found":
        assert decision.message == '%s "d" not found in namespace "noetl"' % workload.title


def test_decide_refuses_an_ambiguous_container():
    obj = pod_spec([("proxy", "envoy:1"), ("app", "busybox")])
    decision = decide(DEPLOY, obj, TARGET)
    assert (decision.action, decision.code) == ("refuse", "container_ambiguous")
    assert decide(DEPLOY, obj, TARGET, "app").action == "patch"
    assert decide(DEPLOY, obj, TARGET, "nope").code == "container_not_found"


# -- the pods of a new revision, diagnosis, verification -------------------------------

def rs(revision, uid="rs-2", image=NEW, conditions=()):
    return {"kind": "ReplicaSet",
            "metadata": {"name": "d-" + revision, "uid": uid,
                         "annotations": {"deployment.kubernetes.io/revision": revision},
                         "ownerReferences": [{"uid": "u-d", "kind": "Deployment"}]},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}},
            "status": {"conditions": list(conditions)}}


REPLICASETS = [rs("1", "rs-1", OLD), rs("2")]
EXPECTED = {"c": NEW}


def pod(name="d-2-x", owner="rs-2", state=None, image=NEW, spec_image=None,
        image_id="ghcr.io/noetl/noetl@" + DIGEST, phase="Running", deleting=False, cname="c",
        init=False):
    status = {"name": cname, "image": image, "imageID": image_id,
              "state": state if state is not None else {"running": {"startedAt": "x"}}}
    meta = {"name": name, "ownerReferences": [{"uid": owner}]}
    if deleting:
        meta["deletionTimestamp"] = "now"
    key = "initContainerStatuses" if init else "containerStatuses"
    spec_key = "initContainers" if init else "containers"
    return {"kind": "Pod", "metadata": meta,
            "spec": {spec_key: [{"name": "c", "image": spec_image or image}]},
            "status": {"phase": phase, key: [status]}}


def waiting(reason, message="m"):
    return {"waiting": {"reason": reason, "message": message}}


def test_new_pods_are_the_new_revisions_own():
    mine, old = pod(), pod(name="d-1-x", owner="rs-1", image=OLD)
    stranger = pod(name="other", owner="rs-9")
    direct = pod(name="s-0", owner="u-d")          # a StatefulSet's or DaemonSet's pod
    stale = pod(name="s-1", owner="u-d", image=OLD)
    assert new_pods("u-d", EXPECTED, REPLICASETS, [mine, old, stranger, direct, stale]) == [
        mine, direct]
    assert new_pods("u-d", EXPECTED, REPLICASETS, [pod(deleting=True), pod(phase="Failed")]) == []
    # normalized: a pod spec's docker.io/library/nginx:latest is the target nginx
    nginx = pod(name="n", owner="u-d", image="docker.io/library/nginx:latest")
    assert new_pods("u-d", {"c": "nginx"}, [], [nginx]) == [nginx]


@pytest.mark.parametrize("pods, replicasets, workload, expected", [
    ([pod()], REPLICASETS, None, []),
    ([pod(state=waiting("ImagePullBackOff", 'Back-off pulling image "x"'))], REPLICASETS, None,
     [(("d-2-x", "c", "pull"), 'ImagePullBackOff: Back-off pulling image "x" (pod d-2-x,'
                               ' container c)', False)]),
    ([pod(state=waiting("ErrImagePull"))], REPLICASETS, None,
     [(("d-2-x", "c", "pull"), "ErrImagePull: m (pod d-2-x, container c)", False)]),
    ([pod(state=waiting("CrashLoopBackOff"), init=True)], REPLICASETS, None,
     [(("d-2-x", "c", "CrashLoopBackOff"), "CrashLoopBackOff: m (pod d-2-x, container c)",
       False)]),
    ([pod(state=waiting("ContainerCreating"))], REPLICASETS, None, []),
    ([pod(state=waiting("CreateContainerConfigError"), owner="rs-1", image=OLD)], REPLICASETS,
     None, []),                                                            # the old revision
    ([pod(state=waiting("CrashLoopBackOff"), deleting=True)], REPLICASETS, None, []),
    ([pod(name="s-0", owner="u-d", state=waiting("ImagePullBackOff"))], [], None,
     [(("s-0", "c", "pull"), "ImagePullBackOff: m (pod s-0, container c)", False)]),
    ([], REPLICASETS, dep(conditions=[DEADLINE]),
     [(("u-d", "deadline"), 'ProgressDeadlineExceeded: ReplicaSet "d-1" has timed out'
                            ' progressing.', True)]),
    ([], REPLICASETS, dep(generation=3, observed=2, conditions=[DEADLINE]), []),  # not observed
    ([], [rs("2", conditions=[{"type": "ReplicaFailure", "status": "True",
                               "reason": "FailedCreate", "message": "exceeded quota"}])], None,
     [(("u-d", "replica-failure"), "ReplicaFailure: FailedCreate: exceeded quota", False)]),
    ([], REPLICASETS, dep(conditions=[{"type": "ReplicaFailure", "status": "True",
                                       "message": "quota"}]),
     [(("u-d", "replica-failure"), "ReplicaFailure: FailedCreate: quota", False)]),
])
def test_diagnose(pods, replicasets, workload, expected):
    assert diagnose(workload, "u-d", EXPECTED, replicasets, pods) == expected


@pytest.mark.parametrize("pods, target, digest, verdict, reason", [
    ([pod()], TARGET, DIGEST, True, "1 pod runs the target (digest matched by imageID)"),
    ([pod(), pod(name="d-2-y")], TARGET, None, True, "2 pods run the target"),
    ([pod(image_id="ghcr.io/noetl/noetl@sha256:" + "b" * 64)], TARGET, DIGEST, False,
     "not digest"),
    ([pod(image_id="docker-pullable://ghcr.io/noetl/noetl@" + DIGEST)], TARGET, DIGEST, True,
     ""),
    ([pod(image="ghcr.io/noetl/noetl:v1")], TARGET, None, False, "runs ghcr.io/noetl/noetl:v1"),
    ([pod(image="docker.io/library/other:v2")], TARGET, None, False,
     "runs docker.io/library/other"),
    ([pod(state=waiting("ContainerCreating"))], TARGET, None, False, "not running"),
    ([pod(cname="other")], TARGET, None, False, "no status for container c"),
    ([], TARGET, None, None, "no running pods"),
    ([pod(init=True, state={"terminated": {"exitCode": 0}})], TARGET, DIGEST, True, ""),
    # CRI-O: pinned to the index digest, imageID is the per-platform manifest's digest
    ([pod(image=NEW + "@" + DIGEST, image_id="ghcr.io/noetl/noetl@sha256:" + "c" * 64)],
     parse_image(NEW + "@" + DIGEST), DIGEST, True, "by the pinned image reference"),
    ([pod(image=NEW, image_id="ghcr.io/noetl/noetl@sha256:" + "c" * 64)],
     parse_image(NEW + "@" + DIGEST), DIGEST, False, "not digest"),
])
def test_verify(pods, target, digest, verdict, reason):
    got, why = verify_pods(pods, ["c"], target, digest)
    assert got is verdict
    assert reason in why


@pytest.mark.parametrize("selectors, expected", [
    ([{"app": "a"}], "app=a"),
    ([{"app": "a"}, {"app": "b"}, {"app": "a"}], "app in (a,b)"),
    ([{"app": "noetl", "c": "server"}, {"app": "noetl", "c": "worker", "x": "1"}],
     "app=noetl,c in (server,worker)"),
    ([{"app": "a"}, {"name": "b"}], None),
    ([{"app": "a"}, None], None),
    ([], None),
])
def test_union_selector(selectors, expected):
    assert union_selector(selectors) == expected


# -- version 3: digests pinned by an admission, pods described, polls, rollbacks -------

PINNED = "ghcr.io/noetl/noetl:v2@" + DIGEST
OTHER_DIGEST = "sha256:" + "b" * 64


@pytest.mark.parametrize("have, digest, expected", [
    ("ghcr.io/noetl/noetl:v2", None, True),                  # the same reference
    ("ghcr.io/noetl/noetl:v2", DIGEST, True),
    (PINNED, DIGEST, True),            # Kyverno mutateDigest: the tag plus the probed digest
    (PINNED, None, True),              # not probed: the tag decides (the log says so)
    (PINNED, OTHER_DIGEST, False),     # the tag was pushed again: another build
    ("ghcr.io/noetl/noetl@" + DIGEST, DIGEST, False),        # a digest without the tag
    ("ghcr.io/noetl/noetl:v1@" + DIGEST, DIGEST, False),     # another tag
    ("ghcr.io/other/noetl:v2@" + DIGEST, DIGEST, False),     # another repository
    (None, None, False),
])
def test_image_matches(have, digest, expected):
    from bump_image import image_matches
    assert image_matches(have, TARGET, digest) is expected


def test_an_admission_pinned_digest_is_the_target_and_the_rerun_is_unchanged():
    obj = dep(**{"template": {"spec": {"containers": [{"name": "app", "image": PINNED}]}}})
    decision = decide(DEPLOY, obj, TARGET, digest=DIGEST)
    assert decision.action == "unchanged"
    assert "the target's tag plus the probed digest, pinned by an admission" in decision.log
    unprobed = decide(DEPLOY, obj, TARGET)
    assert unprobed.action == "unchanged" and "unchecked" in unprobed.log
    assert decide(DEPLOY, obj, TARGET, digest=OTHER_DIGEST).action == "patch"


def status_pod(name, phase="Running", statuses=(), ready=False, probe=False, message=None):
    containers = [{"name": s["name"], "image": "x"} for s in statuses]
    if probe:
        containers[0]["readinessProbe"] = {"httpGet": {"path": "/ready", "port": 8080}}
    return {"kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": containers},
            "status": {"phase": phase, "containerStatuses": list(statuses), "conditions": [
                {"type": "Ready", "status": "True" if ready else "False",
                 "message": message}]}}


RUNNING = {"name": "app", "state": {"running": {}}, "ready": False, "restartCount": 3}
PULLING = {"name": "app", "state": {"waiting": {"reason": "ContainerCreating"}}, "ready": False}


@pytest.mark.parametrize("pods, text", [
    ([], "no pod of the new revision yet"),
    ([status_pod("a", statuses=[dict(RUNNING, ready=True)], ready=True)], "1 of 1 new pod ready"),
    ([status_pod("a", statuses=[RUNNING], probe=True)],
     "0 of 1 new pod ready: pod a Running: app running, not ready (readiness probe not"
     " passing), 3 restarts"),
    ([status_pod("a", statuses=[dict(RUNNING, restartCount=0)])],
     "0 of 1 new pod ready: pod a Running: app running, not ready"),
    ([status_pod("a", "Pending", [PULLING]), status_pod("b", statuses=[dict(RUNNING, ready=True)], ready=True)],
     "1 of 2 new pods ready: pod a Pending: app waiting: ContainerCreating"),
    ([status_pod("a", "Pending", message="0/3 nodes are available")],
     "0 of 1 new pod ready: pod a Pending: 0/3 nodes are available"),
])
def test_describe_pods(pods, text):
    from bump_image import describe_pods
    assert describe_pods(pods) == text


@pytest.mark.parametrize("elapsed, pending, seconds", [
    (0, 1, 0.5), (9.9, 3, 0.5), (10, 3, 1.0), (29, 1, 1.0), (30, 1, 2.0), (119, 1, 2.0),
    (120, 1, 5.0), (3600, 1, 5.0),
    (0, 20, 1.0), (0, 100, 5.0), (200, 200, 10.0),     # never more than 20 objects a second
])
def test_poll_interval(elapsed, pending, seconds):
    from bump_image import poll_interval
    assert poll_interval(elapsed, pending) == seconds


@pytest.mark.parametrize("selector, text", [
    (None, None), ({}, None),
    ({"matchLabels": {"app": "a", "tier": "web"}}, "app=a,tier=web"),
    ({"matchLabels": {"app": "a"}, "matchExpressions": [
        {"key": "env", "operator": "In", "values": ["a", "b"]},
        {"key": "x", "operator": "NotIn", "values": ["c"]},
        {"key": "y", "operator": "Exists"}, {"key": "z", "operator": "DoesNotExist"}]},
     "app=a,env in (a,b),x notin (c),y,!z"),
])
def test_selector_text(selector, text):
    from bump_image import selector_text
    assert selector_text(selector) == text


def replicaset(revision, image, owner="u-d", annotations=None, hashed=True):
    labels = {"app": "d"}
    if hashed:
        labels["pod-template-hash"] = "h%s" % revision
    return {"kind": "ReplicaSet",
            "metadata": {"name": "d-%s" % revision, "ownerReferences": [
                {"uid": owner, "controller": True}], "annotations": dict(
                    {"deployment.kubernetes.io/revision": str(revision)}, **(annotations or {}))},
            "spec": {"template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "app", "image": image}]}}}}


def deployment_at(image, annotations=None, paused=False):
    obj = dep(revision="3", paused=paused)
    obj["metadata"]["annotations"].update(annotations or {})
    obj["spec"]["template"] = {"metadata": {"labels": {"app": "d"}},
                               "spec": {"containers": [{"name": "app", "image": image}]}}
    return obj


def test_undo_deployment_patch_is_what_kubectl_rollout_undo_sends():
    """After kubectl's DeploymentRollbacker: the revision's template without the hash
    label; its annotations, but those the Deployment keeps."""
    from bump_image import undo_deployment_patch
    current = deployment_at("x:3", {"kubernetes.io/change-cause": "bump_image x:3",
                                    "deployment.kubernetes.io/revision-history": "1"})
    history = [replicaset(1, "x:1", annotations={"kubernetes.io/change-cause": "one"}),
               replicaset(2, "x:2", annotations={"kubernetes.io/change-cause": "two"}),
               replicaset(3, "x:3"), replicaset(9, "x:9", owner="someone-else")]
    patch, skipped = undo_deployment_patch(current, history, "1")
    assert skipped is None
    assert patch == [
        {"op": "replace", "path": "/spec/template", "value": {
            "metadata": {"labels": {"app": "d"}},
            "spec": {"containers": [{"name": "app", "image": "x:1"}]}}},
        {"op": "replace", "path": "/metadata/annotations", "value": {
            "deployment.kubernetes.io/revision": "3",
            "deployment.kubernetes.io/revision-history": "1",
            "kubernetes.io/change-cause": "one"}}]
    previous, _ = undo_deployment_patch(current, history, None)        # no revision: 2
    assert previous[0]["value"]["spec"]["containers"][0]["image"] == "x:2"


@pytest.mark.parametrize("current, history, revision, error", [
    (deployment_at("x:3"), [replicaset(3, "x:3")], "2",
     "unable to find specified revision 2 in history"),
    (deployment_at("x:3"), [replicaset(3, "x:3")], None, 'no rollout history found for'
     ' deployment "d"'),
    (deployment_at("x:3", paused=True), [replicaset(2, "x:2"), replicaset(3, "x:3")], "2",
     "you cannot rollback a paused deployment"),
])
def test_undo_deployment_patch_refusals(current, history, revision, error):
    from bump_image import ClusterError, undo_deployment_patch
    with pytest.raises(ClusterError) as caught:
        undo_deployment_patch(current, history, revision)
    assert caught.value.message.startswith(error)


def test_undo_deployment_patch_skips_a_revision_that_is_already_there():
    from bump_image import undo_deployment_patch
    patch, said = undo_deployment_patch(deployment_at("x:2"), [
        replicaset(2, "x:2"), replicaset(3, "x:3")], "2")
    assert patch is None
    assert said == "skipped rollback (current template already matches revision 2)"


def revision(number, image, owner="u-s", timestamp=True):
    meta = {"labels": {"app": "s"}}
    if timestamp:
        meta["creationTimestamp"] = None             # kubectl <= 1.33 writes it
    return {"kind": "ControllerRevision", "revision": number,
            "metadata": {"name": "s-%d" % number, "ownerReferences": [
                {"uid": owner, "controller": True}]},
            "data": {"spec": {"template": {"$patch": "replace", "metadata": meta,
                                           "spec": {"containers": [
                                               {"name": "app", "image": image}]}}}}}


def statefulset_at(image):
    return {"kind": "StatefulSet", "metadata": {"name": "s", "uid": "u-s"},
            "spec": {"template": {"metadata": {"labels": {"app": "s"}},
                                  "spec": {"containers": [{"name": "app", "image": image}]}}}}


def test_undo_revision_patch_restores_the_previous_revision_byte_for_byte():
    from bump_image import ClusterError, undo_revision_patch
    history = [revision(3, "x:3"), revision(1, "x:1"), revision(2, "x:2"),
               revision(7, "x:7", owner="another")]
    data, skipped = undo_revision_patch(statefulset_at("x:3"), history)
    assert skipped is None and data == history[2]["data"]        # revision 2, as it is
    data, skipped = undo_revision_patch(statefulset_at("x:2"), history)
    assert data is None and skipped.startswith("skipped rollback (current template already"
                                               " matches revision 2)")
    with pytest.raises(ClusterError, match="no last revision to roll back to"):
        undo_revision_patch(statefulset_at("x:1"), [revision(1, "x:1")])
