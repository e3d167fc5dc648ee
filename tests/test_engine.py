"""The engine with an in-memory kubectl: every contract rule that touches the
cluster, fast and precise.  (The same paths run against the real kubectl and the
simulated API server in test_e2e_cluster.py.)"""

import json

import pytest
from fakes import (
    DIGEST,
    IMAGE,
    OLD,
    FakeKubectl,
    VirtualClock,
    deployment,
    noetl_cluster,
    run_cli,
)

import bump_image
from bump_image import Completed

COMPONENT_KEYS = {"event", "component", "kind", "namespace", "status", "image", "previous_image",
                  "containers", "duration_seconds", "error", "digest", "verified",
                  "rolled_back", "restored_image", "platforms_checked"}
SUMMARY_KEYS = {"event", "status", "image", "images", "changed", "unchanged", "skipped",
                "planned", "errors", "exit_code", "error", "duration_seconds", "cluster_access"}
ALL = "noetl-server noetl-worker ollama-bridge"


def cli(payload, kubectl, env, *extra):
    """Run the CLI with probe never (the probe has its own tests)."""
    payload = dict({"probe": "never"}, **payload)
    return run_cli(["--payload", json.dumps(payload)] + list(extra), runner=kubectl, env=env)


def test_worked_example_all_defaults(env):
    kubectl = FakeKubectl()
    run = cli({"image": IMAGE}, kubectl, env)
    assert run.code == 0, run.stdout + run.stderr
    assert [e["event"] for e in run.events] == ["probe", "component", "component", "component",
                                                "summary"]
    assert [e["component"] for e in run.event("component")] == [
        "noetl-server", "noetl-worker", "ollama-bridge"]
    for e in run.event("component"):
        assert set(e) == COMPONENT_KEYS
        assert e["status"] == "changed" and e["image"] == IMAGE
        assert e["previous_image"] == OLD and e["error"] is None
        assert e["namespace"] == "noetl" and e["verified"] is True
        assert isinstance(e["duration_seconds"], float)
    assert run.components["noetl-worker"]["containers"] == ["worker", "wait-for-api"]
    assert set(run.summary) == SUMMARY_KEYS
    assert run.summary == dict(run.summary, status="ok", image=IMAGE, changed=3, unchanged=0,
                               skipped=0, planned=0, errors=0, exit_code=0)
    assert run.summary["cluster_access"] == "kubectl"
    # one read of all three; then each is patched and its own object polled to its verdict
    assert kubectl.verbs() == [
        "get " + ALL, "patch noetl-server", "get noetl-server", "patch noetl-worker",
        "get noetl-worker", "patch ollama-bridge", "get ollama-bridge", "facts"]
    assert kubectl.image_of("noetl-worker", "worker") == IMAGE
    assert kubectl.image_of("noetl-worker", "wait-for-api", "initContainers") == IMAGE
    assert "bump_image:" in run.stderr


def test_worked_example_one_deployment(env):
    kubectl = FakeKubectl()
    run = cli({"image": IMAGE, "deployment": "noetl-worker"}, kubectl, env)
    assert run.code == 0
    assert list(run.components) == ["noetl-worker"]
    assert run.summary["changed"] == 1
    assert kubectl.image_of("noetl-server", "server") == OLD


def test_rerun_is_unchanged_with_no_change(env):
    kubectl = FakeKubectl()
    cli({"image": IMAGE}, kubectl, env)
    kubectl.calls.clear()
    run = cli({"image": IMAGE}, kubectl, env)
    assert run.code == 0
    assert {e["status"] for e in run.event("component")} == {"unchanged"}
    assert run.summary["unchanged"] == 3
    assert kubectl.verbs() == ["get " + ALL]   # one kubectl process, no patch


def test_reads_every_deployment_with_one_kubectl(env):
    kubectl = FakeKubectl()
    cli({"image": IMAGE}, kubectl, env)
    argv = kubectl.calls[0]
    assert argv[:5] == ["kubectl", "get", "deployment/noetl-server", "deployment/noetl-worker",
                        "deployment/ollama-bridge"]
    assert "--ignore-not-found" in argv and "--output=json" in argv
    assert "--namespace=noetl" in argv
    assert any(a.startswith("--request-timeout=") for a in argv)


def test_normalized_comparison(env):
    kubectl = FakeKubectl({"web": deployment("web", {"web": "nginx"})})
    run = cli({"image": "docker.io/library/nginx:latest", "deployment": "web"}, kubectl, env)
    assert run.components["web"]["status"] == "unchanged"
    assert run.components["web"]["previous_image"] == "nginx"


