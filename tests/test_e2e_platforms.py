"""The platform check end to end: images pushed to the real registry (distribution
2.8, token auth) with real multi-platform indexes, and the simulated cluster's Nodes
(labels, taints) and pod templates (selectors, affinity, tolerations), under every
cluster access.  A blob redirect to another host is tested with two in-process
registries (distribution cannot redirect to storage here)."""

import json
import uuid

import pytest
from conftest import shipped_rules
from fakes import OLD

pytestmark = [pytest.mark.registry, pytest.mark.e2e]

REPO = "noetl/noetl"
MIXED = [{"name": "w1"}, {"name": "w2", "labels": {"kubernetes.io/arch": "arm64",
                                                    "beta.kubernetes.io/arch": "arm64"}},
         {"name": "w3"}]


def pushed(registry, platforms, **options):
    tag = "p-" + uuid.uuid4().hex[:12]
    digest = registry.push_platform_image(REPO, tag, platforms, **options)
    return "ghcr.io/%s:%s" % (REPO, tag), digest


def payload(cluster, registry, **keys):
    base = {"registry_mirrors": {"ghcr.io": registry.base_url}, "probe": "auto",
            "ghcr_probe_attempts": 2, "ghcr_probe_sleep_seconds": 0}
    base.update(keys)
    return cluster.payload(**base)


def probe_line(run):
    (line,) = run.event("probe")
    return line


def test_an_amd64_only_tag_is_refused_on_a_mixed_cluster_but_not_where_pinned_to_amd64(
        registry, cluster):
    cluster.sim.set_nodes(MIXED)
    cluster.sim.add_deployment("noetl-server", containers=[{"name": "server", "image": OLD}])
    cluster.sim.add_deployment("noetl-worker", containers=[{"name": "worker", "image": OLD}],
                               node_selector={"kubernetes.io/arch": "amd64"})
    image, _ = pushed(registry, ["linux/amd64"])
    for dry_run in (True, False):
        run = cluster.bump(payload(cluster, registry, image=image, dry_run=dry_run,
                                   deployments=["noetl-server", "noetl-worker"]))
        assert run.code == 1, run.stdout + run.stderr
        assert probe_line(run)["platforms"] == ["linux/amd64"]
        server, worker = run.components["noetl-server"], run.components["noetl-worker"]
        assert server["status"] == "error" and server["error"] == {
            "code": "platform_unsupported",
            "message": "image %s provides linux/amd64 only; node w2 is linux/arm64 (1 of 3"
                       " eligible nodes)" % image}
        assert server["platforms_checked"] is True and worker["platforms_checked"] is True
        assert worker["status"] == ("planned" if dry_run else "changed")
        assert "noetl-server: platform_unsupported: image %s provides linux/amd64 only" \
            % image in run.stderr
    assert cluster.image("noetl-server", "server") == OLD          # nothing changed for it
    assert not [r for r in cluster.writes() if r["path"].endswith("/noetl-server")]
    assert cluster.image("noetl-worker", "worker") == image


@pytest.mark.parametrize("options, expected", [
    ({"attestation": True}, ["linux/amd64", "linux/arm64"]),            # docker buildx
    ({"nested": True}, ["linux/amd64", "linux/arm64"]),
    ({"flavour": "docker", "attestation": True}, ["linux/amd64", "linux/arm64"]),
], ids=["buildx-attestations", "nested-index", "docker-list"])
def test_an_index_for_both_architectures_is_accepted(registry, cluster, options, expected):
    cluster.sim.set_nodes(MIXED)
    cluster.noetl()
    image, digest = pushed(registry, ["linux/amd64", "linux/arm64"], **options)
    run = cluster.bump(payload(cluster, registry, image=image))
    assert run.code == 0, run.stdout + run.stderr
    assert probe_line(run)["platforms"] == expected and probe_line(run)["digest"] == digest
    assert {c["status"] for c in run.components.values()} == {"changed"}
    assert {c["platforms_checked"] for c in run.components.values()} == {True}
    # the index in one GET; a nested index costs one more
    gets = 2 if options.get("nested") else 1
    assert "probe %s: provides %s (%d GET%s," % (image, ", ".join(expected), gets,
                                                 "s" if gets > 1 else "") in run.stderr


