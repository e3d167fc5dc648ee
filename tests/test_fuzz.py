"""Property tests (hypothesis): the validators and parsers never fail in an unplanned way.

* ``parse_payload`` on any JSON value, and on objects built from the real keys with
  arbitrary or plausible values: ``Settings`` or ``PayloadError`` (exit 2, an event that
  is strict JSON), never another exception; a payload built by the documented rules
  (``valid_payloads``) is always accepted, and it is a large share of what the other
  properties draw, so that their checks of a valid payload's ``Settings`` run (each
  property counts its valid and invalid examples and fails when either is too rare);
* the CLI with arbitrary ``--payload`` text: exit 2, exactly one JSON error line and the
  same error in one stderr line, with nothing contacted; or, for a valid payload, the
  contract's lines (a probe line per image, the component lines, the summary);
* ``parse_image`` on any text: ``ImageRef`` or ``ValueError``; a valid reference
  round-trips through ``canonical()`` and holds no white space, control character or
  leading ``-``;
* ``parse_challenges`` and ``parse_retry_after`` on any text never raise.

Run with ``--hypothesis-show-statistics`` for the example counts of the parsers'
properties (the payload and CLI properties run an inner ``@given`` and count their
outcomes themselves: a failed share says the counts).  Inputs that the
properties once found to crash are pinned below as regression tests (integers beyond
float range, a registry port above 65535, a NUL in an ``@file`` name, non-ASCII digits
in ``Retry-After``).
"""

import collections
import email.message
import io
import json
import math
import string
import urllib.response

import pytest
from fakes import DIGEST, FakeKubectl

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import event as note_event  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import bump_image  # noqa: E402
from bump_image import ImageRef, PayloadError, Settings  # noqa: E402

# derandomize: the same examples on every run, so the suite is stable; to explore, run
# e.g. ``pytest tests/test_fuzz.py -p no:randomly --hypothesis-seed=N`` after removing it
FUZZ = {"deadline": None, "derandomize": True, "database": None,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much]}

# -- strategies ----------------------------------------------------------------

# integers of any size: beyond ±1.8e308 they cannot become floats (a regression once)
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-10 ** 400, 10 ** 400)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.text(max_size=12), inner, max_size=5), max_leaves=15)

LOWER = string.ascii_lowercase + string.digits


def _label(text):
    text = text.strip("-")
    return text or "a"


# built from alphabets rather than st.from_regex, which is several times slower
dns_label = st.text(LOWER + "-", min_size=1, max_size=12).map(_label)
path_component = st.builds(
    lambda a, sep, b: a + sep + b if sep is not None else a,
    st.text(LOWER, min_size=1, max_size=6),
    st.sampled_from([None, None, ".", "_", "__", "-", "--"]),
    st.text(LOWER, min_size=1, max_size=6))
host = st.one_of(
    # ports up to 99999: one above 65535 must be rejected, not crash the probe
    st.builds(lambda a, b, port: "%s.%s%s" % (a, b, ":%d" % port if port else ""),
              st.text(LOWER, min_size=1, max_size=8), st.text(LOWER, min_size=1, max_size=6),
              st.one_of(st.none(), st.integers(1, 99999))),
    st.sampled_from(["localhost", "localhost:5000", "[::1]:5000", "127.0.0.1:5001",
                     "Upper", "ghcr.io", "docker.io", "index.docker.io", "kind-registry:5000"]))
tag = st.builds(lambda a, b: a + b, st.sampled_from(list(string.ascii_letters + string.digits
                                                         + "_")),
                st.text(string.ascii_letters + string.digits + "_.-", max_size=15))
digest = st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: "sha256:" + h)
context_name = st.builds(lambda a, b: a + b, st.sampled_from(list(LOWER + "ABC")),
                         st.text(LOWER + "ABC._:/@+-", max_size=12))


@st.composite
def image_refs(draw):
    """Mostly valid references, built from the grammar's parts."""
    text = "/".join(draw(st.lists(path_component, min_size=1, max_size=3)))
    if draw(st.booleans()):
        text = draw(host) + "/" + text
    if draw(st.booleans()):
        text += ":" + draw(tag)
    if draw(st.integers(0, 3)) == 0:
        text += "@" + draw(digest)
    return text