def test_missing_default_is_skipped_missing_named_is_not_found(env):
    cluster = noetl_cluster()
    del cluster["ollama-bridge"]
    run = cli({"image": IMAGE}, FakeKubectl(cluster), env)
    assert run.code == 0
    assert run.components["ollama-bridge"]["status"] == "skipped"
    assert run.summary["skipped"] == 1
    run = cli({"image": IMAGE, "deployments": ["noetl-server", "ollama-bridge"]},
              FakeKubectl(cluster), env)
    assert run.code == 1
    err = run.components["ollama-bridge"]["error"]
    assert run.components["ollama-bridge"]["status"] == "error"
    assert err["code"] == "not_found" and 'namespace "noetl"' in err["message"]
    assert run.components["noetl-server"]["status"] == "changed"


def test_explicit_container_and_container_not_found(env):
    cluster = {"noetl-worker": deployment("noetl-worker", {"worker": OLD, "sidecar": "busybox"},
                                          init={"wait-for-api": OLD})}
    kubectl = FakeKubectl(cluster)
    run = cli({"image": IMAGE, "deployment": "noetl-worker", "container": "wait-for-api"},
              kubectl, env)
    assert run.components["noetl-worker"]["containers"] == ["wait-for-api"]
    assert kubectl.image_of("noetl-worker", "worker") == OLD
    assert kubectl.image_of("noetl-worker", "wait-for-api", "initContainers") == IMAGE
    run = cli({"image": IMAGE, "deployment": "noetl-worker", "container": "nope"},
              FakeKubectl(cluster), env)
    err = run.components["noetl-worker"]["error"]
    assert run.code == 1 and err["code"] == "container_not_found"
    assert "worker, sidecar" in err["message"] and "wait-for-api" in err["message"]


