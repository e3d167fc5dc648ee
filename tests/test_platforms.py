"""The platform check's pure parts, as tables: what an image index provides (rows from
the OCI image-index spec and BuildKit's indexes), containerd's normalization, and "can
a pod of this template land on this node" (rows from the Kubernetes scheduling docs:
nodeSelector, node affinity, taints and tolerations)."""

import pytest

from bump_image import (
    index_entries,
    node_platform,
    normalize_platform,
    platform_refusal,
    platform_text,
    pod_fits_node,
    provides,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


@pytest.mark.parametrize("given, normalized", [
    (("linux", "amd64", None), "linux/amd64"),
    (("Linux", "x86_64", None), "linux/amd64"),
    (("linux", "x86-64", "v1"), "linux/amd64"),
    (("linux", "aarch64", None), "linux/arm64"),
    (("linux", "arm64", "v8"), "linux/arm64"),          # v8 is arm64's default: no variant
    (("linux", "arm64", "8"), "linux/arm64"),
    (("linux", "arm64", "v9.0"), "linux/arm64/v9"),
    (("linux", "armhf", None), "linux/arm/v7"),
    (("linux", "armel", None), "linux/arm/v6"),
    (("linux", "arm", None), "linux/arm/v7"),           # a bare arm is v7
    (("linux", "arm", "6"), "linux/arm/v6"),
    (("linux", "i386", "x"), "linux/386"),
    (("windows", "amd64", None), "windows/amd64"),
    (("macos", "arm64", None), "darwin/arm64"),
    (("linux", "ppc64le", None), "linux/ppc64le"),
    (("linux", "s390x", None), "linux/s390x"),
])
def test_normalize_platform(given, normalized):
    assert platform_text(normalize_platform(*given)) == normalized


def entry(digest, os_name="linux", arch="amd64", variant=None, media=OCI_MANIFEST,
          annotations=None):
    platform = {"os": os_name, "architecture": arch}
    if variant:
        platform["variant"] = variant
    out = {"mediaType": media, "digest": digest, "size": 7, "platform": platform}
    if annotations:
        out["annotations"] = annotations
    return out


ATTESTATION = {"vnd.docker.reference.type": "attestation-manifest",
               "vnd.docker.reference.digest": D1}


@pytest.mark.parametrize("manifests, platforms, nested", [
    # the OCI image-index spec's example: ppc64le and amd64 (with an os.features entry)
    ([entry(D1, arch="ppc64le"), dict(entry(D2), platform={
        "architecture": "amd64", "os": "linux", "os.features": ["sse4"]})],
     ["linux/ppc64le", "linux/amd64"], []),
    # docker buildx: one attestation manifest per platform, unknown/unknown
    ([entry(D1), entry(D2, "unknown", "unknown", annotations=ATTESTATION)],
     ["linux/amd64"], []),
    ([entry(D1), entry(D2, arch="arm64", variant="v8"),
      entry(D3, "unknown", "unknown", annotations=ATTESTATION)],
     ["linux/amd64", "linux/arm64"], []),
    # an attestation entry recognized by its annotation alone
    ([entry(D1), entry(D2, arch="arm64", annotations=ATTESTATION)], ["linux/amd64"], []),
    # a Docker manifest list's entries
    ([entry(D1, media=DOCKER_MANIFEST), entry(D2, arch="arm", variant="v7",
                                              media=DOCKER_MANIFEST)],
     ["linux/amd64", "linux/arm/v7"], []),
    # unknown media types (an artifact, a signature) are not platforms
    ([entry(D1), entry(D2, arch="arm64", media="application/vnd.example.sbom+json")],
     ["linux/amd64"], []),
    # an index inside the index: read it too
    ([entry(D1, media=OCI_INDEX)], [], [D1]),
    # an entry without a platform names none; the same platform twice counts once
    ([{"mediaType": OCI_MANIFEST, "digest": D1}, entry(D2), entry(D3)], ["linux/amd64"], []),
    ([], [], []),
])
def test_index_entries(manifests, platforms, nested):
    found, deeper = index_entries({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                   "manifests": manifests})
    assert [platform_text(p) for p in found] == platforms
    assert deeper == nested


AMD64, ARM64 = ("linux", "amd64", None), ("linux", "arm64", None)
ARMV7, ARMV6 = ("linux", "arm", "v7"), ("linux", "arm", "v6")


@pytest.mark.parametrize("image, node, ok", [
    ([AMD64], AMD64, True),
    ([AMD64], ARM64, False),
    ([AMD64, ARM64], ARM64, True),
    ([ARMV7], ("linux", "arm", None), True),            # a variant missing on one side
    ([("linux", "arm", None)], ARMV7, True),
    ([ARMV7], ARMV6, False),
    ([AMD64], ("windows", "amd64", None), False),
    ([], AMD64, False),
])
def test_provides(image, node, ok):
    assert provides(image, node) is ok


def node(name="n1", arch="amd64", os_name="linux", labels=None, taints=None,
         unschedulable=False):
    spec = {"taints": taints} if taints else {}
    if unschedulable:
        spec["unschedulable"] = True
    return {"kind": "Node", "metadata": {"name": name, "labels": dict(
        {"kubernetes.io/os": os_name, "kubernetes.io/arch": arch,
         "kubernetes.io/hostname": name}, **(labels or {}))}, "spec": spec}


def test_node_platform_from_labels_then_beta_labels_then_node_info():
    assert node_platform(node(arch="arm64")) == ARM64
    beta = {"kind": "Node", "metadata": {"name": "b", "labels": {
        "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "aarch64"}}}
    assert node_platform(beta) == ARM64
    bare = {"kind": "Node", "metadata": {"name": "c"}, "status": {"nodeInfo": {
        "operatingSystem": "linux", "architecture": "amd64"}}}
    assert node_platform(bare) == AMD64


def affinity(*terms):
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": list(terms)}}}


def expr(key, op, *values):
    out = {"key": key, "operator": op}
    if values:
        out["values"] = list(values)
    return out


GPU = node(labels={"gpu": "true", "zone": "a", "cores": "8"})
TAINTED = node(taints=[{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}])
NOEXEC = node(taints=[{"key": "dedicated", "value": "infra", "effect": "NoExecute"}])
PREFER = node(taints=[{"key": "dedicated", "value": "infra", "effect": "PreferNoSchedule"}])


@pytest.mark.parametrize("spec, the_node, daemonset, fits", [
    ({}, GPU, False, True),
    # nodeSelector: every label equal
    ({"nodeSelector": {"gpu": "true"}}, GPU, False, True),
    ({"nodeSelector": {"gpu": "true", "zone": "b"}}, GPU, False, False),
    ({"nodeSelector": {"kubernetes.io/arch": "amd64"}}, GPU, False, True),
    # required node affinity: In, NotIn, Exists, DoesNotExist, Gt, Lt
    ({"affinity": affinity({"matchExpressions": [expr("zone", "In", "a", "b")]})}, GPU, False,
     True),
    ({"affinity": affinity({"matchExpressions": [expr("zone", "In", "c")]})}, GPU, False, False),
    ({"affinity": affinity({"matchExpressions": [expr("zone", "NotIn", "c")]})}, GPU, False,
     True),
    ({"affinity": affinity({"matchExpressions": [expr("rack", "NotIn", "c")]})}, GPU, False,
     True),                                             # NotIn holds without the label
    ({"affinity": affinity({"matchExpressions": [expr("gpu", "Exists")]})}, GPU, False, True),
    ({"affinity": affinity({"matchExpressions": [expr("gpu", "DoesNotExist")]})}, GPU, False,
     False),
    ({"affinity": affinity({"matchExpressions": [expr("cores", "Gt", "4")]})}, GPU, False, True),
    ({"affinity": affinity({"matchExpressions": [expr("cores", "Lt", "4")]})}, GPU, False,
     False),
    ({"affinity": affinity({"matchExpressions": [expr("zone", "Gt", "4")]})}, GPU, False,
     False),                                            # Gt on a value that is no number
    # expressions ANDed within a term; terms ORed
    ({"affinity": affinity({"matchExpressions": [expr("gpu", "Exists"),
                                                 expr("zone", "In", "b")]})}, GPU, False, False),
    ({"affinity": affinity({"matchExpressions": [expr("zone", "In", "b")]},
                           {"matchExpressions": [expr("gpu", "Exists")]})}, GPU, False, True),
    # matchFields on the node's name (what the DaemonSet controller writes)
    ({"affinity": affinity({"matchFields": [expr("metadata.name", "In", "n1")]})}, GPU, False,
     True),
    ({"affinity": affinity({"matchFields": [expr("metadata.name", "In", "n2")]})}, GPU, False,
     False),
    # an empty term selects no node; no terms at all: no requirement
    ({"affinity": affinity({})}, GPU, False, False),
    ({"affinity": {"nodeAffinity": {}}}, GPU, False, True),
    # taints: NoSchedule and NoExecute keep pods off unless tolerated; Prefer does not
    ({}, TAINTED, False, False),
    ({}, NOEXEC, False, False),
    ({}, PREFER, False, True),
    ({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "infra",
                       "effect": "NoSchedule"}]}, TAINTED, False, True),
    ({"tolerations": [{"key": "dedicated", "value": "infra"}]}, TAINTED, False, True),
    ({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "other"}]}, TAINTED,
     False, False),
    ({"tolerations": [{"key": "dedicated", "operator": "Exists"}]}, NOEXEC, False, True),
    ({"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]},
     NOEXEC, False, False),                             # another effect
    ({"tolerations": [{"operator": "Exists"}]}, NOEXEC, False, True),   # tolerates all
    # every pod tolerates not-ready/unreachable NoExecute (DefaultTolerationSeconds)
    ({}, node(taints=[{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]), False,
     True),
    # a cordoned node takes no new pod but a DaemonSet's
    ({}, node(unschedulable=True), False, False),
    ({}, node(unschedulable=True), True, True),
    ({}, node(taints=[{"key": "node.kubernetes.io/disk-pressure", "effect": "NoSchedule"}]),
     True, True),
])
def test_pod_fits_node(spec, the_node, daemonset, fits):
    assert pod_fits_node(spec, the_node, daemonset)[0] is fits


def template(**spec):
    return {"spec": dict({"containers": [{"name": "app", "image": "x"}]}, **spec)}


NODES = [node("w1"), node("w2", "arm64"), node("w3"), node("w4", "arm64"), node("w5")]


@pytest.mark.parametrize("platforms, tmpl, nodes, refusal", [
    ([AMD64], template(), NODES,
     "image ghcr.io/noetl/noetl:v2.36.0 provides linux/amd64 only; node w2 is linux/arm64"
     " (2 of 5 eligible nodes)"),
    ([AMD64, ARM64], template(), NODES, None),
    ([AMD64], template(nodeSelector={"kubernetes.io/arch": "amd64"}), NODES, None),
    ([ARM64], template(nodeSelector={"kubernetes.io/arch": "amd64"}), NODES,
     "image ghcr.io/noetl/noetl:v2.36.0 provides linux/arm64 only; node w1 is linux/amd64"
     " (3 of 3 eligible nodes)"),
    ([], template(), NODES[:1],
     "image ghcr.io/noetl/noetl:v2.36.0 provides no platform; node w1 is linux/amd64"
     " (1 of 1 eligible node)"),
    ([ARMV7], template(), NODES,
     "image ghcr.io/noetl/noetl:v2.36.0 provides linux/arm/v7 only; node w1 is linux/amd64"
     " (5 of 5 eligible nodes; missing: linux/amd64, linux/arm64)"),
    ([AMD64], template(), [node("w1"), node("w2", "arm64", taints=[
        {"key": "arch", "value": "arm64", "effect": "NoSchedule"}])], None),
    ([AMD64], template(), [], None),                   # no node to run on: nothing to compare
])
def test_platform_refusal(platforms, tmpl, nodes, refusal):
    assert platform_refusal("ghcr.io/noetl/noetl:v2.36.0", platforms, tmpl, nodes) == refusal