@st.composite
def mutated(draw, base):
    """``base`` with one character inserted, replaced or deleted."""
    text = draw(base)
    if not text:
        return text
    pos = draw(st.integers(0, len(text) - 1))
    char = draw(st.characters() | st.sampled_from(list(" \t\n\x00-=;|&$`<>(){}*?!'\"\\@:/.")))
    how = draw(st.sampled_from(["insert", "replace", "delete"]))
    if how == "insert":
        return text[:pos] + char + text[pos:]
    if how == "replace":
        return text[:pos] + char + text[pos + 1:]
    return text[:pos] + text[pos + 1:]


images = st.one_of(image_refs(), mutated(image_refs()))
plausible = {
    "image": images,
    "image_repository": st.one_of(images, st.just("ghcr.io/noetl/noetl")),
    "target_tag": st.one_of(tag, st.text(max_size=10)),
    "namespace": dns_label,
    "deployment": dns_label,
    "deployments": st.lists(dns_label, max_size=4),
    "components": st.lists(dns_label, max_size=4),
    "container": dns_label,
    "ghcr_probe_attempts": st.integers(-2, 10002),
    "ghcr_probe_sleep_seconds": st.floats(-1, 4000) | st.integers(-1, 4000),
    "probe": st.sampled_from(["auto", "always", "never", "Auto", "sometimes"]),
    "registry_mirrors": st.dictionaries(host, st.sampled_from([
        "https://mirror.internal", "http://127.0.0.1:5000/", "ftp://x", "https://u:p@m",
        "https://m/?q", "https://m:99999", "https://[::1", " https://m"]), max_size=2),
    "rollout_timeout_seconds": st.integers(-1, 90000) | st.floats(0, 100),
    "dry_run": st.booleans(),
    "expected_kube_context": context_name,
    "context": context_name,
    "kubeconfig": st.text(max_size=20),
    "kubectl": st.text(max_size=20),
    "pin_digest": st.booleans(),
    "fail_fast_seconds": st.floats(-1, 90000) | st.integers(-1, 90000),
    "rollback_on_failure": st.booleans(),
    "parallel": st.booleans(),
}


@st.composite
def keyed_payloads(draw):
    """Objects made of the real keys (and a few near misses), each value either
    plausible for its key or any JSON value."""
    keys = draw(st.lists(st.sampled_from([k.name for k in bump_image.PAYLOAD_KEYS] + ["namspace", "Image"]),
                         unique=True, max_size=8))
    payload = {}
    if draw(st.integers(0, 4)) > 0:                 # usually an image, to get further
        payload["image"] = draw(st.one_of(image_refs(), images))
    for key in keys:
        strategy = plausible.get(key, json_values)
        payload[key] = draw(st.one_of(strategy, strategy, json_values) if key in plausible
                            else json_values)
    return payload


# -- payloads that are valid by the documented rules (README "Payload") ---------------

# registry hosts a reference may name (ports up to 65535; a registry_mirrors key is
# lower-case)
valid_host = st.one_of(
    st.builds(lambda a, b, port: "%s.%s%s" % (a, b, ":%d" % port if port else ""),
              st.text(LOWER, min_size=1, max_size=8), st.text(LOWER, min_size=1, max_size=6),
              st.one_of(st.none(), st.integers(1, 65535))),
    st.sampled_from(["localhost", "localhost:5000", "[::1]:5000", "127.0.0.1:5001", "Upper",
                     "ghcr.io", "docker.io", "index.docker.io", "kind-registry:5000"]))
mirror_host = valid_host.filter(lambda h: h == h.lower())
KIND_PREFIXES = ["", "", "deployment/", "deploy/", "statefulset/", "sts/", "daemonset/", "ds/",
                 "STS/", "DaemonSet/"]
# a DNS-1123 subdomain: labels joined by "."
workload_name = st.lists(dns_label, min_size=1, max_size=2).map(".".join)


@st.composite
def valid_repositories(draw):
    """``[host/]path`` with no tag or digest."""
    text = "/".join(draw(st.lists(path_component, min_size=1, max_size=3)))
    if draw(st.booleans()):
        text = draw(valid_host) + "/" + text
    return text


