"""End to end: the tool drives the real kubectl against the simulated API server.

Every test runs once per kubectl (the machine's, exec'ing 1.33, and 1.37 from PyPI).
The request log of the simulator shows what reached the API.
"""

import json
import os
import time

import pytest
from conftest import SERVICE_ACCOUNT, newer_kubectl
from fakes import IMAGE, OLD

import bump_image

pytestmark = pytest.mark.e2e

NEW = IMAGE
DEFAULTS = ["noetl-server", "noetl-worker", "ollama-bridge"]


def test_worked_example_all_defaults(cluster):
    cluster.noetl()
    run = cluster.bump(cluster.payload(image=NEW))
    assert run.code == 0, run.stdout + run.stderr
    assert [e["event"] for e in run.events] == ["probe"] + ["component"] * 3 + ["summary"]
    assert list(run.components) == DEFAULTS
    for comp in run.components.values():
        assert comp["status"] == "changed", comp
        assert comp["previous_image"] == OLD and comp["image"] == NEW
        assert comp["verified"] is True
    assert run.components["noetl-worker"]["containers"] == ["worker", "wait-for-api"]
    assert cluster.image("noetl-worker", "worker") == NEW
    assert cluster.image("noetl-worker", "wait-for-api") == NEW
    assert run.summary["changed"] == 3 and run.summary["exit_code"] == 0
    patches = cluster.api_requests("PATCH")
    assert [p["path"].rsplit("/", 1)[1] for p in patches] == DEFAULTS
    for p in patches:
        assert p["content_type"] == "application/strategic-merge-patch+json"
        assert p["body"]["metadata"]["annotations"]["kubernetes.io/change-cause"] == \
            "bump_image " + NEW
    dep = cluster.sim.get("deployments", "noetl-server")
    assert dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"


def test_worked_example_one_deployment(cluster):
    cluster.noetl()
    run = cluster.bump(cluster.payload(image=NEW, deployment="noetl-worker"))
    assert run.code == 0, run.stdout + run.stderr
    assert list(run.components) == ["noetl-worker"]
    assert run.components["noetl-worker"]["status"] == "changed"
    assert cluster.image("noetl-server", "server") == OLD


def test_rerun_is_unchanged_and_sends_no_write(cluster):
    cluster.noetl()
    assert cluster.bump(cluster.payload(image=NEW)).code == 0
    cluster.sim.clear_requests()
    run = cluster.bump(cluster.payload(image=NEW))
    assert run.code == 0
    assert {c["status"] for c in run.components.values()} == {"unchanged"}
    assert cluster.writes() == []
    # one kubectl process: one GET per Deployment (kubectl gets named objects one by one)
    gets = [r["path"] for r in cluster.api_requests("GET") if "/deployments/" in r["path"]]
    assert sorted(p.rsplit("/", 1)[1] for p in gets) == DEFAULTS


def test_playbook_form(cluster):
    cluster.noetl()
    run = cluster.bump(cluster.payload(image_repository="ghcr.io/noetl/noetl",
                                       target_tag="v2.35.9", components=["noetl-server"]))
    assert run.code == 0 and run.components["noetl-server"]["status"] == "changed"


def test_missing_default_is_skipped_missing_named_is_not_found(cluster):
    cluster.sim.add_deployment("noetl-server", containers=[{"name": "server", "image": OLD}])
    run = cluster.bump(cluster.payload(image=NEW))
    assert run.code == 0, run.stdout
    assert [c["status"] for c in run.components.values()] == ["changed", "skipped", "skipped"]
    run = cluster.bump(cluster.payload(image=NEW, deployments=["noetl-server", "ghost"]))
    assert run.code == 1
    assert run.components["noetl-server"]["status"] == "unchanged"
    assert run.components["ghost"]["error"]["code"] == "not_found"


def test_dry_run_sends_no_write(cluster):
    cluster.noetl()
    cluster.sim.clear_requests()
    run = cluster.bump(cluster.payload(image=NEW, dry_run=True))
    assert run.code == 0
    assert {c["status"] for c in run.components.values()} == {"planned"}
    assert cluster.writes() == []
    assert cluster.image("noetl-server", "server") == OLD


