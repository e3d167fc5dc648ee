"""The probe against a real registry: CNCF distribution 2.8 with Docker token auth.

The tool is pointed at the local registry through ``registry_mirrors``
(``{"ghcr.io": registry.base_url}``), so ``ghcr.io/noetl/noetl:<tag>`` is probed as
``HEAD http://127.0.0.1:PORT/v2/noetl/noetl/manifests/<tag>``.  The registry is
session-scoped: every test pushes its own unique tag.

Without the ``cluster`` fixture, kubectl is the in-memory ``FakeKubectl`` (the probe
is what these tests are about); with it, the real kubectl drives the simulated API
server.  distribution keeps no request log, so the HEADs are counted by wrapping the
tool's own opener (``bump_image.default_opener()``) and the tokens by the token
server's log.
"""

import base64
import json
import uuid

import pytest
from fakes import OLD, FakeKubectl, run_cli

import bump_image

pytestmark = pytest.mark.registry

REPO = "noetl/noetl"
PRIVATE = "noetl/private"
ALICE = ("alice", "s3cr3t-Pa55-alice")
DEFAULTS = ["noetl-server", "noetl-worker", "ollama-bridge"]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def new_tag():
    return "t-" + uuid.uuid4().hex[:12]


def image_of(tag, repo=REPO):
    return "ghcr.io/%s:%s" % (repo, tag)


def probe_payload(registry, image, **keys):
    payload = {"image": image, "registry_mirrors": {"ghcr.io": registry.base_url},
               "ghcr_probe_attempts": 3, "ghcr_probe_sleep_seconds": 0,
               # the handshake's own requests (the platform check: test_e2e_platforms.py)
               "check_platforms": "never"}
    payload.update(keys)
    return payload


class RecordingOpener:
    """The tool's real opener, with every request it sends written down."""

    def __init__(self):
        self.inner = bump_image.default_opener()
        self.requests = []

    def open(self, request, timeout=None):
        self.requests.append({"method": request.get_method(), "url": request.full_url,
                              "authorization": request.get_header("Authorization")})
        return self.inner.open(request, timeout=timeout)

    def heads(self):
        return [r for r in self.requests if r["method"] == "HEAD"]

    def gets(self):
        return [r for r in self.requests if r["method"] == "GET"]


class Sleeps:
    """A sleeper that records its calls (and does not sleep)."""

    def __init__(self, on_call=None):
        self.calls = []
        self.on_call = on_call

    def __call__(self, seconds):
        self.calls.append(seconds)
        if self.on_call is not None:
            self.on_call(len(self.calls))


class TokenLog:
    """The token server's requests made after this point, but for the harness's own (the
    pusher's token is cached per repository: whether a push asks for one depends on
    which tests ran before in the same process)."""

    def __init__(self, registry):
        self.registry = registry
        self.start = len(registry.token_server.requests)

    @property
    def requests(self):
        return [r for r in self.registry.token_server.requests[self.start:]
                if r["user"] != self.registry.pusher]


def probe_run(registry, env, payload, **effects):
    """Run the CLI in-process with the real probe and an in-memory kubectl."""
    effects.setdefault("runner", FakeKubectl())
    effects.setdefault("opener", RecordingOpener())
    effects.setdefault("sleeper", Sleeps())
    run = run_cli(["--payload", json.dumps(payload)], env=env, **effects)
    run.effects = effects
    return run


def only_probe_line(run):
    probes = run.event("probe")
    assert len(probes) == 1, run.stdout
    assert run.events[0]["event"] == "probe"
    return probes[0]


def write_docker_config(env, auths):
    path = "%s/config.json" % env["DOCKER_CONFIG"]
    with open(path, "w") as handle:
        json.dump({"auths": auths}, handle)
    return path


def b64(text):
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