@st.composite
def valid_images(draw):
    """A reference with a tag, a digest or both."""
    text = draw(valid_repositories())
    form = draw(st.sampled_from(["tag", "tag", "digest", "both"]))
    if form != "digest":
        text += ":" + draw(tag)
    if form != "tag":
        text += "@" + draw(digest)
    return text


#: every optional key, with values in its documented range
VALID_OPTIONS = {
    "namespace": dns_label,
    "container": dns_label,
    "ghcr_probe_attempts": st.integers(1, 10000),
    "ghcr_probe_sleep_seconds": st.integers(0, 3600) | st.floats(0, 3600),
    "probe": st.sampled_from(["auto", "always", "never"]),
    "registry_mirrors": st.dictionaries(mirror_host, st.sampled_from([
        "https://mirror.internal", "http://127.0.0.1:5000/", "https://m.example:8443/base"]),
        max_size=2),
    "rollout_timeout_seconds": st.integers(1, 86400),
    "deadline_seconds": st.integers(1, 604800) | st.floats(0, 604800, exclude_min=True),
    "dry_run": st.booleans(),
    "expected_kube_context": context_name,
    "context": context_name,
    "kubeconfig": st.sampled_from(["/k", "kubeconfig.yaml", "/home/u/.kube/config"]),
    "kubectl": st.sampled_from(["kubectl", "/usr/local/bin/kubectl"]),
    "check_platforms": st.sampled_from(["auto", "always", "never"]),
    "cluster_access": st.sampled_from(["auto", "kubectl", "api"]),
    "pin_digest": st.booleans(),
    "fail_fast_seconds": st.integers(0, 86400) | st.floats(0, 86400),
    "rollback_on_failure": st.booleans(),
    "parallel": st.booleans(),
}


@st.composite
def valid_payloads(draw):
    """A payload that the documented rules accept: one of the image forms (``image``,
    the playbook's ``image_repository`` + ``target_tag``, both agreeing, or ``images``),
    an optional list key with unique workloads (``KIND/NAME`` or a bare name), and up to
    eight optional keys in range; ``context``/``kubeconfig`` never with
    ``cluster_access: api``, ``pin_digest`` only with ``probe: always``; sometimes a key
    given as null (its default)."""
    names = draw(st.lists(workload_name, min_size=1, max_size=4, unique=True))
    workloads = [draw(st.sampled_from(KIND_PREFIXES)) + name for name in names]
    payload = {}
    list_key = draw(st.sampled_from([None, "deployment", "deployments", "components"]))
    if list_key == "deployment":
        workloads = workloads[:1]
        payload["deployment"] = workloads[0]
    elif list_key is not None:
        payload[list_key] = workloads
    form = draw(st.sampled_from(["image", "playbook", "both", "images"]))
    if form == "images":
        named = workloads
        if list_key is not None:
            named = [w for w in workloads if draw(st.booleans())] or workloads[:1]
        payload["images"] = {w: draw(valid_images()) for w in named}
        if len(named) < len(workloads):
            payload["image"] = draw(valid_images())     # the image of the others
    elif form == "image":
        payload["image"] = draw(valid_images())
    else:
        repository, release = draw(valid_repositories()), draw(tag)
        payload.update(image_repository=repository, target_tag=release)
        if form == "both":
            payload["image"] = repository + ":" + release
    for key in draw(st.lists(st.sampled_from(sorted(VALID_OPTIONS)), unique=True, max_size=8)):
        payload[key] = draw(VALID_OPTIONS[key])
    if draw(st.integers(0, 9)) == 0:
        payload[draw(st.sampled_from(sorted(VALID_OPTIONS)))] = None
    # the rules between keys, applied last so that a null above cannot undo them
    if payload.get("cluster_access") == "api":
        payload.pop("context", None)
        payload.pop("kubeconfig", None)
    if payload.get("pin_digest"):
        payload["probe"] = "always"
    return payload


@st.composite
def mixed(draw, other, valid_in=3):
    """``other``, or (about one time in ``valid_in``) a payload built by the rules."""
    if draw(st.integers(1, valid_in)) == 1:
        return draw(valid_payloads())
    return draw(other)


