"""The API access's own cases (``cluster_access: api``), against the simulator's HTTPS
endpoint with a bearer token bound to the shipped RBAC: a token that rotates during
the run, a CA that is not the cluster's, 401 and 403 said plainly, a 409 on a patch
and a 429 with Retry-After retried, lists that come in pages.  (Every end-to-end
scenario of the other files also runs under this access: ``cluster``'s "api".)"""

import os
import threading
import time

import pytest
from conftest import SERVICE_ACCOUNT, Cluster, shipped_rules
from fakes import IMAGE, OLD

pytestmark = [pytest.mark.e2e, pytest.mark.kubectl("api")]

NEW = IMAGE


@pytest.fixture
def api(sim_server, tmp_path, env):
    sim_server.reset()
    sim_server.set_server_version("1.34.2")
    return Cluster(sim_server, "api", None, "1.34.2", tmp_path, env)


def write_token(cluster, token):
    """Replace the token file the way the kubelet does: a new file renamed over it."""
    path = cluster.service_account / "token"
    tmp = cluster.service_account / ".token.new"
    tmp.write_text(token)
    os.replace(str(tmp), str(path))


def test_a_token_that_rotates_during_the_run_is_read_again(api):
    api.sim.add_deployment("noetl-server", containers=[{"name": "server", "image": OLD}])
    api.sim.set_image_behaviour(NEW, {"mode": "ready", "delay": 2.0})
    box = {}
    thread = threading.Thread(target=lambda: box.update(run=api.bump(api.payload(
        image=NEW, deployment="noetl-server"))), daemon=True)
    thread.start()
    api.sim.wait_for(lambda sim: api.writes(), timeout=20, what="the patch")
    rotated = "bump-image-rotated-%s" % os.urandom(4).hex()
    api.sim.set_token(rotated, SERVICE_ACCOUNT + "-rotated", api.rules)
    write_token(api, rotated)
    api.sim.revoke_token(api.token)           # the old token stops working at once
    thread.join(30)
    run = box["run"]
    assert run.code == 0, run.stdout + run.stderr
    assert run.components["noetl-server"]["status"] == "changed"
    assert run.components["noetl-server"]["verified"] is True
    rotated_requests = [r for r in api.sim.requests()
                        if r.get("user") == SERVICE_ACCOUNT + "-rotated"]
    assert rotated_requests, "no request carried the new token"
    # the token is read again when its file changes: never a refused request
    assert not [r for r in api.sim.requests() if r.get("status") == 401]


def test_a_ca_that_is_not_the_clusters_is_refused(api, tmp_path):
    from k8s_sim import make_unrelated_ca
    api.noetl()
    other = make_unrelated_ca(str(tmp_path))
    (api.service_account / "ca.crt").write_bytes(open(other, "rb").read())
    run = api.bump(api.payload(image=NEW))
    assert run.code == 1
    for comp in run.event("component"):
        assert comp["error"]["code"] == "kubectl_failed"
        assert "TLS certificate of 127.0.0.1" in comp["error"]["message"]
        assert "not trusted" in comp["error"]["message"]
    assert api.api_requests() == []           # nothing got past TLS
    assert api.image("noetl-server", "server") == OLD


def test_a_refused_token_is_said_plainly(api):
    api.noetl()
    api.sim.revoke_token(api.token)
    run = api.bump(api.payload(image=NEW))
    assert run.code == 1
    for comp in run.event("component"):
        message = comp["error"]["message"]
        assert comp["error"]["code"] == "kubectl_failed"
        assert "the API refused the service account's token (401 Unauthorized)" in message
        assert str(api.service_account / "token") in message and "section RBAC" in message
    # refused, the token is read again once (it may have rotated), then given up
    refused = [r for r in api.sim.requests() if r.get("status") == 401]
    assert len(refused) == 2 * 3


def test_a_forbidden_request_names_the_verb_resource_and_namespace(api):
    api.noetl()
    api.set_rules([r for r in shipped_rules() if "patch" not in r["verbs"]])
    run = api.bump(api.payload(image=NEW, deployment="noetl-server"))
    err = run.components["noetl-server"]["error"]
    assert run.code == 1 and err["code"] == "kubectl_failed"
    assert ('User "system:serviceaccount:noetl:noetl-worker" cannot patch resource'
            ' "deployments" in API group "apps" in the namespace "noetl"') in err["message"]
    assert "Forbidden (403)" in err["message"] and "deploy/rbac.yaml" in err["message"]
    assert api.image("noetl-server", "server") == OLD


