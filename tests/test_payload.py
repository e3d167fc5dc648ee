"""Pure tables: image references, the payload validator, the probe rule."""

import json

import pytest

import bump_image
from bump_image import PayloadError, parse_image, parse_payload

D64 = "a" * 64


# -- image references ---------------------------------------------------------

@pytest.mark.parametrize("text, canonical, explicit", [
    ("nginx", "docker.io/library/nginx:latest", False),
    ("nginx:1.25", "docker.io/library/nginx:1.25", False),
    ("noetl:dev", "docker.io/library/noetl:dev", False),
    ("library/nginx", "docker.io/library/nginx:latest", False),
    ("docker.io/nginx:1", "docker.io/library/nginx:1", True),
    ("index.docker.io/nginx", "docker.io/library/nginx:latest", True),
    ("ghcr.io/noetl/noetl:v2.35.9", "ghcr.io/noetl/noetl:v2.35.9", True),
    ("localhost/app:1", "localhost/app:1", True),
    ("localhost:5000/a/b/c:1", "localhost:5000/a/b/c:1", True),
    ("registry.example.com:8443/team/app:2.0", "registry.example.com:8443/team/app:2.0", True),
    ("[::1]:5000/app:1", "[::1]:5000/app:1", True),
    ("Upper/app:1", "Upper/app:1", True),
    ("GHCR.io/noetl/noetl:v1", "GHCR.io/noetl/noetl:v1", True),
    ("a/b__c-d.e:t", "docker.io/a/b__c-d.e:t", False),
    ("app@sha256:" + D64, "docker.io/library/app@sha256:" + D64, False),
    ("ghcr.io/x/y:v1@sha256:" + D64, "ghcr.io/x/y:v1@sha256:" + D64, True),
])
def test_parse_image_normalizes(text, canonical, explicit):
    ref = parse_image(text)
    assert ref.canonical() == canonical
    assert ref.explicit_domain is explicit
    assert ref.text == text


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("ghcr.io/Noetl/app:1", "lower-case"),
    ("app:", "invalid tag"),
    ("app:-x", "invalid tag"),
    ("app:" + "x" * 129, "invalid tag"),
    ("app@sha256:abc", "invalid digest"),
    ("app@sha256:" + "A" * 64, "invalid digest"),
    ("app@md5:" + D64, "invalid digest"),
    ("-app:1", "cannot start with '-'"),
    ("app :1", "white space"),
    ("app\n:1", "white space"),
    ("app\x00:1", "control"),
    ("a//b:1", "invalid repository path"),
    ("a/-b:1", "invalid repository path"),
    ("a_:1", "invalid repository path"),
    ("ho_st.io/app:1", "invalid registry host"),
    (":1", "no repository"),
    ("x" * 250 + "/" + "y" * 10 + ":1", "longer than"),
])
def test_parse_image_rejects(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_image(text)


@pytest.mark.parametrize("a, b, same", [
    ("nginx", "docker.io/library/nginx:latest", True),
    ("nginx:latest", "index.docker.io/library/nginx", True),
    ("ghcr.io/x/y:1", "ghcr.io/x/y:2", False),
    ("ghcr.io/x/y:1", "ghcr.io/x/z:1", False),
    ("ghcr.io/x/y@sha256:" + D64, "ghcr.io/x/y:1@sha256:" + D64, True),
    ("ghcr.io/x/y:1", "ghcr.io/x/y:1@sha256:" + D64, False),
    ("ghcr.io/x/y:1@sha256:" + D64, "ghcr.io/x/y:1@sha256:" + "b" * 64, False),
])
def test_same_image(a, b, same):
    assert parse_image(a).same_image(parse_image(b)) is same
    assert parse_image(b).same_image(parse_image(a)) is same


@pytest.mark.parametrize("text, local", [
    ("noetl:dev", True), ("nginx:1", True), ("localhost/a:1", True),
    ("localhost:5001/a:1", True), ("127.0.0.1:5000/a:1", True), ("127.1.2.3/a:1", True),
    ("[::1]:5000/a:1", True), ("app.localhost/a:1", True), ("reg.local:5000/a:1", True),
    ("kind-registry:5000/a:1", True), ("ghcr.io/a:1", False), ("docker.io/a:1", False),
    ("quay.io/a/b:1", False), ("registry.example.com:8443/a:1", False),
    ("128.0.0.1:5000/a:1", False),
])
def test_local_registry_rule(text, local):
    assert bump_image.is_local_registry(parse_image(text)) is local


def test_registry_hosts_compare_case_insensitively():
    assert parse_image("GHCR.io/noetl/noetl:v1") == parse_image("ghcr.io/noetl/noetl:v1")
    assert parse_image("GHCR.io/noetl/noetl:v1").same_image(parse_image("ghcr.io/noetl/noetl:v1"))
    assert parse_image("GHCR.io/noetl/noetl:v1").text == "GHCR.io/noetl/noetl:v1"


def test_pinned_keeps_the_users_text():
    ref = parse_image("ghcr.io/noetl/noetl:v2")
    assert ref.pinned("sha256:" + D64) == "ghcr.io/noetl/noetl:v2@sha256:" + D64
    ref = parse_image("ghcr.io/noetl/noetl:v2@sha256:" + "b" * 64)
    assert ref.pinned("sha256:" + D64) == "ghcr.io/noetl/noetl:v2@sha256:" + D64


# -- the payload --------------------------------------------------------------

IMG = "ghcr.io/noetl/noetl:v2.35.9"


def test_defaults():
    s = parse_payload({"image": IMG})
    assert s.image.text == IMG
    assert s.namespace == "noetl"
    assert [w.key for w in s.workloads] == ["noetl-server", "noetl-worker", "ollama-bridge"]
    assert s.listed is False
    assert (s.container, s.probe_attempts, s.probe_sleep, s.probe) == (None, 12, 10, "auto")
    assert (s.mirrors, s.rollout_timeout, s.dry_run) == ({}, 300, False)
    assert (s.expected_context, s.context, s.kubeconfig, s.kubectl) == (None, None, None,
                                                                        "kubectl")
    assert (s.pin_digest, s.rollback_on_failure, s.parallel, s.fail_fast_seconds) == (
        False, False, False, 60)


def test_playbook_form():
    s = parse_payload({"image_repository": "ghcr.io/noetl/noetl", "target_tag": "v2.35.9",
                       "components": ["noetl-worker"]})
    assert s.image.text == IMG
    assert [w.key for w in s.workloads] == ["noetl-worker"] and s.listed


def test_both_forms_agreeing():
    s = parse_payload({"image": IMG, "image_repository": "ghcr.io/noetl/noetl",
                       "target_tag": "v2.35.9"})
    assert s.image.text == IMG


def test_every_key_accepted():
    s = parse_payload({
        "image": IMG, "namespace": "prod", "deployments": ["a", "b.c"], "container": "worker",
        "ghcr_probe_attempts": 3, "ghcr_probe_sleep_seconds": 0.5, "probe": "always",
        "registry_mirrors": {"ghcr.io": "https://mirror.internal/ghcr/"},
        "rollout_timeout_seconds": 60, "dry_run": True, "expected_kube_context": "kind-noetl",
        "context": "kind-noetl", "kubeconfig": "/tmp/my kube/config",
        "kubectl": "/opt/bin/kubectl", "pin_digest": True, "rollback_on_failure": True,
        "parallel": True, "fail_fast_seconds": 0})
    assert s.mirrors == {"ghcr.io": "https://mirror.internal/ghcr"}
    assert [w.name for w in s.workloads] == ["a", "b.c"] and s.probe_sleep == 0.5 and s.fail_fast_seconds == 0


def test_null_means_default():
    s = parse_payload({"image": IMG, "namespace": None, "deployments": None, "dry_run": None})
    assert s.namespace == "noetl" and not s.listed and s.dry_run is False


@pytest.mark.parametrize("payload, message, hint", [
    ([], "must be a JSON object", None),
    ({}, "image is required", "ghcr.io"),
    ({"imag": IMG}, 'unknown key "imag"', "did you mean 'image'?"),
    ({"image": IMG, "namspace": "x"}, "unknown key", "did you mean 'namespace'?"),
    ({"image": IMG, "ghcr_probe_attempt": 3}, "unknown key", "ghcr_probe_attempts"),
    ({"image": IMG, "zzz": 1}, 'unknown key "zzz"', None),
    ({"image": 5}, "image must be a string", None),
    ({"image": ""}, "must not be empty", None),
    ({"image": "ghcr.io/noetl/noetl"}, "neither a tag nor a digest", "v1.2.3"),
    ({"image": "ghcr.io/noetl/NoETL:1"}, "lower-case", None),
    ({"image_repository": "ghcr.io/noetl/noetl"}, "go together", None),
    ({"target_tag": "v1"}, "go together", None),
    ({"image_repository": "ghcr.io/a:1", "target_tag": "v1"}, "must not carry a tag",
     "target_tag"),
    ({"image_repository": "ghcr.io/a", "target_tag": "-v1"}, "not a valid tag", None),
    ({"image": IMG, "image_repository": "ghcr.io/noetl/noetl", "target_tag": "v9"}, "disagree",
     None),
    ({"image": IMG, "namespace": "Noetl"}, "not a valid Kubernetes name", "'noetl'"),
    ({"image": IMG, "namespace": "a.b"}, "DNS-1123 label", None),
    ({"image": IMG, "namespace": "x" * 64}, "at most 63", None),
    ({"image": IMG, "deployment": ["a"]}, "one name", "use deployments for a list"),
    ({"image": IMG, "deployments": "a"}, "must be a list", "use deployment for one name"),
    ({"image": IMG, "deployments": []}, "is empty", "defaults"),
    ({"image": IMG, "components": []}, "is empty", None),
    ({"image": IMG, "deployments": ["a", "a"]}, "listed twice", None),
    ({"image": IMG, "deployments": ["a", 1]}, r"deployments\[1\] must be a string", None),
    ({"image": IMG, "deployments": ["-a"]}, "not a valid Kubernetes name", None),
    ({"image": IMG, "deployment": "a", "deployments": ["b"]}, "only one of", None),
    ({"image": IMG, "deployments": ["a"], "components": ["b"]}, "only one of", None),
    ({"image": IMG, "container": "Worker"}, "not a valid Kubernetes name", None),
    ({"image": IMG, "ghcr_probe_attempts": 0}, "from 1 to 10000", None),
    ({"image": IMG, "ghcr_probe_attempts": True}, "a boolean", None),
    ({"image": IMG, "ghcr_probe_attempts": 2.5}, "whole number", None),
    ({"image": IMG, "ghcr_probe_attempts": 3.0}, "whole number", "3"),
    ({"image": IMG, "ghcr_probe_attempts": "12"}, "a string", "without quotes"),
    ({"image": IMG, "ghcr_probe_sleep_seconds": -1}, "from 0 to 3600", None),
    ({"image": IMG, "ghcr_probe_sleep_seconds": False}, "a boolean", None),
    ({"image": IMG, "rollout_timeout_seconds": 0}, "from 1 to 86400", None),
    ({"image": IMG, "fail_fast_seconds": -0.5}, "from 0 to 86400", None),
    ({"image": IMG, "probe": "sometimes"}, "probe must be one of", None),
    ({"image": IMG, "probe": "alway"}, "probe must be one of", "always"),
    ({"image": IMG, "dry_run": "true"}, "true or false", "without quotes"),
    ({"image": IMG, "dry_run": 1}, "true or false", None),
    ({"image": IMG, "parallel": "yes"}, "true or false", None),
    ({"image": IMG, "registry_mirrors": ["x"]}, "must be an object", None),
    ({"image": IMG, "registry_mirrors": {"ghcr.io": 1}}, "must be a URL string", None),
    ({"image": IMG, "registry_mirrors": {"https://ghcr.io": "https://m"}}, "not a registry host",
     None),
    ({"image": IMG, "registry_mirrors": {"ghcr.io": "ftp://m"}}, "https or http", None),
    ({"image": IMG, "registry_mirrors": {"ghcr.io": "https://u:p@m"}}, "credentials", None),
    ({"image": IMG, "registry_mirrors": {"ghcr.io": "https://m?x=1"}}, "no query", None),
    ({"image": IMG, "registry_mirrors": {"ghcr.io": "https://"}}, "no host", None),
    ({"image": IMG, "registry_mirrors": {"ghcr.io": "https://m:99999"}}, "usable base URL",
     None),
    ({"image": IMG, "context": "-x"}, "not a usable context", None),
    ({"image": IMG, "context": "a b"}, "not a usable context", None),
    ({"image": IMG, "expected_kube_context": "a;b"}, "not a usable context", None),
    ({"image": IMG, "kubeconfig": "-x"}, "not a usable path", None),
    ({"image": IMG, "kubeconfig": "a\nb"}, "not a usable path", None),
    ({"image": IMG, "kubectl": "--help"}, "not a usable path", None),
    ({"image": "noetl:dev", "pin_digest": True}, "pin_digest needs", "probe"),
    ({"image": IMG, "probe": "never", "pin_digest": True}, "probe is never", None),
])
def test_rejected(payload, message, hint):
    with pytest.raises(PayloadError) as caught:
        parse_payload(payload)
    err = caught.value
    assert err.exit_code == 2 and err.code == "invalid_payload"
    assert __import__("re").search(message, err.message), err.message
    if hint:
        assert hint in (err.hint or ""), err.hint
    event = err.event()
    assert set(event) == {"event", "error", "exit_code"}
    assert set(event["error"]) == {"code", "message", "hint"}
    json.dumps(event)


def test_pin_digest_with_a_digest_needs_no_probe():
    s = parse_payload({"image": "noetl@sha256:" + D64, "pin_digest": True, "probe": "never"})
    assert s.pin_digest


@pytest.mark.parametrize("image, mode, probed", [
    ("ghcr.io/a/b:1", "auto", True), ("noetl:dev", "auto", False),
    ("localhost:5000/a:1", "auto", False), ("localhost:5000/a:1", "always", True),
    ("ghcr.io/a/b:1", "never", False), ("noetl:dev", "always", True),
])
def test_probe_rule(image, mode, probed):
    assert bump_image.will_probe(parse_image(image), mode) is probed


@pytest.mark.parametrize("image, mirrors, base", [
    ("ghcr.io/a/b:1", {}, "https://ghcr.io"),
    ("nginx:1", {}, "https://registry-1.docker.io"),
    ("docker.io/nginx:1", {"docker.io": "http://127.0.0.1:5000"}, "http://127.0.0.1:5000"),
    ("localhost:5000/a:1", {}, "http://localhost:5000"),
    ("127.0.0.1:5000/a:1", {}, "http://127.0.0.1:5000"),
    ("[::1]:5000/a:1", {}, "http://[::1]:5000"),
    ("kind-registry:5000/a:1", {}, "https://kind-registry:5000"),
    ("ghcr.io/a/b:1", {"ghcr.io": "https://mirror.internal/v"}, "https://mirror.internal/v"),
])
def test_registry_endpoint(image, mirrors, base):
    assert bump_image.registry_endpoint(parse_image(image), mirrors) == base


# -- version 2: workload kinds, an image per workload, a deadline ------------------------

def keys(settings):
    return [(w.key, w.image.text) for w in settings.workloads]


@pytest.mark.parametrize("entry, kind, name", [
    ("noetl-server", "deployment", "noetl-server"),
    ("deployment/a", "deployment", "a"), ("deploy/a", "deployment", "a"),
    ("Deployment/a", "deployment", "a"), ("statefulset/redis", "statefulset", "redis"),
    ("sts/redis", "statefulset", "redis"), ("STS/redis", "statefulset", "redis"),
    ("daemonset/agent", "daemonset", "agent"), ("ds/agent", "daemonset", "agent"),
    ("DaemonSet/a.b", "daemonset", "a.b"),
])
def test_workload_entries(entry, kind, name):
    s = parse_payload({"image": IMG, "deployments": [entry]})
    (w,) = s.workloads
    assert (w.kind, w.name) == (kind, name)
    assert w.key == (name if kind == "deployment" else "%s/%s" % (kind, name))


def test_images_without_a_list_key_are_the_workloads_in_order():
    s = parse_payload({"images": {"noetl-worker": "ghcr.io/noetl/noetl-worker-rust:v3",
                                  "sts/redis": "redis:7.2", "noetl-server":
                                  "ghcr.io/noetl/noetl-server-rust:v3"}})
    assert keys(s) == [("noetl-worker", "ghcr.io/noetl/noetl-worker-rust:v3"),
                       ("statefulset/redis", "redis:7.2"),
                       ("noetl-server", "ghcr.io/noetl/noetl-server-rust:v3")]
    assert s.listed and s.image is None
    assert [r.text for r in s.images] == ["ghcr.io/noetl/noetl-worker-rust:v3", "redis:7.2",
                                          "ghcr.io/noetl/noetl-server-rust:v3"]


def test_images_with_a_list_key_and_image_for_the_rest():
    s = parse_payload({"image": IMG, "deployments": ["noetl-server", "noetl-worker",
                                                     "statefulset/redis"],
                       "images": {"statefulset/redis": "redis:7.2",
                                  "deployment/noetl-worker": "ghcr.io/noetl/w:v3"}})
    assert keys(s) == [("noetl-server", IMG), ("noetl-worker", "ghcr.io/noetl/w:v3"),
                       ("statefulset/redis", "redis:7.2")]
    assert [r.text for r in s.images] == [IMG, "ghcr.io/noetl/w:v3", "redis:7.2"]


def test_images_in_the_payload_order_of_the_json_text():
    from bump_image import load_payload
    text = '{"images": {"z": "a/z:1", "a": "a/a:1", "m": "a/m:1"}}'
    assert [w.name for w in parse_payload(load_payload(text)).workloads] == ["z", "a", "m"]


def test_one_image_shared_by_every_workload_is_probed_once():
    s = parse_payload({"images": {"a": IMG, "b": IMG}})
    assert len(s.images) == 1 and s.image.text == IMG


def test_deadline_seconds():
    assert parse_payload({"image": IMG}).deadline_seconds is None
    assert parse_payload({"image": IMG, "deadline_seconds": 570}).deadline_seconds == 570
    assert parse_payload({"image": IMG, "deadline_seconds": 0.5}).deadline_seconds == 0.5


@pytest.mark.parametrize("payload, message, hint", [
    ({"image": IMG, "deployments": ["job/x"]}, r'deployments\[0\] "job/x": unknown kind "job"',
     "statefulset (sts)"),
    ({"image": IMG, "deployment": "cronjob/x"}, 'unknown kind "cronjob"', "daemonset (ds)"),
    ({"image": IMG, "deployments": ["sts/"]}, "has no name after the kind", None),
    ({"image": IMG, "deployments": ["/x"]}, 'unknown kind ""', None),
    ({"image": IMG, "deployments": [""]}, "must not be empty", None),
    ({"image": IMG, "deployments": ["sts/Redis"]}, "not a valid Kubernetes name", "'redis'"),
    ({"image": IMG, "deployments": ["sts/a/b"]}, "not a valid Kubernetes name", None),
    ({"image": IMG, "deployments": ["a", "deployment/a"]}, "listed twice", None),
    ({"image": IMG, "deployments": ["sts/a", "statefulset/a"]}, "listed twice", None),
    ({"images": []}, "images must be an object", "noetl-server"),
    ({"images": {}}, "images is empty", None),
    ({"images": {"a": 1}}, r'images\["a"\] must be a string', None),
    ({"images": {"a": "Not A Ref"}}, r'images\["a"\] "Not A Ref" is invalid', None),
    ({"images": {"a": "ghcr.io/x/y"}}, "neither a tag nor a digest", None),
    ({"images": {"job/a": IMG}}, 'images key "job/a" "job/a": unknown kind', None),
    ({"images": {"A": IMG}}, "not a valid Kubernetes name", None),
    ({"images": {"a": IMG, "deployment/a": IMG}}, "images names a twice", None),
    ({"image": IMG, "deployments": ["a"], "images": {"b": IMG}},
     'images names "b", which deployments does not list', "add it to deployments"),
    ({"deployments": ["a", "b"], "images": {"a": IMG}}, r"image is required for b \(not in"
                                                        r" images\)", "give image"),
    ({"deployments": ["a"]}, "image is required", "images"),
    ({"image": IMG, "deadline_seconds": 0}, "greater than 0", None),
    ({"image": IMG, "deadline_seconds": -1}, "greater than 0", None),
    ({"image": IMG, "deadline_seconds": "570"}, "must be a number", "without quotes"),
    ({"image": IMG, "deadline_seconds": 10 ** 7}, "at most 604800", None),
    ({"images": {"a": "noetl:dev"}, "pin_digest": True}, "pin_digest needs", None),
])
def test_rejected_v2(payload, message, hint):
    with pytest.raises(PayloadError) as caught:
        parse_payload(payload)
    err = caught.value
    assert err.exit_code == 2
    assert __import__("re").search(message, err.message), err.message
    if hint:
        assert hint in (err.hint or ""), err.hint


# -- the payload as key=value lines (the NoETL playbook's form) --------------------------

ALL_KEYS = [k.name for k in bump_image.PAYLOAD_KEYS] + ["script"]


def lines(**values):
    """Every key once, empty unless given (what the playbook renders)."""
    return "".join("%s=%s\n" % (k, values.get(k, "")) for k in ALL_KEYS)


def test_payload_lines_take_values_typed_by_their_key():
    from bump_image import parse_payload_lines
    payload = parse_payload_lines(lines(
        image=IMG, ghcr_probe_attempts="3", ghcr_probe_sleep_seconds="0.5", dry_run="true",
        parallel="True", components='["noetl-server", "sts/redis"]', script="bump_image.py",
        registry_mirrors="{'ghcr.io': 'http://127.0.0.1:5000'}", deadline_seconds="570",
        rollback_on_failure="False", namespace="noetl"))
    assert payload == {"image": IMG, "ghcr_probe_attempts": 3, "ghcr_probe_sleep_seconds": 0.5,
                       "dry_run": True, "parallel": True, "rollback_on_failure": False,
                       "components": ["noetl-server", "sts/redis"], "namespace": "noetl",
                       "registry_mirrors": {"ghcr.io": "http://127.0.0.1:5000"},
                       "deadline_seconds": 570}
    s = parse_payload(payload)
    assert [w.key for w in s.workloads] == ["noetl-server", "statefulset/redis"]


@pytest.mark.parametrize("value", ["", "null", "None", "{{ workload.image_repository }}"])
def test_payload_lines_absent_values(value):
    from bump_image import parse_payload_lines
    assert parse_payload_lines(lines(image=IMG, image_repository=value)) == {"image": IMG}


def test_payload_lines_python_literals_as_jinja_renders_them():
    from bump_image import parse_payload_lines
    payload = parse_payload_lines(lines(image=IMG, images="{'noetl-server': 'ghcr.io/a/s:1',"
                                                         " 'noetl-worker': \"ghcr.io/a/w:1\"}"))
    assert list(payload["images"]) == ["noetl-server", "noetl-worker"]


@pytest.mark.parametrize("text, message", [
    (lines(image=IMG).replace("namespace=\n", ""), "lack namespace"),
    (lines(image=IMG) + "namespace=other\n", "repeats namespace"),
    (lines(image=IMG + "\nnamespace=evil"), "repeats namespace"),
    (lines(image=IMG + "\ntouch /tmp/x"), "is not KEY=VALUE"),
    (lines(image=IMG).replace("image=", "imag="), "is not KEY=VALUE"),
    (lines(image=IMG, namespace="a\rb"), "control character"),
    (lines(image=IMG, script="-x"), "not a usable path"),
    ("image=" + IMG + "\n", "lack"),
    ("", "lack"),
])
def test_payload_lines_rejected(text, message):
    from bump_image import parse_payload_lines
    with pytest.raises(PayloadError, match=message):
        parse_payload_lines(text)


@pytest.mark.parametrize("key, value, message", [
    ("ghcr_probe_attempts", "twelve", "must be a whole number"),
    ("ghcr_probe_attempts", "3.5", "whole number"),
    ("dry_run", "yes", "true or false"),
    ("components", "noetl-server", "must be a list"),
    ("components", "[" * 5000, "must be a list"),
    ("registry_mirrors", "{'ghcr.io': 1}", "must be a URL string"),
    ("ghcr_probe_sleep_seconds", "NaN", "must be a number"),
])
def test_payload_lines_bad_values_are_payload_errors(key, value, message):
    from bump_image import parse_payload_lines
    with pytest.raises(PayloadError, match=message):
        parse_payload(parse_payload_lines(lines(image=IMG, **{key: value})))