# ---------------------------------------------------------------------------
# found: every push kind, with the pushed digest
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["docker", "oci", "oci-index"])
def test_found_with_the_pushed_digest(registry, env, kind):
    tag = new_tag()
    digest = registry.push_image(REPO, tag, kind=kind)
    image = image_of(tag)
    run = probe_run(registry, env, probe_payload(registry, image))
    assert run.code == 0, run.stdout + run.stderr
    assert only_probe_line(run) == {"event": "probe", "image": image, "status": "available",
                                    "attempts": 1, "digest": digest, "error": None,
                                    "platforms": None}
    if kind == "oci-index":
        # the tag points at the index only: its digest, never the child's
        child = registry.pushed[(REPO, tag)]["children"][0]
        assert digest != child
    assert [c["status"] for c in run.components.values()] == ["changed"] * 3
    assert {c["digest"] for c in run.components.values()} == {digest}
    # one HEAD answered 401 with the challenge, one token, one HEAD with it
    opener = run.effects["opener"]
    assert [r["method"] for r in opener.requests] == ["HEAD", "GET", "HEAD"]
    assert opener.heads()[0]["url"] == "%s/v2/%s/manifests/%s" % (registry.base_url, REPO, tag)
    assert "available as %s" % digest in run.stderr


def test_a_digest_reference_is_probed_by_digest(registry, env):
    tag = new_tag()
    digest = registry.push_image(REPO, tag, kind="oci")
    image = "%s@%s" % (image_of(tag), digest)
    run = probe_run(registry, env, probe_payload(registry, image))
    assert run.code == 0, run.stdout + run.stderr
    assert only_probe_line(run)["digest"] == digest
    heads = run.effects["opener"].heads()
    assert {h["url"] for h in heads} == {"%s/v2/%s/manifests/%s" % (registry.base_url, REPO,
                                                                    digest)}


# ---------------------------------------------------------------------------
# absent: retried, one token, exit 3, nothing changed
# ---------------------------------------------------------------------------


def test_absent_is_retried_with_one_token_then_exit_3(registry, env):
    registry.push_image(REPO, new_tag())      # the repository exists, this tag does not
    image = image_of(new_tag())
    tokens = TokenLog(registry)
    kubectl = FakeKubectl()
    run = probe_run(registry, env, probe_payload(
        registry, image, ghcr_probe_attempts=4, ghcr_probe_sleep_seconds=0.1), runner=kubectl)
    assert run.code == 3, run.stdout + run.stderr
    probe = only_probe_line(run)
    assert probe["status"] == "unavailable" and probe["attempts"] == 4
    assert probe["digest"] is None
    assert probe["error"]["code"] == "manifest_unknown"
    assert "gave up after 4 attempts" in probe["error"]["message"]
    assert [e["event"] for e in run.events] == ["probe", "summary"]
    assert run.components == {}
    assert run.summary["exit_code"] == 3 and run.summary["status"] == "failed"
    # four attempts: the first HEAD was challenged, then one HEAD per attempt
    opener = run.effects["opener"]
    heads = opener.heads()
    assert len(heads) == 4 + 1
    assert heads[0]["authorization"] is None
    bearer = {h["authorization"] for h in heads[1:]}
    assert len(bearer) == 1 and bearer.pop().startswith("Bearer ")
    # ONE token, reused by every attempt
    assert len(opener.gets()) == 1
    assert len(tokens.requests) == 1
    assert tokens.requests[0]["scopes"] == ["repository:%s:pull" % REPO]
    # a sleep between attempts, none after the last
    assert run.effects["sleeper"].calls == [0.1] * 3
    # no kubectl beyond the preflight lookup: nothing read, nothing changed
    assert kubectl.calls == []


@pytest.mark.e2e
def test_absent_image_sends_nothing_to_the_cluster(registry, cluster):
    cluster.noetl()
    image = image_of(new_tag())
    tokens = TokenLog(registry)
    run = cluster.bump(cluster.payload(**probe_payload(
        registry, image, probe="auto", ghcr_probe_attempts=3, ghcr_probe_sleep_seconds=0)))
    assert run.code == 3, run.stdout + run.stderr
    probe = only_probe_line(run)
    assert (probe["status"], probe["attempts"]) == ("unavailable", 3)
    assert probe["error"]["code"] == "manifest_unknown"
    assert [e["event"] for e in run.events] == ["probe", "summary"]
    assert len(tokens.requests) == 1
    assert cluster.api_requests() == []     # not even a read reached the API
    for name, container in (("noetl-server", "server"), ("noetl-worker", "worker"),
                            ("noetl-worker", "wait-for-api"), ("ollama-bridge", "bridge")):
        assert cluster.image(name, container) == OLD


# ---------------------------------------------------------------------------
# pushed while the probe waits
# ---------------------------------------------------------------------------


