"""The NoETL playbook (``playbooks/bump_image.yaml``) under NoETL's two runtimes, against
the simulated cluster and the real registry:

- the local runtime, PyPI ``noetl`` 5.3.2 itself (``noetl run FILE -r local``): one text
  pass that pastes ``{{ workload.x }}``, each ``cmds`` element run by ``bash -c``;
- the production distributed runtime (server 3.83 + worker 5.120 + noetl-tools, minijinja
  2.24), emulated from its source by ``noetl_production.py``: the server's minijinja pass
  and re-typing, the worker's second template pass, ShellConfig, ``busybox sh -c`` in an
  image-like environment (no bash, no kubectl, python3), the result, the ``next`` arcs
  and the execution's outcome.  It has no kubectl: it uses the API access.

NoETL pastes workload values into the command without quoting: the injection matrices
prove, for every string key and every shell or template pattern, that no value runs or
is evaluated, and that each reaches the tool unchanged or the step fails closed.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REQUIRE_REAL, Cluster, need
from fakes import OLD

import bump_image

pytestmark = pytest.mark.noetl

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOK = "playbooks/bump_image.yaml"
SCRIPT = str(ROOT / "bump_image.py")
REPO = "noetl/noetl"
TAG = "v2.35.9"
IMAGE = "ghcr.io/%s:%s" % (REPO, TAG)
BROKEN = "ghcr.io/%s:%s-broken" % (REPO, TAG)     # never pushed; its pods cannot pull
DEFAULTS = ["noetl-server", "noetl-worker", "ollama-bridge"]


def emulator():
    """``noetl_production.Production`` (it needs minijinja and pyyaml: tox -e noetl has
    them; the other envs deselect these tests but still collect this file)."""
    try:
        from noetl_production import Production
    except ImportError as err:
        if REQUIRE_REAL:
            pytest.fail("the production emulator cannot load: %s" % err)
        pytest.skip("the production emulator cannot load: %s" % err)
    need(shutil.which("busybox") or "/usr/bin/busybox", "busybox (the worker's sh)")
    return Production


def noetl_binary():
    beside = os.path.join(os.path.dirname(sys.executable), "noetl")
    return beside if os.path.exists(beside) else (shutil.which("noetl") or beside)


@pytest.fixture(scope="module")
def pushed(registry):
    """The release tag, pushed to the real registry once for this module."""
    registry.push_image(REPO, TAG)
    return registry


@pytest.fixture
def api(sim_server, tmp_path, env):
    """The simulated cluster through the API access only (what the worker image has)."""
    sim_server.reset()
    sim_server.set_server_version("1.34.2")
    return Cluster(sim_server, "api", None, "1.34.2", tmp_path, env)


@pytest.fixture
def recorder(tmp_path):
    """A stand-in kubectl that records its arguments (NUL-separated) and fails: the
    evidence that a kubectl-only value (kubeconfig, context) reached it unchanged."""
    path = tmp_path / "kubectl-recorder"
    path.write_text('#!%s sh\nprintf "%%s\\0" "$@" >> "$0.argv"\nexit 1\n' % need(
        shutil.which("busybox") or "/usr/bin/busybox", "busybox"))
    path.chmod(0o755)
    return path


def recorded(recorder):
    argv = Path(str(recorder) + ".argv")
    return argv.read_text().split("\0") if argv.exists() else []


# == the local runtime: PyPI noetl 5.3.2, for real ========================================

@pytest.fixture
def noetl(cluster, pushed, tmp_path):
    return NoETL(need(noetl_binary(), "noetl (pip install noetl)"), cluster, pushed, tmp_path)


@pytest.fixture
def local(api, tmp_path):
    """``noetl run`` against the API access, without the registry (the matrices)."""
    return NoETL(need(noetl_binary(), "noetl (pip install noetl)"), api, None, tmp_path)


class NoETL:
    """``noetl run playbooks/bump_image.yaml -r local`` in the project's root."""

    def __init__(self, binary, cluster, registry, tmp_path):
        self.binary, self.cluster, self.registry = binary, cluster, registry
        self.tmp_path = tmp_path
        self.logs = tmp_path / "logs"
        self.env = dict(cluster.env, RUST_BACKTRACE="0", BUMP_IMAGE_LOG_DIR=str(self.logs),
                        TMPDIR=str(tmp_path), SHELL="/bin/sh")
        self.env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + self.env["PATH"]

    def payload(self, **keys):
        """The seed's payload keys plus what aims them at the test cluster and registry."""
        if self.cluster.api:
            base = {"cluster_access": "api"}
        else:
            base = {"cluster_access": "kubectl", "kubeconfig": self.cluster.kubeconfig,
                    "kubectl": self.cluster.kubectl}
        if self.registry is not None:
            base["registry_mirrors"] = {"ghcr.io": self.registry.base_url}
        base.update(keys)
        return {k: v for k, v in base.items() if v is not None}

    def argv(self, payload):
        return [self.binary, "run", PLAYBOOK, "-r", "local", "--payload", json.dumps(payload)]

    def run(self, payload):
        """Without a controlling terminal (as under CI): the tool's stderr is dropped."""
        done = subprocess.run(self.argv(payload), cwd=str(ROOT), env=self.env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=180, start_new_session=True)
        done.stdout, done.stderr = done.stdout.decode(), done.stderr.decode()
        return done

    def run_in_terminal(self, payload):
        """In a terminal of its own (util-linux ``script``): ``done.capture`` is what an
        operator would see there."""
        capture = self.tmp_path / "terminal.txt"
        command = " ".join(shlex.quote(a) for a in self.argv(payload))
        done = subprocess.run([need(shutil.which("script") or "/usr/bin/script", "script"),
                               "-qec", command, str(capture)], cwd=str(ROOT), env=self.env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=180, start_new_session=True)
        text = capture.read_text(errors="replace").replace("\r\n", "\n")
        if text.startswith("Script started"):
            text = text.split("\n", 1)[1]
        done.capture = text[:text.rfind("\nScript done on ")] if "\nScript done on " in text \
            else text
        done.stdout = done.stdout.decode(errors="replace")
        return done

    def step_result(self, payload):
        """The playbook's step result, through ``noetl.run()`` (NoETL's Python API)."""
        code = ("import json, noetl; r = noetl.run(%r, variables=json.loads(%r)); "
                "print(json.dumps([r['step_results']['start'], r['executed_steps']]))"
                % (PLAYBOOK, json.dumps(payload)))
        done = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), env=self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=180,
                              start_new_session=True)
        assert done.returncode == 0, done.stderr.decode()
        result, executed = json.loads(done.stdout)
        return json.loads(result), executed

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
    assert events[-1]["cluster_access"] == ("api" if noetl.cluster.api else "kubectl")
    assert noetl.cluster.image("noetl-worker", "wait-for-api") == IMAGE
    assert (noetl.logs / "last.log").read_text().startswith("bump_image: ")
    noetl.cluster.sim.clear_requests()
    summary, executed = noetl.step_result(noetl.payload(image=IMAGE))   # the rerun
    assert summary["event"] == "summary" and summary["status"] == "ok"
    assert summary["unchanged"] == 3 and summary["changed"] == 0
    assert noetl.cluster.writes() == []
    # the next step (bump_failed or end) has only `command`: the local runtime skips it
    assert executed == ["start"]


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
    assert events[0]["attempts"] == 2
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


