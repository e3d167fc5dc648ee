"""Tests of the test helpers themselves: registry_harness and fake_registry.

Only urllib/ssl/socket are used as clients here, so these tests check the
helpers, not bump_image.py.  Tests marked ``registry`` need the real
``docker-registry`` binary; they are skipped without it unless
``BUMP_IMAGE_REQUIRE_REAL=1``, in which case they fail instead.

Run: ``python -m pytest -q tests/test_registry_harness.py -p no:warnings``
(``-p no:warnings`` hides the unknown-marker warning while no pytest config
registers ``registry``).
"""

import base64
import hashlib
import json
import os
import re
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

try:
    import fake_registry
    import registry_common
    import registry_harness
except ImportError:  # tests/ is a package or not on sys.path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import fake_registry
    import registry_common
    import registry_harness

from fake_registry import FakeRegistry, Resp
from registry_common import basic_auth as basic
from registry_common import http, parse_challenge
from registry_harness import (
    FULL_ACCEPT,
    MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    PUSH_KINDS,
    DistributionRegistry,
    docker_registry_path,
)

pytestmark = pytest.mark.harness

ALICE = ("alice", "s3cr3t-Pa55")
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


# ---------------------------------------------------------------------------
# tiny urllib client
# ---------------------------------------------------------------------------


def fetch_token(challenge_header, credentials=None):
    """Follow a Bearer challenge like a client: returns (status, json-or-None)."""
    scheme, params = parse_challenge(challenge_header)
    assert scheme == "Bearer"
    query = {"service": params["service"]}
    if "scope" in params:
        query["scope"] = params["scope"]
    headers = {}
    if credentials:
        headers["Authorization"] = basic(*credentials)
    status, _, body = http("GET", params["realm"] + "?" + urllib.parse.urlencode(query),
                           headers=headers)
    try:
        return status, json.loads(body.decode("utf-8"))
    except ValueError:
        return status, None


def manifest_url(base, repo, ref):
    return "%s/v2/%s/manifests/%s" % (base, repo, ref)


# ---------------------------------------------------------------------------
# the real distribution registry
# ---------------------------------------------------------------------------


def _real_registry_or_skip():
    if docker_registry_path() is None:
        message = "docker-registry (CNCF distribution) is not installed"
        if os.environ.get("BUMP_IMAGE_REQUIRE_REAL") == "1":
            pytest.fail(message + " and BUMP_IMAGE_REQUIRE_REAL=1")
        pytest.skip(message)


@pytest.fixture(scope="module")
def registry():
    _real_registry_or_skip()
    reg = DistributionRegistry(users=dict([ALICE]), private={"noetl/private": {"alice"}})
    reg.start()
    try:
        for kind in PUSH_KINDS:
            reg.push_image("noetl/app", kind, kind=kind)
        reg.push_image("noetl/private", "v1")
        yield reg
    finally:
        reg.stop()


def pull(reg, repo, ref, accept=FULL_ACCEPT, credentials=None, method="HEAD"):
    """Challenge -> token -> authorised request, as a probe would do it."""
    url = manifest_url(reg.base_url, repo, ref)
    status, headers, _ = http(method, url)
    assert status == 401
    token_status, payload = fetch_token(headers["WWW-Authenticate"], credentials)
    assert token_status == 200, payload
    request_headers = {"Authorization": "Bearer " + payload["token"]}
    if accept is not None:
        request_headers["Accept"] = accept
    return http(method, url, headers=request_headers)


@pytest.mark.registry
def test_distribution_ping_is_401_with_bearer_challenge(registry):
    status, headers, body = http("GET", registry.base_url + "/v2/")
    assert status == 401
    scheme, params = parse_challenge(headers["WWW-Authenticate"])
    assert scheme == "Bearer"
    assert params == {"realm": registry.token_server.realm, "service": registry.service}
    assert json.loads(body.decode())["errors"][0]["code"] == "UNAUTHORIZED"
    assert registry.host == registry.base_url[len("http://"):]
    assert registry.pid is not None


