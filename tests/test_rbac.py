"""deploy/rbac.yaml is what the tool needs, and no more: every end-to-end scenario runs
under exactly its rules (conftest binds the tool's token to them), and here each rule in
turn is taken away: some scenario then fails, with a message naming that rule's verb and
resource.  Under every access (kubectl 1.33, 1.37 and the API)."""

import json

import pytest
from conftest import shipped_rules
from fakes import OLD

pytestmark = pytest.mark.e2e

NEW = "ghcr.io/noetl/noetl:v2.35.9"
RULES = shipped_rules()


def rule_id(rule):
    return "%s-%s" % ("+".join(rule["verbs"]), "+".join(rule["resources"]))


def without(rule):
    return [r for r in RULES if r is not rule]


def named(verb, resource):
    return 'cannot %s resource "%s"' % (verb, resource)


def test_the_shipped_rules_are_the_ones_these_tests_take_away():
    assert sorted(rule_id(r) for r in RULES) == sorted([
        "get-deployments+statefulsets+daemonsets", "patch-deployments+statefulsets+daemonsets",
        "list-replicasets", "list-pods", "list-controllerrevisions", "delete-pods",
        "list-nodes"])


def run_failing_rollout(cluster, kind="deployment", **keys):
    """A change whose new pods never start, rolled back after a short time-out."""
    add = {"deployment": cluster.sim.add_deployment, "statefulset": cluster.sim.add_statefulset}
    add[kind]("web", containers=[{"name": "app", "image": OLD}])
    cluster.sim.set_image_behaviour(NEW, {"mode": "hang"})
    workload = "web" if kind == "deployment" else "sts/web"
    return cluster.bump(cluster.payload(image=NEW, deployment=workload, rollback_on_failure=True,
                                        rollout_timeout_seconds=2, fail_fast_seconds=600,
                                        **keys))


@pytest.mark.parametrize("rule", RULES, ids=[rule_id(r) for r in RULES])
def test_without_each_rule_some_scenario_fails_naming_it(cluster, rule):
    cluster.set_rules(without(rule))
    verb, resource = rule["verbs"][0], rule["resources"][0]
    if rule_id(rule).startswith(("get-deployments", "patch-deployments")):
        cluster.sim.add_deployment("web", containers=[{"name": "app", "image": OLD}])
        run = cluster.bump(cluster.payload(image=NEW, deployment="web"))
        err = run.components["web"]["error"]
        assert run.code == 1 and err["code"] == "kubectl_failed"
        assert named(verb, resource) in err["message"]
        assert cluster.image("web", "app") == OLD
    elif rule_id(rule) == "list-replicasets":
        run = run_failing_rollout(cluster)
        err = run.components["web"]["error"]
        assert err["code"] == "rollout_timeout" and run.components["web"]["rolled_back"] is False
        assert "rollback failed: " in err["message"] and named(verb, resource) in err["message"]
    elif rule_id(rule) == "list-pods":
        cluster.sim.add_deployment("web", containers=[{"name": "app", "image": OLD}])
        run = cluster.bump(cluster.payload(image=NEW, deployment="web"))
        assert run.code == 0 and run.components["web"]["status"] == "changed"
        assert run.components["web"]["verified"] is None          # (true with the rule)
        assert "cannot read pods for diagnostics and verification" in run.stderr
        assert named(verb, resource) in run.stderr
    elif rule_id(rule) in ("list-controllerrevisions", "delete-pods"):
        run = run_failing_rollout(cluster, kind="statefulset")
        err = run.components["web"]["error"]
        assert err["code"] == "rollout_timeout" and run.components["web"]["rolled_back"] is False
        assert "rollback failed: " in err["message"] and named(verb, resource) in err["message"]
    elif rule_id(rule) == "list-nodes":
        from fake_registry import FakeRegistry
        cluster.sim.add_deployment("web", containers=[{"name": "app", "image": OLD}])
        index = json.dumps({"schemaVersion": 2, "mediaType":
                            "application/vnd.oci.image.index.v1+json", "manifests": [
                                {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                 "digest": "sha256:" + "a" * 64, "size": 9,
                                 "platform": {"os": "linux", "architecture": "amd64"}}]})
        with FakeRegistry() as registry:
            registry.add_manifest("noetl/noetl", "v2.35.9", body=index,
                                  media_type="application/vnd.oci.image.index.v1+json")
            run = cluster.bump(cluster.payload(
                image=NEW, deployment="web", probe="auto", check_platforms="always",
                registry_mirrors={"ghcr.io": registry.base_url}))
        err = run.components["web"]["error"]
        assert run.code == 1 and err["code"] == "platform_unknown"
        assert named(verb, resource) in err["message"]
        assert cluster.image("web", "app") == OLD
    else:
        pytest.fail("no scenario for rule %s: add one" % rule_id(rule))