@pytest.mark.kubectl("api")
def test_a_failed_bump_is_told_on_the_terminal(api, pushed, tmp_path):
    """``noetl run`` in a terminal: NoETL says only ``Some(1)``, the tool's progress and
    final report (what failed, its code and message, what stays changed) are there."""
    noetl = NoETL(need(noetl_binary(), "noetl"), api, pushed, tmp_path)
    api.noetl()
    api.sim.set_image_behaviour(BROKEN, {"mode": "image_pull_backoff"})
    done = noetl.run_in_terminal(noetl.payload(
        images={"noetl-server": IMAGE, "noetl-worker": BROKEN, "ollama-bridge": IMAGE},
        probe="never", fail_fast_seconds=1, rollout_timeout_seconds=60))
    capture = done.capture
    _keep_capture(capture)
    assert done.returncode == 1, capture
    assert "Error: Command failed with exit code: Some(1)" in capture
    report = capture[capture.index("bump_image: result: failed (exit 1)"):]
    assert re.match(r"bump_image: result: failed \(exit 1\): 2 changed, 1 errors?\n", report)
    assert "bump_image:   noetl-worker: rollout_failed: ImagePullBackOff" in report or \
        "bump_image:   noetl-worker: rollout_failed: ErrImagePull" in report
    assert "noetl-worker is left on %s (its change stays applied)" % BROKEN in report
    assert "bump_image:   noetl-server: changed: now %s" % IMAGE in report
    assert "bump_image:   ollama-bridge: changed: now %s" % IMAGE in report
    progress = capture[:capture.index("bump_image: result:")]
    assert progress.count("bump_image: ") >= 3          # progress before the report
    assert "noetl-server" in progress and "noetl-worker" in progress