def test_auto_container_choice(env):
    """v2: the same repository, else the default-container annotation, else the only
    regular container; otherwise nothing is changed (never "the first")."""
    annotated = deployment("c", {"cloudsql-proxy": "gcr.io/cloudsql-docker/gce-proxy:1",
                                 "app": "busybox:1"})
    annotated["spec"]["template"]["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/default-container": "app"}
    on_the_workload = deployment("e", {"sidecar": "envoy:1", "main": "busybox:1"})
    on_the_workload["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] = "main"
    cluster = {
        "a": deployment("a", {"proxy": "envoy:1", "app": OLD}),      # repository match
        "b": deployment("b", {"cloudsql-proxy": "gcr.io/cloudsql-docker/gce-proxy:1",
                              "second": "redis:7"}),                 # ambiguous: refused
        "c": annotated,                                              # annotation on the template
        "d": deployment("d", {"only": "busybox:1"}, init={"setup": "busybox:1"}),  # the only one
        "e": on_the_workload,                                        # annotation on the workload
    }
    kubectl = FakeKubectl(cluster)
    run = cli({"image": IMAGE, "deployments": ["a", "b", "c", "d", "e"]}, kubectl, env)
    assert run.components["a"]["containers"] == ["app"]
    assert run.components["c"]["containers"] == ["app"]
    assert run.components["d"]["containers"] == ["only"]
    assert run.components["e"]["containers"] == ["main"]
    b = run.components["b"]
    assert b["status"] == "error" and b["error"]["code"] == "container_ambiguous"
    assert "cloudsql-proxy, second" in b["error"]["message"]
    assert "patch b" not in kubectl.verbs()
    assert kubectl.image_of("b", "cloudsql-proxy") == "gcr.io/cloudsql-docker/gce-proxy:1"
    assert kubectl.image_of("a", "proxy") == "envoy:1"
    assert kubectl.image_of("c", "cloudsql-proxy") == "gcr.io/cloudsql-docker/gce-proxy:1"
    assert run.code == 1


def test_a_first_container_that_is_a_sidecar_never_gets_the_app_image(env):
    """The review's case: the sidecar comes first, the app runs another repository."""
    kubectl = FakeKubectl({"api": deployment("api", {"cloudsql-proxy": "gcr.io/x/proxy:2",
                                                     "api": "ghcr.io/noetl/other:v1"})})
    run = cli({"image": IMAGE, "deployment": "api"}, kubectl, env)
    assert run.code == 1 and run.components["api"]["error"]["code"] == "container_ambiguous"
    assert kubectl.patches() == []
    run = cli({"image": IMAGE, "deployment": "api", "container": "api"}, kubectl, env)
    assert run.code == 0 and kubectl.image_of("api", "api") == IMAGE
    assert kubectl.image_of("api", "cloudsql-proxy") == "gcr.io/x/proxy:2"


def test_patch_sets_only_what_differs_and_records_change_cause(env):
    cluster = {"w": deployment("w", {"worker": OLD}, init={"wait-for-api": IMAGE})}
    kubectl = FakeKubectl(cluster)
    cli({"image": IMAGE, "deployment": "w"}, kubectl, env)
    (patch,) = kubectl.patches()
    assert patch == {"metadata": {"annotations": {
        "kubernetes.io/change-cause": "bump_image " + IMAGE}},
        "spec": {"template": {"spec": {"containers": [{"name": "worker", "image": IMAGE}]}}}}
    argv = next(a for a in kubectl.calls if "patch" in a)
    assert "--type=strategic" in argv and "--field-manager=bump_image" in argv


def test_dry_run_changes_nothing(env):
    cluster = noetl_cluster()
    cluster["noetl-server"] = deployment("noetl-server", {"server": IMAGE})
    kubectl = FakeKubectl(cluster)
    run = cli({"image": IMAGE, "dry_run": True}, kubectl, env)
    assert run.code == 0
    assert run.components["noetl-server"]["status"] == "unchanged"
    assert run.components["noetl-worker"]["status"] == "planned"
    assert run.summary["planned"] == 2
    assert kubectl.verbs() == ["get " + ALL]
    assert "would set" in run.stderr


def test_dry_run_flag(env):
    kubectl = FakeKubectl()
    run = cli({"image": IMAGE}, kubectl, env, "--dry-run")
    assert run.summary["planned"] == 3 and kubectl.verbs() == ["get " + ALL]


@pytest.mark.parametrize("mode, code, said", [
    ("stuck", "rollout_timeout", "did not complete within 1 s"),
    ("deadline", "rollout_failed", "ProgressDeadlineExceeded"),
    ("gone", "rollout_failed", "went away during the rollout"),
])
def test_rollout_failures_do_not_stop_the_others(env, mode, code, said):
    kubectl = FakeKubectl()
    kubectl.rollout["noetl-worker"] = mode
    run = cli({"image": IMAGE, "rollout_timeout_seconds": 1}, kubectl, env)
    assert run.code == 1
    assert said in run.components["noetl-worker"]["error"]["message"]
    assert run.components["noetl-worker"]["status"] == "error"
    assert run.components["noetl-worker"]["error"]["code"] == code
    assert run.components["noetl-worker"]["verified"] is None
    assert run.components["noetl-server"]["status"] == "changed"
    assert run.components["ollama-bridge"]["status"] == "changed"
    assert run.summary == dict(run.summary, status="failed", changed=2, errors=1, exit_code=1)


def test_reads_that_keep_failing_during_a_rollout_end_only_that_wait(env):
    """A poll's read of the workload fails (Unauthorized): three failures in a row
    end its wait as kubectl_failed with kubectl's message; one failure is retried."""
    kubectl = FakeKubectl()
    kubectl.fail["poll"] = Completed(1, "", "error: You must be logged in to the server"
                                            " (Unauthorized)\n")
    run = cli({"image": IMAGE, "deployment": "noetl-server"}, kubectl, env)
    err = run.components["noetl-server"]["error"]
    assert run.code == 1 and err["code"] == "kubectl_failed"
    assert "cannot read it during its rollout" in err["message"] and "Unauthorized" in \
        err["message"]
    assert kubectl.verbs().count("get noetl-server") == bump_image.READ_STRIKES + 1


@pytest.mark.parametrize("stderr", [
    'Error from server (Forbidden): deployments.apps is forbidden: User "x" cannot list\n',
    "The connection to the server 127.0.0.1:1 was refused - did you specify the right host"
    " or port?\n",
])
def test_forbidden_or_unreachable_is_never_not_found(env, stderr):
    kubectl = FakeKubectl()
    kubectl.fail["get"] = Completed(1, "", stderr)
    run = cli({"image": IMAGE}, kubectl, env)
    assert run.code == 1
    for e in run.event("component"):
        assert e["status"] == "error" and e["error"]["code"] == "kubectl_failed"
        assert e["error"]["message"] == stderr.strip()
    # the read of all three failed, so each is read on its own to find which failed
    assert kubectl.verbs() == ["get " + ALL, "get noetl-server", "get noetl-worker",
                               "get ollama-bridge"]


def test_output_that_is_not_json(env):
    kubectl = FakeKubectl()
    kubectl.fail["get"] = Completed(0, "deployment.apps/noetl-server\n")
    run = cli({"image": IMAGE}, kubectl, env)
    assert run.code == 1
    assert "not JSON" in run.components["noetl-server"]["error"]["message"]


def test_patch_denied_by_a_webhook(env):
    kubectl = FakeKubectl()
    msg = ('Error from server (Forbidden): admission webhook "policy.example.com" denied the'
           ' request: images must be signed')
    kubectl.fail["patch"] = Completed(1, "", msg + "\n")
    run = cli({"image": IMAGE}, kubectl, env)
    assert run.code == 1
    assert {e["error"]["message"] for e in run.event("component")} == {msg}
    # nothing was applied, so nothing is waited for or verified: the read, then the
    # patches (each refused), and no other call (a wait polls the workload by name)
    assert kubectl.verbs() == ["get " + ALL, "patch noetl-server", "patch noetl-worker",
                               "patch ollama-bridge"]


def test_klog_noise_is_dropped_from_messages(env):
    kubectl = FakeKubectl()
    kubectl.fail["get"] = Completed(1, "", 'E1126 10:00:00.000000    1 memcache.go:265] '
                                    '"Unhandled Error" err="x"\nThe connection to the server'
                                    ' was refused\n')
    run = cli({"image": IMAGE}, kubectl, env)
    assert run.components["noetl-server"]["error"]["message"] == \
        "The connection to the server was refused"


def test_kubectl_missing_is_exit_4_and_nothing_runs(env):
    kubectl = FakeKubectl(present=False)
    run = cli({"image": IMAGE}, kubectl, env)
    assert run.code == 4
    (event,) = run.events
    assert event["event"] == "error" and event["exit_code"] == 4
    assert event["error"]["code"] == "kubectl_missing"
    assert kubectl.calls == []


def test_kubectl_missing_with_the_real_runner(env):
    run = run_cli(["--payload", json.dumps({"image": IMAGE, "probe": "never",
                                            "kubectl": "/nonexistent/kubectl"})], env=env)
    assert run.code == 4 and run.events[0]["error"]["code"] == "kubectl_missing"


def test_context_guard(env):
    kubectl = FakeKubectl(context="prod")
    run = cli({"image": IMAGE, "expected_kube_context": "kind-noetl"}, kubectl, env)
    assert run.code == 4
    assert run.events[0]["error"]["code"] == "context_mismatch"
    assert '"prod"' in run.events[0]["error"]["message"]
    assert kubectl.verbs() == ["config current-context"]
    kubectl = FakeKubectl(context="kind-noetl")
    run = cli({"image": IMAGE, "expected_kube_context": "kind-noetl"}, kubectl, env)
    assert run.code == 0


def test_context_guard_uses_the_given_context(env):
    kubectl = FakeKubectl(context="other")
    run = cli({"image": IMAGE, "expected_kube_context": "a", "context": "a"}, kubectl, env)
    assert run.code == 0
    assert "config current-context" not in kubectl.verbs()
    assert all("--context=a" in argv for argv in kubectl.calls)


def test_context_and_kubeconfig_are_passed(env):
    kubectl = FakeKubectl()
    cli({"image": IMAGE, "context": "kind-noetl", "kubeconfig": "/tmp/kube config"}, kubectl, env)
    assert kubectl.calls
    for argv in kubectl.calls:
        assert argv[1:3] == ["--context=kind-noetl", "--kubeconfig=/tmp/kube config"]


def test_payload_values_never_become_flags(env):
    kubectl = FakeKubectl({"web": deployment("web", {"web": OLD})}, context="ctx")
    cli({"image": IMAGE, "deployment": "web", "namespace": "noetl", "context": "ctx",
         "kubeconfig": "/k", "container": "web"}, kubectl, env)
    for argv in kubectl.calls:
        for arg in argv[1:]:
            assert not arg.startswith("-") or arg.startswith((
                "--context=", "--kubeconfig=", "--namespace=", "--output=", "--request-timeout=",
                "--ignore-not-found", "--type=", "--field-manager=", "--patch=",
                "--selector=")), arg


def test_at_target_with_an_unfinished_rollout_is_waited_for(env):
    cluster = {"s": deployment("s", {"s": IMAGE}, complete=False)}
    kubectl = FakeKubectl(cluster)
    run = cli({"image": IMAGE, "deployment": "s"}, kubectl, env)
    assert run.components["s"]["status"] == "unchanged"
    assert kubectl.verbs() == ["get s", "get s", "facts"]      # the read, one poll, verification
    kubectl = FakeKubectl(cluster)
    kubectl.rollout["s"] = "stuck"
    run = cli({"image": IMAGE, "deployment": "s", "rollout_timeout_seconds": 1}, kubectl, env)
    assert run.code == 1 and run.components["s"]["error"]["code"] == "rollout_timeout"


def test_at_target_with_a_failed_rollout(env):
    cluster = {"s": deployment("s", {"s": IMAGE}, complete=False,
                               progress_deadline_exceeded=True)}
    run = cli({"image": IMAGE, "deployment": "s"}, FakeKubectl(cluster), env)
    assert run.components["s"]["error"]["code"] == "rollout_failed"


def test_paused_deployment_is_reported_not_changed(env):
    kubectl = FakeKubectl({"s": deployment("s", {"s": OLD}, paused=True)})
    run = cli({"image": IMAGE, "deployment": "s"}, kubectl, env)
    assert run.code == 1
    assert run.components["s"]["error"]["code"] == "deployment_paused"
    assert "rollout resume" in run.components["s"]["error"]["message"]
    assert kubectl.verbs() == ["get s"]


def test_scaled_to_zero_is_changed_then_unchanged(env):
    """v2: a KEDA-idle worker: the template is updated, replicas untouched, nothing
    is waited for (verified null, a note); the rerun is unchanged and exits 0."""
    kubectl = FakeKubectl({"s": deployment("s", {"s": OLD}, replicas=0)})
    run = cli({"image": IMAGE, "deployment": "s"}, kubectl, env)
    assert run.code == 0, run.stdout
    comp = run.components["s"]
    assert comp["status"] == "changed" and comp["verified"] is None and comp["error"] is None
    assert kubectl.image_of("s", "s") == IMAGE       # the template is updated
    assert kubectl.deployments["s"]["spec"]["replicas"] == 0
    assert [p["spec"]["template"]["spec"] for p in kubectl.patches()] == [
        {"containers": [{"name": "s", "image": IMAGE}]}]      # replicas never in a patch
    assert kubectl.verbs() == ["get s", "patch s"]             # nothing to wait for
    assert "spec.replicas is 0" in run.stderr
    run = cli({"image": IMAGE, "deployment": "s"}, kubectl, env)
    assert run.code == 0 and run.components["s"]["status"] == "unchanged"
    assert kubectl.verbs()[-1] == "get s"


def test_pin_digest_sets_the_probed_digest(env):
    from fake_registry import FakeRegistry
    with FakeRegistry() as fake:
        fake.add_manifest("noetl/noetl", "v2.35.9", DIGEST)
        kubectl = FakeKubectl()
        kubectl.digests[IMAGE + "@" + DIGEST] = DIGEST
        run = run_cli(["--payload", json.dumps({
            "image": IMAGE, "pin_digest": True, "deployment": "noetl-server",
            "registry_mirrors": {"ghcr.io": fake.base_url}})], runner=kubectl, env=env)
    pinned = IMAGE + "@" + DIGEST
    assert run.code == 0
    assert run.components["noetl-server"]["image"] == pinned
    assert run.components["noetl-server"]["digest"] == DIGEST
    assert kubectl.image_of("noetl-server", "server") == pinned
    assert run.event("summary")[0]["image"] == IMAGE


def test_rollback_on_failure(env):
    kubectl = FakeKubectl()
    kubectl.rollout["noetl-worker"] = "deadline"       # after the undo, it completes
    run = cli({"image": IMAGE, "rollback_on_failure": True}, kubectl, env)
    comp = run.components["noetl-worker"]
    assert run.code == 1 and comp["status"] == "error"
    assert comp["rolled_back"] is True and comp["restored_image"] == OLD
    assert comp["error"]["code"] == "rollout_failed"
    assert "rolled back to revision 1" in comp["error"]["message"]
    undos = [a for a in kubectl.calls if a[1:3] == ["rollout", "undo"]]
    assert len(undos) == 1, kubectl.verbs()
    assert "deployment/noetl-worker" in undos[0] and "--to-revision=1" in undos[0]
    # the undo comes right after the failed wait, and its own rollout is waited for
    # before the next workload is changed
    assert kubectl.verbs() == [
        "get " + ALL, "patch noetl-server", "get noetl-server", "patch noetl-worker",
        "get noetl-worker", "rollout undo noetl-worker", "get noetl-worker",
        "patch ollama-bridge", "get ollama-bridge", "facts"]
    assert kubectl.image_of("noetl-worker", "worker") == OLD
    assert kubectl.image_of("noetl-worker", "wait-for-api", "initContainers") == OLD
    assert run.components["noetl-server"]["rolled_back"] is False


def test_no_rollback_unless_asked(env):
    kubectl = FakeKubectl()
    kubectl.rollout["noetl-worker"] = "deadline"
    run = cli({"image": IMAGE}, kubectl, env)
    comp = run.components["noetl-worker"]
    assert comp["error"]["code"] == "rollout_failed"
    assert comp["rolled_back"] is False and comp["restored_image"] is None
    # no undo, and no other way back either: one patch per workload, the worker stays
    # at the new image
    assert [v for v in kubectl.verbs() if v.startswith(("rollout", "patch"))] == [
        "patch noetl-server", "patch noetl-worker", "patch ollama-bridge"]
    assert kubectl.image_of("noetl-worker", "worker") == IMAGE


@pytest.mark.parametrize("fail", ["rollout undo", "poll-after-undo"])
def test_a_rollback_that_fails_is_said(env, fail):
    """v3: the message ends with "rollback failed: <reason>", rolled_back false."""
    kubectl = FakeKubectl()
    kubectl.rollout["noetl-worker"] = "deadline"
    if fail == "rollout undo":
        kubectl.fail["rollout undo"] = Completed(1, "", 'Error from server (Forbidden):'
                                                 ' deployments.apps "noetl-worker" is forbidden\n')
    else:
        kubectl.undo_rollout["noetl-worker"] = "stuck"
    run = cli({"image": IMAGE, "rollback_on_failure": True, "rollout_timeout_seconds": 1},
              kubectl, env)
    comp = run.components["noetl-worker"]
    assert comp["error"]["code"] == "rollout_failed" and comp["rolled_back"] is False
    assert comp["error"]["message"].startswith("ProgressDeadlineExceeded: ")
    if fail == "rollout undo":
        assert comp["error"]["message"].endswith(
            'rollback failed: Error from server (Forbidden): deployments.apps "noetl-worker"'
            " is forbidden")
    else:
        assert "; rollback failed: its rollout did not complete: the rollout did not complete" \
            " within 1 s" in comp["error"]["message"]
    assert run.components["noetl-server"]["status"] == "changed"


@pytest.mark.parametrize("after_undo", ["stale_then_ok", "stale_for_a_while",
                                        "deadline_again"])
def test_the_changes_progress_deadline_is_not_the_rollbacks(env, after_undo):
    """After the undo the controller leaves the change's ProgressDeadlineExceeded in
    place until the rollback progresses: read then, it is not the rollback's failure
    (CI once saw a rollback said failed for it).  A new one (another lastUpdateTime)
    is."""
    kubectl = FakeKubectl()
    kubectl.rollout["noetl-worker"] = "deadline"
    kubectl.undo_rollout["noetl-worker"] = after_undo
    run = cli({"image": IMAGE, "rollback_on_failure": True}, kubectl, env)
    comp = run.components["noetl-worker"]
    message = comp["error"]["message"]
    assert comp["error"]["code"] == "rollout_failed", comp
    assert message.startswith("ProgressDeadlineExceeded: "), message
    if after_undo.startswith("stale"):      # read by the polls and by fail fast's look
        assert comp["rolled_back"] is True and comp["restored_image"] == OLD, message
        assert "rolled back to revision 1" in message and "rollback failed" not in message
    else:
        assert comp["rolled_back"] is False, message
        assert "; rollback failed: its rollout did not complete: ProgressDeadlineExceeded:" \
            in message, message


def test_a_rollback_does_not_inherit_its_changes_problems(env):
    """Fail fast times each wait's problems on its own: the ReplicaFailure that failed
    the change, still shown for a moment after the undo, has not lasted
    fail_fast_seconds for the rollback (found by review: one clock for both)."""
    kubectl = FakeKubectl()
    kubectl.rollout["noetl-worker"] = "replica_failure"
    kubectl.undo_rollout["noetl-worker"] = "replica_failure_for_a_while"
    run = cli({"image": IMAGE, "rollback_on_failure": True, "fail_fast_seconds": 6},
              kubectl, env)
    comp = run.components["noetl-worker"]
    message = comp["error"]["message"]
    assert comp["error"]["code"] == "rollout_failed", comp
    assert message.startswith("ReplicaFailure: FailedCreate: exceeded quota"), message
    assert comp["rolled_back"] is True and "rollback failed" not in message, message


def test_parallel_applies_every_change_before_waiting(env):
    kubectl = FakeKubectl()
    run = cli({"image": IMAGE, "parallel": True}, kubectl, env)
    assert run.code == 0
    verbs = kubectl.verbs()
    # every change first (their containers differ: a patch each), then one poll reads all
    assert verbs == ["get " + ALL, "patch noetl-server", "patch noetl-worker",
                     "patch ollama-bridge", "get " + ALL, "facts"]
    assert [e["component"] for e in run.event("component")] == [
        "noetl-server", "noetl-worker", "ollama-bridge"]


def test_verification_false_when_pods_run_another_digest(env):
    from fake_registry import FakeRegistry
    with FakeRegistry() as fake:
        fake.add_manifest("noetl/noetl", "v2.35.9", DIGEST)
        kubectl = FakeKubectl()
        kubectl.digests[IMAGE] = "sha256:" + "e" * 64      # a stale image under the tag
        run = run_cli(["--payload", json.dumps({
            "image": IMAGE, "deployment": "noetl-server",
            "registry_mirrors": {"ghcr.io": fake.base_url}})], runner=kubectl, env=env)
    comp = run.components["noetl-server"]
    assert comp["status"] == "changed" and comp["verified"] is False
    assert "not digest " + DIGEST in run.stderr


def test_verification_unavailable_is_null(env):
    kubectl = FakeKubectl()
    kubectl.fail["facts"] = Completed(1, "", "Error from server (Forbidden): pods is forbidden\n")
    run = cli({"image": IMAGE}, kubectl, env)
    assert run.code == 0
    assert {e["verified"] for e in run.event("component")} == {None}


def test_library_api(env):
    events = []
    result = bump_image.bump({"image": IMAGE, "probe": "never"}, runner=FakeKubectl(), env=env,
                             on_event=events.append)
    assert result.exit_code == 0
    assert result.events() == events
    assert result.summary()["changed"] == 3
    with pytest.raises(bump_image.PayloadError):
        bump_image.bump({"image": "x"}, runner=FakeKubectl(), env=env)
    with pytest.raises(bump_image.EnvironmentProblem):
        bump_image.bump({"image": IMAGE}, runner=FakeKubectl(present=False), env=env)


def test_pin_digest_rerun_is_unchanged(env):
    from fake_registry import FakeRegistry
    with FakeRegistry() as fake:
        fake.add_manifest("noetl/noetl", "v2.35.9", DIGEST)
        kubectl = FakeKubectl()
        payload = json.dumps({"image": IMAGE, "pin_digest": True,
                              "registry_mirrors": {"ghcr.io": fake.base_url}})
        assert run_cli(["--payload", payload], runner=kubectl, env=env).code == 0
        kubectl.calls.clear()
        run = run_cli(["--payload", payload], runner=kubectl, env=env)
    assert {e["status"] for e in run.event("component")} == {"unchanged"}
    assert kubectl.verbs() == ["get " + ALL]


# -- version 2 ---------------------------------------------------------------------------

def test_nothing_found_is_a_failure_naming_namespace_and_context(env):
    """A mistyped namespace: every default skipped, but the run fails (none_found)."""
    kubectl = FakeKubectl({}, context="kind-noetl")
    run = cli({"image": IMAGE, "namespace": "noetll"}, kubectl, env)
    assert run.code == 1
    assert [c["status"] for c in run.event("component")] == ["skipped"] * 3
    summary = run.summary
    assert summary["status"] == "failed" and summary["exit_code"] == 1
    assert summary["error"]["code"] == "none_found"
    assert 'namespace "noetll"' in summary["error"]["message"]
    assert 'context "kind-noetl"' in summary["error"]["message"]
    assert kubectl.verbs() == ["get " + ALL, "config current-context"]
    run = cli({"image": IMAGE, "namespace": "noetll", "context": "prod"}, kubectl, env)
    assert 'context "prod"' in run.summary["error"]["message"]
    run = cli({"image": IMAGE, "namespace": "noetll"}, FakeKubectl({}, context=None),
              dict(env, KUBERNETES_SERVICE_HOST="10.0.0.1"))
    assert "in-cluster (the pod's service account)" in run.summary["error"]["message"]


def test_nothing_found_among_named_workloads_too(env):
    kubectl = FakeKubectl({})
    run = cli({"image": IMAGE, "deployments": ["a", "sts/b"]}, kubectl, env)
    assert run.code == 1
    assert [c["error"]["code"] for c in run.event("component")] == ["not_found", "not_found"]
    assert run.components["b"]["error"]["message"] == \
        'StatefulSet "b" not found in namespace "noetl"'
    assert run.summary["error"]["code"] == "none_found"


def test_some_found_is_not_none_found(env):
    kubectl = FakeKubectl({"noetl-server": deployment("noetl-server", {"s": OLD})})
    run = cli({"image": IMAGE}, kubectl, env)
    assert run.code == 0 and run.summary["error"] is None


@pytest.mark.parametrize("context, extra_env, payload, outcome", [
    # v3: in a pod, a context that kubectl has (its own ~/.kube/config, KUBECONFIG, a
    # kubeconfig key) must be the expected one; only no context at all skips the guard
    (None, {}, {}, "skipped"),                      # kubectl uses the pod's service account
    ("other", {}, {}, "refused"),                   # ~/.kube/config of a CI runner or agent
    ("other", {"KUBECONFIG": "/k"}, {}, "refused"),
    ("other", {}, {"kubeconfig": "/k"}, "refused"),
    ("prod", {}, {}, "passed"),
    ("other", {}, {"context": "prod"}, "given"),    # the given context is the expected one
    (None, {}, {"context": "prod"}, "given"),
])
def test_context_guard_in_a_pod(env, context, extra_env, payload, outcome):
    kubectl = FakeKubectl(context=context)
    run = cli(dict({"image": IMAGE, "expected_kube_context": "prod"}, **payload), kubectl,
              dict(env, KUBERNETES_SERVICE_HOST="10.0.0.1", **extra_env))
    if outcome == "skipped":
        assert run.code == 0 and "context guard skipped: kubectl has no current context" \
            in run.stderr
    elif outcome == "refused":
        assert run.code == 4 and run.events[0]["error"]["code"] == "context_mismatch"
        assert '"other", expected "prod"' in run.events[0]["error"]["message"]
        assert kubectl.verbs() == ["config current-context"]
    else:
        assert run.code == 0 and "context guard skipped" not in run.stderr
    assert ("config current-context" in kubectl.verbs()) == (outcome != "given")


def test_context_guard_without_a_context_outside_a_pod_refuses(env):
    run = cli({"image": IMAGE, "expected_kube_context": "prod"}, FakeKubectl(context=None),
              env)
    assert run.code == 4 and run.events[0]["error"]["code"] == "context_mismatch"
    assert "kubectl context is not set, expected \"prod\"" in run.events[0]["error"]["message"]


def test_an_image_per_workload(env):
    server, worker = "ghcr.io/noetl/noetl-server-rust:v3", "ghcr.io/noetl/noetl-worker-rust:v3"
    kubectl = FakeKubectl({
        "noetl-server": deployment("noetl-server", {"server": "ghcr.io/noetl/noetl-server-rust:v2"}),
        "noetl-worker": deployment("noetl-worker", {"worker": "ghcr.io/noetl/noetl-worker-rust:v2"}),
    })
    run = cli({"images": {"noetl-server": server, "noetl-worker": worker}}, kubectl, env)
    assert run.code == 0, run.stdout
    assert [(e["image"], e["status"]) for e in run.event("probe")] == [
        (server, "skipped"), (worker, "skipped")]
    assert run.components["noetl-server"]["image"] == server
    assert run.components["noetl-worker"]["image"] == worker
    assert kubectl.image_of("noetl-server", "server") == server
    assert kubectl.image_of("noetl-worker", "worker") == worker
    causes = [p["metadata"]["annotations"]["kubernetes.io/change-cause"]
              for p in kubectl.patches()]
    assert causes == ["bump_image " + server, "bump_image " + worker]
    assert run.summary["image"] is None
    assert run.summary["images"] == {"noetl-server": server, "noetl-worker": worker}
    again = cli({"images": {"noetl-server": server, "noetl-worker": worker}}, kubectl, env)
    assert {c["status"] for c in again.event("component")} == {"unchanged"}
    assert kubectl.verbs()[-1] == "get noetl-server noetl-worker"


def test_text_format_names_the_kind_and_the_summary_error(env):
    kubectl = FakeKubectl({})
    run = run_cli(["--format", "text", "--payload", json.dumps({
        "image": IMAGE, "probe": "never", "deployments": ["web", "sts/db"]})],
        runner=kubectl, env=env)
    lines = run.stdout.splitlines()
    assert lines[0].startswith("web             error   " + IMAGE + "  not_found")
    assert lines[1].startswith("statefulset/db  error   " + IMAGE + "  not_found")
    assert lines[2].startswith("summary         failed  none_found: none of the selected")


class NotYet:
    """An opener whose registry never has the manifest (404)."""

    def __init__(self):
        self.calls = 0

    def open(self, request, timeout=None):
        import urllib.error
        self.calls += 1
        raise urllib.error.HTTPError(request.full_url, 404, "Not Found", {}, None)


def test_the_deadline_cuts_the_probe_and_nothing_changes(env):
    import time
    kubectl, opener = FakeKubectl(), NotYet()
    started = time.monotonic()
    run = run_cli(["--payload", json.dumps({"image": IMAGE, "ghcr_probe_attempts": 1000,
                                            "ghcr_probe_sleep_seconds": 0.3,
                                            "deadline_seconds": 2})],
                  runner=kubectl, opener=opener, env=env, sleeper=time.sleep)
    elapsed = time.monotonic() - started
    assert run.code == 3 and elapsed < 2, elapsed
    (probe,) = run.event("probe")
    assert probe["status"] == "unavailable" and probe["error"]["code"] == "deadline_exceeded"
    assert probe["attempts"] == opener.calls and 2 <= opener.calls <= 5
    assert kubectl.calls == []
    assert [e["event"] for e in run.events] == ["probe", "summary"]


class TimesOutAtOnce(FakeKubectl):
    """kubectl whose poll finds every rollout still running, while the clock jumps
    past every wait's deadline during that read."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.rollout = dict.fromkeys(self.deployments, "stuck")

    def __call__(self, argv, timeout, env=None, tag=None):
        if argv[1] == "get" and self.reads:        # a poll, after the first read
            self.clock.now += 1000
        return super().__call__(argv, timeout, env=env, tag=tag)


def test_a_poll_that_ends_with_every_deadline_ends_every_wait(env):
    """The poll returns in the same instant as every wait's deadline passes: each
    gets rollout_timeout, with one more read (what its pods report), and no more polls."""
    clock = VirtualClock(tick=0.001)   # moves by a millisecond each time it is read
    kubectl = TimesOutAtOnce(clock)
    run = run_cli(["--payload", json.dumps({"image": IMAGE, "probe": "never", "parallel": True,
                                            "rollout_timeout_seconds": 60})],
                  runner=kubectl, env=env, clock=clock)
    assert run.code == 1, run.stdout
    assert [(c["status"], c["error"]["code"]) for c in run.event("component")] == [
        ("error", "rollout_timeout")] * 3
    assert kubectl.verbs().count("get " + ALL) == 2          # the read and one poll
    assert kubectl.verbs()[-1] == "facts"
