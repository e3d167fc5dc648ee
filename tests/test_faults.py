"""Fault matrix: every way the registry, kubectl or the process can fail ends in the
contract's JSON lines and exit code, never a traceback.

Cases that are already proven elsewhere are referenced, not repeated:

* test_probe.py: connection refused (``test_connection_refused``), DNS / connection
  errors raised by the opener (``test_network_errors_are_classified_and_retried``),
  a HEAD that hangs (``test_request_time_out_is_a_failed_attempt``), 500/502/503/408
  retried (``test_server_errors_are_retried``, ``test_last_classification_is_reported``),
  429 ``Retry-After`` in seconds, as an HTTP date and capped
  (``test_429_retry_after_seconds_replaces_the_sleep``, ``test_429_retry_after_http_date``),
  401 without a challenge (``test_401_without_a_challenge``), the token endpoint failing /
  not JSON / without a token / ``access_token`` only (``test_token_endpoint_answers``),
  a refused token (``test_refused_token_is_retried_and_explained``), a redirect to another
  host (``test_redirect_keeps_head_and_drops_authorization_to_another_host``), an
  oversized token body (``test_token_body_is_bounded``), an untrusted certificate
  (``test_tls_failure_is_clear_and_never_falls_back_to_http``);
* test_engine.py / test_runner.py: kubectl missing (``test_kubectl_missing_with_the_real_runner``),
  not executable on PATH (``test_not_executable_is_exit_4``), a hung child killed at its
  deadline (``test_a_hung_child_is_killed_at_its_deadline``), Forbidden / unreachable /
  not JSON / webhook denial with the in-memory kubectl.

Here: the rest of the registry matrix, the same kubectl failures with the *real*
kubectl against the simulated API server, hung kubectl processes, and SIGINT / SIGTERM
delivered to the real CLI process.
"""

import email.utils
import errno
import io
import json
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fake_registry import FULL_ACCEPT, FakeRegistry, Resp
from fakes import IMAGE, OLD, FakeKubectl, run_cli

import bump_image
from bump_image import ProcessRunner

ROOT = Path(__file__).resolve().parent.parent
TOOL = str(ROOT / "bump_image.py")
REPO = "noetl/noetl"
PATH = "/v2/noetl/noetl/manifests/v2.35.9"
DIGEST = "sha256:" + "c" * 64
NEW = IMAGE


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

class Sleeps(list):
    def __call__(self, seconds):
        self.append(seconds)


def probe(base, env, runner=None, http_timeout=2, opener=None, **payload):
    """Run ``bump`` with ghcr.io routed to ``base``; (result, events, sleeps, kubectl)."""
    payload.setdefault("image", IMAGE)
    payload.setdefault("registry_mirrors", {"ghcr.io": base})
    payload.setdefault("ghcr_probe_sleep_seconds", 1)
    sleeps, events = Sleeps(), []
    kubectl = runner or FakeKubectl()
    result = bump_image.bump(payload, runner=kubectl, sleeper=sleeps, env=env, opener=opener,
                             on_event=events.append, http_timeout=http_timeout)
    return result, events, sleeps, kubectl


def probe_line(events):
    return next(e for e in events if e["event"] == "probe")


def assert_contract(events, code):
    """probe line, component lines, summary line last; the summary carries ``code``."""
    kinds = [e["event"] for e in events]
    assert kinds[0] == "probe" and kinds[-1] == "summary", kinds
    assert set(kinds[1:-1]) <= {"component"}, kinds
    if events[0]["status"] == "unavailable":
        assert kinds == ["probe", "summary"]
    assert events[-1]["exit_code"] == code
    json.dumps(events, allow_nan=False)


def assert_cli_contract(run, code):
    """A CLI run: only JSON lines on stdout, the exit code, no traceback."""
    assert run.code == code, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert_contract(run.events, code)


def assert_probe_failed(result, events, code, kubectl=None):
    assert result.exit_code == 3
    assert_contract(events, 3)
    assert probe_line(events)["error"]["code"] == code, probe_line(events)
    if kubectl is not None:
        assert kubectl.calls == []


