"""Security: no payload value can become a kubectl flag or reach a shell, and Docker
config credentials go only where the registry's own challenge sends them, never into
any output.

What the validators accept is deliberate: Kubernetes names, context names and image
references have grammars that exclude ``=``, white space, control characters, shell
metacharacters and a leading ``-``.  The two *paths* (``kubectl``, ``kubeconfig``) may
hold spaces, ``=`` and shell metacharacters (``/tmp/kube config`` is a real path) but
no leading ``-`` and no C0 control character; they are passed as ``argv[0]`` and as the
single element ``--kubeconfig=<path>``, never through a shell, which the tests below
show.  ``registry_mirrors`` values are URLs that only urllib sees; they may hold
``;`` or ``'`` in the path, but no white space, control character, query or fragment.
"""

import base64
import json
import re
import stat
import urllib.error

import pytest
from fake_registry import FakeRegistry, Resp
from fakes import IMAGE, OLD, FakeKubectl, NoNetwork, deployment, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bump_image

REPO = "noetl/noetl"
PATH = "/v2/noetl/noetl/manifests/v2.35.9"
DIGEST = "sha256:" + "c" * 64

# ---------------------------------------------------------------------------
# argument injection: rejected before anything is contacted
# ---------------------------------------------------------------------------

METACHARACTERS = ";|&$`<>(){}*?!'\"\\"
LEADING_DASH = ["-x", "--kubeconfig=/tmp/evil", "--help", "-n=kube-system", "--as=admin"]
CONTROL = ["a\nb", "a\rb", "a\tb", "a\x00b", "a\x1bb", "a\x7fb", "\n", "a\n--as=admin"]
SPACES = ["a b", " a", "a ", "a\u00a0b", "a\u2003b"]
EQUALS = ["a=b", "--", "="]
METAS = ["a%sb" % c for c in METACHARACTERS] + ["$(touch /tmp/pwned)", "`id`", "a;rm -rf ~",
                                                 "a|sh", "a&&b", "${IFS}"]
EVERYTHING = LEADING_DASH + CONTROL + SPACES + EQUALS + METAS

BASE = {"image": IMAGE}


def put(key, value):
    """A payload that is valid except for ``value`` under ``key``."""
    payload = dict(BASE)
    if key == "image":
        payload["image"] = value
    elif key == "image@tag":
        payload["image"] = "ghcr.io/noetl/noetl:" + value
    elif key == "image@path":
        payload["image"] = "ghcr.io/noetl/" + value + ":v1"
    elif key == "image_repository":
        payload = {"image_repository": value, "target_tag": "v1"}
    elif key == "target_tag":
        payload = {"image_repository": "ghcr.io/noetl/noetl", "target_tag": value}
    elif key in ("deployments", "components"):
        payload[key] = ["noetl-server", value]
    elif key == "registry_mirrors:key":
        payload["registry_mirrors"] = {value: "https://mirror.internal"}
    elif key == "registry_mirrors:value":
        payload["registry_mirrors"] = {"ghcr.io": value}
    elif key == "registry_mirrors:url-path":
        payload["registry_mirrors"] = {"ghcr.io": "https://mirror.internal/" + value}
    else:
        payload[key] = value
    return payload


STRICT_KEYS = ["image", "image@tag", "image@path", "image_repository", "target_tag",
               "namespace", "deployment", "deployments", "components", "container",
               "context", "expected_kube_context", "registry_mirrors:key", "probe"]
PATH_KEYS = ["kubectl", "kubeconfig"]

REJECTED = [(key, value) for key in STRICT_KEYS for value in EVERYTHING]
# paths: a leading '-' and C0 control characters are refused
REJECTED += [(key, value) for key in PATH_KEYS for value in LEADING_DASH + CONTROL]
# mirror URLs: white space, control characters, a leading '-' (no scheme), a query
REJECTED += [("registry_mirrors:value", value) for value in LEADING_DASH + CONTROL + SPACES
             + EQUALS + METAS]
REJECTED += [("registry_mirrors:url-path", value) for value in CONTROL + SPACES
             + ["a?b", "a#b", "x y"] if value.isascii()]

CASES = [pytest.param(k, v, id="%s=%r" % (k, v)) for k, v in REJECTED] + [
    pytest.param("registry_mirrors:url-path", v, id="registry_mirrors:url-path=%r" % v)
    for v in [v for v in SPACES if not v.isascii()] + ["?", "#"]]