@pytest.mark.registry
def test_distribution_anonymous_pull_of_public_repo(registry):
    url = manifest_url(registry.base_url, "noetl/app", "docker")
    status, headers, _ = http("HEAD", url)
    assert status == 401
    _, params = parse_challenge(headers["WWW-Authenticate"])
    assert params["scope"] == "repository:noetl/app:pull"

    before = len(registry.token_server.requests)
    status, payload = fetch_token(headers["WWW-Authenticate"])
    assert status == 200
    assert payload["token"] == payload["access_token"]
    assert payload["expires_in"] == 300
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", payload["issued_at"])
    logged = registry.token_server.requests[before]
    assert logged["path"] == "/token"
    assert logged["scopes"] == ["repository:noetl/app:pull"]
    assert logged["service"] == registry.service
    assert logged["authorization_present"] is False and logged["user"] is None
    assert logged["granted"] == [{"type": "repository", "name": "noetl/app", "actions": ["pull"]}]

    # The token is a JWT with the x5c header distribution verifies; reuse it.
    header = json.loads(base64.urlsafe_b64decode(payload["token"].split(".")[0] + "=="))
    assert header["alg"] == "RS256" and len(header["x5c"]) == 1
    for _ in range(2):
        status, headers, _ = http("HEAD", url, headers={
            "Authorization": "Bearer " + payload["token"], "Accept": FULL_ACCEPT})
        assert status == 200
        assert headers["Docker-Content-Digest"] == registry.pushed[("noetl/app", "docker")]["digest"]
    assert len(registry.token_server.requests) == before + 1


@pytest.mark.registry
def test_distribution_private_repo_needs_credentials(registry):
    url = manifest_url(registry.base_url, "noetl/private", "v1")
    status, headers, _ = http("HEAD", url)
    assert status == 401
    challenge = headers["WWW-Authenticate"]

    # Anonymous: a token without access; the registry says 401 (not 403).
    status, anonymous = fetch_token(challenge)
    assert status == 200
    status, headers, _ = http("HEAD", url, headers={
        "Authorization": "Bearer " + anonymous["token"], "Accept": FULL_ACCEPT})
    assert status == 401
    assert parse_challenge(headers["WWW-Authenticate"])[1]["error"] == "insufficient_scope"

    # Wrong password: the token server refuses outright.
    status, payload = fetch_token(challenge, ("alice", "wrong"))
    assert status == 401 and "token" not in payload
    assert registry.token_server.requests[-1]["user"] == "alice"
    assert registry.token_server.requests[-1]["authenticated"] is False

    status, payload = fetch_token(challenge, ALICE)
    assert status == 200
    logged = registry.token_server.requests[-1]
    assert (logged["auth_scheme"], logged["user"], logged["authenticated"]) == ("Basic", "alice", True)
    assert ALICE[1] not in json.dumps(registry.token_server.requests)
    status, headers, _ = http("HEAD", url, headers={
        "Authorization": "Bearer " + payload["token"], "Accept": FULL_ACCEPT})
    assert status == 200
    assert headers["Docker-Content-Digest"] == registry.pushed[("noetl/private", "v1")]["digest"]


@pytest.mark.registry
@pytest.mark.parametrize("kind", sorted(PUSH_KINDS))
def test_distribution_every_push_kind_heads_with_full_accept(registry, kind):
    pushed = registry.pushed[("noetl/app", kind)]
    status, headers, _ = pull(registry, "noetl/app", kind)
    assert status == 200
    assert headers["Docker-Content-Digest"] == pushed["digest"]
    assert headers["Content-Type"] == PUSH_KINDS[kind]
    # GET returns exactly the bytes behind the digest.
    status, headers, body = pull(registry, "noetl/app", kind, method="GET")
    assert status == 200
    assert "sha256:" + hashlib.sha256(body).hexdigest() == pushed["digest"]
    if kind in ("oci-index", "docker-list"):
        children = [m["digest"] for m in json.loads(body.decode())["manifests"]]
        assert children == pushed["children"]
        status, headers, _ = pull(registry, "noetl/app", children[0])
        assert status == 200 and headers["Docker-Content-Digest"] == children[0]