class RawServer:
    """A TCP server on 127.0.0.1 for misbehaviours FakeRegistry cannot script.

    ``mode``: ``"listen"`` (never accept: the kernel completes the handshake and the
    request sits unread), ``"trickle-body"`` (a token endpoint that sends one byte of
    its body every 0.1 s) or ``"trickle-headers"`` (a status line, then one byte every
    0.1 s, never ending the headers).  ``stop()`` closes every connection.
    """

    def __init__(self, mode):
        self.mode = mode
        self.stopping = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.base_url = "http://127.0.0.1:%d" % self.port
        self.conns = []
        if mode != "listen":
            threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            line = data.split(b"\r\n", 1)[0]
            if self.mode == "trickle-headers":
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                while not self.stopping.wait(0.1):
                    conn.sendall(b"X")
            elif b"/token" in line:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 1000000\r\n\r\n{")
                while not self.stopping.wait(0.1):
                    conn.sendall(b" ")
            else:
                conn.sendall(b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm="'
                             + self.base_url.encode() + b'/token",service="raw"\r\n'
                             b"Content-Length: 0\r\n\r\n")
                self.stopping.wait()
        except OSError:
            pass

    def stop(self):
        self.stopping.set()
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self.sock.close()


def probe_in_thread(base, env, limit, **payload):
    """Run the probe in a daemon thread; (finished within ``limit``?, outcome dict)."""
    outcome = {}

    def go():
        started = time.monotonic()
        try:
            result, events, _, _ = probe(base, env, http_timeout=1, ghcr_probe_attempts=1,
                                         **payload)
            outcome["events"] = events
        except BaseException as exc:  # noqa: B036 - reported by the assertion
            outcome["raised"] = exc
        outcome["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(limit)
    return not thread.is_alive(), outcome, thread


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

def test_accept_and_never_answer_is_a_time_out_per_attempt(env):
    server = RawServer("listen")
    try:
        started = time.monotonic()
        result, events, sleeps, kubectl = probe(server.base_url, env, http_timeout=1,
                                                ghcr_probe_attempts=2)
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    assert_probe_failed(result, events, "timeout", kubectl)
    assert probe_line(events)["attempts"] == 2 and sleeps == [1]
    assert "within 1 s" in probe_line(events)["error"]["message"]
    assert elapsed < 6


def test_real_dns_failure_of_a_dot_invalid_mirror(env):
    started = time.monotonic()
    try:
        socket.getaddrinfo("registry.invalid", 443)
        pytest.skip("the resolver here answers for .invalid")
    except socket.gaierror:
        pass
    if time.monotonic() - started > 2:
        pytest.skip("the resolver here is slow to fail")
    result, events, sleeps, kubectl = probe("https://registry.invalid", env,
                                            ghcr_probe_attempts=2)
    assert_probe_failed(result, events, "dns", kubectl)
    assert probe_line(events)["attempts"] == 2 and sleeps == [1]
    assert "cannot resolve registry.invalid" in probe_line(events)["error"]["message"]


def test_5xx_retry_after_is_honoured(env):
    with FakeRegistry() as fake:
        fake.script(PATH, [Resp(503, headers={"Retry-After": "4"}),
                           Resp(502, headers={"Retry-After": "999"}),
                           Resp(200, headers={"Docker-Content-Digest": DIGEST})])
        result, events, sleeps, _ = probe(fake.base_url, env, ghcr_probe_sleep_seconds=9)
    assert result.exit_code == 0 and probe_line(events)["attempts"] == 3
    assert sleeps == [4, bump_image.RETRY_AFTER_CAP]


def test_502_is_reported_as_server_error(env):
    with FakeRegistry() as fake:
        fake.script(PATH, [Resp(502)])
        result, events, sleeps, kubectl = probe(fake.base_url, env, ghcr_probe_attempts=3)
    assert_probe_failed(result, events, "server_error", kubectl)
    assert "answered 502" in probe_line(events)["error"]["message"] and sleeps == [1, 1]


# ids of their own: an id made of the date would differ between pytest-xdist's workers
@pytest.mark.parametrize("retry_after, expected", [
    pytest.param(email.utils.formatdate(time.time() - 3600, usegmt=True), [],      # in the past
                 id="http-date-an-hour-ago"),
    pytest.param(email.utils.formatdate(time.time() + 86400, usegmt=True), [60.0],  # capped
                 id="http-date-in-a-day"),
    ("soon", [7]),                                                          # unparsable
    ("-5", [7]),
])
def test_429_retry_after_edge_values(env, retry_after, expected):
    with FakeRegistry() as fake:
        fake.script(PATH, [Resp(429, headers={"Retry-After": retry_after}),
                           Resp(200, headers={"Docker-Content-Digest": DIGEST})])
        result, events, sleeps, _ = probe(fake.base_url, env, ghcr_probe_sleep_seconds=7)
    assert result.exit_code == 0
    assert [round(s) for s in sleeps] == [round(s) for s in expected]


def test_429_retry_after_with_a_non_ascii_digit(env):
    with FakeRegistry() as fake:
        fake.script(PATH, [Resp(429, headers={"Retry-After": "\xb2"}),
                           Resp(200, headers={"Docker-Content-Digest": DIGEST})])
        result, events, sleeps, _ = probe(fake.base_url, env, ghcr_probe_sleep_seconds=7)
    assert result.exit_code == 0 and sleeps == [7]


@pytest.mark.parametrize("header, words", [
    ('Negotiate realm="x"', "without a Bearer challenge"),
    ('Basic realm="registry"', "asks for Basic credentials"),
    ("Bearer", "no usable realm"),
    ('Bearer realm="ftp://127.0.0.1/token"', "no usable realm"),
    ('Bearer realm=""', "no usable realm"),
])
def test_unusable_challenges(env, header, words):
    with FakeRegistry() as fake:
        fake.script(PATH, [Resp(401, headers={"WWW-Authenticate": header})])
        result, events, _, kubectl = probe(fake.base_url, env, ghcr_probe_attempts=2)
    code = "token_failed" if header.startswith("Bearer") else "unauthorized"
    assert_probe_failed(result, events, code, kubectl)
    assert words in probe_line(events)["error"]["message"]


def test_token_realm_refuses_connections(env):
    with FakeRegistry() as gone:
        realm = gone.base_url + "/token"
    with FakeRegistry(auth=True, realm=realm) as fake:
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        result, events, sleeps, kubectl = probe(fake.base_url, env, ghcr_probe_attempts=2)
    assert_probe_failed(result, events, "connection", kubectl)
    assert gone.host in probe_line(events)["error"]["message"] and sleeps == [1]


def test_token_realm_that_never_answers(env):
    server = RawServer("listen")
    try:
        with FakeRegistry(auth=True, realm=server.base_url + "/token") as fake:
            fake.add_manifest(REPO, "v2.35.9", DIGEST)
            result, events, _, kubectl = probe(fake.base_url, env, http_timeout=1,
                                               ghcr_probe_attempts=1)
    finally:
        server.stop()
    assert_probe_failed(result, events, "timeout", kubectl)


def test_token_endpoint_401_without_credentials(env):
    with FakeRegistry(auth=True, users={"alice": "pw"}) as fake:   # every token needs them
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        result, events, _, kubectl = probe(fake.base_url, env, ghcr_probe_attempts=1)
    assert_probe_failed(result, events, "token_failed", kubectl)
    assert "answered 401" in probe_line(events)["error"]["message"]


def test_403_to_a_token_drops_it(env):
    with FakeRegistry(auth=True) as fake:
        fake.script(PATH, [Resp(403)], require_auth=True)
        result, events, _, kubectl = probe(fake.base_url, env, ghcr_probe_attempts=3)
        tokens = fake.token_requests
    assert_probe_failed(result, events, "denied", kubectl)
    assert "private or missing" in probe_line(events)["error"]["message"]
    assert len(tokens) == 3              # never re-sent after a 403


def test_token_with_a_huge_expires_in(env):
    with FakeRegistry(auth=True) as fake:
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        fake.tokens["tok-huge"] = {"scopes": [(REPO, ("pull",))], "user": None,
                                   "issued": time.time()}
        fake.script("/token", [Resp(200, body='{"token": "tok-huge", "expires_in": 1%s}'
                                    % ("0" * 400))])
        result, events, _, _ = probe(fake.base_url, env, ghcr_probe_attempts=1)
    assert result.exit_code == 0 and probe_line(events)["digest"] == DIGEST


def test_token_body_nested_too_deeply(env):
    with FakeRegistry(auth=True) as fake:
        fake.script("/token", [Resp(200, body="[" * 100000)])
        result, events, _, kubectl = probe(fake.base_url, env, ghcr_probe_attempts=1)
    assert_probe_failed(result, events, "token_failed", kubectl)


def test_challenge_with_a_malformed_realm_url(env):
    with FakeRegistry() as fake:
        fake.script(PATH, [Resp(401, headers={
            "WWW-Authenticate": 'Bearer realm="http://[::1/token",service="x"'})])
        result, events, _, kubectl = probe(fake.base_url, env, ghcr_probe_attempts=1)
    assert result.exit_code == 3 and probe_line(events)["error"]["code"] == "token_failed"


@pytest.mark.parametrize("status", [
    301, 302, 303, 307,
    308,        # urllib has no 308 handler before Python 3.11; SafeRedirectHandler adds one
])
def test_redirect_to_another_host_with_a_token_keeps_head_and_accept(env, status):
    # the HEAD after the token is redirected: the token stays home (test_probe covers the
    # unauthenticated redirect; this one carries a Bearer token when it is redirected)
    with FakeRegistry(auth=True) as fake, FakeRegistry() as other:
        other.add_manifest(REPO, "v2.35.9", DIGEST)
        fake.script(PATH, [Resp(status, headers={"Location": other.base_url + PATH})],
                    require_auth=True)
        result, events, _, _ = probe(fake.base_url, env)
        sent = fake.requests
        moved = other.requests
    assert result.exit_code == 0 and probe_line(events)["digest"] == DIGEST
    assert sent[-1]["headers"]["Authorization"].startswith("Bearer ")
    assert [(r["method"], r["path"]) for r in moved] == [("HEAD", PATH)]
    assert moved[0]["headers"].get("Authorization") is None
    assert moved[0]["headers"]["Accept"] == FULL_ACCEPT


def trusted_opener(fake):
    return bump_image.default_opener(ssl.create_default_context(cafile=fake.cert_path))


def test_https_to_http_redirect_is_refused(env):
    with FakeRegistry(tls=True) as fake:
        fake.script(PATH, [Resp(302, headers={
            "Location": "http://registry.example.com" + PATH})])
        result, events, sleeps, kubectl = probe(fake.base_url, env, opener=trusted_opener(fake),
                                                ghcr_probe_attempts=5)
    assert_probe_failed(result, events, "registry_error", kubectl)
    line = probe_line(events)
    assert line["attempts"] == 1 and sleeps == []               # will not change: not retried
    assert "refusing a redirect from https to http" in line["error"]["message"]


def test_https_to_loopback_http_redirect_is_allowed_without_authorization(env):
    with FakeRegistry(tls=True, auth=True) as fake, FakeRegistry() as plain:
        plain.add_manifest(REPO, "v2.35.9", DIGEST)
        fake.script(PATH, [Resp(307, headers={"Location": plain.base_url + PATH})],
                    require_auth=True)
        result, events, _, _ = probe(fake.base_url, env, opener=trusted_opener(fake))
        moved = plain.requests
    assert result.exit_code == 0 and probe_line(events)["digest"] == DIGEST
    assert moved[0]["method"] == "HEAD" and moved[0]["headers"].get("Authorization") is None


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/x", "SELF"])
def test_redirects_that_are_not_followed(env, location):
    with FakeRegistry() as fake:
        target = fake.base_url + PATH if location == "SELF" else location   # SELF: a loop
        fake.script(PATH, [Resp(302, headers={"Location": target})])
        result, events, sleeps, kubectl = probe(fake.base_url, env, ghcr_probe_attempts=3)
    assert_probe_failed(result, events, "registry_error", kubectl)
    assert probe_line(events)["attempts"] == 1 and sleeps == []
    assert "redirect was not followed" in probe_line(events)["error"]["message"]


def test_error_bodies_are_never_read(env):
    # a 500 from the token endpoint that announces 1 GiB and sends nothing: not waited for
    with FakeRegistry(auth=True) as fake:
        fake.script("/token", [Resp(500, headers={"Content-Length": str(1 << 30)})])
        started = time.monotonic()
        result, events, _, kubectl = probe(fake.base_url, env, http_timeout=5,
                                           ghcr_probe_attempts=1)
        elapsed = time.monotonic() - started
    assert_probe_failed(result, events, "token_failed", kubectl)
    assert elapsed < 3


def test_too_many_response_headers(env):
    with FakeRegistry() as fake:
        fake.script(PATH, [Resp(200, headers={"X-Filler-%d" % i: "y" for i in range(150)})])
        result, events, _, kubectl = probe(fake.base_url, env, ghcr_probe_attempts=2)
    assert_probe_failed(result, events, "connection", kubectl)
    assert "more than 100 headers" in probe_line(events)["error"]["message"]


def test_trickled_token_body_is_cut_off_at_the_deadline(env):
    server = RawServer("trickle-body")
    try:
        finished, outcome, _ = probe_in_thread(server.base_url, env, limit=3)
    finally:
        server.stop()
    assert finished, "the probe was still reading a trickled body after 3 s (http_timeout=1)"
    assert probe_line(outcome["events"])["error"]["code"] == "timeout"


def test_trickled_response_headers_are_cut_off_at_the_deadline(env):
    """A 200 status line whose headers never end: the request's deadline cuts it, and
    the cut answer is a time-out, never an available image (http.client would make a
    200 of the half-read headers: release 2.0.0 took it as available and patched)."""
    server = RawServer("trickle-headers")
    kubectl = FakeKubectl()
    try:
        finished, outcome, _ = probe_in_thread(server.base_url, env, limit=3, runner=kubectl)
    finally:
        server.stop()
    assert finished, "the probe was still reading trickled headers after 3 s (http_timeout=1)"
    assert "raised" not in outcome, outcome
    events = outcome["events"]
    line = probe_line(events)
    assert line["status"] == "unavailable" and line["digest"] is None, line
    assert line["error"]["code"] == "timeout" and line["attempts"] == 1, line
    assert "within 1 s" in line["error"]["message"], line
    assert [e["event"] for e in events] == ["probe", "summary"]
    assert events[-1]["exit_code"] == 3 and events[-1]["changed"] == 0
    assert kubectl.calls == []                        # nothing read, nothing patched


def test_tls_to_a_plain_http_server_fails_clearly_without_http_fallback(env):
    with FakeRegistry() as plain:
        plain.add_manifest(REPO, "v2.35.9", DIGEST)
        url = "https://" + plain.host
        result, events, _, kubectl = probe(url, env, ghcr_probe_attempts=2)
        logged = plain.requests
    assert_probe_failed(result, events, "tls", kubectl)
    assert "TLS failed with " + plain.host in probe_line(events)["error"]["message"]
    assert logged == []          # the TLS hello is not a request; nothing retried over http


# ---------------------------------------------------------------------------
# kubectl: the binary
# ---------------------------------------------------------------------------

def cli(env, runner=None, **payload):
    payload = dict({"image": NEW, "probe": "never"}, **payload)
    effects = {"env": env}
    if runner is not None:
        effects["runner"] = runner
    return run_cli(["--payload", json.dumps(payload)], **effects)


def script(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


@pytest.mark.parametrize("kind", ["directory", "not-executable"])
def test_kubectl_path_that_cannot_run_is_exit_4(env, tmp_path, kind):
    target = tmp_path / "kubectl"
    if kind == "directory":
        target.mkdir()
    else:
        target.write_text("#!/bin/sh\nexit 0\n")
    run = cli(env, kubectl=str(target))
    assert run.code == 4 and "Traceback" not in run.stderr
    (event,) = run.events
    assert event["error"]["code"] == "kubectl_missing" and event["exit_code"] == 4


def test_kubectl_with_a_missing_interpreter_is_kubectl_failed(env, tmp_path):
    kubectl = script(tmp_path / "kubectl", "#!/nonexistent/interpreter\n")
    run = cli(env, kubectl=kubectl)
    assert_cli_contract(run, 1)
    assert list(run.components) == list(bump_image.DEFAULT_DEPLOYMENTS)
    for comp in run.event("component"):
        assert comp["error"]["code"] == "kubectl_failed"
        assert comp["error"]["message"].startswith("cannot run " + kubectl)


def test_kubectl_that_is_not_a_program_is_reported(env, tmp_path):
    path = tmp_path / "kubectl"
    path.write_bytes(b"\x7fELF-not-really\x00\x01\x02")
    path.chmod(0o755)
    run = cli(env, kubectl=str(path))
    assert_cli_contract(run, 1)
    # every workload says why: the kernel refused to run it (ENOEXEC), nothing else
    message = "cannot run %s: %s" % (path, os.strerror(errno.ENOEXEC))
    assert [(c["component"], c["status"], c["error"]["code"], c["error"]["message"])
            for c in run.event("component")] == [
        (name, "error", "kubectl_failed", message) for name in bump_image.DEFAULT_DEPLOYMENTS]
    assert run.summary["errors"] == 3 and run.summary["changed"] == 0


@pytest.mark.parametrize("output", [b"deployment.apps/noetl-server\n", b"\xff\xfe{not json",
                                    b"[1, 2, 3]"])
def test_kubectl_that_prints_something_other_than_json(env, tmp_path, output):
    (tmp_path / "out").write_bytes(output)
    kubectl = script(tmp_path / "kubectl", "#!/bin/sh\ncat %s\n" % (tmp_path / "out"))
    run = cli(env, kubectl=kubectl)
    assert_cli_contract(run, 1)
    assert list(run.components) == list(bump_image.DEFAULT_DEPLOYMENTS)
    for comp in run.event("component"):
        assert comp["error"]["code"] == "kubectl_failed"
        assert "printed" in comp["error"]["message"]


class RaisingOnPoll(FakeKubectl):
    """The in-memory kubectl, but starting the reads of a rollout wait fails like
    fork() can."""

    def __call__(self, argv, timeout, env=None, tag=None):
        if argv[1] == "get" and self.reads:
            self.calls.append(list(argv))
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return super().__call__(argv, timeout, env=env, tag=tag)


def test_failing_to_start_the_rollout_wait_is_an_error_not_a_change(env):
    kubectl = RaisingOnPoll()
    run = cli(env, runner=kubectl, deployment="noetl-server")
    assert "Traceback" not in run.stderr
    assert run.code == 1
    err = run.components["noetl-server"]["error"]
    assert run.components["noetl-server"]["status"] == "error"
    assert err["code"] == "kubectl_failed" and "cannot run kubectl: Resource temporarily" \
        " unavailable" in err["message"]
    assert kubectl.verbs().count("get noetl-server") == bump_image.READ_STRIKES + 1


class Recording:
    """Wraps a runner; records every call's argv and timeout."""

    def __init__(self, inner):
        self.inner = inner
        self.seen = []

    def resolve(self, binary, env):
        return self.inner.resolve(binary, env)

    def kill(self, tag=None):
        self.inner.kill(tag)

    def __call__(self, argv, timeout, env=None, tag=None):
        self.seen.append((list(argv), timeout))
        return self.inner(argv, timeout=timeout, env=env, tag=tag)


def test_every_kubectl_call_has_a_deadline(env):
    kubectl = FakeKubectl(context="sim")
    kubectl.rollout["noetl-worker"] = "deadline"
    runner = Recording(kubectl)
    run = cli(env, runner=runner, expected_kube_context="sim", rollback_on_failure=True,
              rollout_timeout_seconds=120)
    assert run.code == 1
    verbs = set()
    for argv, timeout in runner.seen:
        verb = " ".join(a for a in argv[1:3] if not a.startswith("-"))
        verbs.add(verb)
        assert isinstance(timeout, (int, float)) and 0 < timeout < float("inf"), (argv, timeout)
        assert timeout == bump_image.KUBECTL_CALL_TIMEOUT
        if verb != "config current-context":
            assert "--request-timeout=%dms" % (bump_image.KUBECTL_REQUEST_TIMEOUT * 1000) in argv
    assert verbs == {"config current-context", "get deployment/noetl-server",
                     "get deployment/noetl-worker", "get deployment/ollama-bridge",
                     "patch deployment", "rollout undo", "get replicasets,pods"}


class ShortDeadline(ProcessRunner):
    """The real runner with every deadline cut to ``limit`` seconds (30 s is too slow)."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit

    def __call__(self, argv, timeout, env=None, tag=None):
        return super().__call__(argv, min(timeout, self.limit), env=env, tag=tag)


def processes_with(marker):
    """pids whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry))
    return found


def wait_gone(marker, timeout=3.0):
    deadline = time.monotonic() + timeout
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return processes_with(marker)


def test_a_hanging_kubectl_is_killed_and_reported(env, tmp_path):
    marker = "31.4159%d" % os.getpid()
    kubectl = script(tmp_path / "kubectl", "#!/bin/sh\nexec sleep %s\n" % marker)
    started = time.monotonic()
    run = cli(env, runner=ShortDeadline(1.0), kubectl=kubectl)
    elapsed = time.monotonic() - started
    assert_cli_contract(run, 1)
    assert elapsed < 6
    for comp in run.event("component"):
        assert comp["error"]["code"] == "kubectl_failed"
        assert "did not finish within" in comp["error"]["message"]
    assert wait_gone(marker) == []


FAKE_KUBECTL = r"""#!%(python)s
import json, sys, time
args = sys.argv[1:]
dep = {"apiVersion": "apps/v1", "kind": "Deployment",
       "metadata": {"name": "noetl-server", "namespace": "noetl", "uid": "u", "generation": 1,
                    "annotations": {"deployment.kubernetes.io/revision": "1"}},
       "spec": {"replicas": 1, "template": {"spec": {"containers": [
           {"name": "server", "image": "%(old)s"}]}}},
       "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                  "availableReplicas": 1}}
import os
mark = os.path.join(os.path.dirname(sys.argv[0]), "patched")
if args[:2] == ["get", "deployment/noetl-server"] and os.path.exists(mark):
    time.sleep(60)          # a read of the rollout wait hangs  %(marker)s
elif args[:2] == ["get", "deployment/noetl-server"]:
    print(json.dumps(dep))
elif args[:1] == ["patch"]:
    open(mark, "w").close()
    print("deployment.apps/noetl-server patched")
elif args[:1] == ["get"] and args[1] in ("deployments,replicasets,pods", "replicasets,pods"):
    print(json.dumps({"kind": "List", "items": []}))
else:
    sys.exit(3)
"""


def test_a_hanging_rollout_wait_is_killed_at_its_deadline(env, tmp_path):
    """Every read of the rollout hangs: each is killed at its deadline (cut to 1.5 s
    here); three in a row end the wait (kubectl_failed, saying so); nothing is left."""
    marker = "hang-marker-%d" % os.getpid()
    kubectl = script(tmp_path / "kubectl", FAKE_KUBECTL % {
        "python": sys.executable, "old": OLD, "marker": marker})
    started = time.monotonic()
    run = cli(env, runner=ShortDeadline(1.5), kubectl=kubectl, deployment="noetl-server",
              fail_fast_seconds=600)
    elapsed = time.monotonic() - started
    assert_cli_contract(run, 1)
    err = run.components["noetl-server"]["error"]
    assert err["code"] == "kubectl_failed"
    # (the runner here cuts each call to 1.5 s; the tool's own deadline for it is 30 s)
    assert "cannot read it during its rollout: kubectl get deployments did not finish within" \
        " 30 s" in err["message"]
    assert 4.5 <= elapsed < 12
    assert wait_gone(tmp_path.name) == []


def test_a_wrapper_whose_child_hangs_is_killed_at_the_deadline(tmp_path):
    marker = "20.000%d" % os.getpid()             # the grandchild sleeps ~20 s
    wrapper = script(tmp_path / "kubectl", "#!/bin/sh\nsleep %s\necho done\n" % marker)
    box = {}
    thread = threading.Thread(target=lambda: box.update(
        done=ProcessRunner()([wrapper, "get"], timeout=0.5)), daemon=True)
    thread.start()
    try:
        thread.join(3)
        assert not thread.is_alive(), "the deadline was 0.5 s; the call still runs after 3 s"
        assert box["done"].timed_out
    finally:
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)
        thread.join(5)