def test_explicit_container(cluster):
    cluster.noetl()
    run = cluster.bump(cluster.payload(image=NEW, deployment="noetl-worker",
                                       container="wait-for-api"))
    assert run.code == 0, run.stdout
    assert cluster.image("noetl-worker", "wait-for-api") == NEW
    assert cluster.image("noetl-worker", "worker") == OLD
    run = cluster.bump(cluster.payload(image=NEW, deployment="noetl-worker", container="nope"))
    assert run.components["noetl-worker"]["error"]["code"] == "container_not_found"


def test_rollout_timeout(cluster):
    cluster.noetl()
    cluster.sim.set_image_behaviour(NEW, {"mode": "hang"})
    started = time.monotonic()
    run = cluster.bump(cluster.payload(image=NEW, deployment="noetl-server",
                                       rollout_timeout_seconds=1, fail_fast_seconds=600))
    assert run.code == 1
    assert run.components["noetl-server"]["error"]["code"] == "rollout_timeout"
    assert time.monotonic() - started < 20


def test_progress_deadline(cluster):
    cluster.sim.add_deployment("noetl-server", containers=[{"name": "server", "image": OLD}],
                               progress_deadline_seconds=1)
    cluster.sim.set_image_behaviour(NEW, {"mode": "hang"})
    run = cluster.bump(cluster.payload(image=NEW, deployment="noetl-server",
                                       rollout_timeout_seconds=60, fail_fast_seconds=600))
    err = run.components["noetl-server"]["error"]
    assert run.code == 1 and err["code"] == "rollout_failed"
    assert "ProgressDeadlineExceeded" in err["message"]


def test_context_guard(cluster):
    cluster.noetl()
    run = cluster.bump(cluster.payload(image=NEW, expected_kube_context="kind-noetl"))
    if cluster.api:         # the pod's own cluster, with its service account: no context
        assert run.code == 0 and "context guard skipped: cluster_access is api" in run.stderr
        return
    assert run.code == 4 and run.events[0]["error"]["code"] == "context_mismatch"
    assert cluster.api_requests() == []
    run = cluster.bump(cluster.payload(image=NEW, expected_kube_context="sim"))
    assert run.code == 0


def test_context_from_the_payload(cluster):
    if cluster.api:
        run = cluster.bump(cluster.payload(image=NEW, context="kind-noetl"))
        assert run.code == 2 and "context is kubectl's, but cluster_access is api" in \
            run.events[0]["error"]["message"]
        return
    # two contexts that differ: the current one ("sim") holds a token bound to no rules
    # (every request is Forbidden), "kind-noetl" the tool's own; only --context=kind-noetl
    # reaches the workloads
    decoy = "decoy-%s" % os.urandom(6).hex()
    cluster.sim.set_token(decoy, "system:serviceaccount:other:decoy", [])
    kubeconfig = cluster.tmp_path / "two-contexts"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "sim",
        "clusters": [{"name": "sim-cluster", "cluster": {
            "server": cluster.sim.https_url,
            "certificate-authority": os.path.abspath(str(cluster.sim.ca_path))}}],
        "users": [{"name": "decoy", "user": {"token": decoy}},
                  {"name": "bump", "user": {"token": cluster.token}}],
        "contexts": [{"name": "sim", "context": {"cluster": "sim-cluster", "user": "decoy"}},
                     {"name": "kind-noetl", "context": {"cluster": "sim-cluster",
                                                        "user": "bump"}}]}))
    cluster.noetl()
    cluster.sim.clear_requests()
    run = cluster.bump(cluster.payload(image=NEW, context="kind-noetl", kubeconfig=str(kubeconfig),
                                       expected_kube_context="kind-noetl"))
    assert run.code == 0, run.stdout + run.stderr
    assert run.summary["changed"] == 3
    assert cluster.image("noetl-server", "server") == NEW
    users = {r["user"] for r in cluster.sim.requests()}
    assert users == {SERVICE_ACCOUNT}, users          # never the current context's user


# -- beyond the playbook: digest pinning, fail fast, rollback, parallel, verification ----

DIGEST = "sha256:" + "5" * 64


def probed(cluster, fake, **keys):
    """A payload whose probe goes to the in-process registry (digest DIGEST)."""
    fake.add_manifest("noetl/noetl", "v2.35.9", DIGEST)
    return cluster.payload(probe="auto", registry_mirrors={"ghcr.io": fake.base_url}, **keys)