def test_pushed_mid_probe_proceeds(registry, env):
    tag = new_tag()
    image = image_of(tag)
    pushed = []

    def push_on_first_sleep(n):
        if n == 1:
            pushed.append(registry.push_image(REPO, tag, kind="oci-index"))

    sleeper = Sleeps(push_on_first_sleep)
    tokens = TokenLog(registry)
    run = probe_run(registry, env, probe_payload(
        registry, image, ghcr_probe_attempts=5, ghcr_probe_sleep_seconds=0.1), sleeper=sleeper)
    assert run.code == 0, run.stdout + run.stderr
    assert only_probe_line(run) == {"event": "probe", "image": image, "status": "available",
                                    "attempts": 2, "digest": pushed[0], "error": None,
                                    "platforms": None}
    assert sleeper.calls == [0.1]
    assert "attempt 1/5: manifest_unknown" in run.stderr
    assert [c["status"] for c in run.components.values()] == ["changed"] * 3
    assert len(tokens.requests) == 1        # the token of attempt 1 served attempt 2


def test_pushed_mid_probe_through_the_library(registry, env):
    tag = new_tag()
    pushed = []
    sleeper = Sleeps(lambda n: pushed.append(registry.push_image(REPO, tag)) if n == 2 else None)
    events = []
    result = bump_image.bump(
        probe_payload(registry, image_of(tag), ghcr_probe_attempts=4,
                      ghcr_probe_sleep_seconds=0.1, dry_run=True),
        runner=FakeKubectl(), sleeper=sleeper, env=env, on_event=events.append)
    assert result.exit_code == 0
    assert (result.probe.status, result.probe.attempts) == ("available", 3)
    assert result.probe.digest == pushed[0]
    assert events[0]["event"] == "probe" and events[0]["digest"] == pushed[0]
    assert [e["status"] for e in events if e["event"] == "component"] == ["planned"] * 3


# ---------------------------------------------------------------------------
# the token challenge
# ---------------------------------------------------------------------------


def test_token_challenge_is_followed(registry, env):
    tag = new_tag()
    registry.push_image(REPO, tag)
    tokens = TokenLog(registry)
    run = probe_run(registry, env, probe_payload(registry, image_of(tag)))
    assert run.code == 0, run.stdout + run.stderr
    assert len(tokens.requests) == 1
    token = tokens.requests[0]
    assert token["method"] == "GET" and token["path"] == "/token"
    assert token["scopes"] == ["repository:noetl/noetl:pull"]
    assert token["service"] == registry.service
    assert token["authorization_present"] is False      # anonymous: no Docker config
    assert token["status"] == 200
    assert token["granted"] == [{"type": "repository", "name": REPO, "actions": ["pull"]}]
    opener = run.effects["opener"]
    assert opener.gets()[0]["url"].startswith(registry.token_server.realm + "?")
    heads = opener.heads()
    assert heads[0]["authorization"] is None
    assert heads[1]["authorization"].startswith("Bearer ")


def test_token_is_reused_by_a_later_attempt_after_a_404(registry, env):
    """404, then found: still one token; the second attempt is one HEAD with it."""
    tag = new_tag()
    sleeper = Sleeps(lambda n: registry.push_image(REPO, tag, kind="docker"))
    run = probe_run(registry, env, probe_payload(
        registry, image_of(tag), ghcr_probe_sleep_seconds=0.1), sleeper=sleeper)
    assert run.code == 0
    opener = run.effects["opener"]
    assert [r["method"] for r in opener.requests] == ["HEAD", "GET", "HEAD", "HEAD"]


# ---------------------------------------------------------------------------
# a private repository
# ---------------------------------------------------------------------------


def test_private_repo_without_credentials_is_unauthorized(registry, env):
    tag = new_tag()
    registry.push_image(PRIVATE, tag)
    image = image_of(tag, PRIVATE)
    tokens = TokenLog(registry)
    kubectl = FakeKubectl()
    run = probe_run(registry, env, probe_payload(registry, image, ghcr_probe_attempts=2),
                    runner=kubectl)
    assert run.code == 3, run.stdout + run.stderr
    probe = only_probe_line(run)
    assert (probe["status"], probe["attempts"], probe["digest"]) == ("unavailable", 2, None)
    assert probe["error"]["code"] == "unauthorized"
    assert "may be private or missing" in probe["error"]["message"]
    assert [e["event"] for e in run.events] == ["probe", "summary"]
    assert kubectl.calls == []
    # one anonymous token per attempt: each is refused (insufficient scope) and dropped
    assert len(tokens.requests) == 2
    assert all(not t["authorization_present"] for t in tokens.requests)
    assert all(t["granted"] == [{"type": "repository", "name": PRIVATE, "actions": []}]
               for t in tokens.requests)