@pytest.mark.parametrize("key, value", CASES)
def test_injection_is_rejected_before_anything_is_contacted(env, key, value):
    kubectl, net = FakeKubectl(), NoNetwork()
    run = run_cli(["--payload", json.dumps(put(key, value))], runner=kubectl, opener=net,
                  env=env)
    assert run.code == 2, run.stdout
    (line,) = run.events
    assert line["event"] == "error" and line["error"]["code"] == "invalid_payload"
    assert kubectl.calls == [] and net.used == []
    # stderr says the same in one line for a person, the value escaped: no control
    # character (a terminal escape, a line break) reaches the terminal
    assert run.stderr.startswith("bump_image: invalid_payload (exit 2): ")
    assert run.stderr.endswith("\n") and not re.search(r"[\x00-\x1f\x7f]", run.stderr[:-1])


@pytest.mark.parametrize("argv", [
    ["--image", "-x"],                                   # argparse: a flag, not a value
    ["--image=--kubeconfig=/tmp/evil"],
    ["--image", IMAGE, "--namespace=--as=admin"],
    ["--image", IMAGE, "--namespace", "kube system"],
    ["--image", IMAGE, "--deployment=-n"],
    ["--image", IMAGE, "--deployment", "a;b"],
    ["--image", "ghcr.io/noetl/noetl:v1;id"],
])
def test_injection_through_the_override_flags(env, argv):
    kubectl, net = FakeKubectl(), NoNetwork()
    run = run_cli(argv, runner=kubectl, opener=net, env=env)
    assert run.code == 2
    (line,) = run.events
    assert line["error"]["code"] in ("invalid_payload", "usage")
    assert kubectl.calls == [] and net.used == []


def flags_used(argv):
    return [a for a in argv[1:] if a.startswith("-")]


ALLOWED_FLAG = re.compile(r"--(context|kubeconfig|namespace|output|request-timeout|type"
                          r"|field-manager|patch|watch|timeout|to-revision|selector|cache-dir)=.+"
                          r"|--ignore-not-found$")


@pytest.mark.parametrize("key, value", [(k, v) for k in PATH_KEYS
                                        for v in SPACES[:1] + EQUALS[:1] + METAS])
def test_paths_with_shell_characters_stay_one_argument(env, key, value):
    path = "/opt/k8s tools/" + value
    kubectl = FakeKubectl()
    run = run_cli(["--payload", json.dumps(dict(BASE, probe="never", **{key: path}))],
                  runner=kubectl, env=env)
    assert run.code == 0, run.stdout
    assert kubectl.calls
    for argv in kubectl.calls:
        if key == "kubectl":
            assert argv[0] == path
        else:
            assert argv[0] == "kubectl" and argv[1] == "--kubeconfig=" + path
            assert argv.count("--kubeconfig=" + path) == 1
        for flag in flags_used(argv):
            assert ALLOWED_FLAG.fullmatch(flag), flag


@pytest.mark.parametrize("value", [v for v in METAS if "?" not in v and " " not in v]
                         + ["a=b"])
def test_mirror_urls_with_shell_characters_are_only_urls(env, value):
    kubectl = FakeKubectl()

    class Refuse:
        used = []

        def open(self, request, timeout=None):
            self.used.append(request.full_url)
            raise urllib.error.URLError(ConnectionRefusedError(111, "refused"))

    opener = Refuse()
    run = run_cli(["--payload", json.dumps(put("registry_mirrors:url-path", value))],
                  runner=kubectl, opener=opener, env=env)
    assert run.code == 3 and kubectl.calls == []
    assert opener.used and all(u.startswith("https://mirror.internal/") for u in opener.used)


def test_mirror_with_an_empty_fragment_does_not_probe_the_wrong_url(env):
    with FakeRegistry() as fake:
        fake.script("/", [Resp(200)])                 # a web server's home page
        kubectl = FakeKubectl()
        run = run_cli(["--payload", json.dumps({"image": IMAGE, "registry_mirrors": {
            "ghcr.io": fake.base_url + "/#"}})], runner=kubectl, env=env)
        probed = [r["path"] for r in fake.requests]
    assert probed == [], "probed %s; the run exited %d" % (probed, run.code)
    assert run.code == 2 and kubectl.calls == []


