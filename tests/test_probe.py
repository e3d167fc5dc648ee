"""The registry probe, run for real over HTTP against the in-process FakeRegistry.

Each test routes ``ghcr.io`` to the fake with ``registry_mirrors`` and runs the
whole tool (``bump``) with the in-memory kubectl, so it also shows that a probe
that gives up changes nothing.
"""

import base64
import email.utils
import hashlib
import http.server
import json
import socket
import threading
import time
import urllib.error

import pytest
from fake_registry import FULL_ACCEPT, MEDIA_DOCKER_MANIFEST, FakeRegistry, Resp
from fakes import IMAGE, FakeKubectl, deployment, run_cli

import bump_image

REPO = "noetl/noetl"
PATH = "/v2/noetl/noetl/manifests/v2.35.9"
DIGEST = "sha256:" + "c" * 64


class Sleeps(list):
    def __call__(self, seconds):
        self.append(seconds)


def run(fake_or_url, env, runner=None, **payload):
    base = fake_or_url if isinstance(fake_or_url, str) else fake_or_url.base_url
    payload.setdefault("image", IMAGE)
    payload.setdefault("registry_mirrors", {"ghcr.io": base})
    payload.setdefault("ghcr_probe_sleep_seconds", 1)
    # the handshake's own requests; the platform check's GETs have tests of their own
    payload.setdefault("check_platforms", "never")
    sleeps = Sleeps()
    kubectl = runner or FakeKubectl()
    events = []
    result = bump_image.bump(payload, runner=kubectl, sleeper=sleeps, env=env,
                             on_event=events.append, http_timeout=2)
    return result, events, sleeps, kubectl


def probe_line(events):
    return next(e for e in events if e["event"] == "probe")


def test_anonymous_token_flow_finds_the_digest(env):
    with FakeRegistry(auth=True) as fake:
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        result, events, sleeps, kubectl = run(fake, env)
        reqs = fake.requests
    assert result.exit_code == 0
    assert probe_line(events) == {"event": "probe", "image": IMAGE, "status": "available",
                                  "attempts": 1, "digest": DIGEST, "error": None,
                                  "platforms": None}
    # 1. HEAD without a token -> 401 challenge; 2. token; 3. HEAD with it -> 200
    assert [(r["method"], r["path"]) for r in reqs] == [
        ("HEAD", PATH), ("GET", "/token"), ("HEAD", PATH)]
    assert reqs[0]["headers"].get("Authorization") is None
    assert reqs[1]["query"]["scope"] == ["repository:noetl/noetl:pull"]
    assert reqs[1]["query"]["service"] == ["fake"]
    assert reqs[2]["headers"]["Authorization"].startswith("Bearer ")
    for r in (reqs[0], reqs[2]):
        assert r["headers"]["Accept"] == FULL_ACCEPT
    assert sleeps == []
    assert all(e["digest"] == DIGEST for e in events if e["event"] == "component")


def test_token_is_reused_across_attempts(env):
    with FakeRegistry(auth=True) as fake:
        fake.script(PATH, [Resp(404), Resp(404), Resp(200, headers={
            "Docker-Content-Digest": DIGEST})], require_auth=True)
        result, events, sleeps, _ = run(fake, env, ghcr_probe_attempts=5)
        reqs = fake.requests
    assert probe_line(events)["attempts"] == 3
    assert probe_line(events)["digest"] == DIGEST
    assert [r["path"] for r in reqs].count("/token") == 1
    heads = [r for r in reqs if r["method"] == "HEAD"]
    assert len(heads) == 4       # the challenged one, then one per attempt
    assert len({r["headers"]["Authorization"] for r in heads[1:]}) == 1
    assert sleeps == [1, 1]


def test_gives_up_after_exactly_the_attempts_and_changes_nothing(env):
    with FakeRegistry() as fake:
        result, events, sleeps, kubectl = run(fake, env, ghcr_probe_attempts=4,
                                              ghcr_probe_sleep_seconds=2.5)
        heads = [r for r in fake.requests if r["method"] == "HEAD"]
    assert result.exit_code == 3
    assert len(heads) == 4
    assert sleeps == [2.5, 2.5, 2.5]        # none after the last attempt
    assert [e["event"] for e in events] == ["probe", "summary"]
    probe = events[0]
    assert probe["status"] == "unavailable" and probe["attempts"] == 4
    assert probe["digest"] is None
    assert probe["error"]["code"] == "manifest_unknown"
    assert "gave up after 4 attempts" in probe["error"]["message"]
    assert events[1]["status"] == "failed" and events[1]["exit_code"] == 3
    assert kubectl.calls == []              # not one kubectl command


def test_pushed_mid_probe_proceeds(env):
    with FakeRegistry(auth=True) as fake:
        fake.script(PATH, [Resp(404), Resp(404)], require_auth=True)

        def push_then_sleep(seconds):
            fake.script(PATH, [Resp(200, headers={"Docker-Content-Digest": DIGEST})],
                        require_auth=True)
        result = bump_image.bump({"image": IMAGE, "registry_mirrors": {"ghcr.io": fake.base_url},
                                  "ghcr_probe_attempts": 5},
                                 runner=FakeKubectl(), sleeper=push_then_sleep, env=env)
    assert result.probe.status == "available" and result.probe.attempts == 2
    assert result.exit_code == 0