@pytest.mark.registry
def test_distribution_partial_accept_lists(registry):
    """What distribution 2.8.2 does when Accept lacks the stored type."""
    digest = {kind: registry.pushed[("noetl/app", kind)]["digest"] for kind in PUSH_KINDS}
    # OCI content is hidden (404 MANIFEST_UNKNOWN) unless its type is accepted.
    status, _, _ = pull(registry, "noetl/app", "oci", accept=MEDIA_DOCKER_MANIFEST)
    assert status == 404
    status, _, body = pull(registry, "noetl/app", "oci", accept=MEDIA_DOCKER_MANIFEST,
                           method="GET")
    assert status == 404
    assert b"OCI manifest found, but accept header does not support OCI manifests" in body
    status, _, _ = pull(registry, "noetl/app", "oci", accept="*/*")
    assert status == 404
    status, _, body = pull(registry, "noetl/app", "oci-index",
                           accept=MEDIA_OCI_MANIFEST + ", " + MEDIA_DOCKER_MANIFEST,
                           method="GET")
    assert status == 404 and b"OCI index found" in body
    status, headers, _ = pull(registry, "noetl/app", "oci-index", accept=MEDIA_OCI_INDEX)
    assert status == 200 and headers["Docker-Content-Digest"] == digest["oci-index"]

    status, headers, _ = pull(registry, "noetl/app", "docker-list", accept=MEDIA_DOCKER_LIST)
    assert status == 200 and headers["Docker-Content-Digest"] == digest["docker-list"]
    # A Docker manifest list asked for with only the schema 2 type is
    # resolved to its linux/amd64 child: a different digest.
    status, headers, _ = pull(registry, "noetl/app", "docker-list", accept=MEDIA_DOCKER_MANIFEST)
    assert status == 200
    assert headers["Docker-Content-Digest"] == registry.pushed[("noetl/app", "docker-list")]["children"][0]

    # Without a schema 2 type in Accept, a schema 2 manifest is rewritten to
    # schema 1 on the fly: 200, but again not the pushed digest.
    status, headers, _ = pull(registry, "noetl/app", "docker", accept=None)
    assert status == 200
    assert headers["Content-Type"] == "application/vnd.docker.distribution.manifest.v1+prettyjws"
    assert headers["Docker-Content-Digest"] != digest["docker"]


@pytest.mark.registry
def test_distribution_unknown_tag_and_distinct_digests(registry):
    status, _, _ = pull(registry, "noetl/app", "no-such-tag")
    assert status == 404
    status, _, body = pull(registry, "noetl/app", "no-such-tag", method="GET")
    assert status == 404 and json.loads(body.decode())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    digests = [p["digest"] for p in registry.pushed.values()]
    assert len(set(digests)) == len(digests)
    again = registry.push_image("noetl/app", "docker-again", kind="docker")
    assert again not in digests


@pytest.mark.registry
def test_distribution_stop_cleans_up():
    _real_registry_or_skip()
    reg = DistributionRegistry()
    with reg:
        workdir, base_url, _pid = reg.workdir, reg.base_url, reg.pid
        assert os.path.isdir(workdir)
        assert reg.push_image("solo/app", "1", kind="oci").startswith("sha256:")
    assert not os.path.exists(workdir)
    assert reg.pid is None
    with pytest.raises(OSError):
        http("GET", base_url + "/v2/", timeout=2)
    reg.stop()  # idempotent


def test_distribution_start_failure_reports_the_log(tmp_path):
    """Needs only openssl: a 'registry' that dies at once is reported clearly."""
    binary = tmp_path / "broken-registry"
    binary.write_text("#!/bin/sh\necho 'configuration error: boom' >&2\nexit 3\n")
    binary.chmod(0o755)
    reg = DistributionRegistry(binary=str(binary), start_timeout=5)
    with pytest.raises(registry_harness.HarnessError) as info:
        reg.start()
    assert "exited with code 3" in str(info.value)
    assert "configuration error: boom" in str(info.value)
    assert reg.workdir is None and reg.pid is None