# ---------------------------------------------------------------------------
# argument injection: valid payloads, every kubectl argv (property)
# ---------------------------------------------------------------------------

name = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?", fullmatch=True)
subdomain = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,6}[a-z0-9])?(\.[a-z0-9]{1,4})?",
                          fullmatch=True)
context = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,12}", fullmatch=True)
path_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="".join(
    chr(c) for c in range(32)) + "\x7f"), min_size=1, max_size=20).filter(
    lambda p: not p.startswith("-"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.filter_too_much])
@given(namespace=name, names=st.lists(subdomain, min_size=1, max_size=3, unique=True),
       container=st.one_of(st.none(), name), ctx=st.one_of(st.none(), context),
       kubeconfig=st.one_of(st.none(), path_text), binary=path_text,
       rollback=st.booleans(), parallel=st.booleans(), fail=st.booleans())
def test_every_kubectl_argv_is_a_list_and_no_value_becomes_a_flag(
        namespace, names, container, ctx, kubeconfig, binary, rollback, parallel, fail):
    cluster = {n: deployment(n, {container or "app": OLD}, namespace=namespace) for n in names}
    kubectl = FakeKubectl(cluster, context=ctx or "sim")
    if fail:       # the last one exceeds its progress deadline: fail-fast, then an undo
        kubectl.rollout[names[-1]] = "deadline"
    payload = {"image": IMAGE, "probe": "never", "namespace": namespace, "deployments": names,
               "kubectl": binary, "rollback_on_failure": rollback, "parallel": parallel,
               "rollout_timeout_seconds": 5}
    if ctx is not None:
        payload.update(context=ctx, expected_kube_context=ctx)
    if kubeconfig is not None:
        payload["kubeconfig"] = kubeconfig
    if container is not None:
        payload["container"] = container
    run = run_cli(["--payload", json.dumps(payload)], runner=kubectl, env={})
    assert run.code == (1 if fail else 0), run.stdout
    if fail:
        assert any(v.startswith("rollout undo") for v in kubectl.verbs()) == rollback, \
            kubectl.verbs()
    values = [v for v in (namespace, container, ctx, kubeconfig, IMAGE) if v] + names
    for argv in kubectl.calls:
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
        assert argv[0] == binary
        for arg in argv[1:]:
            if arg.startswith("-"):
                assert ALLOWED_FLAG.fullmatch(arg), arg
            else:
                # a positional argument is a verb, a resource or a validated name
                assert arg in values or arg.startswith("deployment/") or arg in (
                    "get", "patch", "rollout", "status", "undo", "deployment", "deployments",
                    "deployments,replicasets,pods", "replicasets,pods", "config",
                    "current-context"), arg
        if ctx is not None:
            assert "--context=" + ctx in argv
        if kubeconfig is not None:
            assert "--kubeconfig=" + kubeconfig in argv


def test_popen_gets_a_list_and_never_a_shell(fp, tmp_path, env):
    """pytest-subprocess: the default runner's Popen arguments."""
    folder = tmp_path / "bin"
    folder.mkdir()
    stub = folder / "kubectl"
    stub.write_text("#!/bin/sh\nexit 99\n")
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    seen = []

    def record(process):
        seen.append((process.args, dict(process.kwargs or {})))

    dep = deployment("noetl-server", {"server": OLD})
    fp.register(["kubectl", "get", "deployment/noetl-server", fp.any()], stdout=json.dumps(dep),
                callback=record)
    fp.register(["kubectl", "patch", fp.any()], stdout="patched\n", callback=record)
    after = deployment("noetl-server", {"server": IMAGE})
    after["metadata"]["generation"] = after["status"]["observedGeneration"] = 2
    fp.register(["kubectl", "get", "deployment/noetl-server", fp.any()],   # the poll
                stdout=json.dumps(after), callback=record)
    fp.register(["kubectl", "get", "replicasets,pods", fp.any()],
                stdout='{"kind": "List", "items": []}', callback=record)
    run = run_cli(["--payload", json.dumps({"image": IMAGE, "probe": "never",
                                            "deployment": "noetl-server",
                                            "namespace": "noetl"})],
                  env=dict(env, PATH=str(folder)))
    assert run.code == 0, run.stdout + run.stderr
    assert len(seen) == 4
    for args, kwargs in seen:
        assert isinstance(args, list) and args[0] == "kubectl"
        assert not kwargs.get("shell")
        assert "executable" not in kwargs or kwargs["executable"] is None
        assert kwargs.get("stdin") is not None          # DEVNULL: never the terminal