def test_pin_digest(cluster):
    from fake_registry import FakeRegistry
    cluster.noetl()
    pinned = NEW + "@" + DIGEST
    cluster.sim.set_digest(pinned, DIGEST)
    with FakeRegistry() as fake:
        run = cluster.bump(probed(cluster, fake, image=NEW, pin_digest=True))
        assert run.code == 0, run.stdout + run.stderr
        for comp in run.components.values():
            assert comp["image"] == pinned and comp["digest"] == DIGEST
            assert comp["verified"] is True
        assert cluster.image("noetl-worker", "worker") == pinned
        assert cluster.image("noetl-worker", "wait-for-api") == pinned
        rerun = cluster.bump(probed(cluster, fake, image=NEW, pin_digest=True))
    assert {c["status"] for c in rerun.components.values()} == {"unchanged"}


def test_digest_is_reported_without_pinning_and_verified(cluster):
    from fake_registry import FakeRegistry
    cluster.noetl()
    cluster.sim.set_digest(NEW, DIGEST)
    with FakeRegistry() as fake:
        run = cluster.bump(probed(cluster, fake, image=NEW, deployment="noetl-server"))
    comp = run.components["noetl-server"]
    assert comp["image"] == NEW and comp["digest"] == DIGEST and comp["verified"] is True
    assert cluster.image("noetl-server", "server") == NEW


def test_verification_catches_a_stale_image_under_the_tag(cluster):
    from fake_registry import FakeRegistry
    cluster.noetl()
    cluster.sim.set_digest(NEW, "sha256:" + "6" * 64)     # the nodes run another build
    with FakeRegistry() as fake:
        run = cluster.bump(probed(cluster, fake, image=NEW, deployment="noetl-server"))
    comp = run.components["noetl-server"]
    assert comp["status"] == "changed" and comp["verified"] is False
    assert "not digest " + DIGEST in run.stderr


@pytest.mark.parametrize("mode, reason", [
    ("image_pull_backoff", "ImagePullBackOff"),
    ("crash_loop", "CrashLoopBackOff"),
    ("config_error", "CreateContainerConfigError"),
    ("replica_failure", "ReplicaFailure"),
])
def test_fail_fast_reports_the_reason_well_before_the_timeout(cluster, mode, reason):
    cluster.noetl()
    cluster.sim.set_image_behaviour(NEW, {"mode": mode})
    fail_fast = 1
    started = time.monotonic()
    run = cluster.bump(cluster.payload(image=NEW, deployment="noetl-server",
                                       fail_fast_seconds=fail_fast, rollout_timeout_seconds=120))
    elapsed = time.monotonic() - started
    err = run.components["noetl-server"]["error"]
    assert run.code == 1 and err["code"] == "rollout_failed", run.stdout
    assert reason in err["message"]
    assert elapsed <= fail_fast + 8, elapsed          # fail_fast + a few seconds, not 120


def test_image_pull_backoff_message_names_the_pod_and_image(cluster):
    cluster.noetl()
    cluster.sim.set_image_behaviour(NEW, {"mode": "image_pull_backoff"})
    run = cluster.bump(cluster.payload(image=NEW, deployment="noetl-worker",
                                       fail_fast_seconds=1, rollout_timeout_seconds=60))
    message = run.components["noetl-worker"]["error"]["message"]
    assert message.startswith("ImagePullBackOff: ") or message.startswith("ErrImagePull: ")
    assert NEW in message and "pod noetl-worker-" in message


def test_rollback_restores_the_previous_image(cluster):
    cluster.noetl()
    cluster.sim.set_image_behaviour(NEW, {"mode": "image_pull_backoff"})
    run = cluster.bump(cluster.payload(image=NEW, deployments=["noetl-server", "noetl-worker"],
                                       rollback_on_failure=True, fail_fast_seconds=1,
                                       rollout_timeout_seconds=60))
    assert run.code == 1
    for name, container in (("noetl-server", "server"), ("noetl-worker", "worker")):
        comp = run.components[name]
        assert comp["status"] == "error" and comp["error"]["code"] == "rollout_failed"
        assert comp["rolled_back"] is True and comp["restored_image"] == OLD
        assert "rolled back to revision 1" in comp["error"]["message"]
        assert cluster.image(name, container) == OLD
    assert cluster.image("noetl-worker", "wait-for-api") == OLD
    dep = cluster.sim.get("deployments", "noetl-server")
    assert dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    assert dep["status"].get("updatedReplicas") == dep["spec"]["replicas"]