@pytest.mark.kubectl("api")
def test_a_successful_bump_does_not_end_saying_it_failed_on_the_terminal(local):
    local.cluster.noetl()
    done = local.run_in_terminal(local.payload(image=IMAGE, probe="never"))
    assert done.returncode == 0, done.capture
    assert "bump_image: result: ok (exit 0): 3 changed" in done.capture
    assert "bump_failed" not in done.capture and "the bump failed" not in done.capture


def _keep_capture(capture):
    """The terminal as an operator saw it (``pytest -s`` shows it; with
    ``BUMP_IMAGE_KEEP_CAPTURE=FILE`` it is also written there)."""
    print(capture)
    if os.environ.get("BUMP_IMAGE_KEEP_CAPTURE"):
        with open(os.environ["BUMP_IMAGE_KEEP_CAPTURE"], "w") as fh:
            fh.write(capture)


# == the production distributed runtime, emulated =========================================

@pytest.fixture
def production(api, tmp_path):
    """The emulated production stack (``noetl_production.py``): one worker in the image's
    environment, aimed at the simulated cluster with the API access."""
    env = {k: api.env[k] for k in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT",
                                   "BUMP_IMAGE_SERVICEACCOUNT_DIR")}
    env["BUMP_IMAGE_LOG_DIR"] = str(tmp_path / "logs")
    prod = emulator()(ROOT / PLAYBOOK, tmp_path / "worker", extra_env=env)
    prod.cluster, prod.logs = api, tmp_path / "logs"
    return prod


def seed(registry, **keys):
    """The seed example (README: NoETL), aimed at the test's cluster and registry."""
    payload = {"namespace": "noetl", "image": IMAGE, "script": SCRIPT,
               "registry_mirrors": {"ghcr.io": registry.base_url}, "cluster_access": "api"}
    payload.update(keys)
    return payload


def start_of(execution):
    start = execution.steps["start"]
    assert start.state == "COMPLETED", start.error
    return start.result


def tool_lines(result):
    return [json.loads(line) for line in result["stdout"].splitlines()]


def assert_nothing_left(production):
    """Nothing in the worker's /app (no .kube cache); in its TMPDIR (the image has none:
    /tmp) at most kubectl's cache folder, empty (made even under the API access)."""
    assert os.listdir(production.worker.app) == []
    for name in os.listdir(production.worker.tmp):
        assert name == "bump_image-kube-cache-%d" % os.getuid(), name
        assert os.listdir(os.path.join(production.worker.tmp, name)) == []