# ---------------------------------------------------------------------------
# secrets
# ---------------------------------------------------------------------------

USER, PASSWORD = "alice", "Sentinel-Pa55w0rd-7f3a"
BASIC = base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()).decode()


def docker_config(env, host):
    with open(env["DOCKER_CONFIG"] + "/config.json", "w") as fh:
        json.dump({"auths": {host: {"auth": BASIC}}}, fh)


def basic_requests(*registries):
    """(registry index, method, path) of every request that carried Basic credentials."""
    out = []
    for i, reg in enumerate(registries):
        for r in reg.requests:
            value = r["headers"].get("Authorization") or ""
            if value.lower().startswith("basic"):
                assert value == "Basic " + BASIC
                out.append((i, r["method"], r["path"]))
    return out


def run_probe(env, fake, fmt="jsonl", **payload):
    payload = dict({"image": IMAGE, "registry_mirrors": {"ghcr.io": fake.base_url},
                    "ghcr_probe_attempts": 2, "ghcr_probe_sleep_seconds": 0}, **payload)
    return run_cli(["--payload", json.dumps(payload), "--format", fmt], runner=FakeKubectl(),
                   env=env)


def assert_no_secret(run):
    for text in (run.stdout, run.stderr):
        assert PASSWORD not in text and BASIC not in text
        assert "Basic " not in text
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("fmt", ["jsonl", "text"])
def test_secret_on_success(env, fmt):
    with FakeRegistry(auth=True, users={USER: PASSWORD}, private={REPO}) as fake:
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        docker_config(env, fake.host)
        run = run_probe(env, fake, fmt)
        basic = basic_requests(fake)
    assert run.code == 0, run.stdout
    assert_no_secret(run)
    assert basic == [(0, "GET", "/token")]


@pytest.mark.parametrize("fmt", ["jsonl", "text"])
def test_secret_with_a_wrong_password(env, fmt):
    with FakeRegistry(auth=True, users={USER: "the-right-one"}, private={REPO}) as fake:
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        docker_config(env, fake.host)
        run = run_probe(env, fake, fmt)
        basic = basic_requests(fake)
    assert run.code == 3
    assert "rejected the credentials for " + fake.host in run.stdout
    assert_no_secret(run)
    assert basic == [(0, "GET", "/token")] * 2         # one token request per attempt


def test_secret_with_a_failing_token_endpoint(env):
    with FakeRegistry(auth=True, token_mode="error") as fake:
        docker_config(env, fake.host)
        run = run_probe(env, fake)
        basic = basic_requests(fake)
    assert run.code == 3 and run.events[0]["error"]["code"] == "token_failed"
    assert_no_secret(run)
    assert basic and {b[2] for b in basic} == {"/token"}


def test_secret_when_the_manifest_redirects_to_another_host(env):
    with FakeRegistry(auth=True, users={USER: PASSWORD}, private={REPO}) as fake, \
            FakeRegistry() as other:
        other.add_manifest(REPO, "v2.35.9", DIGEST)
        fake.script(PATH, [Resp(307, headers={"Location": other.base_url + PATH})],
                    require_auth=True)
        docker_config(env, fake.host)
        run = run_probe(env, fake)
        basic = basic_requests(fake, other)
        reached = other.requests
    assert run.code == 0, run.stdout
    assert_no_secret(run)
    assert basic == [(0, "GET", "/token")]
    assert [r["headers"].get("Authorization") for r in reached] == [None]   # no token either


def test_secret_when_the_token_endpoint_redirects_to_another_host(env):
    with FakeRegistry(auth=True) as fake, FakeRegistry() as other:
        fake.script("/token", [Resp(307, headers={"Location": other.base_url + "/token"})])
        docker_config(env, fake.host)
        run = run_probe(env, fake)
        basic = basic_requests(fake, other)
        reached = other.token_requests
    assert_no_secret(run)
    assert reached and all(r["headers"].get("Authorization") is None for r in reached)
    assert {b[0] for b in basic} == {0}                # Basic only to the registry's realm


