"""The outside review of version 2, defect by defect, as it reproduced them (real kubectl
and the API access on the simulator): each test failed on version 2 (a7b24d1) and
passes now.  The mixed-outcome table (test_mixed.py) covers the same rules at scale."""

import json
import os
import threading

import pytest
from fakes import IMAGE, OLD, FakeKubectl, run_cli

NEW = IMAGE


@pytest.mark.e2e
def test_1_a_stuck_rollout_never_fails_the_healthy_one_behind_it(cluster):
    cluster.sim.add_deployment("a", containers=[{"name": "app", "image": OLD}])
    cluster.sim.add_deployment("b", containers=[{"name": "app", "image": OLD}])
    cluster.sim.set_behaviour("a", "noetl", {"mode": "hang"})     # a's new pods stay Pending
    run = cluster.bump(cluster.payload(image=NEW, deployments=["a", "b"], parallel=True,
                                       rollout_timeout_seconds=4, rollback_on_failure=True,
                                       fail_fast_seconds=600))
    a, b = run.components["a"], run.components["b"]
    assert run.code == 1
    assert a["error"]["code"] == "rollout_timeout" and a["rolled_back"] is True
    assert b["status"] == "changed" and b["rolled_back"] is False and b["verified"] is True
    assert b["duration_seconds"] < 4           # judged when it completed, not after a
    assert cluster.image("b", "app") == NEW and cluster.image("a", "app") == OLD


@pytest.mark.e2e
def test_2_a_failure_is_never_blamed_on_another_workload(cluster):
    cluster.sim.add_deployment("a", containers=[{"name": "app", "image": OLD}],
                               progress_deadline_seconds=1)
    for name in ("b", "c"):
        cluster.sim.add_deployment(name, containers=[{"name": "app", "image": OLD}])
    cluster.sim.set_behaviour("a", "noetl", {"mode": "hang"})
    cluster.sim.set_behaviour("c", "noetl", {"mode": "hang"})

    def delete_c_once_patched():
        cluster.sim.wait_for(lambda sim: any(r["path"].endswith("/deployments/c")
                                             for r in cluster.writes()), timeout=30,
                             what="c's patch")
        cluster.sim.delete_deployment("c")
    deleter = threading.Thread(target=delete_c_once_patched, daemon=True)
    deleter.start()
    run = cluster.bump(cluster.payload(image=NEW, deployments=["a", "c", "b"], parallel=True,
                                       rollout_timeout_seconds=20, rollback_on_failure=True,
                                       fail_fast_seconds=600))
    deleter.join(5)
    a, b, c = (run.components[n] for n in "abc")
    assert a["error"]["code"] == "rollout_failed" and "ProgressDeadlineExceeded" in \
        a["error"]["message"] and 'deployment "a" exceeded' in a["error"]["message"]
    assert a["rolled_back"] is True                    # a's own failure: a is rolled back
    assert c["error"]["code"] == "rollout_failed" and 'Deployment "c" went away' in \
        c["error"]["message"] and c["rolled_back"] is False
    assert b["status"] == "changed" and b["rolled_back"] is False and b["error"] is None
    assert cluster.image("b", "app") == NEW


def test_3_the_context_guard_in_a_pod_reads_kubectls_own_config(env):
    """A CI runner or agent in a pod whose kubectl reads ~/.kube/config: its context
    must be the expected one (version 2 skipped the guard and changed the cluster)."""
    kubectl = FakeKubectl(context="other")
    run = run_cli(["--payload", json.dumps({"image": IMAGE, "probe": "never",
                                            "expected_kube_context": "prod"})],
                  runner=kubectl, env=dict(env, KUBERNETES_SERVICE_HOST="10.0.0.1"))
    assert run.code == 4 and run.events[0]["error"]["code"] == "context_mismatch"
    assert kubectl.patches() == []


@pytest.mark.e2e
def test_3_the_context_guard_in_a_pod_with_a_real_kubectl_and_home_config(cluster):
    if cluster.api:
        pytest.skip("the API access has no kubectl context (test_context_guard)")
    cluster.noetl()
    home = os.path.join(cluster.env["HOME"], ".kube")
    os.makedirs(home, exist_ok=True)
    with open(cluster.kubeconfig) as src, open(os.path.join(home, "config"), "w") as dst:
        dst.write(src.read().replace('current-context: "sim"', 'current-context: "kind-noetl"'))
    env = dict(cluster.env, KUBERNETES_SERVICE_HOST="10.96.0.1", KUBERNETES_SERVICE_PORT="443")
    payload = cluster.payload(image=NEW, expected_kube_context="prod")
    del payload["kubeconfig"]                         # kubectl reads ~/.kube/config
    run = cluster.bump(payload, env=env)
    assert run.code == 4, run.stdout + run.stderr
    assert run.events[0]["error"]["message"] == ('kubectl context is "kind-noetl", expected'
                                                 ' "prod": refusing to run')
    assert cluster.writes() == []