@pytest.mark.kubectl("api")
def test_production_the_seed_example_then_a_clean_rerun(production, pushed):
    production.cluster.noetl()
    execution = production.run(seed(pushed))
    result = start_of(execution)
    assert result["status"] == "success" and result["exit_code"] == 0, result["stderr"]
    (summary,) = tool_lines(result)                 # the step's stdout: the summary line
    assert summary["event"] == "summary" and summary["status"] == "ok"
    assert summary["changed"] == 3 and summary["cluster_access"] == "api"
    for name, container in (("noetl-server", "server"), ("noetl-worker", "worker"),
                            ("noetl-worker", "wait-for-api"), ("ollama-bridge", "bridge")):
        assert production.cluster.image(name, container) == IMAGE
    assert "bump_image: " in result["stderr"]       # progress, captured by the worker
    command = execution.steps["start"].config["command"]
    assert "{{" not in command and "{%" not in command   # the worker's 2nd pass: idle
    assert "bump_failed" in execution.skipped and "end" in execution.steps
    assert_nothing_left(production)
    production.cluster.sim.clear_requests()
    rerun = start_of(production.run(seed(pushed)))
    (summary,) = tool_lines(rerun)
    assert summary["unchanged"] == 3 and summary["changed"] == 0
    assert production.cluster.writes() == []


@pytest.mark.kubectl("api")
def test_production_a_successful_bump_ends_completed(production, pushed):
    production.cluster.noetl()
    execution = production.run(seed(pushed))
    assert start_of(execution)["exit_code"] == 0
    assert (execution.status, execution.error) == ("COMPLETED", None), \
        execution.steps["end"].error


@pytest.mark.kubectl("api")
def test_production_a_failed_bump_fails_the_execution(production, pushed):
    """One workload's rollout fails: the execution is FAILED (bump_failed), and the start
    step's result keeps the exit code, the summary line, the progress and the report."""
    production.cluster.noetl()
    production.cluster.sim.set_image_behaviour(BROKEN, {"mode": "image_pull_backoff"})
    execution = production.run(seed(
        pushed, image=None, probe="never", fail_fast_seconds=1, rollout_timeout_seconds=60,
        images={"noetl-server": IMAGE, "noetl-worker": BROKEN, "ollama-bridge": IMAGE}))
    assert (execution.status, execution.error) == ("FAILED", "Failed steps: bump_failed")
    assert execution.steps["bump_failed"].error.startswith(
        "Process error: Failed to spawn process: No such file or directory")
    result = start_of(execution)
    assert result["status"] == "error" and result["exit_code"] == 1
    assert result["error"] == "Command exited with code 1"
    (summary,) = tool_lines(result)
    assert (summary["status"], summary["changed"], summary["errors"]) == ("failed", 2, 1)
    stderr = result["stderr"]
    report = stderr[stderr.index("bump_image: result: failed (exit 1): 2 changed, 1 error"):]
    assert "  noetl-worker: rollout_failed: " in report
    assert "noetl-worker is left on %s (its change stays applied)" % BROKEN in report
    assert "  noetl-server: changed: now %s" % IMAGE in report
    assert stderr.index("noetl-server") < stderr.index("bump_image: result:")   # progress
    assert "end" in execution.skipped


@pytest.mark.kubectl("api")
def test_production_an_unpublished_tag_fails_the_execution(production, pushed):
    production.cluster.noetl()
    execution = production.run(seed(pushed, image="ghcr.io/%s:v9.9.9" % REPO,
                                     ghcr_probe_attempts=2, ghcr_probe_sleep_seconds=0.2))
    assert (execution.status, execution.error) == ("FAILED", "Failed steps: bump_failed")
    result = start_of(execution)
    assert result["exit_code"] == 3
    (summary,) = tool_lines(result)
    assert summary["event"] == "summary" and summary["exit_code"] == 3
    assert "bump_image: result: failed (exit 3): nothing was changed" in result["stderr"]
    assert "manifest_unknown" in result["stderr"]
    assert production.cluster.api_requests() == []


