"""Pure decisions as tables: rollout verdict, container plan, diagnosis, verification."""

import pytest

from bump_image import (
    ContainerNotFound,
    build_patch,
    diagnose,
    parse_image,
    plan_deployment,
    rollout_verdict,
    verify_pods,
)

TARGET = parse_image("ghcr.io/noetl/noetl:v2")
DIGEST = "sha256:" + "a" * 64


def dep(generation=2, observed=2, replicas=3, updated=3, total=3, available=3,
        conditions=(), revision="2"):
    return {"kind": "Deployment",
            "metadata": {"name": "d", "uid": "u-d", "generation": generation,
                         "annotations": {"deployment.kubernetes.io/revision": revision}},
            "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "updatedReplicas": updated,
                       "replicas": total, "availableReplicas": available,
                       "conditions": list(conditions)}}


DEADLINE = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": 'ReplicaSet "d-1" has timed out progressing.'}


@pytest.mark.parametrize("d, done, failed, message", [
    (dep(generation=3, observed=2), False, False, "to be observed"),
    (dep(conditions=[DEADLINE]), False, True, "exceeded its progress deadline"),
    (dep(updated=1), False, False, "1 of 3 updated replicas are available"),
    (dep(total=4), False, False, "1 old replicas are pending termination"),
    (dep(available=2), False, False, "2 of 3 updated replicas are available"),
    (dep(), True, False, "successfully rolled out"),
    (dep(replicas=0, updated=0, total=0, available=0), True, False, "successfully"),
])
def test_rollout_verdict(d, done, failed, message):
    got_done, got_message, got_failed = rollout_verdict(d)
    assert (got_done, got_failed) == (done, failed)
    assert message in got_message


def pod_spec(containers, init=None):
    spec = {"containers": [{"name": n, "image": i} for n, i in containers]}
    if init:
        spec["initContainers"] = [{"name": n, "image": i} for n, i in init]
    return {"metadata": {"name": "d"}, "spec": {"template": {"spec": spec}}}


@pytest.mark.parametrize("spec, container, names, changes, previous", [
    (pod_spec([("worker", "ghcr.io/noetl/noetl:v1")], [("wait-for-api",
                                                        "ghcr.io/noetl/noetl:v1")]),
     None, ["worker", "wait-for-api"],
     [("containers", "worker"), ("initContainers", "wait-for-api")], "ghcr.io/noetl/noetl:v1"),
    (pod_spec([("worker", "ghcr.io/noetl/noetl:v2")], [("wait-for-api", "curlimages/curl:8")]),
     None, ["worker"], [], "ghcr.io/noetl/noetl:v2"),
    (pod_spec([("a", "busybox"), ("b", "redis")]), None, ["a"], [("containers", "a")],
     "busybox"),
    (pod_spec([("a", "busybox")], [("i", "ghcr.io/noetl/noetl:v1")]), None, ["i"],
     [("initContainers", "i")], "ghcr.io/noetl/noetl:v1"),
    (pod_spec([("a", "ghcr.io/noetl/noetl:v1"), ("b", "ghcr.io/noetl/noetl:v1")]), "b", ["b"],
     [("containers", "b")], "ghcr.io/noetl/noetl:v1"),
    (pod_spec([("a", "not a valid ref!")]), None, ["a"], [("containers", "a")],
     "not a valid ref!"),
])
def test_plan(spec, container, names, changes, previous):
    plan = plan_deployment(spec, TARGET, container)
    assert plan.containers == names
    assert plan.changes == changes
    assert plan.previous_image == previous
    assert plan.at_target is (not changes)


def test_plan_errors():
    with pytest.raises(ContainerNotFound, match="no container"):
        plan_deployment(pod_spec([("a", "x")]), TARGET, "b")
    with pytest.raises(ContainerNotFound, match="has no containers"):
        plan_deployment({"metadata": {"name": "d"}, "spec": {}}, TARGET)


def test_build_patch():
    plan = plan_deployment(pod_spec([("w", "ghcr.io/noetl/noetl:v1")],
                                    [("i", "ghcr.io/noetl/noetl:v1")]), TARGET)
    assert build_patch(plan, "IMG", "cause") == {
        "metadata": {"annotations": {"kubernetes.io/change-cause": "cause"}},
        "spec": {"template": {"spec": {"containers": [{"name": "w", "image": "IMG"}],
                                       "initContainers": [{"name": "i", "image": "IMG"}]}}}}