def test_parallel_waits_for_all_rollouts_at_once(cluster):
    delay = 2.0
    cluster.noetl(behaviour={"mode": "ready", "delay": delay})
    started = time.monotonic()
    run = cluster.bump(cluster.payload(image=NEW, parallel=True))
    elapsed = time.monotonic() - started
    assert run.code == 0, run.stdout + run.stderr
    assert [c["status"] for c in run.components.values()] == ["changed"] * 3
    assert list(run.components) == DEFAULTS
    # about one rollout (the worker's: init container, then app: 2 * delay), not three:
    # one after another they take at least delay + 2 * delay + delay
    assert elapsed < 4 * delay, elapsed
    patches = [r["time"] for r in cluster.api_requests("PATCH")]
    assert max(patches) - min(patches) < delay  # every change applied before the waits


def test_sequential_waits_one_after_another(cluster):
    delay = 1.0
    cluster.noetl(behaviour={"mode": "ready", "delay": delay})
    started = time.monotonic()
    run = cluster.bump(cluster.payload(image=NEW))
    assert run.code == 0
    assert time.monotonic() - started >= 3 * delay
    patches = [r["time"] for r in cluster.api_requests("PATCH")]
    assert patches[1] - patches[0] >= delay


def test_change_cause_in_rollout_history(cluster):
    import subprocess
    cluster.noetl()
    assert cluster.bump(cluster.payload(image=NEW, deployment="noetl-server")).code == 0
    done = subprocess.run([cluster.kubectl or newer_kubectl(), "--kubeconfig",
                           cluster.admin_kubeconfig, "rollout",
                           "history", "deployment/noetl-server", "--namespace=noetl"],
                          env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert ("bump_image " + NEW).encode() in done.stdout


def test_paused_deployment_is_not_changed(cluster):
    cluster.sim.add_deployment("noetl-server", containers=[{"name": "server", "image": OLD}],
                               paused=True)
    cluster.sim.clear_requests()
    run = cluster.bump(cluster.payload(image=NEW, deployment="noetl-server"))
    assert run.code == 1
    assert run.components["noetl-server"]["error"]["code"] == "deployment_paused"
    assert cluster.writes() == []


def after_patch(cluster, plural, name, namespace="noetl"):
    """The tool's API requests after its only PATCH of ``plural/name`` (as method,
    path pairs); fails unless there was exactly one."""
    path = "/apis/apps/v1/namespaces/%s/%s/%s" % (namespace, plural, name)
    requests = cluster.api_requests()
    patches = [i for i, r in enumerate(requests) if r["method"] == "PATCH" and r["path"] == path]
    assert len(patches) == 1, [(r["method"], r["path"]) for r in requests]
    return [{"method": r["method"], "path": r["path"]} for r in requests[patches[0] + 1:]]


def test_scaled_to_zero_is_changed_and_the_rerun_is_clean(cluster):
    """v2: a KEDA-idle worker at replicas 0: the template is set, replicas untouched,
    nothing waited for; the rerun is unchanged, exit 0, and sends no write."""
    cluster.sim.add_deployment("ollama-bridge", containers=[{"name": "bridge", "image": OLD}],
                               replicas=0)
    run = cluster.bump(cluster.payload(image=NEW, deployment="ollama-bridge"))
    assert run.code == 0, run.stdout + run.stderr
    comp = run.components["ollama-bridge"]
    assert comp["status"] == "changed" and comp["verified"] is None
    assert "spec.replicas is 0" in run.stderr
    assert cluster.image("ollama-bridge", "bridge") == NEW
    assert cluster.sim.get("deployments", "ollama-bridge")["spec"]["replicas"] == 0
    # nothing waited for: after its one PATCH the tool read neither the Deployment (a
    # rollout wait polls it by name) nor any ReplicaSets or Pods (fail fast, verification)
    later = after_patch(cluster, "deployments", "ollama-bridge")
    assert not [r for r in later if r["path"].endswith("/deployments/ollama-bridge")], later
    assert not [r for r in later if r["path"].endswith(("/pods", "/replicasets"))], later
    cluster.sim.clear_requests()
    run = cluster.bump(cluster.payload(image=NEW, deployment="ollama-bridge"))
    assert run.code == 0 and run.components["ollama-bridge"]["status"] == "unchanged"
    assert cluster.writes() == []


def test_at_target_with_a_rollout_in_progress_is_waited_for(cluster):
    cluster.sim.add_deployment("noetl-server", containers=[{"name": "server", "image": NEW}],
                               ready=False, behaviour={"mode": "ready", "delay": 1.0})
    run = cluster.bump(cluster.payload(image=NEW, deployment="noetl-server"))
    assert run.code == 0, run.stdout + run.stderr
    comp = run.components["noetl-server"]
    assert comp["status"] == "unchanged" and comp["duration_seconds"] >= 0.5
    assert comp["verified"] is True
    assert cluster.writes() == []


def test_at_target_with_a_stuck_rollout_is_an_error(cluster):
    cluster.sim.add_deployment("noetl-server", containers=[{"name": "server", "image": NEW}],
                               ready=False, behaviour={"mode": "hang"})
    run = cluster.bump(cluster.payload(image=NEW, deployment="noetl-server",
                                       rollout_timeout_seconds=1, fail_fast_seconds=600))
    assert run.code == 1
    assert run.components["noetl-server"]["error"]["code"] == "rollout_timeout"
    assert cluster.writes() == []


def test_the_kubectl_version_is_the_one_named(cluster):
    cluster.noetl()
    cluster.bump(cluster.payload(image=NEW, dry_run=True))
    agents = {r["user_agent"].split(" ")[0] for r in cluster.api_requests()}
    if cluster.api:
        assert agents == {"bump_image/" + bump_image.__version__}
        return
    minor = cluster.version.rsplit(".", 1)[0]               # "1.33" or "1.37"
    assert agents and all("/v%s." % minor in a for a in agents), agents


@pytest.mark.kubectl("1.33")           # the dispatcher, as the machine's kubectl
@pytest.mark.parametrize("server_version", ["1.27.16", "1.30.13"])
def test_worked_example_with_older_kubectl(sim_server, tmp_path, env, server_version):
    """The dispatcher execs the kubectl matching the server: 1.27 and 1.30 as well."""
    from conftest import DISPATCHER, Cluster, need
    need(DISPATCHER, "kubectl")
    sim_server.reset()
    sim_server.set_server_version(server_version)
    cluster = Cluster(sim_server, "1.33", DISPATCHER, server_version, tmp_path, env)
    cluster.noetl()
    run = cluster.bump(cluster.payload(image=NEW))
    assert run.code == 0 and run.summary["changed"] == 3, run.stdout + run.stderr
    assert cluster.bump(cluster.payload(image=NEW)).summary["unchanged"] == 3
    agents = {r["user_agent"].split(" ")[0] for r in cluster.api_requests()}
    assert all("/v%s." % server_version.rsplit(".", 1)[0] in a for a in agents), agents


def test_deadline_prints_the_summary_before_the_budget_ends(cluster):
    """Slow rollouts one after another (2.5 s; the worker's 5 s: its init container, then
    its app) and deadline_seconds 8 (7 s of work, 1 s kept for the report): the server
    completes, the worker is changed with time to spare but cut (deadline_exceeded, its
    change applied), the bridge is never changed; the summary line comes within the
    budget, counted from the process's start."""
    import json
    import subprocess
    import sys
    cluster.noetl()
    cluster.sim.set_image_behaviour(NEW, {"mode": "ready", "delay": 2.5})
    payload = cluster.payload(image=NEW, deadline_seconds=8, fail_fast_seconds=600)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "bump_image.py", "--payload", json.dumps(payload)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cluster.env)
    lines = []
    for raw in proc.stdout:
        lines.append((time.monotonic() - started, json.loads(raw)))
    proc.wait(10)
    stderr = proc.stderr.read().decode()
    at, summary = lines[-1]
    assert summary["event"] == "summary", stderr
    # the budget runs from the process's start (duration_seconds too); seen from here
    # the line also waited for the pipe
    assert summary["duration_seconds"] < 8.0 and at < 8.5, (summary, at, stderr)
    assert proc.returncode == 1 and summary["exit_code"] == 1
    comps = {e["component"]: e for _, e in lines if e["event"] == "component"}
    assert comps["noetl-server"]["status"] == "changed"
    for name in ("noetl-worker", "ollama-bridge"):
        assert comps[name]["error"]["code"] == "deadline_exceeded", comps[name]
    assert "rolls on in the cluster" in comps["noetl-worker"]["error"]["message"]
    assert "not checked or changed" in comps["ollama-bridge"]["error"]["message"]
    assert cluster.image("noetl-worker", "worker") == NEW       # applied, still rolling
    assert cluster.image("ollama-bridge", "bridge") == OLD      # never reached