# ---------------------------------------------------------------------------
# FakeRegistry
# ---------------------------------------------------------------------------


@pytest.fixture
def fake():
    with FakeRegistry() as registry:
        yield registry


def test_fake_script_is_consumed_in_order_and_last_repeats(fake):
    path = "/v2/noetl/app/manifests/v1"
    fake.script(path, [
        Resp(429, headers={"Retry-After": "1"}),
        Resp(503),
        Resp(200, headers={"Docker-Content-Digest": DIGEST_A}),
    ])
    url = fake.base_url + path
    seen = []
    for _ in range(4):
        status, headers, _ = http("HEAD", url, headers={"Accept": FULL_ACCEPT})
        seen.append((status, headers.get("Retry-After"), headers.get("Docker-Content-Digest")))
    assert seen == [(429, "1", None), (503, None, None),
                    (200, None, DIGEST_A), (200, None, DIGEST_A)]
    assert fake.served(path) == 4
    logged = fake.requests
    assert [r["method"] for r in logged] == ["HEAD"] * 4
    assert logged[0]["path"] == path
    assert logged[0]["headers"]["Accept"] == FULL_ACCEPT
    assert logged[0]["headers"]["accept"] == FULL_ACCEPT  # case-insensitive
    assert "Authorization" not in logged[0]["headers"]
    assert [r["status"] for r in logged] == [429, 503, 200, 200]


def test_fake_add_manifest_head_get_and_unknown(fake):
    digest = fake.add_manifest("noetl/app", "v1", media_type=MEDIA_OCI_INDEX)
    status, headers, body = http("HEAD", manifest_url(fake.base_url, "noetl/app", "v1"))
    assert status == 200 and body == b""
    assert headers["Docker-Content-Digest"] == digest
    assert headers["Content-Type"] == MEDIA_OCI_INDEX
    status, headers, body = http("GET", manifest_url(fake.base_url, "noetl/app", digest))
    assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == digest
    assert int(headers["Content-Length"]) == len(body)
    status, _, body = http("HEAD", manifest_url(fake.base_url, "noetl/app", "v2"))
    assert status == 404
    status, _, body = http("GET", manifest_url(fake.base_url, "noetl/other", "v1"))
    assert status == 404 and b"MANIFEST_UNKNOWN" in body
    assert fake.add_manifest("noetl/app", "v1", digest=DIGEST_B) == DIGEST_B
    status, headers, _ = http("HEAD", manifest_url(fake.base_url, "noetl/app", "v1"))
    assert headers["Docker-Content-Digest"] == DIGEST_B


def test_fake_strict_accept():
    with FakeRegistry(strict_accept=True) as fake:
        fake.add_manifest("noetl/app", "v1", media_type=MEDIA_OCI_MANIFEST)
        url = manifest_url(fake.base_url, "noetl/app", "v1")
        assert http("HEAD", url, headers={"Accept": MEDIA_DOCKER_MANIFEST})[0] == 404
        assert http("HEAD", url, headers={"Accept": FULL_ACCEPT})[0] == 200


def test_fake_large_body_and_query_log(fake):
    path = "/v2/noetl/app/manifests/big"
    fake.script(path, Resp(200, body=b"x" * 300000,
                           headers={"Content-Type": MEDIA_DOCKER_MANIFEST}))
    status, headers, body = http("HEAD", fake.base_url + path)
    assert status == 200 and headers["Content-Length"] == "300000" and body == b""
    status, _, body = http("GET", fake.base_url + path + "?n=1&n=2")
    assert status == 200 and len(body) == 300000
    assert fake.requests[-1]["query"] == {"n": ["1", "2"]}
    assert fake.requests[-1]["raw_query"] == "n=1&n=2"