# ---------------------------------------------------------------------------
# kubectl against the simulated API server (the real kubectl, both versions)
# ---------------------------------------------------------------------------

DEFAULTS = ["noetl-server", "noetl-worker", "ollama-bridge"]


def polled_after_patch(cluster, name):
    """The deployment was read after its (last) PATCH: its rollout is waited for."""
    requests = [r for r in cluster.api_requests() if r["path"].endswith("/deployments/" + name)]
    patches = [i for i, r in enumerate(requests) if r["method"] == "PATCH"]
    return bool(patches) and any(r["method"] == "GET" for r in requests[patches[-1] + 1:])


@pytest.mark.e2e
def test_forbidden_read_is_kubectl_failed_never_not_found(cluster):
    cluster.noetl()
    cluster.sim.inject_fault(method="GET", path_regex=r"/namespaces/noetl/deployments/",
                             status=403, reason="Forbidden")
    run = cluster.bump(cluster.payload(image=NEW, deployments=DEFAULTS))
    assert_cli_contract(run, 1)
    for comp in run.event("component"):
        assert comp["status"] == "error" and comp["error"]["code"] == "kubectl_failed", comp
        assert ("Forbidden (403)" if cluster.api else "(Forbidden)") in comp["error"]["message"]
        assert "cannot get resource" in comp["error"]["message"]
    assert cluster.writes() == []