def assert_share(seen, label, at_least):
    """Each outcome in ``at_least`` (outcome -> fraction) was at least that share of
    the examples counted in ``seen``."""
    total = sum(seen.values())
    assert total, "no example ran"
    for outcome, share in at_least.items():
        assert seen[outcome] >= share * total, "%s: %s is %d of %d examples (%s), less than" \
            " %d %%" % (label, outcome, seen[outcome], total, dict(seen), share * 100)


def check_parse(payload):
    """The property shared by the payload tests; returns "valid" or "invalid"."""
    try:
        s = bump_image.parse_payload(payload)
    except PayloadError as exc:
        assert exc.exit_code == 2 and exc.code == "invalid_payload"
        line = exc.event()
        json.dumps(line, allow_nan=False)
        assert line["event"] == "error" and line["exit_code"] == 2
        assert isinstance(line["error"]["message"], str) and line["error"]["message"]
        assert line["error"]["hint"] is None or isinstance(line["error"]["hint"], str)
        return "invalid"
    assert isinstance(s, Settings) and all(isinstance(ref, ImageRef) for ref in s.images)
    assert all(ref.tag is not None or ref.digest is not None for ref in s.images)
    assert s.workloads and len(set(s.workloads)) == len(s.workloads)
    assert all(w.image in s.images for w in s.workloads)
    assert 1 <= s.probe_attempts <= 10000 and 1 <= s.rollout_timeout <= 86400
    for value in (s.probe_sleep, s.fail_fast_seconds):
        assert not isinstance(value, bool) and math.isfinite(value) and value >= 0
    assert s.probe in ("auto", "always", "never")
    for value in [s.namespace, s.container, s.context, s.kubeconfig, s.kubectl,
                  s.expected_context] + [w.name for w in s.workloads]:
        assert value is None or (isinstance(value, str) and value and not value.startswith("-"))
    return "valid"


# -- (a) parse_payload -------------------------------------------------------------

def test_valid_payload_keys_are_the_real_ones():
    assert set(VALID_OPTIONS) | {"image", "image_repository", "target_tag", "images",
                                 "deployment", "deployments", "components"} == \
        set(bump_image.KEYS_BY_NAME)


def test_parse_payload_accepts_every_payload_built_by_the_rules():
    seen = collections.Counter()

    @settings(max_examples=600, **FUZZ)
    @given(valid_payloads())
    def prop(payload):
        try:
            bump_image.parse_payload(payload)
        except PayloadError as exc:
            raise AssertionError("refused: %s (hint: %s)" % (exc, exc.hint)) from None
        seen[check_parse(payload)] += 1

    prop()
    assert_share(seen, "valid_payloads", {"valid": 1.0})
    assert sum(seen.values()) >= 500, seen


def test_parse_payload_on_any_json_value():
    """Any JSON value, about a third of them payloads built by the rules (valid): both
    outcomes are counted, and each must be common."""
    seen = collections.Counter()

    @settings(max_examples=1500, **FUZZ)
    @given(mixed(json_values, valid_in=5))
    def prop(value):
        outcome = check_parse(value)
        note_event(outcome)
        seen[outcome] += 1

    prop()
    assert_share(seen, "any JSON value", {"valid": 0.2, "invalid": 0.3})


def test_parse_payload_on_objects_of_the_real_keys():
    seen = collections.Counter()

    @settings(max_examples=1200, **FUZZ)
    @given(mixed(keyed_payloads()))
    @example({"image": "ghcr.io/noetl/noetl:v1"})
    @example({"image": "a:1", "ghcr_probe_sleep_seconds": float("nan")})
    @example({"image": "a:1", "fail_fast_seconds": float("-inf")})
    @example({"image": "a:1", "rollout_timeout_seconds": 3.0})
    @example({"image_repository": "ghcr.io/noetl/noetl", "target_tag": "v1",
              "components": ["a"]})
    def prop(payload):
        outcome = check_parse(payload)
        note_event(outcome)
        seen[outcome] += 1

    prop()
    assert_share(seen, "objects of the real keys", {"valid": 0.3, "invalid": 0.2})