def test_fake_bearer_flow_and_token_reuse():
    with FakeRegistry(auth=True) as fake:
        digest = fake.add_manifest("noetl/app", "v1")
        url = manifest_url(fake.base_url, "noetl/app", "v1")
        status, headers, _ = http("HEAD", url, headers={"Accept": FULL_ACCEPT})
        assert status == 401
        scheme, params = parse_challenge(headers["WWW-Authenticate"])
        assert scheme == "Bearer"
        assert params == {"realm": fake.base_url + "/token", "service": "fake",
                          "scope": "repository:noetl/app:pull"}
        status, payload = fetch_token(headers["WWW-Authenticate"])
        assert status == 200 and set(payload) == {"token", "expires_in", "issued_at"}
        bearer = {"Authorization": "Bearer " + payload["token"], "Accept": FULL_ACCEPT}
        for _ in range(2):
            status, headers, _ = http("HEAD", url, headers=bearer)
            assert status == 200 and headers["Docker-Content-Digest"] == digest
        assert len(fake.token_requests) == 1
        assert fake.token_requests[0]["query"]["scope"] == ["repository:noetl/app:pull"]
        assert fake.requests[-1]["headers"]["Authorization"] == bearer["Authorization"]

        # A token for another repository is not enough.
        status, headers, _ = http("HEAD", manifest_url(fake.base_url, "noetl/other", "v1"),
                                  headers=bearer)
        assert status == 401
        assert parse_challenge(headers["WWW-Authenticate"])[1]["error"] == "insufficient_scope"
        # Scripted paths are challenged too (without consuming the script).
        fake.script("/v2/noetl/app/manifests/v2", [Resp(503), Resp(200)])
        assert http("HEAD", manifest_url(fake.base_url, "noetl/app", "v2"))[0] == 401
        assert http("HEAD", manifest_url(fake.base_url, "noetl/app", "v2"), headers=bearer)[0] == 503
        assert http("GET", fake.base_url + "/v2/")[0] == 401

        fake.reject_tokens = True
        status, headers, _ = http("HEAD", url, headers=bearer)
        assert status == 401
        assert parse_challenge(headers["WWW-Authenticate"])[1]["error"] == "invalid_token"
        fake.challenge = False
        status, headers, _ = http("HEAD", url, headers=bearer)
        assert status == 401 and "WWW-Authenticate" not in headers


@pytest.mark.parametrize("mode, status, keys", [
    ("token", 200, {"token", "expires_in", "issued_at"}),
    ("both", 200, {"token", "access_token", "expires_in", "issued_at"}),
    ("access_token", 200, {"access_token", "expires_in", "issued_at"}),
    ("no-token", 200, {"details", "expires_in"}),
    ("not-json", 200, None),
    ("error", 500, None),
])
def test_fake_token_modes(mode, status, keys):
    with FakeRegistry(auth=True, token_mode=mode) as fake:
        got_status, payload = fetch_token(
            'Bearer realm="%s",service="fake",scope="repository:a/b:pull"' % fake.token_url)
        assert got_status == status
        if keys is None:
            assert payload is None
        else:
            assert set(payload) == keys
        if mode == "access_token":
            fake.add_manifest("a/b", "v1")
            status, _, _ = http("HEAD", manifest_url(fake.base_url, "a/b", "v1"),
                                headers={"Authorization": "Bearer " + payload["access_token"]})
            assert status == 200


def test_fake_token_credentials_and_private_repos():
    with FakeRegistry(auth=True, users=dict([ALICE])) as fake:
        challenge = 'Bearer realm="%s",service="fake",scope="repository:a/b:pull"' % fake.token_url
        assert fetch_token(challenge)[0] == 401
        assert fetch_token(challenge, ("alice", "nope"))[0] == 401
        status, payload = fetch_token(challenge, ALICE)
        assert status == 200 and fake.tokens[payload["token"]]["user"] == "alice"
        assert fake.token_requests[-1]["headers"]["Authorization"] == basic(*ALICE)

    with FakeRegistry(auth=True, users=dict([ALICE]), private={"a/secret"}) as fake:
        fake.add_manifest("a/secret", "v1")
        fake.add_manifest("a/public", "v1")
        url = manifest_url(fake.base_url, "a/secret", "v1")
        challenge = http("HEAD", url)[1]["WWW-Authenticate"]
        status, anonymous = fetch_token(challenge)
        assert status == 200
        assert http("HEAD", url, headers={"Authorization": "Bearer " + anonymous["token"]})[0] == 401
        status, payload = fetch_token(challenge, ALICE)
        assert http("HEAD", url, headers={"Authorization": "Bearer " + payload["token"]})[0] == 200
        public = manifest_url(fake.base_url, "a/public", "v1")
        status, payload = fetch_token(http("HEAD", public)[1]["WWW-Authenticate"])
        assert http("HEAD", public, headers={"Authorization": "Bearer " + payload["token"]})[0] == 200
        # Basic credentials sent to the registry itself are just a missing token.
        assert http("HEAD", url, headers={"Authorization": basic(*ALICE)})[0] == 401