@pytest.mark.parametrize("retry_after, expected", [
    ("3", 3.0), ("0", 0), ("7200", bump_image.RETRY_AFTER_CAP)])
def test_429_retry_after_seconds_replaces_the_sleep(env, retry_after, expected):
    with FakeRegistry() as fake:
        fake.script(PATH, [Resp(429, headers={"Retry-After": retry_after}),
                           Resp(200, headers={"Docker-Content-Digest": DIGEST})])
        result, events, sleeps, _ = run(fake, env, ghcr_probe_sleep_seconds=9)
    assert result.exit_code == 0 and probe_line(events)["attempts"] == 2
    assert sleeps == ([expected] if expected else [])


def test_429_retry_after_http_date(env):
    when = email.utils.formatdate(time.time() + 5, usegmt=True)
    with FakeRegistry() as fake:
        fake.script(PATH, [Resp(429, headers={"Retry-After": when}),
                           Resp(200, headers={"Docker-Content-Digest": DIGEST})])
        result, events, sleeps, _ = run(fake, env, ghcr_probe_sleep_seconds=30)
    assert result.exit_code == 0
    assert len(sleeps) == 1 and 2 <= sleeps[0] <= 6


@pytest.mark.parametrize("status", [500, 502, 503, 408])
def test_server_errors_are_retried(env, status):
    with FakeRegistry() as fake:
        fake.script(PATH, [Resp(status), Resp(200, headers={"Docker-Content-Digest": DIGEST})])
        result, events, sleeps, _ = run(fake, env)
    assert result.exit_code == 0 and probe_line(events)["attempts"] == 2 and sleeps == [1]


@pytest.mark.parametrize("status, code", [(500, "server_error"), (503, "server_error"),
                                          (429, "rate_limited"), (404, "manifest_unknown")])
def test_last_classification_is_reported(env, status, code):
    with FakeRegistry() as fake:
        fake.script(PATH, [Resp(status)])
        result, events, _, _ = run(fake, env, ghcr_probe_attempts=2)
    assert result.exit_code == 3
    assert probe_line(events)["error"]["code"] == code


@pytest.mark.parametrize("status", [400, 405, 410])
def test_answers_that_will_not_change_give_up_at_once(env, status):
    with FakeRegistry() as fake:
        fake.script(PATH, [Resp(status)])
        result, events, sleeps, kubectl = run(fake, env, ghcr_probe_attempts=5)
    assert result.exit_code == 3 and probe_line(events)["attempts"] == 1 and sleeps == []
    assert probe_line(events)["error"]["code"] == "registry_error"
    assert kubectl.calls == []


def test_refused_token_is_retried_and_explained(env):
    with FakeRegistry(auth=True, reject_tokens=True) as fake:
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        result, events, sleeps, _ = run(fake, env, ghcr_probe_attempts=3)
        tokens = [r for r in fake.requests if r["path"] == "/token"]
    probe = probe_line(events)
    assert result.exit_code == 3 and probe["attempts"] == 3
    assert probe["error"]["code"] == "unauthorized"
    assert "private or missing" in probe["error"]["message"]
    assert len(tokens) == 3          # a refused token is never sent again


def test_401_without_a_challenge(env):
    with FakeRegistry(auth=True, challenge=False) as fake:
        result, events, _, _ = run(fake, env, ghcr_probe_attempts=2)
    assert result.exit_code == 3
    assert probe_line(events)["error"]["code"] == "unauthorized"
    assert "without a Bearer challenge" in probe_line(events)["error"]["message"]


@pytest.mark.parametrize("mode, ok", [("token", True), ("both", True), ("access_token", True),
                                      ("not-json", False), ("no-token", False),
                                      ("error", False)])
def test_token_endpoint_answers(env, mode, ok):
    with FakeRegistry(auth=True, token_mode=mode) as fake:
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        result, events, _, _ = run(fake, env, ghcr_probe_attempts=2)
    if ok:
        assert result.exit_code == 0 and probe_line(events)["digest"] == DIGEST
    else:
        assert result.exit_code == 3
        assert probe_line(events)["error"]["code"] == "token_failed"


def test_token_body_is_bounded(env):
    with FakeRegistry(auth=True) as fake:
        fake.script("/token", [Resp(200, body=b"{" + b" " * (2 << 20) + b"}")])
        result, events, _, _ = run(fake, env, ghcr_probe_attempts=1)
    assert result.exit_code == 3
    assert "larger than" in probe_line(events)["error"]["message"]


def test_expired_token_is_fetched_again(env):
    with FakeRegistry(auth=True, expires_in=None) as fake:
        fake.script(PATH, [Resp(404), Resp(200, headers={"Docker-Content-Digest": DIGEST})],
                    require_auth=True)
        clock = [1000.0]

        def sleep(seconds):          # the token (60 s at least) expires while we sleep
            clock[0] += 120
        result = bump_image.bump(
            {"image": IMAGE, "registry_mirrors": {"ghcr.io": fake.base_url},
             "ghcr_probe_attempts": 2, "dry_run": True}, runner=FakeKubectl(), env=env,
            sleeper=sleep, clock=lambda: clock[0])     # (a clock that stands still: no waits)
        tokens = fake.token_requests
        heads = [r for r in fake.requests if r["method"] == "HEAD"]
    assert result.probe.status == "available" and result.probe.attempts == 2
    assert len(tokens) == 2
    assert [bool(r["headers"].get("Authorization")) for r in heads] == [False, True, False, True]