@pytest.mark.e2e
def test_not_found_when_patching_is_kubectl_failed_and_the_others_go_on(cluster):
    cluster.noetl()
    cluster.sim.inject_fault(method="PATCH", path_regex=r"/deployments/noetl-server$",
                             status=404, reason="NotFound",
                             message='deployments.apps "noetl-server" not found')
    run = cluster.bump(cluster.payload(image=NEW))
    assert_cli_contract(run, 1)
    err = run.components["noetl-server"]["error"]
    assert err["code"] == "kubectl_failed"
    said = ("the API answered 404 to patch deployments/noetl-server: " if cluster.api
            else "Error from server (NotFound): ")
    assert said + 'deployments.apps "noetl-server" not found' in err["message"]
    assert run.components["noetl-worker"]["status"] == "changed"
    assert run.components["ollama-bridge"]["status"] == "changed"


@pytest.mark.e2e
def test_admission_webhook_denial(cluster):
    cluster.noetl()
    denial = ('admission webhook "policy.example.com" denied the request: images must be'
              ' signed by release-key')
    cluster.sim.inject_fault(method="PATCH", path_regex=r"/deployments/noetl-worker$",
                             status=403, reason="Forbidden", message=denial)
    run = cluster.bump(cluster.payload(image=NEW))
    assert_cli_contract(run, 1)
    err = run.components["noetl-worker"]["error"]
    assert err["code"] == "kubectl_failed" and denial in err["message"]
    assert "lacks this permission" not in err["message"]     # a webhook, not RBAC
    assert run.components["noetl-server"]["status"] == "changed"
    assert run.components["ollama-bridge"]["status"] == "changed"
    assert cluster.image("noetl-worker", "worker") == OLD
    # the refused change is not waited for: no read of it after its PATCH
    assert not polled_after_patch(cluster, "noetl-worker")