def test_a_conflict_on_the_patch_is_retried(api):
    api.noetl()
    api.sim.inject_fault(method="PATCH", path_regex=r"/deployments/noetl-server$", status=409,
                         reason="Conflict", count=1)
    run = api.bump(api.payload(image=NEW, deployment="noetl-server"))
    assert run.code == 0, run.stdout + run.stderr
    assert [r["status"] for r in api.api_requests("PATCH")] == [409, 200]
    assert "answered 409" in run.stderr
    assert api.image("noetl-server", "server") == NEW


def test_a_429_waits_its_retry_after(api):
    api.noetl()
    api.sim.inject_fault(method="GET", path_regex=r"/deployments/noetl-server$", status=429,
                         reason="TooManyRequests", headers={"Retry-After": "2"}, count=1)
    started = time.monotonic()
    run = api.bump(api.payload(image=NEW, deployment="noetl-server"))
    assert run.code == 0, run.stdout + run.stderr
    assert time.monotonic() - started >= 2
    gets = [r for r in api.api_requests("GET") if r["path"].endswith("/noetl-server")]
    assert [r["status"] for r in gets[:2]] == [429, 200]
    assert gets[1]["time"] - gets[0]["time"] >= 1.9
    assert "answered 429" in run.stderr and "again in 2 s" in run.stderr


def test_lists_that_come_in_pages_are_read_whole(api):
    """A server may answer fewer items than asked, with a continue token: the pods and
    ReplicaSets of a rollout are read page by page (verification sees every pod)."""
    api.sim.add_deployment("noetl-worker", containers=[{"name": "worker", "image": OLD}],
                           replicas=3)
    api.sim.set_max_page(1)
    run = api.bump(api.payload(image=NEW, deployment="noetl-worker"))
    assert run.code == 0, run.stdout + run.stderr
    assert run.components["noetl-worker"]["verified"] is True
    assert "3 pods run the target" in run.stderr
    lists = [r for r in api.api_requests("GET") if r["path"].endswith("/pods")]
    assert len([r for r in lists if "continue" in r["query"]]) >= 2


def test_without_a_service_account_the_api_access_is_exit_4(api, tmp_path):
    missing = dict(api.env, BUMP_IMAGE_SERVICEACCOUNT_DIR=str(tmp_path / "nowhere"))
    run = api.bump(api.payload(image=NEW), env=missing)
    assert run.code == 4
    error = run.events[0]["error"]
    assert error["code"] == "serviceaccount_missing" and "nowhere/token" in error["message"]
    no_pod = {k: v for k, v in api.env.items() if not k.startswith("KUBERNETES_")}
    run = api.bump(api.payload(image=NEW), env=no_pod)
    assert run.code == 4 and "KUBERNETES_SERVICE_HOST is not set" in \
        run.events[0]["error"]["message"]


def test_auto_speaks_to_the_api_where_there_is_no_kubectl(api):
    """A minimal worker image (python3, no kubectl): cluster_access auto takes the API."""
    api.noetl()
    payload = dict(api.payload(image=NEW), cluster_access="auto", kubectl="kubectl-not-here")
    run = api.bump(payload)
    assert run.code == 0, run.stdout + run.stderr
    assert run.summary["cluster_access"] == "api" and run.summary["changed"] == 3
    assert "kubectl not found (kubectl-not-here): speaking to the API" in run.stderr


@pytest.mark.parametrize("named", [{"context": "prod"}, {"kubeconfig": "/etc/k"}])
def test_auto_never_takes_the_api_when_kubectl_is_told_which_cluster(api, named):
    """A context or kubeconfig names a cluster: the pod's own may be another one."""
    api.noetl()
    payload = dict(api.payload(image=NEW), cluster_access="auto", kubectl="kubectl-not-here",
                   **named)
    run = api.bump(payload)
    assert run.code == 4 and run.events[0]["error"]["code"] == "kubectl_missing"
    assert "names a cluster for kubectl" in run.events[0]["error"]["message"]
    assert api.api_requests() == []