@pytest.mark.parametrize("key", ["ghcr_probe_sleep_seconds", "fail_fast_seconds"])
def test_integer_beyond_float_range_is_a_payload_error(key):
    with pytest.raises(PayloadError):
        bump_image.parse_payload({"image": "a:1", key: 10 ** 400})


# -- (b) the command line ------------------------------------------------------------

class Registry200:
    """An opener that records each request and answers 200 with a digest."""

    def __init__(self):
        self.used = []

    def open(self, request, timeout=None):
        self.used.append(request.full_url)
        headers = email.message.Message()
        headers["Docker-Content-Digest"] = DIGEST
        return urllib.response.addinfourl(io.BytesIO(b""), headers, request.full_url, 200)


payload_texts = st.one_of(
    st.text(max_size=200),
    st.text(alphabet='{}[]":,0123456789.-eEtrufalsn \\', max_size=80),
    json_values.map(json.dumps),
    keyed_payloads().map(json.dumps),
    keyed_payloads().map(lambda p: json.dumps(dict(p, probe="never"))),
).filter(lambda text: not text.startswith("@"))          # @FILE reads files: see below


def run_payload_text(text):
    """The CLI on ``text`` with the in-memory kubectl and a registry that has every
    image; the property's checks; returns "exit 2" or "ran: exit N"."""
    kubectl, opener = FakeKubectl(), Registry200()
    out, err = io.StringIO(), io.StringIO()
    code = bump_image.main(["--payload", text], stdin=io.StringIO(""), stdout=out, stderr=err,
                           env={"PATH": "/usr/bin"}, runner=kubectl, opener=opener,
                           sleeper=lambda seconds: None)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert "Traceback" not in err.getvalue()
    if code == 2:
        (line,) = lines
        assert line["event"] == "error" and line["exit_code"] == 2
        error = line["error"]
        assert error["code"] in ("invalid_payload", "usage")
        assert kubectl.calls == [] and opener.used == []
        # stderr says the same to a person, in one line
        assert err.getvalue() == "bump_image: %s (exit 2): %s%s\n" % (
            error["code"], error["message"], " (%s)" % error["hint"] if error["hint"] else "")
        return "exit 2"
    assert code in (0, 1, 3, 4)
    if code == 4:
        (line,) = lines
        assert line["event"] == "error" and line["exit_code"] == 4
        return "ran: exit 4"
    # one probe line per image, then the component lines, the summary last
    kinds = [e["event"] for e in lines]
    probes = kinds.index("component") if "component" in kinds else len(kinds) - 1
    assert probes >= 1 and set(kinds[:probes]) == {"probe"}, kinds
    assert set(kinds[probes:-1]) <= {"component"} and kinds[-1] == "summary", kinds
    images = [e["image"] for e in lines[:probes]]
    assert len(set(images)) == len(images), images
    assert lines[-1]["exit_code"] == code
    return "ran: exit %d" % code


def test_cli_on_any_payload_text(monkeypatch):
    """Any text, about a third of it payloads built by the rules: the runs that get
    past validation must be common (they are where the contract's lines are checked),
    and so must the texts refused."""
    seen = collections.Counter()
    # the in-memory kubectl's rollouts complete at their first poll: poll at once (the
    # property is about the lines, not the timing; 0.25 s of real time per run else)
    monkeypatch.setattr(bump_image, "POLL_FIRST", 0.0)

    @settings(max_examples=1000, **FUZZ)
    @given(mixed(payload_texts).map(lambda p: p if isinstance(p, str) else json.dumps(p)))
    @example("-")
    @example("--help")
    @example("-1")
    @example('{"image": "ghcr.io/noetl/noetl:v1", "probe": "never"}')
    @example('{"image": "a:1", "image": "a:1"}')
    @example('{"image": "a:1", "rollout_timeout_seconds": NaN}')
    def prop(text):
        outcome = run_payload_text(text)
        note_event(outcome)
        seen["exit 2" if outcome == "exit 2" else "ran"] += 1

    prop()
    assert_share(seen, "payload texts", {"ran": 0.2, "exit 2": 0.2})


