"""The NoETL playbook, run by NoETL itself (PyPI ``noetl``, its local runtime), against
the simulated cluster and the real registry; and the distributed runtime's rules as
far as they run here: the playbook's command rendered by real Jinja2 and run by
``/bin/sh -c`` (dash) with only PATH and the Kubernetes service variables.

The playbook pastes workload values into a shell command without quoting (NoETL
does): the injection matrix proves that no value makes the shell run anything.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need
from fakes import OLD

pytestmark = pytest.mark.noetl

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOK = "playbooks/bump_image.yaml"
REPO = "noetl/noetl"
TAG = "v2.35.9"
IMAGE = "ghcr.io/%s:%s" % (REPO, TAG)
DEFAULTS = ["noetl-server", "noetl-worker", "ollama-bridge"]


def noetl_binary():
    beside = os.path.join(os.path.dirname(sys.executable), "noetl")
    return beside if os.path.exists(beside) else (shutil.which("noetl") or beside)


@pytest.fixture(scope="module")
def pushed(registry):
    """The release tag, pushed to the real registry once for this module."""
    registry.push_image(REPO, TAG)
    return registry


@pytest.fixture
def noetl(cluster, pushed, tmp_path):
    binary = need(noetl_binary(), "noetl (pip install noetl)")
    return NoETL(binary, cluster, pushed, tmp_path)


class NoETL:
    """``noetl run playbooks/bump_image.yaml -r local`` in the project's root."""

    def __init__(self, binary, cluster, registry, tmp_path):
        self.binary, self.cluster, self.registry = binary, cluster, registry
        self.logs = tmp_path / "logs"
        self.env = dict(cluster.env, RUST_BACKTRACE="0", BUMP_IMAGE_LOG_DIR=str(self.logs))
        self.env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + self.env["PATH"]

    def payload(self, **keys):
        """The seed's payload keys plus what aims them at the test cluster and registry."""
        base = {"kubeconfig": self.cluster.kubeconfig, "kubectl": self.cluster.kubectl,
                "registry_mirrors": {"ghcr.io": self.registry.base_url}}
        base.update(keys)
        return base

    def run(self, payload):
        done = subprocess.run([self.binary, "run", PLAYBOOK, "-r", "local", "--payload",
                               json.dumps(payload)], cwd=str(ROOT), env=self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=180)
        done.stdout, done.stderr = done.stdout.decode(), done.stderr.decode()
        return done

    def step_result(self, payload):
        """The playbook's step result, through ``noetl.run()`` (NoETL's Python API)."""
        code = ("import json, noetl; print(json.dumps(noetl.run(%r, variables=json.loads(%r))"
                "['step_results']['start']))" % (PLAYBOOK, json.dumps(payload)))
        done = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), env=self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=180)
        assert done.returncode == 0, done.stderr.decode()
        return json.loads(json.loads(done.stdout))

    def lines(self):
        """The JSON lines the tool kept (README: ``last.jsonl`` in the log folder)."""
        text = (self.logs / "last.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines()]


def test_worked_example_1_all_defaults_then_the_rerun(noetl):
    noetl.cluster.noetl()
    done = noetl.run(noetl.payload(image=IMAGE))
    assert done.returncode == 0, done.stderr
    events = noetl.lines()
    assert [e["event"] for e in events] == ["probe"] + ["component"] * 3 + ["summary"]
    assert events[0]["status"] == "available" and events[0]["digest"].startswith("sha256:")
    assert [(e["component"], e["status"]) for e in events[1:4]] == [
        (name, "changed") for name in DEFAULTS]
    assert noetl.cluster.image("noetl-worker", "wait-for-api") == IMAGE
    assert (noetl.logs / "last.log").read_text().startswith("bump_image: ")
    noetl.cluster.sim.clear_requests()
    summary = noetl.step_result(noetl.payload(image=IMAGE))   # the rerun, through noetl.run()
    assert summary["event"] == "summary" and summary["status"] == "ok"
    assert summary["unchanged"] == 3 and summary["changed"] == 0
    assert noetl.cluster.writes() == []


def test_worked_example_2_one_deployment_with_the_probe_keys(noetl):
    noetl.cluster.noetl()
    done = noetl.run(noetl.payload(image=IMAGE, deployment="noetl-worker",
                                   ghcr_probe_attempts=3, ghcr_probe_sleep_seconds=0.5))
    assert done.returncode == 0, done.stderr
    events = noetl.lines()
    assert [e["component"] for e in events if e["event"] == "component"] == ["noetl-worker"]
    assert events[-1]["changed"] == 1
    assert noetl.cluster.image("noetl-server", "server") == OLD


def test_an_unpublished_tag_fails_with_exit_code_3_and_changes_nothing(noetl):
    noetl.cluster.noetl()
    done = noetl.run(noetl.payload(image="ghcr.io/%s:v9.9.9" % REPO, ghcr_probe_attempts=2,
                                   ghcr_probe_sleep_seconds=0.2))
    assert done.returncode == 1
    assert "Command failed with exit code: Some(3)" in done.stderr
    events = noetl.lines()
    assert [e["event"] for e in events] == ["probe", "summary"]
    assert events[0]["error"]["code"] == "manifest_unknown" and events[-1]["exit_code"] == 3
    assert noetl.cluster.api_requests() == []


def test_the_playbook_form(noetl):
    noetl.cluster.noetl()
    done = noetl.run(noetl.payload(image_repository="ghcr.io/" + REPO, target_tag=TAG,
                                   components=["noetl-server", "ollama-bridge"]))
    assert done.returncode == 0, done.stderr
    events = noetl.lines()
    assert [e["component"] for e in events if e["event"] == "component"] == [
        "noetl-server", "ollama-bridge"]
    assert events[-1]["image"] == IMAGE


def test_a_bad_payload_is_exit_2_and_kept_for_the_operator(noetl):
    noetl.cluster.noetl()
    done = noetl.run(noetl.payload(image=IMAGE, ghcr_probe_attempts="twelve"))
    assert "Some(2)" in done.stderr
    (event,) = noetl.lines()
    assert event["event"] == "error" and "ghcr_probe_attempts" in event["error"]["message"]
    assert noetl.cluster.api_requests() == []


# -- no workload value can run a command ---------------------------------------------

STRING_KEYS = ["image", "image_repository", "target_tag", "namespace", "deployment",
               "container", "probe", "expected_kube_context", "context", "kubeconfig",
               "kubectl", "script"]
HOSTILE = [
    "'; touch {m}; '",
    '"; touch {m}; "',
    "$(touch {m})",
    "`touch {m}`",
    "x; touch {m}",
    "x && touch {m}",
    "x\ntouch {m}",
    "x\nBUMP_IMAGE_PAYLOAD\ntouch {m}\n",
    "x\nBUMP_IMAGE_PAYLOAD\ntouch {m}",
    "{{{{ workload.namespace }}}}$(touch {m})",
]


@pytest.mark.parametrize("key", STRING_KEYS)
def test_no_workload_value_runs_a_command(noetl, tmp_path, key):
    """Every string key x every hostile value (quotes, $(), backticks, ;, &&, a line
    break, a line break with the here-document's delimiter): the marker file is never
    created and nothing reaches the cluster."""
    noetl.cluster.noetl()
    for i, pattern in enumerate(HOSTILE):
        marker = tmp_path / ("pwned-%s-%d" % (key, i))
        value = pattern.format(m=marker)
        payload = noetl.payload(image=IMAGE, probe="never")
        if key == "image_repository":
            payload.update(image=None, image_repository=value, target_tag=TAG)
        else:
            payload[key] = value
        done = noetl.run({k: v for k, v in payload.items() if v is not None})
        assert not marker.exists(), (key, value, done.stderr)
        assert done.returncode != 0, (key, value)
        assert noetl.cluster.writes() == [], (key, value)
    assert not list(tmp_path.glob("pwned-*"))


@pytest.mark.parametrize("key, value", [
    ("components", ["$(touch {m})", "x; touch {m}"]),
    ("registry_mirrors", {"ghcr.io": "http://127.0.0.1:1/$(touch {m})"}),
    ("images", {"noetl-server": "`touch {m}`"}),
    ("ghcr_probe_attempts", "3; touch {m}"),
    ("dry_run", "true && touch {m}"),
])
def test_no_list_object_or_number_value_runs_a_command(noetl, tmp_path, key, value):
    noetl.cluster.noetl()
    marker = tmp_path / "pwned"
    value = json.loads(json.dumps(value).replace("{m}", str(marker)))
    done = noetl.run(noetl.payload(image=IMAGE, probe="never", **{key: value}))
    assert not marker.exists(), done.stderr
    assert noetl.cluster.writes() == []


# -- the distributed runtime's rules: Jinja2 rendering, /bin/sh, a bare environment -----

def rendered_commands(workload):
    """The playbook's shell commands as the distributed runtime renders them: Jinja2
    over the workload (the playbook's defaults, overridden by the payload)."""
    jinja2 = pytest.importorskip("jinja2")
    yaml = pytest.importorskip("yaml")
    book = yaml.safe_load((ROOT / PLAYBOOK).read_text())
    values = dict(book["workload"], **workload)
    cmds = book["workflow"][0]["tool"]["cmds"]
    return [jinja2.Template(cmd).render(workload=values) for cmd in cmds]


def run_like_the_worker(cluster, commands, cwd, extra_env=None):
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin",
           "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    env.update(extra_env or {})
    results = []
    for command in commands:
        done = subprocess.run(["/bin/sh", "-c", command], cwd=str(cwd), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=180)
        results.append(done)
    return results


def test_distributed_rules_jinja2_and_dash_give_the_same_results(cluster, pushed, tmp_path):
    cluster.noetl()
    logs = tmp_path / "logs"
    workload = {"script": str(ROOT / "bump_image.py"), "image": IMAGE,
                "kubeconfig": cluster.kubeconfig, "kubectl": cluster.kubectl,
                "registry_mirrors": {"ghcr.io": pushed.base_url}, "ghcr_probe_attempts": 3,
                "dry_run": False, "components": ["noetl-server", "noetl-worker"]}
    commands = rendered_commands(workload)
    assert "{'ghcr.io': " in commands[0] and "dry_run=False" in commands[0]
    work = tmp_path / "work"
    work.mkdir()
    (done,) = run_like_the_worker(cluster, commands, work, {"BUMP_IMAGE_LOG_DIR": str(logs)})
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)               # the step's stdout: the summary line
    assert summary["event"] == "summary" and summary["changed"] == 2
    assert cluster.image("noetl-worker", "worker") == IMAGE
    assert list(work.iterdir()) == []                # no .kube cache left in the work folder
    (done,) = run_like_the_worker(cluster, commands, work, {"BUMP_IMAGE_LOG_DIR": str(logs)})
    assert json.loads(done.stdout)["unchanged"] == 2


@pytest.mark.parametrize("pattern", HOSTILE)
def test_distributed_rules_no_value_runs_a_command(cluster, tmp_path, pattern):
    cluster.noetl()
    marker = tmp_path / "pwned"
    value = pattern.format(m=marker)
    for key in ("image", "namespace", "kubeconfig", "script"):
        workload = {"script": str(ROOT / "bump_image.py"), "image": IMAGE, "probe": "never",
                    "kubeconfig": cluster.kubeconfig, "kubectl": cluster.kubectl, key: value}
        (done,) = run_like_the_worker(cluster, rendered_commands(workload), tmp_path)
        assert done.returncode != 0, (key, value)
        assert not marker.exists(), (key, value, done.stderr)
    assert cluster.writes() == []