@pytest.mark.kubectl("api")
@pytest.mark.parametrize("as_text", [False, True], ids=["json", "text"])
def test_production_numbers_booleans_lists_and_objects_reach_the_tool(production, pushed,
                                                                      as_text):
    """Typed payload values (rendered by minijinja: ``True``, ``2``, ``0.25``,
    ``["a", "b"]``, ``{"k": "v"}``) and the same values as JSON text reach the tool as
    their values; null takes the default."""
    production.cluster.noetl()
    typed = {"components": ["noetl-server", "ollama-bridge"], "dry_run": True,
             "pin_digest": True, "ghcr_probe_attempts": 2, "ghcr_probe_sleep_seconds": 0.25,
             "deadline_seconds": 300.5, "fail_fast_seconds": 30, "rollout_timeout_seconds":
             60, "parallel": False, "rollback_on_failure": False,
             "registry_mirrors": {"ghcr.io": pushed.base_url}}
    if as_text:
        typed = {k: v if isinstance(v, str) else json.dumps(v) for k, v in typed.items()}
    execution = production.run(seed(pushed, container=None, **typed))
    result = start_of(execution)
    assert result["exit_code"] == 0, result["stderr"]
    lines = [json.loads(line) for line in (production.logs / "last.jsonl").read_text()
             .splitlines()]
    probe, components = lines[0], [e for e in lines if e["event"] == "component"]
    assert probe["status"] == "available"           # through the mirror
    assert [c["component"] for c in components] == ["noetl-server", "ollama-bridge"]
    assert {c["status"] for c in components} == {"planned"}            # dry_run
    assert all(c["image"] == "%s@%s" % (IMAGE, probe["digest"]) for c in components)
    assert production.cluster.writes() == []
    unpublished = production.run(seed(pushed, image="ghcr.io/%s:v9.9.9" % REPO, **typed))
    assert tool_lines(start_of(unpublished))[0]["exit_code"] == 3
    probe = json.loads((production.logs / "last.jsonl").read_text().splitlines()[0])
    assert probe["attempts"] == 2                   # ghcr_probe_attempts


@pytest.mark.kubectl("api")
def test_production_a_script_path_starting_with_a_brace_is_named(production):
    execution = production.run({"image": IMAGE, "script": "{x}/bump_image.py"})
    assert "{x}/bump_image.py" in start_of(execution)["stdout"]


# == no workload value is run or evaluated: every string key x every pattern ==============

STRING_KINDS = ("image", "repository", "tag", "label", "workload", "context", "path",
                "choice")
STRING_KEYS = [k.name for k in bump_image.PAYLOAD_KEYS if k.kind in STRING_KINDS] + ["script"]
#: (label, pattern): {m} is the marker file's path
SHELL_PATTERNS = [
    ("quote", "'; touch {m}; '"),
    ("dquote", '"; touch {m}; "'),
    ("subst", "$(touch {m})"),
    ("backtick", "`touch {m}`"),
    ("semicolon", "x; touch {m}"),
    ("and", "x && touch {m}"),
    ("newline", "x\ntouch {m}"),
    ("delimiter", "x\nBUMP_IMAGE_PAYLOAD\ntouch {m}\n"),
    ("delimiter-last", "x\nBUMP_IMAGE_PAYLOAD\ntouch {m}"),
]
TEMPLATE_PATTERNS = [
    ("expr", "{{ 7*7 }}"),
    ("stmt", "{% if true %}x{% endif %}"),
    ("open-stmt", "a{%b"),
    ("comment", "{# c #}"),
    ("close-comment", "#}"),
    ("debug", "{{ debug() }}"),
    ("open-expr", "{{"),
    ("close-expr", "}}"),
    ("expr-subst", "{{ workload.namespace }}$(touch {m})"),
    # what ran `id` as root on the legacy runtime's worker (NOETL.md)
    ("legacy-rce", '{{ cycler.__init__.__globals__.os.popen("touch {m}").read() }}'),
]
PATTERNS = SHELL_PATTERNS + TEMPLATE_PATTERNS
def matrix():
    """Every string key (a payload key of a string kind, and ``script``) x every pattern."""
    return [pytest.param(key, pattern, id="%s-%s" % (key, label),
                         marks=[pytest.mark.kubectl("api")])
            for key in STRING_KEYS for label, pattern in PATTERNS]