def test_fake_expired_tokens_and_missing_expires_in():
    with FakeRegistry(auth=True, expires_in=0) as fake:
        fake.add_manifest("a/b", "v1")
        url = manifest_url(fake.base_url, "a/b", "v1")
        status, payload = fetch_token(http("HEAD", url)[1]["WWW-Authenticate"])
        assert payload["expires_in"] == 0
        time.sleep(0.01)
        status, headers, _ = http("HEAD", url, headers={"Authorization": "Bearer " + payload["token"]})
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    with FakeRegistry(auth=True, expires_in=None) as fake:
        status, payload = fetch_token(
            'Bearer realm="%s",service="fake",scope="repository:a/b:pull"' % fake.token_url)
        assert "expires_in" not in payload and "token" in payload


def test_fake_hang_times_out_and_stop_does_not_wait():
    fake = FakeRegistry().start()
    path = "/v2/a/b/manifests/v1"
    fake.script(path, Resp(hang=True))
    started = time.monotonic()
    with pytest.raises((socket.timeout, urllib.error.URLError, OSError)):
        http("HEAD", fake.base_url + path, timeout=0.3)
    assert time.monotonic() - started < 2

    # A client still waiting when the server stops is released promptly.
    outcome = []

    def waiter():
        try:
            outcome.append(http("HEAD", fake.base_url + path, timeout=20))
        except Exception as exc:  # noqa: BLE001 - any failure is the point
            outcome.append(exc)

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while len(fake.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    fake.stop()
    thread.join(5)
    assert time.monotonic() - started < 3
    assert outcome and isinstance(outcome[0], Exception)
    assert [r["status"] for r in fake.requests] == [None, None]
    with pytest.raises(urllib.error.URLError) as info:  # nothing listens any more
        http("HEAD", fake.base_url + path, timeout=2)
    assert isinstance(info.value.reason, ConnectionRefusedError)


def test_fake_drop_and_delay(fake):
    fake.script("/v2/a/b/manifests/drop", Resp(drop=True))
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)) as info:
        http("HEAD", fake.base_url + "/v2/a/b/manifests/drop")
    assert not isinstance(info.value, urllib.error.HTTPError)
    fake.script("/v2/a/b/manifests/slow", Resp(200, delay=0.2))
    started = time.monotonic()
    assert http("HEAD", fake.base_url + "/v2/a/b/manifests/slow")[0] == 200
    assert time.monotonic() - started >= 0.2


def test_fake_redirect_to_second_instance(fake):
    with FakeRegistry() as other:
        digest = other.add_manifest("a/b", "v1")
        target = manifest_url(other.base_url, "a/b", "v1")
        fake.script("/v2/a/b/manifests/v1", Resp(301, headers={"Location": target}))
        status, headers, _ = http("HEAD", manifest_url(fake.base_url, "a/b", "v1"))
        assert status == 301 and headers["Location"] == target
        status, headers, _ = http("HEAD", manifest_url(fake.base_url, "a/b", "v1"), follow=True)
        assert status == 200 and headers["Docker-Content-Digest"] == digest
        assert other.port != fake.port
        assert [r["path"] for r in other.requests] == ["/v2/a/b/manifests/v1"]
        assert len(fake.requests) == 2