def test_a_single_manifest_for_arm64_is_read_from_its_config_blob(registry, cluster):
    cluster.noetl()                                        # the simulator's amd64 nodes
    image, _ = pushed(registry, ["linux/arm64"], index=False)
    run = cluster.bump(payload(cluster, registry, image=image))
    assert run.code == 1
    assert probe_line(run)["platforms"] == ["linux/arm64"]
    assert "probe %s: provides linux/arm64 (2 GETs," % image in run.stderr   # manifest, blob
    for comp in run.components.values():
        assert comp["error"]["code"] == "platform_unsupported"
        assert comp["error"]["message"] == (
            "image %s provides linux/arm64 only; node sim-node-1 is linux/amd64 (3 of 3"
            " eligible nodes)" % image)
    assert cluster.writes() == []
    cluster.sim.set_nodes([{"name": "pi-%d" % i, "labels": {"kubernetes.io/arch": "arm64"}}
                           for i in range(2)])
    run = cluster.bump(payload(cluster, registry, image=image))
    assert run.code == 0 and run.summary["changed"] == 3, run.stdout + run.stderr


def test_an_arm_v7_image_runs_on_arm_nodes_whose_variant_is_not_said(registry, cluster):
    cluster.sim.set_nodes([{"name": "pi", "labels": {"kubernetes.io/arch": "arm"}}])
    cluster.sim.add_deployment("noetl-server", containers=[{"name": "server", "image": OLD}])
    image, _ = pushed(registry, ["linux/arm/v7"])
    run = cluster.bump(payload(cluster, registry, image=image, deployment="noetl-server"))
    assert run.code == 0, run.stdout + run.stderr
    assert probe_line(run)["platforms"] == ["linux/arm/v7"]


def test_a_daemonset_is_checked_against_the_nodes_its_template_selects(registry, cluster):
    taint = {"key": "dedicated", "value": "arm", "effect": "NoSchedule"}
    cluster.sim.set_nodes([{"name": "x1"}, {"name": "a1", "taints": [taint], "labels": {
        "kubernetes.io/arch": "arm64"}}])
    cluster.sim.add_daemonset("agent", containers=[{"name": "agent", "image": OLD}])
    cluster.sim.add_daemonset("agent-everywhere", containers=[{"name": "agent", "image": OLD}],
                              tolerations=[{"key": "dedicated", "operator": "Exists"}])
    image, _ = pushed(registry, ["linux/amd64"])
    run = cluster.bump(payload(cluster, registry, image=image,
                               deployments=["ds/agent", "ds/agent-everywhere"]))
    assert run.code == 1, run.stdout + run.stderr
    assert run.components["agent"]["status"] == "changed"          # the tainted node: not its
    err = run.components["agent-everywhere"]["error"]
    assert err["code"] == "platform_unsupported" and "node a1 is linux/arm64 (1 of 2" in \
        err["message"]


def test_nodes_that_cannot_be_read(registry, cluster):
    """Without the ClusterRole: under auto a note names the missing permission and the
    change goes on unchecked; under always the workload is not changed."""
    cluster.sim.set_nodes(MIXED)
    cluster.sim.add_deployment("noetl-server", containers=[{"name": "server", "image": OLD}])
    cluster.set_rules([r for r in shipped_rules() if r["namespace"] is not None])
    image, _ = pushed(registry, ["linux/amd64"])
    run = cluster.bump(payload(cluster, registry, image=image, deployment="noetl-server",
                               check_platforms="always"))
    err = run.components["noetl-server"]["error"]
    assert run.code == 1 and err["code"] == "platform_unknown"
    assert 'cannot list resource "nodes" in API group "" at the cluster scope' in \
        err["message"]
    assert "README.md, section RBAC" in err["message"]
    assert cluster.image("noetl-server", "server") == OLD
    run = cluster.bump(payload(cluster, registry, image=image, deployment="noetl-server"))
    assert run.code == 0, run.stdout + run.stderr
    comp = run.components["noetl-server"]
    assert comp["status"] == "changed" and comp["platforms_checked"] is False
    assert "platform check skipped: the nodes cannot be read" in run.stderr
    assert 'cannot list resource "nodes"' in run.stderr