def write_docker_config(env, host, user="alice", password="s3cr3t-Pa55-XyZ", form="auth"):
    if form == "auth":
        entry = {"auth": base64.b64encode(("%s:%s" % (user, password)).encode()).decode()}
    else:
        entry = {"username": user, "password": password}
    with open(env["DOCKER_CONFIG"] + "/config.json", "w") as fh:
        json.dump({"auths": {host: entry}}, fh)
    return password


@pytest.mark.parametrize("form", ["auth", "username"])
def test_private_package_with_docker_config_credentials(env, form):
    with FakeRegistry(auth=True, users={"alice": "s3cr3t-Pa55-XyZ"}, private={REPO}) as fake:
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        password = write_docker_config(env, fake.host, form=form)
        result, events, _, _ = run(fake, env)
        reqs = fake.requests
    assert result.exit_code == 0
    token_req = next(r for r in reqs if r["path"] == "/token")
    assert token_req["headers"]["Authorization"].startswith("Basic ")
    for r in reqs:
        if r["path"] != "/token":
            assert "Basic" not in (r["headers"].get("Authorization") or "")
    assert password not in json.dumps(events)


def test_private_package_without_credentials_says_so(env):
    with FakeRegistry(auth=True, users={"alice": "pw"}, private={REPO}) as fake:
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        result, events, _, _ = run(fake, env, ghcr_probe_attempts=2)
    assert result.exit_code == 3
    assert "private or missing" in probe_line(events)["error"]["message"]


def test_wrong_credentials_are_reported_without_the_password(env):
    with FakeRegistry(auth=True, users={"alice": "right"}) as fake:
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        password = write_docker_config(env, fake.host, password="WRONG-pass-123")
        result, events, _, _ = run(fake, env, ghcr_probe_attempts=1)
    assert result.exit_code == 3
    assert "rejected the credentials" in probe_line(events)["error"]["message"]
    assert password not in json.dumps(events)


def test_credentials_are_looked_up_for_the_mirror_host(env):
    with FakeRegistry(auth=True, users={"alice": "pw"}, private={REPO}) as fake:
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        write_docker_config(env, "ghcr.io", password="pw")   # for ghcr.io, not the mirror
        result, events, _, _ = run(fake, env, ghcr_probe_attempts=1)
        token_req = next(r for r in fake.requests if r["path"] == "/token")
    assert result.exit_code == 3
    assert token_req["headers"].get("Authorization") is None


def test_redirect_keeps_head_and_drops_authorization_to_another_host(env):
    with FakeRegistry(auth=True) as fake, FakeRegistry() as other:
        other.add_manifest(REPO, "v2.35.9", DIGEST)
        fake.script(PATH, [Resp(307, headers={"Location": other.base_url + PATH})],
                    require_auth=True)
        result, events, _, _ = run(fake, env)
        moved = other.requests
    assert result.exit_code == 0 and probe_line(events)["digest"] == DIGEST
    assert [r["method"] for r in moved] == ["HEAD"]
    assert moved[0]["headers"].get("Authorization") is None
    assert moved[0]["headers"]["Accept"] == FULL_ACCEPT


def test_redirect_on_the_same_host_keeps_the_token(env):
    with FakeRegistry(auth=True) as fake:
        fake.add_manifest(REPO, "moved", DIGEST)
        fake.script(PATH, [Resp(302, headers={"Location": fake.base_url + PATH.replace(
            "v2.35.9", "moved")})], require_auth=True)
        result, events, _, _ = run(fake, env)
        last = fake.requests[-1]
    assert result.exit_code == 0
    assert last["method"] == "HEAD" and last["headers"]["Authorization"].startswith("Bearer ")


def test_request_time_out_is_a_failed_attempt(env):
    with FakeRegistry() as fake:
        fake.script(PATH, [Resp(hang=True)])
        started = time.monotonic()
        result, events, sleeps, _ = run(fake, env, ghcr_probe_attempts=2)
        elapsed = time.monotonic() - started
    assert result.exit_code == 3 and probe_line(events)["attempts"] == 2
    assert probe_line(events)["error"]["code"] == "timeout"
    assert elapsed < 10


def test_connection_refused(env):
    with FakeRegistry() as fake:
        url = fake.base_url
    result, events, sleeps, _ = run(url, env, ghcr_probe_attempts=3)
    assert result.exit_code == 3 and probe_line(events)["attempts"] == 3
    assert probe_line(events)["error"]["code"] == "connection"
    assert sleeps == [1, 1]


def test_tls_failure_is_clear_and_never_falls_back_to_http(env):
    with FakeRegistry(tls=True) as fake:
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        url = fake.base_url
        assert url.startswith("https://")
        result, events, sleeps, _ = run(url, env, ghcr_probe_attempts=5)
        schemes = {r["tls"] for r in fake.requests}
    probe = probe_line(events)
    assert result.exit_code == 3 and probe["attempts"] == 1 and sleeps == []
    assert probe["error"]["code"] == "tls"
    assert "not trusted" in probe["error"]["message"]
    assert schemes <= {True}