@pytest.mark.parametrize("image", ["0:70000/0:0", "registry.example.com:99999/noetl/app:1"])
def test_cli_image_with_a_port_beyond_65535(image):
    out = io.StringIO()
    code = bump_image.main(["--payload", json.dumps({"image": image})], stdin=io.StringIO(""),
                           stdout=out, stderr=io.StringIO(), env={}, runner=FakeKubectl(),
                           opener=Registry200(), sleeper=lambda seconds: None)
    assert code == 2 and json.loads(out.getvalue())["error"]["code"] == "invalid_payload"


def test_cli_payload_file_name_with_a_nul():
    out = io.StringIO()
    code = bump_image.main(["--payload", "@bad\x00name"], stdin=io.StringIO(""), stdout=out,
                           stderr=io.StringIO(), env={}, runner=FakeKubectl())
    assert code == 2 and json.loads(out.getvalue())["error"]["code"] == "invalid_payload"


def test_cli_integer_beyond_float_range():
    out = io.StringIO()
    code = bump_image.main(["--payload", '{"image": "a:1", "fail_fast_seconds": 1%s}'
                            % ("0" * 400)], stdin=io.StringIO(""), stdout=out,
                           stderr=io.StringIO(), env={}, runner=FakeKubectl())
    assert code == 2


# -- (c) parse_image -----------------------------------------------------------------

BAD_CHARS = set(string.whitespace) | {chr(c) for c in range(32)} | {"\x7f"}


@settings(max_examples=2000, **FUZZ)
@given(st.one_of(st.text(max_size=80), images, image_refs(),
                 st.text(alphabet=string.ascii_letters + string.digits + "._-:/@[]", max_size=60)))
@example("-a:1")
@example("localhost:5000")
@example("a" * 300 + ":1")
@example("UPPER/a:1")
def test_parse_image_on_any_text(text):
    try:
        ref = bump_image.parse_image(text)
    except ValueError as exc:
        assert str(exc)
        note_event("ValueError")
        return
    note_event("ImageRef")
    assert isinstance(ref, ImageRef) and ref.text == text
    canonical = ref.canonical()
    again = bump_image.parse_image(canonical)
    assert again == ref and again.canonical() == canonical
    assert again.name == ref.name and again.tag == (ref.tag if ref.tag is not None or ref.digest
                                                    else "latest")
    assert again.digest == ref.digest and ref.same_image(again)
    for value in (text, canonical):
        assert not BAD_CHARS & set(value), value
        assert not any(ch.isspace() for ch in value)
        assert not value.startswith("-")
        assert value.isascii()
    assert len(ref.name) <= bump_image.NAME_MAX


# -- (d) header parsers --------------------------------------------------------------

challenge_text = st.text(alphabet='BbearicsRealm=,"\\ \t:/.-_x', max_size=120)


@settings(max_examples=2000, **FUZZ)
@given(st.lists(st.one_of(st.text(max_size=120), challenge_text), max_size=3))
@example(['Bearer realm="a\\', 'Basic realm=""', '"'])
@example(["Bearer realm=\"x\\\ny\""])
@example([",,, ,Bearer , realm=, =x"])
def test_parse_challenges_on_any_text(values):
    out = bump_image.parse_challenges(values)
    note_event("challenges: %d" % min(len(out), 3))
    for scheme, params in out:
        assert isinstance(scheme, str) and scheme == scheme.lower()
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())


@settings(max_examples=1000, **FUZZ)
@given(st.one_of(st.text(alphabet=st.characters(max_codepoint=127), max_size=40),
                 st.integers(0, 10 ** 6).map(str)))
@example("Wed, 21 Oct 2015 07:28:00 GMT")
@example("Mon, 01 Jan 0001 00:00:00 -0000")
@example("Fri, 31 Dec 9999 23:59:59 +0000")
def test_parse_retry_after_on_any_ascii_text(value):
    wait = bump_image.parse_retry_after(value)
    note_event("None" if wait is None else "seconds")
    assert wait is None or (isinstance(wait, float) and wait >= 0)


@pytest.mark.parametrize("value", ["\xb2", "\xb3", "\xb9", "1\xb2"])
def test_parse_retry_after_with_non_ascii_digits(value):
    assert bump_image.parse_retry_after(value) is None