def test_secret_goes_to_the_realm_the_challenge_names_on_another_port(env):
    """Documented behaviour (as Docker does): the Basic credentials of the contacted
    registry go to the token realm *its own* challenge names, even on another host or
    port (Docker Hub's realm is auth.docker.io); the registry itself never gets them."""
    with FakeRegistry(users={USER: PASSWORD}, private={REPO}) as realm, \
            FakeRegistry(auth=True, realm=None) as fake:
        fake.realm = realm.base_url + "/token"
        fake.tokens = realm.tokens                     # the registry trusts the realm's tokens
        fake.add_manifest(REPO, "v2.35.9", DIGEST)
        docker_config(env, fake.host)                  # credentials for the registry only
        run = run_probe(env, fake)
        basic = basic_requests(fake, realm)
    assert run.code == 0, run.stdout
    assert_no_secret(run)
    assert basic == [(1, "GET", "/token")]


def test_secret_is_not_sent_to_a_realm_on_another_port_it_was_not_challenged_for(env):
    """Credentials stored for the realm's host:port are not used for a registry that
    names it; credentials for another registry are never sent to this one's realm."""
    with FakeRegistry() as realm, FakeRegistry(auth=True) as fake:
        fake.realm = realm.base_url + "/token"
        docker_config(env, realm.host)                 # credentials for the realm, not fake
        run = run_probe(env, fake)
        basic = basic_requests(fake, realm)
    assert_no_secret(run)
    assert basic == []


def test_secret_is_not_sent_to_a_plain_http_realm(env):
    class Recorder:
        """Loopback requests go through the real opener; others are recorded, refused."""

        def __init__(self):
            self.inner = bump_image.default_opener()
            self.remote = []

        def open(self, request, timeout=None):
            host = request.host.split(":")[0]
            if host != "127.0.0.1":
                headers = dict(request.header_items())
                self.remote.append((request.full_url, headers))
                raise urllib.error.URLError(ConnectionRefusedError(111, "refused"))
            return self.inner.open(request, timeout=timeout)

    with FakeRegistry(auth=True) as fake:
        fake.realm = "http://auth.example.test/token"
        docker_config(env, fake.host)
        opener = Recorder()
        payload = {"image": IMAGE, "registry_mirrors": {"ghcr.io": fake.base_url},
                   "ghcr_probe_attempts": 1}
        run = run_cli(["--payload", json.dumps(payload)], runner=FakeKubectl(), opener=opener,
                      env=env)
    assert run.code == 3
    assert_no_secret(run)
    assert "not sending credentials for %s to the plain-http token realm" % fake.host \
        in run.stderr
    assert opener.remote and all("Authorization" not in h for _, h in opener.remote)


def test_basic_challenge_credentials_do_not_follow_a_redirect(env):
    """A registry that asks for Basic itself gets the credentials (documented); the
    redirect it answers with does not carry them to another host."""
    with FakeRegistry() as fake, FakeRegistry() as other:
        other.add_manifest(REPO, "v2.35.9", DIGEST)
        fake.script(PATH, [Resp(401, headers={"WWW-Authenticate": 'Basic realm="registry"'}),
                           Resp(307, headers={"Location": other.base_url + PATH})])
        docker_config(env, fake.host)
        run = run_probe(env, fake)
        basic = basic_requests(fake, other)
        reached = other.requests
    assert run.code == 0, run.stdout
    assert_no_secret(run)
    # only to the registry that asked (its HEAD, and the platform check's GET by digest,
    # which this fake answers 404: the platforms stay unknown), never to the redirect's host
    assert basic == [(0, "HEAD", PATH), (0, "GET", PATH.rsplit("/", 1)[0] + "/" + DIGEST)]
    assert [(r["method"], r["headers"].get("Authorization")) for r in reached] == [
        ("HEAD", None)]


def test_credentials_never_appear_in_a_docker_config_error(env):
    with open(env["DOCKER_CONFIG"] + "/config.json", "w") as fh:
        fh.write('{"auths": {"127.0.0.1": {"auth": "%s"}}, oops' % BASIC)   # broken JSON
    with FakeRegistry(auth=True) as fake:
        run = run_probe(env, fake)
    assert_no_secret(run)
    assert "cannot read the Docker config" in run.stderr