def test_tls_with_a_trusted_certificate(env):
    import ssl
    with FakeRegistry(tls=True) as fake:
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        opener = bump_image.default_opener(ssl.create_default_context(cafile=fake.cert_path))
        result = bump_image.bump({"image": IMAGE, "registry_mirrors": {
            "ghcr.io": fake.base_url}}, runner=FakeKubectl(), opener=opener, env=env)
    assert result.probe.status == "available" and result.probe.digest == DIGEST


class RaisingOpener:
    def __init__(self, exc):
        self.exc = exc
        self.calls = 0

    def open(self, request, timeout=None):
        self.calls += 1
        assert timeout is not None
        raise self.exc


@pytest.mark.parametrize("exc, code", [
    (urllib.error.URLError(socket.gaierror(-2, "Name or service not known")), "dns"),
    (urllib.error.URLError(socket.timeout("timed out")), "timeout"),
    (socket.timeout("timed out"), "timeout"),
    (urllib.error.URLError(ConnectionRefusedError(111, "refused")), "connection"),
    (ConnectionResetError(104, "reset"), "connection"),
])
def test_network_errors_are_classified_and_retried(env, exc, code):
    opener = RaisingOpener(exc)
    result = bump_image.bump({"image": IMAGE, "ghcr_probe_attempts": 3}, runner=FakeKubectl(),
                             opener=opener, sleeper=lambda s: None, env=env)
    assert result.exit_code == 3 and opener.calls == 3
    assert result.probe.error["code"] == code


def test_local_images_are_not_probed(env):
    events = []
    result = bump_image.bump({"image": "noetl:dev"}, runner=FakeKubectl(), opener=RaisingOpener(
        AssertionError("contacted")), env=env, on_event=events.append)
    assert probe_line(events) == {"event": "probe", "image": "noetl:dev", "status": "skipped",
                                  "attempts": 0, "digest": None, "error": None,
                                  "platforms": None}
    assert result.exit_code == 0


def test_probe_always_uses_plain_http_for_loopback(env):
    with FakeRegistry() as fake:
        fake.add_manifest("noetl/noetl", "dev", DIGEST)
        result = bump_image.bump({"image": "%s/noetl/noetl:dev" % fake.host, "probe": "always"},
                                 runner=FakeKubectl(), env=env)
        assert fake.requests[0]["tls"] is False
    assert result.probe.status == "available" and result.probe.digest == DIGEST


def test_probe_by_digest(env):
    with FakeRegistry() as fake:
        fake.add_manifest(REPO, "v1", DIGEST)
        result = bump_image.bump({"image": "ghcr.io/noetl/noetl:v1@" + DIGEST,
                                  "registry_mirrors": {"ghcr.io": fake.base_url}},
                                 runner=FakeKubectl(), env=env)
        assert fake.requests[0]["path"].endswith("/manifests/" + DIGEST)
    assert result.probe.digest == DIGEST