# -- version 2 safety rules, with the real kubectl ---------------------------------------

def test_a_sidecar_first_never_gets_the_app_image(cluster):
    cluster.sim.add_deployment("api", containers=[
        {"name": "cloudsql-proxy", "image": "gcr.io/cloudsql-docker/gce-proxy:1.33"},
        {"name": "api", "image": "ghcr.io/noetl/noetl-api:v1"}])
    run = cluster.bump(cluster.payload(image=NEW, deployment="api"))
    assert run.code == 1
    err = run.components["api"]["error"]
    assert err["code"] == "container_ambiguous" and "cloudsql-proxy, api" in err["message"]
    assert cluster.writes() == []
    cluster.sim.add_deployment("annotated", containers=[
        {"name": "cloudsql-proxy", "image": "gcr.io/cloudsql-docker/gce-proxy:1.33"},
        {"name": "api", "image": "ghcr.io/noetl/noetl-api:v1"}],
        template_annotations={"kubectl.kubernetes.io/default-container": "api"})
    run = cluster.bump(cluster.payload(image=NEW, deployment="annotated"))
    assert run.code == 0, run.stdout + run.stderr
    assert run.components["annotated"]["containers"] == ["api"]
    assert cluster.image("annotated", "api") == NEW
    assert cluster.image("annotated", "cloudsql-proxy") == "gcr.io/cloudsql-docker/gce-proxy:1.33"