def hostile(base, key, value, recorder):
    """``base`` with ``key`` set to ``value``, and what makes the tool read that key:
    the other half of the playbook form, or the kubectl access for kubectl's keys."""
    payload = dict(base)
    if key == "image_repository":
        payload.pop("image")
        payload.update(image_repository=value, target_tag=TAG)
    elif key == "target_tag":
        payload.pop("image")
        payload.update(image_repository="ghcr.io/" + REPO, target_tag=value)
    elif key in ("kubeconfig", "context", "expected_kube_context", "kubectl"):
        payload.update(cluster_access="kubectl", kubectl=str(recorder))
        payload[key] = value
    else:
        payload[key] = value
    return payload


def said_in(text):
    """``text`` and the error messages of the JSON lines in it (one level of quoting
    less), for a value to be found as the tool named it."""
    found = [text]
    for line in text.splitlines():
        line = line.strip()
        line = line[len("bump_image: "):] if line.startswith("bump_image: {") else line
        if line.startswith("{"):
            try:
                found.append(str((json.loads(line).get("error") or {}).get("message")))
            except (ValueError, AttributeError):
                pass
    return "\n".join(found)


def reached_unchanged(value, said, argv=()):
    """The tool (or the playbook's program) named the exact value, or refused it for its
    line break before anything else: the value was not evaluated on the way."""
    if value in said or json.dumps(value) in said:
        return True
    if len(value) > 60 and json.dumps(value[:57] + "...") in said:    # a long one, cut
        return True
    if any(arg in ("--kubeconfig=" + value, "--context=" + value) for arg in argv):
        return True
    return "\n" in value and ("holds a control character" in said or "payload lines" in said)


@pytest.mark.parametrize("key, pattern", matrix())
def test_production_no_value_runs_or_is_evaluated(production, recorder, tmp_path, key,
                                                  pattern):
    production.cluster.noetl()
    marker = tmp_path / "pwned"
    value = pattern.replace("{m}", str(marker))
    base = {"image": IMAGE, "probe": "never", "cluster_access": "api", "script": SCRIPT}
    execution = production.run(hostile(base, key, value, recorder))
    assert not marker.exists(), execution
    assert production.cluster.writes() == []
    assert execution.status == "FAILED", execution
    start = execution.steps["start"]
    if start.state == "FAILED":                      # failed closed on the worker
        assert execution.error == "Failed steps: start"
        return
    assert execution.error == "Failed steps: bump_failed"
    result = start.result
    assert result["exit_code"] != 0
    command = start.config["command"]
    assert "{{" not in command and "{%" not in command   # nothing for the 2nd pass
    said = said_in(result["stdout"] + result["stderr"])
    assert reached_unchanged(value, said, recorded(recorder)), said


@pytest.mark.parametrize("key, pattern", matrix())
def test_local_no_value_runs_or_is_evaluated(local, recorder, tmp_path, key, pattern):
    """The local runtime pastes values as text: in a terminal (``script``), the tool's
    error line shows each value exactly (one with a line break: the run fails closed)."""
    local.cluster.noetl()
    marker = tmp_path / "pwned"
    value = pattern.replace("{m}", str(marker))
    base = {"image": IMAGE, "probe": "never", "cluster_access": "api"}
    done = local.run_in_terminal(hostile(base, key, value, recorder))
    assert not marker.exists(), done.capture
    assert local.cluster.writes() == [], done.capture
    assert done.returncode == 1, done.capture
    assert "Error: Command failed with exit code: Some(" in done.capture
    if "\n" not in value:          # a line break splits the pasted text: fail closed
        assert reached_unchanged(value, said_in(done.capture), recorded(recorder)), \
            done.capture