@pytest.mark.parametrize("header, expected", [
    ('Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:a/b:pull"',
     [("bearer", {"realm": "https://ghcr.io/token", "service": "ghcr.io",
                  "scope": "repository:a/b:pull"})]),
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
     'scope="repository:library/x:pull,push"',
     [("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                  "scope": "repository:library/x:pull,push"})]),
    ('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"})]),
    ('Bearer realm=https://x/token, error=invalid_token',
     [("bearer", {"realm": "https://x/token", "error": "invalid_token"})]),
    ('Basic realm="a", Bearer realm="b\\"q"', [("basic", {"realm": "a"}),
                                              ("bearer", {"realm": 'b"q'})]),
    ("", []),
])
def test_parse_challenges(header, expected):
    assert bump_image.parse_challenges([header]) == expected


@pytest.mark.parametrize("host, env, direct", [
    ("127.0.0.1", {}, True), ("localhost", {}, True), ("::1", {}, True),
    ("ghcr.io", {}, False), ("ghcr.io", {"no_proxy": "ghcr.io"}, True),
    ("pkg.ghcr.io", {"NO_PROXY": ".ghcr.io,example.com"}, True),
    ("ghcr.io.evil", {"no_proxy": "ghcr.io"}, False), ("x.y", {"no_proxy": "*"}, True),
])
def test_proxy_bypass(host, env, direct):
    assert bump_image.bypasses_proxy(host, env) is direct


def test_proxy_from_the_given_environment_is_used_for_remote_hosts(env):
    with FakeRegistry() as proxy:
        env = dict(env, http_proxy=proxy.base_url)
        result = bump_image.bump({"image": IMAGE, "ghcr_probe_attempts": 1,
                                  "registry_mirrors": {"ghcr.io": "http://mirror.example.test"}},
                                 runner=FakeKubectl(), env=env, sleeper=lambda s: None)
        seen = proxy.requests
    assert result.exit_code == 3
    assert seen and "mirror.example.test" in (seen[0]["path"] + seen[0]["headers"].get("Host", ""))


def test_loopback_registry_is_never_proxied(env):
    with FakeRegistry() as fake:
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        env = dict(env, http_proxy="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
        result, events, _, _ = run(fake, env)
    assert result.exit_code == 0 and probe_line(events)["digest"] == DIGEST


def test_unauthorized_says_where_credentials_were_looked_for(env):
    with FakeRegistry(auth=True, users={"alice": "pw"}, private={REPO}) as fake:
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        with open(env["DOCKER_CONFIG"] + "/config.json", "w") as fh:
            json.dump({"auths": {}, "credsStore": "desktop"}, fh)
        result, events, _, _ = run(fake, env, ghcr_probe_attempts=1)
    message = probe_line(events)["error"]["message"]
    assert "credentials are looked up for %s in %s/config.json (none there)" % (
        fake.host, env["DOCKER_CONFIG"]) in message


# ---------------------------------------------------------------------------
# issue 9, items 5 and 11: pin_digest without a digest header, identity tokens,
# token 429, expires_in bounds, upper-case hosts, several images at once
# ---------------------------------------------------------------------------


def cli(fake_or_url, env, runner=None, sleeper=None, **payload):
    """Run the CLI in-process (``fakes.run_cli``) with ghcr.io mirrored to the fake;
    returns ``(CliRun, FakeKubectl, Sleeps)``."""
    base = fake_or_url if isinstance(fake_or_url, str) else fake_or_url.base_url
    if "images" not in payload:
        payload.setdefault("image", IMAGE)
    payload.setdefault("registry_mirrors", {"ghcr.io": base})
    payload.setdefault("ghcr_probe_sleep_seconds", 1)
    payload.setdefault("check_platforms", "never")      # (tested on its own)
    kubectl = runner or FakeKubectl()
    sleeps = Sleeps()
    done = run_cli(["--payload", json.dumps(payload)], runner=kubectl, env=env,
                   sleeper=sleeper or sleeps)
    return done, kubectl, sleeps


def kubectl_writes(kubectl):
    """The kubectl calls that would change the cluster."""
    return [v for v in kubectl.verbs() if v.split()[0] in ("patch", "set", "apply", "rollout")
            and not v.startswith("rollout status")]


def patched_images(kubectl):
    return {c["image"] for patch in kubectl.patches()
            for entries in patch["spec"]["template"]["spec"].values() for c in entries}


def manifest_bytes(size=None):
    body = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_DOCKER_MANIFEST,
                       "config": {"digest": "sha256:" + "1" * 64}}).encode("utf-8")
    if size is not None:                    # padded with spaces: still valid JSON
        body += b" " * (size - len(body))
    return body


def sha256_of(body):
    return "sha256:" + hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("size", [None, bump_image.BODY_LIMIT],
                         ids=["small", "exactly-the-body-limit"])
def test_pin_digest_without_digest_header_pins_the_sha256_of_the_manifest(env, size):
    body = manifest_bytes(size)
    digest = sha256_of(body)
    with FakeRegistry(auth=True) as fake:
        fake.add_manifest(REPO, "v2.35.9", body=body, send_digest=False)
        done, kubectl, _ = cli(fake, env, pin_digest=True)
        reqs = fake.requests
    assert done.code == 0, done.stderr
    assert done.event("probe") == [{"event": "probe", "image": IMAGE, "status": "available",
                                    "attempts": 1, "digest": digest, "error": None,
                                    "platforms": None}]
    pinned = IMAGE + "@" + digest
    assert {c["image"] for c in done.components.values()} == {pinned}
    assert {c["digest"] for c in done.components.values()} == {digest}
    assert patched_images(kubectl) == {pinned}
    # HEAD (challenged), the token, HEAD with it (200, no digest), then one GET
    assert [(r["method"], r["path"], r["status"]) for r in reqs] == [
        ("HEAD", PATH, 401), ("GET", "/token", 200), ("HEAD", PATH, 200), ("GET", PATH, 200)]
    head, get = reqs[2], reqs[3]
    assert "Docker-Content-Digest" not in str(head["headers"])
    assert get["headers"]["Accept"] == head["headers"]["Accept"] == FULL_ACCEPT
    assert get["headers"]["Authorization"] == head["headers"]["Authorization"]
    assert get["headers"]["Authorization"].startswith("Bearer ")


@pytest.mark.parametrize("failure", ["500-every-time", "body-over-1-MiB"])
def test_pin_digest_when_the_manifest_cannot_be_read_is_exit_3_and_changes_nothing(
        env, failure):
    with FakeRegistry(auth=True) as fake:
        if failure == "500-every-time":
            fake.add_manifest(REPO, "v2.35.9", body=manifest_bytes(), send_digest=False)
            fake.script(PATH, [Resp(500)], method="GET")
        else:
            fake.add_manifest(REPO, "v2.35.9", body=manifest_bytes(bump_image.BODY_LIMIT + 1),
                              send_digest=False)
        done, kubectl, sleeps = cli(fake, env, pin_digest=True, ghcr_probe_attempts=2)
        gets = [r for r in fake.requests if r["method"] == "GET" and r["path"] == PATH]
    assert done.code == 3
    assert [e["event"] for e in done.events] == ["probe", "summary"]
    probe = done.event("probe")[0]
    assert probe["status"] == "unavailable" and probe["attempts"] == 2
    assert probe["digest"] is None and probe["error"]["code"] == "digest_unknown"
    expected = "answered 500 to GET the manifest" if failure == "500-every-time" \
        else "larger than %d bytes" % bump_image.BODY_LIMIT
    assert expected in probe["error"]["message"]
    assert done.summary["exit_code"] == 3 and done.summary["status"] == "failed"
    assert len(gets) == 2 and sleeps == [1]     # one GET per attempt, retried
    assert kubectl_writes(kubectl) == [] and "patch" not in " ".join(kubectl.verbs())
    assert kubectl.patches() == []


def test_without_pin_digest_a_missing_digest_header_is_fine(env):
    with FakeRegistry(auth=True) as fake:
        fake.add_manifest(REPO, "v2.35.9", body=manifest_bytes(), send_digest=False)
        done, kubectl, _ = cli(fake, env)
        methods = [(r["method"], r["path"]) for r in fake.requests]
    assert done.code == 0
    assert done.event("probe")[0]["digest"] is None
    assert done.event("probe")[0]["status"] == "available"
    assert ("GET", PATH) not in methods               # no manifest GET
    assert {c["image"] for c in done.components.values()} == {IMAGE}
    assert patched_images(kubectl) == {IMAGE}


IDENTITY = "idt-Zq7Wv0Lk3S-refresh-Xy91"      # an identitytoken as docker login stores it


def write_identity_token(env, host, token=IDENTITY):
    with open(env["DOCKER_CONFIG"] + "/config.json", "w") as fh:
        json.dump({"auths": {host: {"identitytoken": token}}}, fh)


def test_identity_token_uses_the_oauth2_refresh_token_grant(env):
    with FakeRegistry(auth=True, refresh_tokens={IDENTITY: "alice"}, private={REPO}) as fake:
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        write_identity_token(env, fake.host)
        done, _, _ = cli(fake, env)
        reqs = fake.requests
        tokens = dict(fake.tokens)
    assert done.code == 0, done.stderr
    assert done.event("probe")[0]["digest"] == DIGEST
    assert [(r["method"], r["path"]) for r in reqs] == [
        ("HEAD", PATH), ("POST", "/token"), ("HEAD", PATH)]
    post = reqs[1]
    assert post["raw_query"] == ""
    assert post["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert post["headers"].get("Authorization") is None          # no Basic auth
    assert post["form"] == {"grant_type": ["refresh_token"], "refresh_token": [IDENTITY],
                            "service": ["fake"], "scope": ["repository:noetl/noetl:pull"],
                            "client_id": ["bump_image"]}
    # the access_token answered (the private repository needs alice) is what was sent
    bearer = reqs[2]["headers"]["Authorization"]
    assert tokens[bearer[len("Bearer "):]]["user"] == "alice"
    assert reqs[2]["status"] == 200
    assert IDENTITY not in done.stdout + done.stderr
    assert all(IDENTITY not in str(r["headers"]) for r in reqs)


def test_refused_identity_token_is_token_failed_and_never_printed(env):
    with FakeRegistry(auth=True, refresh_tokens={"another": "alice"}) as fake:
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        write_identity_token(env, fake.host)
        done, kubectl, _ = cli(fake, env, ghcr_probe_attempts=1)
    assert done.code == 3
    probe = done.event("probe")[0]
    assert probe["error"]["code"] == "token_failed"
    assert "answered 400" in probe["error"]["message"]
    assert IDENTITY not in done.stdout + done.stderr
    assert kubectl.calls == []


def test_identity_token_is_not_sent_to_a_plain_http_realm_elsewhere(env):
    """The realm is http://auth.example.test (not loopback), reached through an
    http_proxy (a second fake that serves /token): it gets an anonymous GET."""
    with FakeRegistry() as auth_server, FakeRegistry(
            auth=True, realm="http://auth.example.test/token",
            refresh_tokens={IDENTITY: "alice"}) as fake:
        auth_server.tokens = fake.tokens          # its tokens are good at the registry
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        write_identity_token(env, fake.host)
        done, _, _ = cli(fake, dict(env, http_proxy=auth_server.base_url))
        seen = auth_server.requests
        fake_seen = fake.requests
    assert done.code == 0 and done.event("probe")[0]["digest"] == DIGEST
    assert [(r["method"], r["path"]) for r in seen] == [("GET", "/token")]
    assert seen[0]["headers"]["Host"] == "auth.example.test"
    assert seen[0]["headers"].get("Authorization") is None and seen[0]["body"] == b""
    assert "not sending credentials for %s to the plain-http token realm auth.example.test" \
        % fake.host in done.stderr
    assert IDENTITY not in done.stdout + done.stderr
    assert all(IDENTITY not in str(r["headers"]) + repr(r["body"]) for r in seen + fake_seen)


def test_token_endpoint_429_waits_its_retry_after_then_retries(env):
    with FakeRegistry(auth=True) as fake:
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        fake.script("/token", [Resp(429, headers={"Retry-After": "2"}), Resp(builtin=True)])
        sleeps, progress = Sleeps(), []
        result = bump_image.bump(
            {"check_platforms": "never", "image": IMAGE, "registry_mirrors": {"ghcr.io": fake.base_url},
             "ghcr_probe_sleep_seconds": 9, "ghcr_probe_attempts": 3},
            runner=FakeKubectl(), sleeper=sleeps, env=env, progress=progress.append)
        reqs = fake.requests
    assert result.exit_code == 0
    assert result.probe.status == "available" and result.probe.attempts == 2
    assert sleeps == [2]                                    # not the 9 s of the payload
    assert any("attempt 1/3: rate_limited: token endpoint %s answered 429" % fake.host in line
               and line.endswith("next in 2 s") for line in progress), progress
    assert [(r["method"], r["path"], r["status"]) for r in reqs] == [
        ("HEAD", PATH, 401), ("GET", "/token", 429),
        ("HEAD", PATH, 401), ("GET", "/token", 200), ("HEAD", PATH, 200)]


def test_token_endpoint_429_every_time_is_rate_limited(env):
    with FakeRegistry(auth=True) as fake:
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        fake.script("/token", [Resp(429, headers={"Retry-After": "2"})])
        done, kubectl, sleeps = cli(fake, env, ghcr_probe_sleep_seconds=9, ghcr_probe_attempts=3)
    assert done.code == 3
    assert sleeps == [2, 2]
    probe = done.event("probe")[0]
    assert probe["attempts"] == 3 and probe["error"]["code"] == "rate_limited"
    assert kubectl.calls == []


class Clock:
    """An injected clock that only the sleeper moves: by the next of ``steps``."""

    def __init__(self, steps):
        self.now = 1000.0
        self.steps = list(steps)
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += self.steps.pop(0)


def probe_with_clock(fake, env, steps):
    """Probe with ``len(steps) + 1`` attempts, 404 until the last; the clock moves by
    ``steps`` between attempts.  Returns (result, token requests, HEADs)."""
    fake.script(PATH, [Resp(404)] * len(steps) + [Resp(200, headers={
        "Docker-Content-Digest": DIGEST})], require_auth=True)
    clock = Clock(steps)
    result = bump_image.bump(
        {"image": IMAGE, "registry_mirrors": {"ghcr.io": fake.base_url},
         "ghcr_probe_attempts": len(steps) + 1, "dry_run": True}, runner=FakeKubectl(),
        env=env, sleeper=clock.sleep, clock=clock)     # (a clock only the sleeper moves: no waits)
    return result, fake.token_requests, [r for r in fake.requests if r["method"] == "HEAD"]


def test_expires_in_over_a_day_is_clamped_to_a_day(env):
    with FakeRegistry(auth=True, expires_in=10 ** 9) as fake:
        # attempts at +0 (token), +1 h and +86000 s (the same token), +86400 s (a new one)
        result, tokens, heads = probe_with_clock(fake, env, [3600, 86000 - 3600, 400])
    assert result.probe.status == "available" and result.probe.attempts == 4
    assert len(tokens) == 2
    assert [bool(r["headers"].get("Authorization")) for r in heads] == [
        False, True, True, True, False, True]
    assert len({r["headers"]["Authorization"] for r in heads[1:4]}) == 1


@pytest.mark.parametrize("expires_in", [30, "3600", None, True, float("nan")],
                         ids=["30", "a-string", "absent", "true", "NaN"])
def test_expires_in_below_60_or_not_a_number_means_60_seconds(env, expires_in):
    with FakeRegistry(auth=True, expires_in=expires_in) as fake:
        # +50 s: still the first token; +60 s: a new one
        result, tokens, heads = probe_with_clock(fake, env, [50, 10])
    assert result.probe.status == "available" and result.probe.attempts == 3
    assert len(tokens) == 2
    assert [bool(r["headers"].get("Authorization")) for r in heads] == [
        False, True, True, False, True]


def test_upper_case_registry_host_is_probed_through_the_mirror(env):
    image = "GHCR.io/noetl/noetl:v1"
    with FakeRegistry(auth=True) as fake:
        fake.add_manifest(REPO, "v1", DIGEST)
        done, kubectl, _ = cli(fake, env, image=image)
        reqs = fake.requests
    assert done.code == 0, done.stderr
    assert done.event("probe") == [{"event": "probe", "image": image, "status": "available",
                                    "attempts": 1, "digest": DIGEST, "error": None,
                                  "platforms": None}]
    assert [(r["method"], r["path"]) for r in reqs] == [
        ("HEAD", "/v2/noetl/noetl/manifests/v1"), ("GET", "/token"),
        ("HEAD", "/v2/noetl/noetl/manifests/v1")]
    # the same repository as ghcr.io/noetl/noetl: the worker's init container moves too
    assert kubectl.image_of("noetl-worker", "wait-for-api", "initContainers") == image


class RecordingOpener:
    """Records the URL of every request and answers none (connection refused)."""

    def __init__(self):
        self.urls = []

    def open(self, request, timeout=None):
        self.urls.append(request.full_url)
        raise urllib.error.URLError(ConnectionRefusedError(111, "refused"))


def test_upper_case_docker_hub_is_probed_at_registry_1(env):
    opener = RecordingOpener()
    bump_image.bump({"image": "DOCKER.IO/library/nginx:1.27", "ghcr_probe_attempts": 1},
                    runner=FakeKubectl(), opener=opener, env=env)
    assert opener.urls == ["https://registry-1.docker.io/v2/library/nginx/manifests/1.27"]


ABC = {"a": "ghcr.io/x/a:1", "b": "ghcr.io/x/b:1", "c": "ghcr.io/x/c:1"}


def abc_cluster():
    return FakeKubectl({name: deployment(name, {"main": "ghcr.io/x/%s:0" % name})
                        for name in ABC})


def assert_asked_for_all_before_any_was_found(heads):
    """Each image's manifest was asked for before any image was found: the probes
    overlap (one after another, a is found before b is first asked for)."""
    first_found = min(r["time"] for r in heads if r["status"] == 200)
    for name in ABC:
        assert any(r["path"] == "/v2/x/%s/manifests/1" % name and r["time"] < first_found
                   for r in heads), name


def test_several_images_are_probed_at_the_same_time(env):
    with FakeRegistry(auth=True) as fake:
        for name in ABC:
            fake.add_manifest("x/" + name, "1", after=1.2)
        kubectl, stamped = abc_cluster(), []
        started = time.monotonic()
        result = bump_image.bump(         # the default sleeper: real waits
            {"images": ABC, "registry_mirrors": {"ghcr.io": fake.base_url},
             "ghcr_probe_sleep_seconds": 0.4, "ghcr_probe_attempts": 10},
            runner=kubectl, env=env,
            on_event=lambda e: stamped.append((time.monotonic() - started, e)))
        heads = [r for r in fake.requests if r["method"] == "HEAD"]
    probes = [(t, e) for t, e in stamped if e["event"] == "probe"]
    assert [e["image"] for _, e in probes] == list(ABC.values())
    assert all(e["status"] == "available" and e["attempts"] >= 3 for _, e in probes)
    # the time alone cannot tell: the three appear together, so one after another
    # would also see them all at about 1.2 s (b and c at their first attempt); what
    # proves the overlap is that every image was asked for before any was found (and
    # test_several_images_are_in_flight_at_once, which needs all three at once)
    probe_phase = probes[-1][0]
    assert 1.2 <= probe_phase < 3.5, probe_phase
    assert_asked_for_all_before_any_was_found(heads)
    assert result.exit_code == 0
    assert {c.name: c.image for c in result.components} == ABC


class BarrierRegistry:
    """A registry on 127.0.0.1 that answers a manifest HEAD only once ``parties`` of
    them are in flight at the same time (then each gets 200 with its digest); a HEAD
    left waiting ``wait`` seconds gets 404.  ``most`` is the most HEADs it ever held at
    once; every other request is 404."""

    def __init__(self, parties, wait):
        self.barrier = threading.Barrier(parties)
        self.lock = threading.Lock()
        self.in_flight = self.most = 0
        self.heads = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                with owner.lock:
                    owner.heads.append(self.path)
                    owner.in_flight += 1
                    owner.most = max(owner.most, owner.in_flight)
                try:
                    owner.barrier.wait(wait)
                    status = 200
                except threading.BrokenBarrierError:
                    status = 404
                finally:
                    with owner.lock:
                        owner.in_flight -= 1
                self.send_response(status)
                if status == 200:
                    digest = "sha256:" + hashlib.sha256(self.path.encode()).hexdigest()
                    self.send_header("Docker-Content-Digest", digest)
                    self.send_header("Content-Type", MEDIA_DOCKER_MANIFEST)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = "http://127.0.0.1:%d" % self.server.server_address[1]

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.barrier.abort()
        self.server.shutdown()
        self.server.server_close()


def test_several_images_are_in_flight_at_once(env):
    """Each image's HEAD is answered only while the other two are waiting for theirs
    too: one attempt each finds all three only if the three requests are in flight at
    the same time (one after another, the first would wait alone, get 404, and the run
    would stop at exit 3)."""
    with BarrierRegistry(parties=3, wait=4) as registry:
        kubectl, events = abc_cluster(), []
        result = bump_image.bump(
            {"images": ABC, "registry_mirrors": {"ghcr.io": registry.base_url},
             "ghcr_probe_attempts": 1, "check_platforms": "never"},
            runner=kubectl, env=env, on_event=events.append, http_timeout=10)
        heads, most = sorted(registry.heads), registry.most
    probes = [e for e in events if e["event"] == "probe"]
    assert [(p["image"], p["status"], p["attempts"]) for p in probes] == [
        (image, "available", 1) for image in ABC.values()], probes
    assert heads == ["/v2/x/%s/manifests/1" % name for name in ABC] and most == 3
    assert result.exit_code == 0


def test_several_images_one_never_appears_changes_nothing(env):
    with FakeRegistry(auth=True) as fake:
        fake.add_manifest("x/a", "1", after=1.2)
        fake.add_manifest("x/c", "1", after=1.2)      # x/b never appears
        started = time.monotonic()
        done, kubectl, _ = cli(fake, env, runner=abc_cluster(), sleeper=time.sleep,
                               images=ABC, ghcr_probe_sleep_seconds=0.4, ghcr_probe_attempts=5)
        elapsed = time.monotonic() - started
        heads = [r for r in fake.requests if r["method"] == "HEAD"]
    assert done.code == 3
    assert [e["event"] for e in done.events] == ["probe", "probe", "probe", "summary"]
    probes = done.event("probe")
    assert [p["image"] for p in probes] == list(ABC.values())
    assert [p["status"] for p in probes] == ["available", "unavailable", "available"]
    assert probes[1]["attempts"] == 5 and probes[1]["error"]["code"] == "manifest_unknown"
    assert done.summary["exit_code"] == 3
    assert kubectl.calls == [] and kubectl_writes(kubectl) == []
    assert_asked_for_all_before_any_was_found(heads)
    assert elapsed < 2.8, elapsed                     # one after another: 2.8 s at least