def test_a_mistyped_namespace_is_none_found(cluster):
    """With credentials that may read the other namespace: none_found, naming it."""
    from conftest import shipped_rules
    cluster.noetl()
    cluster.set_rules(shipped_rules() + [{"namespace": None, "apiGroups": ["apps"],
                                          "resources": ["deployments"], "verbs": ["get"]}])
    run = cluster.bump(cluster.payload(image=NEW, namespace="noetll"))
    assert run.code == 1
    assert [c["status"] for c in run.components.values()] == ["skipped"] * 3
    error = run.summary["error"]
    assert error["code"] == "none_found" and run.summary["status"] == "failed"
    where = "in-cluster (the pod's service account)" if cluster.api else 'context "sim"'
    assert 'namespace "noetll"' in error["message"] and where in error["message"]
    assert cluster.writes() == []


def test_a_mistyped_namespace_under_the_shipped_role_is_forbidden_there(cluster):
    """The shipped Role is for namespace noetl: another namespace is refused, and each
    workload's line says where (never a silent skip)."""
    cluster.noetl()
    run = cluster.bump(cluster.payload(image=NEW, namespace="noetll"))
    assert run.code == 1 and run.summary["error"] is None
    for comp in run.components.values():
        assert comp["error"]["code"] == "kubectl_failed"
        assert 'cannot get resource "deployments" in API group "apps" in the namespace' \
            ' "noetll"' in comp["error"]["message"]
    assert cluster.writes() == []


def test_the_context_guard_runs_in_a_pod_given_a_kubeconfig(cluster):
    """In-cluster (KUBERNETES_SERVICE_HOST set), a kubeconfig for another cluster is
    exactly what the guard is for."""
    if cluster.api:
        pytest.skip("kubectl's context: the API access has none (test_context_guard)")
    cluster.noetl()
    env = dict(cluster.env, KUBERNETES_SERVICE_HOST="10.96.0.1", KUBERNETES_SERVICE_PORT="443")
    run = cluster.bump(cluster.payload(image=NEW, expected_kube_context="kind-noetl"), env=env)
    assert run.code == 4 and run.events[0]["error"]["code"] == "context_mismatch"
    assert cluster.writes() == []


def test_a_registry_host_in_upper_case_is_the_same_image(cluster):
    cluster.sim.add_deployment("noetl-server", containers=[{"name": "server", "image": NEW}])
    run = cluster.bump(cluster.payload(image=NEW.replace("ghcr.io", "GHCR.io"),
                                       deployment="noetl-server"))
    assert run.code == 0 and run.components["noetl-server"]["status"] == "unchanged"
    assert cluster.writes() == []
