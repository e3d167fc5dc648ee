"""The subprocess edge: ProcessRunner, and the default runner under pytest-subprocess."""

import json
import os
import stat
import sys
import threading
import time

from fakes import IMAGE, deployment, run_cli

import bump_image
from bump_image import ProcessRunner


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
    fp.register(["kubectl", "rollout", "status", "deployment/noetl-worker", fp.any()],
                stdout='deployment "noetl-worker" successfully rolled out\n')
    fp.register(["kubectl", "get", "deployments,replicasets,pods", "--namespace=noetl",
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
    fp.register(["kubectl", "get", fp.any()], returncode=1,
                stderr='Error from server (Forbidden): deployments.apps is forbidden\n')
    run = run_cli(["--payload", json.dumps({"image": IMAGE, "probe": "never"})], env=env)
    assert run.code == 1
    assert {e["error"]["code"] for e in run.event("component")} == {"kubectl_failed"}


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
