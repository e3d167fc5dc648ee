"""End to end: the tool drives the real kubectl against the simulated API server.

Every test runs once per kubectl (the machine's, exec'ing 1.33, and 1.37 from PyPI).
The request log of the simulator shows what reached the API.
"""

import time

import pytest
from fakes import IMAGE, OLD

pytestmark = pytest.mark.e2e

NEW = IMAGE
DEFAULTS = ["noetl-server", "noetl-worker", "ollama-bridge"]


def test_worked_example_all_defaults(cluster):
    cluster.noetl()
    run = cluster.bump(cluster.payload(image=NEW))
    assert run.code == 0, run.stdout + run.stderr
    assert [e["event"] for e in run.events] == ["probe"] + ["component"] * 3 + ["summary"]
    assert list(run.components) == DEFAULTS
    for name, comp in run.components.items():
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
                                       rollout_timeout_seconds=2, fail_fast_seconds=600))
    assert run.code == 1
    assert run.components["noetl-server"]["error"]["code"] == "rollout_timeout"
    assert time.monotonic() - started < 20


def test_progress_deadline(cluster):
    cluster.sim.add_deployment("noetl-server", containers=[{"name": "server", "image": OLD}],
                               progress_deadline_seconds=2)
    cluster.sim.set_image_behaviour(NEW, {"mode": "hang"})
    run = cluster.bump(cluster.payload(image=NEW, deployment="noetl-server",
                                       rollout_timeout_seconds=60, fail_fast_seconds=600))
    err = run.components["noetl-server"]["error"]
    assert run.code == 1 and err["code"] == "rollout_failed"
    assert "ProgressDeadlineExceeded" in err["message"]


def test_context_guard(cluster):
    cluster.noetl()
    run = cluster.bump(cluster.payload(image=NEW, expected_kube_context="kind-noetl"))
    assert run.code == 4 and run.events[0]["error"]["code"] == "context_mismatch"
    assert cluster.api_requests() == []
    run = cluster.bump(cluster.payload(image=NEW, expected_kube_context="sim"))
    assert run.code == 0


def test_context_from_the_payload(cluster):
    cluster.noetl()
    run = cluster.bump(cluster.payload(image=NEW, context="kind-noetl",
                                       expected_kube_context="kind-noetl"))
    assert run.code == 0, run.stdout + run.stderr
    assert run.summary["changed"] == 3