@pytest.mark.e2e
def test_unreachable_api_server(cluster, tmp_path):
    from k8s_sim import write_kubeconfig
    with socket.socket() as s:                  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    if cluster.api:
        run = cluster.bump(cluster.payload(image=NEW), env=dict(
            cluster.env, KUBERNETES_SERVICE_PORT=str(port)))
    else:
        kubeconfig = write_kubeconfig(tmp_path / "closed", "http://127.0.0.1:%d" % port)
        run = cluster.bump(cluster.payload(image=NEW, kubeconfig=kubeconfig))
    assert_cli_contract(run, 1)
    for comp in run.event("component"):
        assert comp["error"]["code"] == "kubectl_failed"
        assert "refused" in comp["error"]["message"], comp["error"]["message"]
    assert time.monotonic() - started < 30


@pytest.mark.e2e
@pytest.mark.parametrize("status", [200, 500])
def test_api_answers_that_are_not_json(cluster, status):
    cluster.noetl()
    cluster.sim.inject_fault(method="GET", path_regex=r"/namespaces/noetl/deployments/",
                             status=status, raw_body="<html><body>gateway says hi</body></html>")
    run = cluster.bump(cluster.payload(image=NEW))
    assert_cli_contract(run, 1)
    if cluster.api:
        words = "with something that is not JSON" if status == 200 else "answered 500"
    else:
        words = "serializer for text/html" if status == 200 else "(InternalError)"
    for comp in run.event("component"):
        assert comp["error"]["code"] == "kubectl_failed"
        assert words in comp["error"]["message"], comp["error"]["message"]
    assert cluster.writes() == []