def test_fake_tls(tmp_path):
    with FakeRegistry(tls=True) as fake:
        assert fake.base_url.startswith("https://127.0.0.1:")
        assert os.path.isfile(fake.cert_path)
        digest = fake.add_manifest("a/b", "v1")
        url = manifest_url(fake.base_url, "a/b", "v1")
        trusted = ssl.create_default_context(cafile=fake.cert_path)
        status, headers, _ = http("HEAD", url, context=trusted)
        assert status == 200 and headers["Docker-Content-Digest"] == digest
        localhost = url.replace("127.0.0.1", "localhost")
        assert http("HEAD", localhost, context=trusted)[0] == 200

        untrusted = ssl.create_default_context()
        unrelated_cert, _ = fake_registry.make_tls_certificate(str(tmp_path))
        untrusted.load_verify_locations(cafile=unrelated_cert)
        with pytest.raises(urllib.error.URLError) as info:
            http("HEAD", url, context=untrusted)
        assert isinstance(info.value.reason, ssl.SSLCertVerificationError)
        deadline = time.monotonic() + 5
        while not fake.tls_errors and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake.tls_errors
        # Plain HTTP to the TLS port fails without breaking the server.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            http("HEAD", url.replace("https://", "http://"), timeout=3)
        assert http("HEAD", url, context=trusted)[0] == 200
        cert_dir = os.path.dirname(fake.cert_path)
    assert not os.path.exists(cert_dir)



def test_fake_script_for_one_method_and_the_builtin_fallback(fake):
    digest = fake.add_manifest("a/b", "v1")
    path = "/v2/a/b/manifests/v1"
    fake.script(path, [Resp(500)], method="GET")
    assert http("HEAD", fake.base_url + path)[0] == 200          # HEAD is not scripted
    assert http("GET", fake.base_url + path)[0] == 500
    assert fake.served(path, "GET") == 1 and fake.served(path) == 0
    fake.script(path, [Resp(503), Resp(builtin=True)])          # every other method
    assert [http("HEAD", fake.base_url + path)[0] for _ in range(3)] == [503, 200, 200]
    assert http("HEAD", fake.base_url + path)[1]["Docker-Content-Digest"] == digest
    assert http("GET", fake.base_url + path)[0] == 500          # the method's script wins
    fake.script("/token", [Resp(429, headers={"Retry-After": "2"}), Resp(builtin=True)])
    challenge = 'Bearer realm="%s",service="fake",scope="repository:a/b:pull"' % fake.token_url
    assert fetch_token(challenge)[0] == 429
    status, payload = fetch_token(challenge)
    assert status == 200 and payload["token"] in fake.tokens


def test_fake_manifest_without_digest_header_and_appearing_later(fake):
    digest = fake.add_manifest("a/b", "v1", send_digest=False)
    status, headers, _ = http("HEAD", manifest_url(fake.base_url, "a/b", "v1"))
    assert status == 200
    assert headers["Docker-Content-Digest"] is None and headers["Etag"] is None
    status, _, body = http("GET", manifest_url(fake.base_url, "a/b", "v1"))
    assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == digest
    fake.add_manifest("a/c", "v1", after=0.3)
    url = manifest_url(fake.base_url, "a/c", "v1")
    assert http("HEAD", url)[0] == 404
    time.sleep(0.35)
    assert http("HEAD", url)[0] == 200


def test_fake_oauth2_refresh_token_grant():
    form = "application/x-www-form-urlencoded"
    with FakeRegistry(auth=True, refresh_tokens={"idt-1": "alice"}, private={"a/secret"}) as fake:
        fake.add_manifest("a/secret", "v1")

        def post(fields, content_type=form):
            body = urllib.parse.urlencode(fields).encode("ascii")
            status, _, answer = http("POST", fake.token_url, body=body,
                                     headers={"Content-Type": content_type})
            return status, json.loads(answer.decode("utf-8"))

        status, payload = post({"grant_type": "refresh_token", "refresh_token": "idt-1",
                                "service": "fake", "scope": "repository:a/secret:pull",
                                "client_id": "test"})
        assert status == 200
        assert set(payload) == {"access_token", "expires_in", "issued_at", "scope"}
        assert payload["scope"] == "repository:a/secret:pull"
        assert fake.tokens[payload["access_token"]]["user"] == "alice"
        url = manifest_url(fake.base_url, "a/secret", "v1")
        assert http("HEAD", url, headers={
            "Authorization": "Bearer " + payload["access_token"]})[0] == 200
        logged = fake.token_requests[-1]
        assert logged["method"] == "POST" and logged["raw_query"] == ""
        assert logged["form"]["refresh_token"] == ["idt-1"]
        assert logged["body"].startswith(b"grant_type=refresh_token")

        assert post({"grant_type": "refresh_token", "refresh_token": "nope"}) == (
            400, {"error": "invalid_grant", "error_description": "unknown refresh token"})
        assert post({"grant_type": "password", "username": "alice"})[1] == {
            "error": "unsupported_grant_type"}