@pytest.mark.e2e
def test_4_one_forbidden_kind_fails_only_its_own_workloads(cluster):
    cluster.sim.add_deployment("a", containers=[{"name": "app", "image": OLD}])
    cluster.sim.add_statefulset("s", containers=[{"name": "app", "image": OLD}])
    cluster.sim.inject_fault(path_regex=r"/statefulsets", status=403, reason="Forbidden")
    run = cluster.bump(cluster.payload(image=NEW, deployments=["a", "sts/s"]))
    a, s = run.components["a"], run.components["s"]
    assert run.code == 1
    assert a["status"] == "changed" and a["error"] is None
    assert s["error"]["code"] == "kubectl_failed" and 'statefulsets.apps "s" is forbidden' in \
        s["error"]["message"]
    assert cluster.image("a", "app") == NEW


@pytest.mark.parametrize("order", [["nginx:1.27", "docker.io/library/nginx:1.27"],
                                   ["docker.io/library/nginx:1.27", "nginx:1.27"]],
                         ids=["bare-first", "qualified-first"])
@pytest.mark.parametrize("pin", [False, True], ids=["tag", "pin_digest"])
def test_5_an_image_written_two_ways_is_probed_in_either_order(env, order, pin):
    from fake_registry import FakeRegistry
    kubectl = FakeKubectl({})
    with FakeRegistry() as registry:               # answers 404: the image is not there
        run = run_cli(["--payload", json.dumps({
            "images": {"a": order[0], "b": order[1]}, "probe": "auto", "pin_digest": pin,
            "ghcr_probe_attempts": 1, "registry_mirrors": {"docker.io": registry.base_url}})],
            runner=kubectl, env=env)
        heads = [r for r in registry.requests if r["method"] == "HEAD"]
    assert run.code == 3, run.stdout + run.stderr
    (probe,) = run.event("probe")
    assert probe["status"] == "unavailable" and probe["image"] == "docker.io/library/nginx:1.27"
    assert [r["path"] for r in heads] == ["/v2/library/nginx/manifests/1.27"]
    assert kubectl.calls == []


# -- what the audit of the tests found ------------------------------------------------------

@pytest.mark.e2e
def test_pods_that_run_but_never_get_ready_are_said(cluster):
    """A failing readiness probe (the most common bad release): the pods run, never get
    ready, and restart; the wait ends at its time-out and says what the pods report."""
    cluster.sim.add_deployment("web", containers=[{"name": "app", "image": OLD}])
    cluster.sim.set_image_behaviour(NEW, {"mode": "not_ready", "restart_interval": 0.5})
    run = cluster.bump(cluster.payload(image=NEW, deployment="web", rollout_timeout_seconds=3,
                                       fail_fast_seconds=600))
    err = run.components["web"]["error"]
    assert run.code == 1 and err["code"] == "rollout_timeout", run.stdout + run.stderr
    assert "the rollout did not complete within 3 s: " in err["message"]
    assert "0 of 1 new pod ready: pod web-" in err["message"]
    assert "Running: app running, not ready" in err["message"]
    assert " restarts" in err["message"] or " restart" in err["message"]
    assert "web: 0 of 1 new pod ready" in run.stderr          # said while it waited


@pytest.mark.e2e
def test_a_deployment_whose_labels_differ_from_its_selector_is_still_judged(cluster):
    """Its own labels are not its selector's: it is read by name (a label-selected read
    of Deployments missed it, and with it its conditions)."""
    cluster.sim.add_deployment("web", containers=[{"name": "app", "image": OLD}],
                               labels={"team": "platform"}, selector={"app": "web-pods"},
                               progress_deadline_seconds=1)
    cluster.sim.set_image_behaviour(NEW, {"mode": "hang"})
    run = cluster.bump(cluster.payload(image=NEW, deployment="web", rollout_timeout_seconds=30,
                                       fail_fast_seconds=600))
    err = run.components["web"]["error"]
    assert err["code"] == "rollout_failed" and err["message"].startswith(
        'ProgressDeadlineExceeded: deployment "web" exceeded its progress deadline')
    assert run.components["web"]["duration_seconds"] < 15


@pytest.mark.e2e
def test_a_digest_pinned_by_an_admission_is_the_target(cluster):
    """Kyverno verifyImages with mutateDigest turns repo:tag into repo:tag@sha256:…: with
    the probed digest that is the target, and a rerun sends nothing."""
    from fake_registry import FakeRegistry
    digest = "sha256:" + "4" * 64
    cluster.sim.add_deployment("web", containers=[{"name": "app", "image": NEW + "@" + digest}])
    with FakeRegistry() as registry:
        registry.add_manifest("noetl/noetl", "v2.35.9", digest)
        run = cluster.bump(cluster.payload(image=NEW, deployment="web", probe="auto",
                                           check_platforms="never",
                                           registry_mirrors={"ghcr.io": registry.base_url}))
    assert run.code == 0, run.stdout + run.stderr
    assert run.components["web"]["status"] == "unchanged"
    assert "the target's tag plus the probed digest, pinned by an admission" in run.stderr
    assert cluster.writes() == []