@pytest.mark.kubectl("api")
@pytest.mark.parametrize("key, value", [
    ("components", ["$(touch {m})", "x; touch {m}"]),
    ("deployments", ["{{ 7*7 }}", "a{%b"]),
    ("registry_mirrors", {"ghcr.io": "http://127.0.0.1:1/$(touch {m})"}),
    ("images", {"noetl-server": "`touch {m}`"}),
    ("images", {"noetl-server": "{{ 7*7 }}"}),
    ("ghcr_probe_attempts", "3; touch {m}"),
    ("ghcr_probe_sleep_seconds", "{{ 7*7 }}"),
    ("dry_run", "true && touch {m}"),
    ("parallel", "{% if true %}x{% endif %}"),
])
@pytest.mark.parametrize("runtime", ["local", "production"])
def test_no_list_object_or_number_value_runs_or_is_evaluated(request, runtime, tmp_path,
                                                             key, value):
    marker = tmp_path / "pwned"
    value = json.loads(json.dumps(value).replace("{m}", str(marker)))
    payload = {"image": IMAGE, "probe": "never", "cluster_access": "api", key: value}
    if runtime == "local":
        local = request.getfixturevalue("local")
        local.cluster.noetl()
        done = local.run_in_terminal(payload)
        cluster, said = local.cluster, done.capture
        assert done.returncode == 1, said
    else:
        production = request.getfixturevalue("production")
        production.cluster.noetl()
        execution = production.run(dict(payload, script=SCRIPT))
        assert (execution.status, execution.error) == ("FAILED", "Failed steps: bump_failed")
        result = start_of(execution)
        cluster, said = production.cluster, said_in(result["stdout"] + result["stderr"])
    assert not marker.exists(), said
    assert cluster.writes() == []
    assert "invalid_payload" in said and key in said, said
    first = value if isinstance(value, str) else next(iter(
        value if isinstance(value, list) else value.values()))
    assert reached_unchanged(first, said), said      # the tool names it as it was given


# == the emulator's own rules (no cluster) ================================================

def book(tmp_path, steps, workload=None):
    """A playbook of shell steps for the emulator."""
    import yaml
    path = tmp_path / "book.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "noetl.io/v2", "kind": "Playbook",
                                    "metadata": {"name": "t"}, "workload": workload or {},
                                    "workflow": steps}))
    return emulator()(path, tmp_path / "worker")


def shell(name, command=None, nxt=None, **tool):
    step = {"step": name, "tool": dict(tool, kind="shell")}
    if command is not None:
        step["tool"]["command"] = command
    if nxt is not None:
        step["next"] = nxt
    return step


def test_emulator_a_value_in_the_command_is_evaluated_by_the_second_pass(tmp_path):
    """The negative control of the matrices: a value pasted into the command as text is
    evaluated by the worker (``{{ 7*7 }}`` gives 49), a stray ``{%`` fails the step, and
    the shell is a real one."""
    prod = book(tmp_path, [shell("start", "echo {{ workload.x }}")], {"x": ""})
    assert start_of(prod.run({"x": "{{ 7*7 }}"}))["stdout"] == "49\n"
    failed = prod.run({"x": "a{%b"})
    assert failed.status == "FAILED" and failed.error == "Failed steps: start"
    assert failed.steps["start"].error.startswith("Template error: syntax error")
    marker = tmp_path / "pwned"
    start_of(prod.run({"x": "$(touch %s)" % marker}))
    assert marker.exists()