def rs(revision, uid="rs-2"):
    return {"kind": "ReplicaSet",
            "metadata": {"name": "d-" + revision, "uid": uid,
                         "annotations": {"deployment.kubernetes.io/revision": revision},
                         "ownerReferences": [{"uid": "u-d", "kind": "Deployment"}]}}


def pod(name="d-2-x", owner="rs-2", state=None, image="ghcr.io/noetl/noetl:v2",
        image_id="ghcr.io/noetl/noetl@" + DIGEST, phase="Running", deleting=False, cname="c",
        init=False):
    status = {"name": cname, "image": image, "imageID": image_id,
              "state": state if state is not None else {"running": {"startedAt": "x"}}}
    meta = {"name": name, "ownerReferences": [{"uid": owner}]}
    if deleting:
        meta["deletionTimestamp"] = "now"
    key = "initContainerStatuses" if init else "containerStatuses"
    return {"kind": "Pod", "metadata": meta, "status": {"phase": phase, key: [status]}}


def waiting(reason, message="m"):
    return {"waiting": {"reason": reason, "message": message}}


@pytest.mark.parametrize("pods, conditions, expected", [
    ([pod()], [], []),
    ([pod(state=waiting("ImagePullBackOff", 'Back-off pulling image "x"'))], [],
     [(("d-2-x", "c", "pull"), 'ImagePullBackOff: Back-off pulling image "x" (pod d-2-x,'
                               ' container c)', False)]),
    ([pod(state=waiting("ErrImagePull"))], [], [(("d-2-x", "c", "pull"),
                                                  "ErrImagePull: m (pod d-2-x, container c)",
                                                  False)]),
    ([pod(state=waiting("CrashLoopBackOff"), init=True)], [],
     [(("d-2-x", "c", "CrashLoopBackOff"), "CrashLoopBackOff: m (pod d-2-x, container c)",
       False)]),
    ([pod(state=waiting("ContainerCreating"))], [], []),
    ([pod(state=waiting("CreateContainerConfigError"), owner="rs-1")], [], []),  # old RS
    ([pod(state=waiting("CrashLoopBackOff"), deleting=True)], [], []),           # terminating
    ([], [DEADLINE], [(("d", "deadline"), "ProgressDeadlineExceeded: ReplicaSet \"d-1\" has"
                                          " timed out progressing.", True)]),
    ([], [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
           "message": "exceeded quota"}],
     [(("d", "replica-failure"), "ReplicaFailure: FailedCreate: exceeded quota", False)]),
])
def test_diagnose(pods, conditions, expected):
    d = dep(conditions=conditions)
    assert diagnose(d, [rs("1", "rs-1"), rs("2")], pods) == expected


def test_diagnose_waits_for_the_new_generation():
    d = dep(generation=3, observed=2)
    assert diagnose(d, [rs("2")], [pod(state=waiting("ImagePullBackOff"))]) == []


@pytest.mark.parametrize("pods, digest, verdict, reason", [
    ([pod()], DIGEST, True, "1 pod runs the target"),
    ([pod(), pod(name="d-2-y")], None, True, "2 pods run the target"),
    ([pod(image_id="ghcr.io/noetl/noetl@sha256:" + "b" * 64)], DIGEST, False, "not digest"),
    ([pod(image_id="docker-pullable://ghcr.io/noetl/noetl@" + DIGEST)], DIGEST, True, ""),
    ([pod(image="ghcr.io/noetl/noetl:v1")], None, False, "runs ghcr.io/noetl/noetl:v1"),
    ([pod(image="docker.io/library/other:v2")], None, False, "runs docker.io/library/other"),
    ([pod(state=waiting("ContainerCreating"))], None, False, "not running"),
    ([pod(cname="other")], None, False, "no status for container c"),
    ([pod(owner="rs-1")], None, None, "no running pods"),
    ([pod(phase="Succeeded")], None, None, "no running pods"),
    ([pod(deleting=True)], None, None, "no running pods"),
    ([pod(init=True, state={"terminated": {"exitCode": 0}})], DIGEST, True, ""),
])
def test_verify(pods, digest, verdict, reason):
    got, why = verify_pods(dep(), [rs("1", "rs-1"), rs("2")], pods, ["c"], TARGET, digest)
    assert got is verdict
    assert reason in why


def test_verify_without_the_new_replicaset():
    assert verify_pods(dep(revision="9"), [rs("2")], [pod()], ["c"], TARGET, None)[0] is None
