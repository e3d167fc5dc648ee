"""The registry probe, run for real over HTTP against the in-process FakeRegistry.

Each test routes ``ghcr.io`` to the fake with ``registry_mirrors`` and runs the
whole tool (``bump``) with the in-memory kubectl, so it also shows that a probe
that gives up changes nothing.
"""

import base64
import email.utils
import json
import socket
import time
import urllib.error

import pytest
from fake_registry import FULL_ACCEPT, FakeRegistry, Resp
from fakes import IMAGE, FakeKubectl

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
                                  "attempts": 1, "digest": DIGEST, "error": None}
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
             "ghcr_probe_attempts": 2}, runner=FakeKubectl(), env=env, sleeper=sleep,
            clock=lambda: clock[0])
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
                                  "attempts": 0, "digest": None, "error": None}
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