@pytest.mark.e2e
def test_deployment_deleted_during_its_rollout(cluster):
    cluster.noetl()
    cluster.sim.set_behaviour("noetl-server", "noetl", {"mode": "hang"})
    box = {}

    def go():
        box["run"] = cluster.bump(cluster.payload(image=NEW, fail_fast_seconds=600,
                                                  rollout_timeout_seconds=60))

    thread = threading.Thread(target=go, daemon=True)
    thread.start()

    cluster.sim.wait_for(lambda sim: polled_after_patch(cluster, "noetl-server"), timeout=30,
                         what="the rollout wait polling noetl-server")
    time.sleep(0.3)
    cluster.sim.delete_deployment("noetl-server")
    thread.join(40)
    assert not thread.is_alive()
    run = box["run"]
    assert_cli_contract(run, 1)
    comp = run.components["noetl-server"]
    assert comp["status"] == "error" and comp["error"]["code"] == "rollout_failed", comp
    assert "went away" in comp["error"]["message"]
    assert run.components["noetl-worker"]["status"] == "changed"
    assert run.components["ollama-bridge"]["status"] == "changed"


# ---------------------------------------------------------------------------
# Process: SIGINT / SIGTERM delivered to the real CLI
# ---------------------------------------------------------------------------

def children_of(pid):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Tool:
    """The real CLI as a child process, its stderr followed line by line."""

    def __init__(self, payload, env):
        self.proc = subprocess.Popen([sys.executable, TOOL, "--payload", json.dumps(payload)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stderr:
            self.lines.append(raw.decode("utf-8", "replace"))

    def wait_for(self, predicate, what, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.proc.kill()
        out = self.proc.communicate()[0]
        raise AssertionError("never reached %s; stderr: %s; stdout: %s"
                             % (what, "".join(self.lines), out))

    def saw(self, pattern):
        return any(re.search(pattern, line) for line in self.lines)

    def interrupt(self, signum):
        sent = time.monotonic()
        os.kill(self.proc.pid, signum)
        try:
            out = self.proc.stdout.read()
            self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.elapsed = time.monotonic() - sent
        self.reader.join(5)
        self.stdout = out.decode()
        self.stderr = "".join(self.lines)
        self.events = [json.loads(line) for line in self.stdout.splitlines()]
        return self.proc.returncode


def stub_kubectl(tmp_path):
    """A kubectl that must never run: it leaves a mark."""
    mark = tmp_path / "kubectl-ran"
    return script(tmp_path / "kubectl", "#!/bin/sh\ntouch %s\nexit 99\n" % mark), mark


SIGNALS = [pytest.param(signal.SIGINT, 130, "SIGINT", id="SIGINT"),
           pytest.param(signal.SIGTERM, 143, "SIGTERM", id="SIGTERM")]


def assert_interrupted_probe(tool, code, name):
    assert tool.proc.returncode == code, tool.stdout + tool.stderr
    assert tool.elapsed < 2, "took %.2f s after the signal" % tool.elapsed
    assert "Traceback" not in tool.stderr
    assert [e["event"] for e in tool.events] == ["probe", "summary"]
    probe_event, summary = tool.events
    assert probe_event["status"] == "unavailable"
    assert probe_event["error"] == {"code": "interrupted", "message": "interrupted by " + name}
    assert summary["status"] == "interrupted" and summary["exit_code"] == code


@pytest.mark.parametrize("signum, code, name", SIGNALS)
def test_signal_while_a_probe_request_hangs(env, tmp_path, signum, code, name):
    kubectl, mark = stub_kubectl(tmp_path)
    with FakeRegistry() as fake:
        fake.script(PATH, [Resp(hang=True)])
        tool = Tool({"image": IMAGE, "registry_mirrors": {"ghcr.io": fake.base_url},
                     "kubectl": kubectl}, env)
        tool.wait_for(lambda: fake.requests, "the HEAD request")
        time.sleep(0.2)
        assert children_of(tool.proc.pid) == []          # no kubectl during the probe
        tool.interrupt(signum)
    assert_interrupted_probe(tool, code, name)
    assert not mark.exists()


@pytest.mark.parametrize("signum, code, name", SIGNALS)
def test_signal_while_the_probe_sleeps(env, tmp_path, signum, code, name):
    kubectl, mark = stub_kubectl(tmp_path)
    with FakeRegistry() as fake:
        tool = Tool({"image": IMAGE, "registry_mirrors": {"ghcr.io": fake.base_url},
                     "kubectl": kubectl, "ghcr_probe_attempts": 5,
                     "ghcr_probe_sleep_seconds": 600}, env)
        tool.wait_for(lambda: tool.saw(r"attempt 1/5: manifest_unknown.*next in 600 s"),
                      "the first probe sleep")
        assert children_of(tool.proc.pid) == []
        tool.interrupt(signum)
    assert_interrupted_probe(tool, code, name)
    assert not mark.exists()


def test_interrupted_probe_line_counts_the_attempts_made(env, tmp_path):
    kubectl, _ = stub_kubectl(tmp_path)
    with FakeRegistry() as fake:
        tool = Tool({"image": IMAGE, "registry_mirrors": {"ghcr.io": fake.base_url},
                     "kubectl": kubectl, "ghcr_probe_attempts": 5,
                     "ghcr_probe_sleep_seconds": 600}, env)
        tool.wait_for(lambda: tool.saw(r"attempt 1/5"), "the first probe sleep")
        tool.interrupt(signal.SIGINT)
    assert tool.events[0]["attempts"] == 1


@pytest.mark.e2e
@pytest.mark.parametrize("signum, code, name", SIGNALS)
def test_signal_during_a_rollout_wait(cluster, signum, code, name):
    # noetl-server is already at the target (finished, unchanged); noetl-worker's new pods
    # hang, so the tool sits in its rollout wait; ollama-bridge is never reached
    cluster.sim.add_deployment("noetl-server", containers=[{"name": "server", "image": NEW}])
    cluster.sim.add_deployment("noetl-worker", containers=[{"name": "worker", "image": OLD}])
    cluster.sim.add_deployment("ollama-bridge", containers=[{"name": "bridge", "image": OLD}])
    cluster.sim.set_image_behaviour(NEW, {"mode": "hang"})
    tool = Tool(cluster.payload(image=NEW, fail_fast_seconds=600), cluster.env)
    pid = tool.proc.pid

    tool.wait_for(lambda: tool.saw(r"noetl-worker: waiting for the rollout"), "the rollout wait")
    tool.wait_for(lambda: tool.saw(r'noetl-worker: Waiting for deployment "noetl-worker"'
                                   r" rollout to finish"), "a poll's verdict")
    kids = children_of(pid)            # a poll's kubectl, when one is running
    tool.interrupt(signum)
    assert tool.proc.returncode == code, tool.stdout + tool.stderr
    assert tool.elapsed < 2, "took %.2f s after the signal" % tool.elapsed
    assert "Traceback" not in tool.stderr
    assert [e["event"] for e in tool.events] == ["probe", "component", "component", "component",
                                                 "summary"]
    comps = {e["component"]: e for e in tool.events if e["event"] == "component"}
    assert list(comps) == DEFAULTS
    assert comps["noetl-server"]["status"] == "unchanged"
    for name_ in ("noetl-worker", "ollama-bridge"):
        assert comps[name_]["status"] == "error"
        assert comps[name_]["error"]["code"] == "interrupted"
        assert comps[name_]["error"]["message"].startswith("interrupted by " + name)
    assert "may have been applied" in comps["noetl-worker"]["error"]["message"]
    assert "before this workload was checked or changed" in comps["ollama-bridge"]["error"]["message"]
    summary = tool.events[-1]
    assert summary["status"] == "interrupted" and summary["exit_code"] == code
    assert summary["unchanged"] == 1 and summary["errors"] == 2
    assert [k for k in kids if alive(k)] == []
    assert processes_with(cluster.kubeconfig) == []      # no kubectl of this run survives
    assert cluster.image("ollama-bridge", "bridge") == OLD


def test_signal_while_the_payload_is_read_from_stdin(env):
    proc = subprocess.Popen([sys.executable, TOOL, "--payload", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        time.sleep(2.0)                       # the tool waits on stdin
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143
    assert b"Traceback" not in err
    (event,) = [json.loads(line) for line in out.decode().splitlines()]
    assert event["event"] == "error" and event["exit_code"] == 143
    assert event["error"]["code"] == "interrupted"


# ---------------------------------------------------------------------------
# version 2: signals are recorded, acted on where the run waits; the summary is last
# ---------------------------------------------------------------------------

class SignalOnComponentLine:
    """stdout that sends the process a signal while the component lines are
    written (the review found: component lines, then an error line, no summary)."""

    def __init__(self, signum):
        self.signum, self.text, self.sent = signum, "", False

    def write(self, text):
        if '"event": "component"' in text and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)
        self.text += text

    def flush(self):
        pass


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_results_are_written_still_ends_with_the_summary(env, signum):
    out = SignalOnComponentLine(signum)
    code = bump_image.main(["--payload", json.dumps({"image": IMAGE, "probe": "never"})],
                           stdout=out, stderr=open(os.devnull, "w"), env=env,
                           runner=FakeKubectl(), sleeper=lambda s: None)
    events = [json.loads(line) for line in out.text.splitlines()]
    assert out.sent
    assert [e["event"] for e in events] == ["probe"] + ["component"] * 3 + ["summary"]
    assert events[-1]["exit_code"] == code == 0       # the run had finished: it stands


class StuckBody:
    """A registry answer whose body takes 5 s to read (a probe thread that does not
    end at once when the run is interrupted)."""

    def __init__(self, status, headers, body=b""):
        self.status, self.headers, self.body = status, headers, body

    def getcode(self):
        return self.status

    def read(self, size=-1):
        time.sleep(5)
        return b""

    def close(self):
        pass


class StuckTokenOpener:
    """HEAD: 401 with a Bearer challenge; the token's body hangs for 5 s."""

    def open(self, request, timeout=None):
        import email.message
        import urllib.error
        headers = email.message.Message()
        if request.get_method() == "HEAD":
            headers["WWW-Authenticate"] = 'Bearer realm="https://auth.example/token"'
            raise urllib.error.HTTPError(request.full_url, 401, "Unauthorized", headers, None)
        return StuckBody(200, headers)


def run_with_signals(env, signals, delay=0.5):
    """main() in this process, sending SIGINT ``signals`` times from a timer."""
    for i in range(signals):
        threading.Timer(delay + 0.2 * i, os.kill, (os.getpid(), signal.SIGINT)).start()
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    code = bump_image.main(["--payload", json.dumps({
        "image": IMAGE, "deployment": "noetl-server"})], stdout=out, stderr=err, env=env,
        runner=FakeKubectl(), opener=StuckTokenOpener(), sleeper=lambda s: None)
    return code, time.monotonic() - started, [json.loads(x) for x in out.getvalue().splitlines()]


def test_a_second_sigint_ends_the_run_at_once_with_a_summary(env):
    code, elapsed_one, events = run_with_signals(env, 1)
    assert code == 130 and events[-1]["event"] == "summary"
    assert elapsed_one >= 1.4          # the first SIGINT waits (up to 1 s) for the probe to end
    code, elapsed_two, events = run_with_signals(env, 2)
    assert code == 130 and events[-1]["event"] == "summary"
    assert events[-1]["status"] == "interrupted"
    assert [e["event"] for e in events] == ["probe", "summary"]
    assert events[0]["error"]["code"] == "interrupted"
    # one signal waits up to 1 s for the stuck probe; the second (0.2 s later) ends that
    assert elapsed_two + 0.5 < elapsed_one, (elapsed_one, elapsed_two)


def test_the_library_installs_no_signal_handler(env):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    seen = []

    class Watching(FakeKubectl):
        def __call__(self, argv, timeout, env=None, tag=None):
            seen.append({sig: signal.getsignal(sig) for sig in before})
            return super().__call__(argv, timeout, env=env, tag=tag)

    result = bump_image.bump({"image": IMAGE, "probe": "never"}, runner=Watching(), env=env)
    assert result.exit_code == 0 and seen
    assert all(handlers == before for handlers in seen)
