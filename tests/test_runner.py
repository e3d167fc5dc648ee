"""The subprocess edge: ProcessRunner, and the default runner under pytest-subprocess."""

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fakes import IMAGE, deployment, run_cli

import bump_image
from bump_image import ProcessRunner

ROOT = Path(__file__).resolve().parent.parent


def stub_kubectl(tmp_path, env):
    """An executable named kubectl on PATH (pytest-subprocess intercepts the run)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    path = folder / "kubectl"
    path.write_text("#!/bin/sh\nexit 99\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return dict(env, PATH=str(folder))


def test_default_runner_under_pytest_subprocess(fp, tmp_path, env):
    env = stub_kubectl(tmp_path, env)
    dep = deployment("noetl-server", {"server": IMAGE})
    fp.register(["kubectl", "get", "deployment/noetl-server", "--namespace=noetl",
                 "--ignore-not-found", "--output=json", fp.any()], stdout=json.dumps(dep))
    run = run_cli(["--payload", json.dumps({"image": IMAGE, "probe": "never",
                                            "deployment": "noetl-server"})], env=env)
    assert run.code == 0, run.stdout
    assert run.components["noetl-server"]["status"] == "unchanged"
    assert fp.call_count(["kubectl", "get", fp.any()]) == 1
    for call in fp.calls:
        assert isinstance(call, (list, tuple))          # an argument list, never a shell


def test_default_runner_change_and_rollout(fp, tmp_path, env):
    env = stub_kubectl(tmp_path, env)
    before = deployment("noetl-worker", {"worker": "ghcr.io/noetl/noetl:v1"},
                        init={"wait-for-api": "ghcr.io/noetl/noetl:v1"})
    fp.register(["kubectl", "get", "deployment/noetl-worker", fp.any()],
                stdout=json.dumps(before))
    fp.register(["kubectl", "patch", "deployment", "noetl-worker", fp.any()],
                stdout="deployment.apps/noetl-worker patched\n")
    after = deployment("noetl-worker", {"worker": IMAGE}, init={"wait-for-api": IMAGE})
    after["metadata"]["generation"] = after["status"]["observedGeneration"] = 2
    fp.register(["kubectl", "get", "deployment/noetl-worker", fp.any()],   # the poll
                stdout=json.dumps(after))
    fp.register(["kubectl", "get", "replicasets,pods", "--namespace=noetl",
                 "--selector=app=noetl-worker", fp.any()],
                stdout=json.dumps({"kind": "List", "items": []}))
    run = run_cli(["--payload", json.dumps({"image": IMAGE, "probe": "never",
                                            "deployment": "noetl-worker"})], env=env)
    assert run.code == 0, run.stdout + run.stderr
    comp = run.components["noetl-worker"]
    assert comp["status"] == "changed" and comp["containers"] == ["worker", "wait-for-api"]
    patch_call = next(c for c in fp.calls if "patch" in c)
    patch = json.loads(next(a for a in patch_call if a.startswith("--patch="))[8:])
    assert patch["spec"]["template"]["spec"] == {
        "containers": [{"name": "worker", "image": IMAGE}],
        "initContainers": [{"name": "wait-for-api", "image": IMAGE}]}


def test_default_runner_kubectl_failure(fp, tmp_path, env):
    env = stub_kubectl(tmp_path, env)
    # the read of the three, then each on its own to find which failed
    fp.register(["kubectl", "get", fp.any()], returncode=1, occurrences=4,
                stderr='Error from server (Forbidden): deployments.apps is forbidden\n')
    run = run_cli(["--payload", json.dumps({"image": IMAGE, "probe": "never"})], env=env)
    assert run.code == 1
    assert {e["error"]["code"] for e in run.event("component")} == {"kubectl_failed"}
    assert fp.call_count(["kubectl", "get", fp.any()]) == 4


def test_not_executable_is_exit_4(tmp_path, env):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "kubectl").write_text("#!/bin/sh\n")          # not executable
    run = run_cli(["--payload", json.dumps({"image": IMAGE, "probe": "never"})],
                  env=dict(env, PATH=str(folder)))
    assert run.code == 4 and run.events[0]["error"]["code"] == "kubectl_missing"


def test_a_hung_child_is_killed_at_its_deadline():
    runner = ProcessRunner()
    started = time.monotonic()
    done = runner([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5)
    assert done.timed_out and done.returncode != 0
    assert time.monotonic() - started < 10


def test_kill_by_tag_stops_only_that_child():
    runner = ProcessRunner()
    results = {}

    def run(tag):
        results[tag] = runner([sys.executable, "-c", "import time; time.sleep(30)"],
                              timeout=60, tag=tag)

    threads = [threading.Thread(target=run, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(runner._live) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    runner.kill("a")
    threads[0].join(10)
    assert "a" in results and results["a"].returncode != 0 and not results["a"].timed_out
    assert threads[1].is_alive()
    runner.kill()
    threads[1].join(10)
    assert not threads[1].is_alive()


def test_output_is_decoded_leniently():
    runner = ProcessRunner()
    done = runner([sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'ok \\xff')"],
                  timeout=30)
    assert done.returncode == 0 and done.stdout.startswith("ok ")


def test_resolve_uses_the_given_path(tmp_path):
    assert ProcessRunner.resolve("kubectl", {"PATH": str(tmp_path)}) is None
    assert ProcessRunner.resolve(sys.executable, {"PATH": ""}) == sys.executable
    assert os.path.basename(ProcessRunner.resolve("sh", {"PATH": "/bin:/usr/bin"})) == "sh"


def test_kubectl_message_prefers_kubectls_own_words():
    c = bump_image.Completed(1, "", "W1126 10:00:00.1 x.go:1] warning\nerror: boom\n")
    assert bump_image.kubectl_message(c) == "error: boom"
    c = bump_image.Completed(2, "", "")
    assert bump_image.kubectl_message(c) == "kubectl exited with status 2"
    c = bump_image.Completed(1, "", "x" * 5000)
    assert len(bump_image.kubectl_message(c)) == 1000


# -- version 2: the runner returns when kubectl exits; children die with the tool ------

def executable(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def alive(marker):
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as fh:
                    if marker.encode() in fh.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def gone(marker, timeout=3.0):
    deadline = time.monotonic() + timeout
    while alive(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(marker) == []


def test_a_child_that_exits_while_a_grandchild_holds_its_output(tmp_path):
    """The review's case: ``sleep 8 & exit 0`` with timeout=2 returned after 8 s as a
    time-out; now it returns soon after the wrapper exits, rc 0, not timed out, and
    the grandchild is killed with its group."""
    marker = "8.%d1" % os.getpid()
    wrapper = executable(tmp_path / "kubectl", "#!/bin/sh\nsleep %s &\necho ok\nexit 0\n"
                         % marker)
    started = time.monotonic()
    done = ProcessRunner()([wrapper], timeout=2)
    elapsed = time.monotonic() - started
    assert (done.returncode, done.timed_out, done.stdout) == (0, False, "ok\n")
    assert elapsed < 1.5, elapsed
    assert gone(marker)


def test_the_deadline_kills_the_group_and_says_so(tmp_path):
    marker = "9.%d2" % os.getpid()
    wrapper = executable(tmp_path / "kubectl", "#!/bin/sh\nsleep %s &\nsleep %s\n"
                         % (marker, marker))
    started = time.monotonic()
    done = ProcessRunner()([wrapper], timeout=1)
    assert done.timed_out and time.monotonic() - started < 2.5
    assert gone(marker)


def test_a_stop_request_kills_the_child_and_raises_interrupted(tmp_path):
    marker = "7.%d3" % os.getpid()
    kubectl = executable(tmp_path / "kubectl", "#!/bin/sh\nexec sleep %s\n" % marker)
    stop = []
    runner = ProcessRunner(stopped=lambda: stop[0] if stop else None)
    threading.Timer(0.3, stop.append, (15,)).start()
    started = time.monotonic()
    try:
        runner([kubectl], timeout=30)
    except bump_image.Interrupted as exc:
        assert exc.signum == 15
    else:
        raise AssertionError("no Interrupted")
    assert time.monotonic() - started < 1.5
    assert gone(marker)


CHILD_OF_A_KILLED_TOOL = r"""
import sys
sys.path.insert(0, %(root)r)
import bump_image
print("started", flush=True)
bump_image.ProcessRunner()([%(kubectl)r], timeout=60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("from_a_thread", [False, True])
def test_kubectl_dies_when_the_tool_is_killed_with_sigkill(tmp_path, from_a_thread):
    """A supervisor (NoETL on time-out) kills the tool with SIGKILL: its kubectl
    children, in sessions of their own, must not outlive it."""
    marker = "60.%d%d" % (os.getpid(), from_a_thread)
    kubectl = executable(tmp_path / "kubectl", "#!/bin/sh\nexec sleep %s\n" % marker)
    code = CHILD_OF_A_KILLED_TOOL % {"root": str(ROOT), "kubectl": kubectl}
    if from_a_thread:       # rollout waits run in a thread of the tool
        code = code.replace("bump_image.ProcessRunner()(", "import threading\n"
                            "t = threading.Thread(target=lambda: bump_image.ProcessRunner()(")
        code = code.replace("timeout=60)", "timeout=60))\nt.start()\nt.join()")
    tool = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert tool.stdout.readline() == b"started\n"
        deadline = time.monotonic() + 10
        while not alive(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alive(marker), "kubectl never started"
        tool.kill()
        tool.wait(5)
        assert gone(marker, timeout=3), "kubectl outlived the tool killed with SIGKILL"
    finally:
        tool.kill()
        for pid in alive(marker):
            os.kill(pid, signal.SIGKILL)