AUTH_FORMS = {
    "auth": lambda reg: {reg.host: {"auth": b64("%s:%s" % ALICE)}},
    "username-password": lambda reg: {reg.host: {"username": ALICE[0], "password": ALICE[1]}},
    "url-key": lambda reg: {"http://%s/v2/" % reg.host: {"auth": b64("%s:%s" % ALICE)}},
}


@pytest.mark.parametrize("form", sorted(AUTH_FORMS))
def test_private_repo_with_docker_config_credentials(registry, env, form):
    tag = new_tag()
    digest = registry.push_image(PRIVATE, tag, kind="oci")
    image = image_of(tag, PRIVATE)
    write_docker_config(env, AUTH_FORMS[form](registry))
    tokens = TokenLog(registry)
    run = probe_run(registry, env, probe_payload(registry, image))
    assert run.code == 0, run.stdout + run.stderr
    assert only_probe_line(run) == {"event": "probe", "image": image, "status": "available",
                                    "attempts": 1, "digest": digest, "error": None,
                                    "platforms": None}
    assert len(tokens.requests) == 1
    token = tokens.requests[0]
    assert (token["auth_scheme"], token["user"], token["authenticated"]) == \
        ("Basic", "alice", True)
    assert token["scopes"] == ["repository:%s:pull" % PRIVATE]
    assert token["granted"] == [{"type": "repository", "name": PRIVATE, "actions": ["pull"]}]
    # Basic credentials went to the token realm only, never to the registry itself
    for head in run.effects["opener"].heads():
        assert not (head["authorization"] or "").startswith("Basic")
    assert_secret_nowhere(run, run.events)


def test_wrong_password_is_token_failed_and_not_printed(registry, env):
    tag = new_tag()
    registry.push_image(PRIVATE, tag)
    wrong = "not-the-Pa55word-of-alice"
    write_docker_config(env, {registry.host: {"auth": b64("alice:" + wrong)}})
    tokens = TokenLog(registry)
    run = probe_run(registry, env, probe_payload(registry, image_of(tag, PRIVATE),
                                                 ghcr_probe_attempts=2))
    assert run.code == 3, run.stdout + run.stderr
    probe = only_probe_line(run)
    assert probe["error"]["code"] == "token_failed"
    assert "rejected the credentials" in probe["error"]["message"]
    assert [t["status"] for t in tokens.requests] == [401, 401]
    for secret in (wrong, b64("alice:" + wrong)):
        assert secret not in run.stdout and secret not in run.stderr


def test_credentials_are_looked_up_for_the_mirror_not_the_image_host(registry, env):
    tag = new_tag()
    registry.push_image(PRIVATE, tag)
    write_docker_config(env, {"ghcr.io": {"auth": b64("%s:%s" % ALICE)}})
    tokens = TokenLog(registry)
    run = probe_run(registry, env, probe_payload(registry, image_of(tag, PRIVATE),
                                                 ghcr_probe_attempts=1))
    assert run.code == 3
    assert only_probe_line(run)["error"]["code"] == "unauthorized"
    assert [t["authorization_present"] for t in tokens.requests] == [False]
    assert_secret_nowhere(run, run.events)


def assert_secret_nowhere(run, events):
    secrets = (ALICE[1], b64("%s:%s" % ALICE))
    for secret in secrets:
        assert secret not in run.stdout
        assert secret not in run.stderr
        for event in events:
            assert secret not in json.dumps(event)