def test_emulator_the_server_renders_once_and_retypes(tmp_path):
    prod = book(tmp_path, [shell("start", "true", env={"N": "8080", "E": ""})])
    execution = prod.run({})
    assert execution.status == "FAILED"
    assert execution.steps["start"].config == {"command": True, "env": {"N": 8080, "E": None}}
    assert execution.steps["start"].error == (
        "Configuration error: Invalid shell config: invalid type: boolean `true`, expected a"
        " string")
    server = prod.server
    ctx = {"b": True, "n": None, "l": ["a", 1, None, 2.5], "m": {"k": True}, "f": 1e20}
    assert server.render("{{ b }} {{ n }}|{{ l }} {{ m }} {{ f }}", ctx) == \
        'True |["a", 1, undefined, 2.5] {"k": True} 100000000000000000000.0'
    assert server.render("{{ l | b64encode }}", ctx) == "WyJhIiwgMSwgdW5kZWZpbmVkLCAyLjVd"
    assert server.render("{{ n | b64encode }}{{ b | tojson }}{{ m | tojson }}", ctx) == \
        'true{"k":true}'
    assert server.render("{{ n | default('d') }} {{ '7.9' | int }} {{ ' x ' | trim }}", ctx) \
        == "d 7 x"
    assert server.render("{{ 1 }} }}", ctx) == "1 }}" and server.render("{{ x", ctx) == "{{ x"
    for text, value in [("42", 42), (" 007\n", 7), ("1e3", 1000.0), ("True", True),
                        ("false", False), ("None", None), ("  ", None), ("[1, 2]", [1, 2]),
                        ('{"a": 1}', {"a": 1}), ("yes", "yes"), ("inf", "inf"),
                        ("{not json}", "{not json}")]:
        assert server.render_to_value(text, {}) == value, text
    assert server.render_to_value("{{ m }}", ctx) == {"k": True}       # the tojson retry


def test_emulator_shell_config_time_out_and_spawn_failure(tmp_path):
    prod = book(tmp_path, [
        shell("start", "printf 'a\\r\\nb'; sleep 30", timeout_seconds=1,
              nxt=[{"step": "slow", "when": "{{ steps.start.context.result.status"
                                           " == 'timeout' }}"}, {"step": "end"}]),
        shell("slow", None, cmds=["true"]),
        shell("end", "exit 0")])
    execution = prod.run({})
    result = execution.steps["start"].result
    assert result["status"] == "timeout" and "stdout" not in result
    assert result["error"] == "Execution timed out after 1 seconds"
    assert (execution.status, execution.error) == ("FAILED", "Failed steps: slow")
    assert execution.steps["slow"].error == (
        "Configuration error: Invalid shell config: missing field `command`")
    missing = {"shell": "/nonexistent", "cmds": ["ignored"]}
    prod = book(tmp_path, [shell("start", "printf 'a\\r\\nb'; exit 3", **missing)])
    execution = prod.run({})
    assert execution.steps["start"].error == (
        "Process error: Failed to spawn process: No such file or directory (os error 2)")
    prod = book(tmp_path, [shell("start", "printf 'a\\r\\nb'; exit 3", nxt=[
        {"step": "end", "when": "{{ start.exit_code == 0 }}"}]), shell("end", "exit 0")])
    execution = prod.run({})
    assert execution.status == "RUNNING" and execution.skipped == ["end"]  # never ends
    assert execution.steps["start"].result["stdout"] == "a\nb\n"
    assert execution.steps["start"].result["error"] == "Command exited with code 3"


def test_emulator_the_worker_image_environment(tmp_path):
    prod = book(tmp_path, [shell("start", "echo \"$PATH|${HOME-unset}|$(pwd)\"; for p in sh"
                                 " python3 bash kubectl; do command -v $p || echo no-$p; done")])
    out = start_of(prod.run({}))["stdout"].splitlines()
    assert out[0] == "%s|unset|%s" % (prod.worker.bin, prod.worker.app)
    assert out[1:] == [os.path.join(prod.worker.bin, "sh"),
                       os.path.join(prod.worker.bin, "python3"), "no-bash", "no-kubectl"]
    assert os.path.realpath(out[1]) == os.path.realpath(shutil.which("busybox"))


def test_emulator_a_template_error_on_the_server(tmp_path):
    prod = book(tmp_path, [shell("start", "{{ x | no_such_filter }}")])
    execution = prod.run({})
    assert execution.status == "REJECTED" and "unknown filter" in execution.error
    prod = book(tmp_path, [shell("start", "exit 0", nxt=[{"step": "end", "when":
                                                            "{{ x | nope }}"}]),
                           shell("end", "exit 0")])
    execution = prod.run({})
    assert execution.status == "FAILED" and execution.error.startswith(
        "Orchestrator drive failed (off-server): Template ")