def test_fake_expires_in_that_is_not_a_number_is_sent_and_not_enforced():
    with FakeRegistry(auth=True, expires_in="soon") as fake:
        fake.add_manifest("a/b", "v1")
        url = manifest_url(fake.base_url, "a/b", "v1")
        status, payload = fetch_token(http("HEAD", url)[1]["WWW-Authenticate"])
        assert status == 200 and payload["expires_in"] == "soon"
        assert http("HEAD", url, headers={"Authorization": "Bearer " + payload["token"]})[0] == 200


# ---------------------------------------------------------------------------
# registry_common: what both registries share
# ---------------------------------------------------------------------------


def test_common_media_types_are_the_ones_both_registries_export():
    assert registry_common.FULL_ACCEPT == ", ".join(registry_common.MANIFEST_TYPES)
    for module in (fake_registry, registry_harness):
        assert module.FULL_ACCEPT is registry_common.FULL_ACCEPT
        assert (module.MEDIA_OCI_INDEX, module.MEDIA_OCI_MANIFEST, module.MEDIA_DOCKER_LIST,
                module.MEDIA_DOCKER_MANIFEST) == registry_common.MANIFEST_TYPES


@pytest.mark.parametrize("header, expected", [
    (basic("alice", "pa:ss w0rd"), ("alice", "pa:ss w0rd")),
    ("basic " + base64.b64encode(b"bob:").decode(), ("bob", "")),
    ("Basic " + base64.b64encode(b"no-colon").decode(), (None, None)),
    ("Basic !!not-base64!!", (None, None)),
    ("Bearer abc", (None, None)),
    (None, (None, None)),
])
def test_common_decode_basic(header, expected):
    assert registry_common.decode_basic(header) == expected


def test_common_bearer_helpers():
    assert registry_common.bearer_token("Bearer  tok.en ") == "tok.en"
    assert registry_common.bearer_token("bearer x") == "x"
    for value in (None, "", "Bearer ", "Basic abc"):
        assert registry_common.bearer_token(value) is None
    challenge = registry_common.bearer_challenge("http://h/token", "svc",
                                                 "repository:a/b:pull,push", "invalid_token")
    assert challenge == ('Bearer realm="http://h/token",service="svc",'
                         'scope="repository:a/b:pull,push",error="invalid_token"')
    assert parse_challenge(challenge) == ("Bearer", {
        "realm": "http://h/token", "service": "svc", "scope": "repository:a/b:pull,push",
        "error": "invalid_token"})
    assert registry_common.bearer_challenge("r", "s") == 'Bearer realm="r",service="s"'


def test_common_scopes_and_token_answer():
    assert registry_common.parse_scope("repository:noetl/app:pull,push") == (
        "repository", "noetl/app", ["pull", "push"])
    assert registry_common.parse_scope("repository:localhost:5000/a:pull") == (
        "repository", "localhost:5000/a", ["pull"])
    assert registry_common.parse_scope("registry:catalog:*") == ("registry", "catalog", ["*"])
    for bad in ("repository", "repository:pull", "repository::pull"):
        assert registry_common.parse_scope(bad) is None
    assert registry_common.token_answer("t", ("token",), 300, 0) == {
        "token": "t", "expires_in": 300, "issued_at": "1970-01-01T00:00:00Z"}
    assert registry_common.token_answer("t", ("token", "access_token")) == {
        "token": "t", "access_token": "t"}