# ---------------------------------------------------------------------------
# the whole flow: real registry, simulated cluster, real kubectl
# ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_full_flow_worked_example_then_pin_digest(registry, cluster):
    tag = new_tag()
    digest = registry.push_image(REPO, tag, kind="oci-index")
    image = image_of(tag)
    pinned = "%s@%s" % (image, digest)
    cluster.noetl()
    cluster.sim.set_digest(image, digest)

    def payload(**keys):
        return cluster.payload(**probe_payload(registry, image, probe="auto",
                                               check_platforms="auto", **keys))

    # the worked example: {"image": ...}, all three defaults
    run = cluster.bump(payload())
    assert run.code == 0, run.stdout + run.stderr
    assert only_probe_line(run) == {"event": "probe", "image": image, "status": "available",
                                    "attempts": 1, "digest": digest, "error": None,
                                    "platforms": ["linux/amd64"]}
    assert list(run.components) == DEFAULTS
    for comp in run.components.values():
        assert comp["status"] == "changed", comp
        assert comp["image"] == image and comp["previous_image"] == OLD
        assert comp["digest"] == digest
        assert comp["verified"] is True, run.stderr
    assert run.components["noetl-worker"]["containers"] == ["worker", "wait-for-api"]
    assert run.summary["changed"] == 3 and run.summary["exit_code"] == 0
    assert cluster.image("noetl-worker", "wait-for-api") == image

    # pin_digest: the Deployments move to image@digest
    run = cluster.bump(payload(pin_digest=True))
    assert run.code == 0, run.stdout + run.stderr
    for comp in run.components.values():
        assert comp["status"] == "changed", comp
        assert comp["image"] == pinned and comp["previous_image"] == image
        assert comp["verified"] is True, run.stderr
    assert run.summary["image"] == image
    for name, container in (("noetl-server", "server"), ("noetl-worker", "worker"),
                            ("noetl-worker", "wait-for-api"), ("ollama-bridge", "bridge")):
        assert cluster.image(name, container) == pinned
    dep = cluster.sim.get("deployments", "noetl-server")
    assert dep["metadata"]["annotations"]["kubernetes.io/change-cause"] == "bump_image " + image

    # rerun: unchanged, and no write reaches the API
    cluster.sim.clear_requests()
    run = cluster.bump(payload(pin_digest=True))
    assert run.code == 0, run.stdout + run.stderr
    assert [c["status"] for c in run.components.values()] == ["unchanged"] * 3
    assert cluster.writes() == []


# ---------------------------------------------------------------------------
# an image per workload, through the real registry and the simulated cluster
# ---------------------------------------------------------------------------

@pytest.mark.e2e
def test_images_one_pushed_one_not_then_both(registry, cluster):
    """One probe line per image; one of them not pushed: exit 3 and nothing written;
    both pushed: each workload at its own image, pinned to its own digest."""
    server, worker = new_tag(), new_tag()
    server_image = image_of(server, "noetl/noetl-server-rust")
    worker_image = image_of(worker, "noetl/noetl-worker-rust")
    server_digest = registry.push_image("noetl/noetl-server-rust", server)
    cluster.noetl()
    payload = cluster.payload(**probe_payload(registry, None, probe="auto", pin_digest=True))
    del payload["image"]
    payload["images"] = {"noetl-server": server_image, "noetl-worker": worker_image}
    payload["ghcr_probe_sleep_seconds"] = 0.2
    run = cluster.bump(payload)
    assert run.code == 3, run.stdout + run.stderr
    assert [(e["image"], e["status"]) for e in run.event("probe")] == [
        (server_image, "available"), (worker_image, "unavailable")]
    assert [e["event"] for e in run.events] == ["probe", "probe", "summary"]
    assert run.summary["image"] is None and run.summary["exit_code"] == 3
    assert cluster.api_requests() == []
    worker_digest = registry.push_image("noetl/noetl-worker-rust", worker)
    cluster.sim.set_digest(server_image + "@" + server_digest, server_digest)
    cluster.sim.set_digest(worker_image + "@" + worker_digest, worker_digest)
    run = cluster.bump(payload)
    assert run.code == 0, run.stdout + run.stderr
    assert [e["digest"] for e in run.event("probe")] == [server_digest, worker_digest]
    server_comp, worker_comp = run.components["noetl-server"], run.components["noetl-worker"]
    assert server_comp["image"] == server_image + "@" + server_digest
    assert worker_comp["image"] == worker_image + "@" + worker_digest
    assert server_comp["verified"] is True and worker_comp["verified"] is True, run.stderr
    assert cluster.image("noetl-server", "server") == server_image + "@" + server_digest
    assert cluster.image("noetl-worker", "worker") == worker_image + "@" + worker_digest
    # its init container runs another repository (noetl/noetl): the only regular
    # container is the one to update, the init container is left alone
    assert cluster.image("noetl-worker", "wait-for-api") == OLD
    assert cluster.image("ollama-bridge", "bridge") == OLD          # not among the images
    assert run.summary["images"] == {"noetl-server": server_image,
                                     "noetl-worker": worker_image}
