"""Every wait of a run ends by ``deadline_seconds`` (contract v3), and work the deadline
cut is named ``deadline_exceeded``: a name lookup that never answers (a real resolver
in a mount namespace of the test's own), a connection that never opens, an API server
that answers too late (both accesses), and a patch whose answer did not come."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fakes import IMAGE, OLD, FakeKubectl, run_cli

import bump_image
from bump_image import Completed

ROOT = Path(__file__).resolve().parent.parent
NEW = IMAGE


class NeverOpens:
    """An opener whose ``open`` blocks (a lookup or a connect that never ends)."""

    def __init__(self):
        self.calls = 0

    def open(self, request, timeout=None):
        self.calls += 1
        threading.Event().wait(60)
        raise OSError("not reached")


def test_a_request_that_never_opens_is_cut_by_the_deadline(env):
    started = time.monotonic()
    opener = NeverOpens()
    run = run_cli(["--payload", json.dumps({"image": IMAGE, "deadline_seconds": 3,
                                            "ghcr_probe_attempts": 5})],
                  runner=FakeKubectl(), opener=opener, env=env, sleeper=time.sleep)
    elapsed = time.monotonic() - started
    assert run.code == 3, run.stdout + run.stderr
    (probe,) = run.event("probe")
    assert probe["status"] == "unavailable" and probe["error"]["code"] == "deadline_exceeded"
    assert elapsed < 3.0, elapsed                  # the summary before the budget ends
    assert opener.calls == 1


def silent_resolver():
    """A UDP socket on a loopback address that takes DNS queries and never answers."""
    for last in range(153, 160):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("127.0.0.%d" % last, 53))
            return sock
        except OSError:
            sock.close()
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0
                    or not shutil.which("unshare"),
                    reason="needs root and unshare (a mount namespace for /etc/resolv.conf)")
def test_a_name_lookup_that_never_answers_is_cut_by_the_deadline(env, tmp_path):
    """Defect 6: getaddrinfo cannot be interrupted; in a pod (ndots:5) one lookup can
    take 30-40 s.  The tool runs in a mount namespace whose /etc/resolv.conf names a
    resolver that never answers (timeout:5 attempts:3: 15 s per lookup)."""
    sock = silent_resolver()
    if sock is None:
        pytest.skip("no loopback address free for port 53")
    queries = []
    stop = threading.Event()

    def swallow():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                queries.append(sock.recvfrom(4096)[0])
            except socket.timeout:
                continue
            except OSError:
                return
    threading.Thread(target=swallow, daemon=True).start()
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver %s\noptions timeout:5 attempts:3\n" % sock.getsockname()[0])
    payload = {"image": "registry.example.test/noetl/x:1", "probe": "auto",
               "deadline_seconds": 3, "ghcr_probe_attempts": 2, "kubectl": "false"}
    try:
        started = time.monotonic()
        done = subprocess.run(
            ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"',
             str(resolv), sys.executable, str(ROOT / "bump_image.py"), "--payload",
             json.dumps(payload)], env=dict(env, PYTHONDONTWRITEBYTECODE="1"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        sock.close()
    if b"mount" in done.stderr and done.returncode not in (0, 1, 2, 3, 4):
        pytest.skip("cannot bind-mount /etc/resolv.conf here: %s" % done.stderr[:200])
    events = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert done.returncode == 3, done.stdout + done.stderr
    assert queries, "the lookup never reached the silent resolver"
    probe = events[0]
    assert probe["status"] == "unavailable" and probe["error"]["code"] == "deadline_exceeded"
    assert events[-1]["event"] == "summary"
    assert elapsed < 3.5, elapsed          # the process, start to exit, within the budget


@pytest.mark.e2e
def test_an_api_server_that_answers_too_late_is_deadline_exceeded(cluster):
    """Defect 8: reads of the workloads answered after 10 s, deadline_seconds 4: the
    deadline cut them (deadline_exceeded, never kubectl_failed), the summary within the
    budget; kubectl's --request-timeout is what was left, in milliseconds."""
    cluster.noetl()
    cluster.sim.inject_fault(method="GET", path_regex=r"/namespaces/noetl/deployments/",
                             status=None, delay=10)
    started = time.monotonic()
    run = cluster.bump(cluster.payload(image=NEW, deadline_seconds=4), clock=None)
    elapsed = time.monotonic() - started
    assert run.code == 1, run.stdout + run.stderr
    for comp in run.event("component"):
        assert comp["error"]["code"] == "deadline_exceeded", comp
        assert "deadline" in comp["error"]["message"]
    assert elapsed < 4.0, elapsed
    assert cluster.writes() == []


class PatchAnswersLate(FakeKubectl):
    """kubectl whose patch gets no answer in time (a client-side time-out); with
    ``applied`` the change landed anyway."""

    def __init__(self, applied):
        super().__init__()
        self.applied = applied

    def __call__(self, argv, timeout, env=None, tag=None):
        if "patch" in argv:
            if self.applied:
                super().__call__(argv, timeout, env=env, tag=tag)
            else:
                self.calls.append(list(argv))
            return Completed(1, "", "Unable to connect to the server: net/http: request"
                             " canceled (Client.Timeout exceeded while awaiting headers)\n")
        return super().__call__(argv, timeout, env=env, tag=tag)


@pytest.mark.parametrize("applied", [True, False])
def test_a_patch_without_an_answer_is_read_again(env, applied):
    """A patch that timed out on the client's side may have been applied: the workload
    is read again; applied, its rollout is waited for (changed); not applied, the error
    says so."""
    kubectl = PatchAnswersLate(applied)
    run = run_cli(["--payload", json.dumps({"image": IMAGE, "probe": "never",
                                            "deployment": "noetl-server"})],
                  runner=kubectl, env=env)
    comp = run.components["noetl-server"]
    if applied:
        assert run.code == 0 and comp["status"] == "changed", run.stdout + run.stderr
        assert "the patch got no answer in time, but the workload now names the target" \
            in run.stderr
    else:
        assert run.code == 1 and comp["error"]["code"] == "kubectl_failed"
        assert comp["error"]["message"].endswith("Client.Timeout exceeded while awaiting"
                                                 " headers); it was not applied (read again"
                                                 " after)")
        assert kubectl.image_of("noetl-server", "server") == OLD
    assert kubectl.verbs()[:3] == ["get noetl-server", "patch noetl-server", "get noetl-server"]


def test_request_timeout_is_what_is_left_in_milliseconds(env):
    """Defect 8's truncation: int() of the remaining seconds gave kubectl up to a second
    less than was left."""
    seen = []

    class Recording(FakeKubectl):
        def __call__(self, argv, timeout, env=None, tag=None):
            seen.append((argv, timeout))
            return super().__call__(argv, timeout, env=env, tag=tag)

    run = run_cli(["--payload", json.dumps({"image": IMAGE, "probe": "never", "dry_run": True,
                                            "deadline_seconds": 3.9})],
                  runner=Recording(), env=env)
    assert run.code == 0
    argv, timeout = seen[0]
    flag = next(a for a in argv if a.startswith("--request-timeout="))
    assert flag.endswith("ms") and abs(int(flag[18:-2]) - timeout * 1000) <= 1
    assert 2.0 < timeout < 2.95           # 3.9 s less the reserve for the report, less start-up
    assert bump_image.DEADLINE_RESERVE == 1.0