def test_never_reads_no_platform_and_no_node(registry, cluster):
    cluster.sim.set_nodes(MIXED)
    cluster.noetl()
    image, _ = pushed(registry, ["linux/amd64"])
    run = cluster.bump(payload(cluster, registry, image=image, check_platforms="never"))
    assert run.code == 0 and probe_line(run)["platforms"] is None
    assert {c["platforms_checked"] for c in run.components.values()} == {False}
    assert not [r for r in cluster.api_requests() if r["path"].endswith("/nodes")]
    assert "provides" not in run.stderr


def test_images_that_are_not_probed_are_not_checked(cluster):
    cluster.sim.set_nodes(MIXED)
    cluster.noetl(image="noetl:old")
    run = cluster.bump(cluster.payload(image="noetl:dev", probe="auto"))
    assert run.code == 0, run.stdout + run.stderr
    assert probe_line(run)["status"] == "skipped" and probe_line(run)["platforms"] is None
    assert {c["platforms_checked"] for c in run.components.values()} == {False}


def test_a_blob_redirect_to_storage_never_carries_authorization(env):
    """A single manifest's config blob answered by a redirect to another host (ECR and
    S3, GCS): followed without the registry's Authorization (S3 refuses a request
    with two auth mechanisms)."""
    from fake_registry import FakeRegistry, Resp
    from fakes import FakeKubectl, run_cli
    config = json.dumps({"os": "linux", "architecture": "arm64"}).encode()
    blob = "sha256:" + "c" * 64
    with FakeRegistry(auth=True) as registry, FakeRegistry() as storage:
        manifest = json.dumps({"schemaVersion": 2, "mediaType":
                               "application/vnd.oci.image.manifest.v1+json",
                               "config": {"digest": blob, "size": len(config),
                                          "mediaType": "application/vnd.oci.image.config.v1+json"},
                               "layers": []})
        registry.add_manifest(REPO, "v9", media_type="application/vnd.oci.image.manifest.v1+json",
                              body=manifest)
        registry.script("/v2/%s/blobs/%s" % (REPO, blob), [Resp(
            307, headers={"Location": storage.base_url + "/bucket/blob?X-Amz-Signature=s1g"})],
            require_auth=True)
        storage.script("/bucket/blob", [Resp(200, body=config)])
        run = run_cli(["--payload", json.dumps({
            "image": "ghcr.io/%s:v9" % REPO, "registry_mirrors": {"ghcr.io": registry.base_url},
            "probe": "always", "deployment": "noetl-server", "dry_run": True})],
            runner=FakeKubectl(), env=env)
        blob_requests = [r for r in registry.requests if "/blobs/" in r["path"]]
        stored = list(storage.requests)
    assert probe_line(run)["platforms"] == ["linux/arm64"], run.stderr
    assert [r["method"] for r in blob_requests] == ["GET"]
    assert blob_requests[0]["headers"].get("Authorization", "").startswith("Bearer ")
    assert len(stored) == 1 and stored[0]["method"] == "GET"
    assert stored[0]["raw_query"] == "X-Amz-Signature=s1g"
    assert "Authorization" not in stored[0]["headers"]
    # the FakeKubectl's nodes cannot be read: the dry run goes on, unchecked
    assert run.components["noetl-server"]["status"] == "planned"
