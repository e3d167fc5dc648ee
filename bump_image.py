#!/usr/bin/env python3
"""bump_image - move Kubernetes Deployments to one container image, safely.

Command line::

    python3 bump_image.py --payload '{"image": "ghcr.io/noetl/noetl:v2.35.9"}'
    python3 bump_image.py --payload @payload.json --format text
    echo '{"image": "ghcr.io/noetl/noetl:v2.35.9"}' | python3 bump_image.py --payload -
    python3 -m bump_image --image ghcr.io/noetl/noetl:v2.35.9 --deployment noetl-worker
    bump-image ...                                  # once pip/pipx-installed

What one run does, in this order:

1. validate the payload; nothing is contacted before it passes (exit 2);
2. probe the registry until the image's manifest is visible, external images only,
   and give up before any Deployment is changed (exit 3);
3. read the selected Deployments with one ``kubectl get``; for each pick the
   containers, compare, patch only when needed, wait for the rollout (failing fast
   on pods that cannot start), optionally roll back, then verify the running pods;
4. print one JSON line for the probe, one per Deployment and a summary on stdout;
   progress goes to stderr.  Exit 0 ok, 1 a component failed, 2 bad input,
   3 image unavailable, 4 environment (kubectl missing, wrong context),
   130/143 interrupted.

Library use::

    import bump_image
    result = bump_image.bump({"image": "ghcr.io/noetl/noetl:v2.35.9"})
    result.exit_code            # as the CLI would exit
    result.events()             # the probe, component and summary lines as dicts
    result.probe                # a ProbeResult; result.components: [Component]

``bump()`` raises ``PayloadError`` (exit 2) or ``EnvironmentProblem`` (exit 4) when
nothing could run; every other outcome is data in the returned ``Result``.  The
effects are keyword arguments with standard-library defaults: ``runner`` (runs
kubectl, see ``ProcessRunner``), ``opener`` (urllib opener), ``sleeper``, ``clock``,
``env`` (environment mapping), ``on_event`` (called with each line as it is ready)
and ``progress`` (called with each human-readable progress line; silent by
default).  The payload keys are the table ``PAYLOAD_KEYS`` (``--help`` lists them);
output lines and exit codes are described in README.md.

Where things live, top to bottom:

1. Constants: defaults, media types, time-outs, waiting reasons.
2. Errors: ``BumpError`` and its subclasses, each with a code and an exit status.
3. Image references: ``parse_image`` (the distribution grammar), ``ImageRef``.
4. Payload: the key table ``PAYLOAD_KEYS``, one checker per value type,
   ``parse_payload`` -> ``Settings``.
5. Registry probe, pure: challenges, ``Retry-After``, judging an answer, endpoints,
   Docker config credentials.
6. Registry probe, the HTTP edge: the opener, ``RegistryProbe`` (one image's attempts).
7. Deployments, pure: ``plan_deployment`` (containers), ``decide`` (what to do with
   one Deployment), ``rollout_verdict``, ``diagnose``, ``verify_pods``.
8. kubectl, the subprocess edge: ``ProcessRunner``, ``Kubectl``.
9. The engine: ``Engine`` (preflight, probe, read, apply, wait, verify) and ``bump``.
10. Reporting and the command line: ``render_text``, the argument parser, ``main``.
"""

import argparse
import base64
import difflib
import functools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

__version__ = "1.0.0"

__all__ = [
    "__version__",
    "bump",
    "main",
    "parse_payload",
    "parse_image",
    "decide",
    "rollout_verdict",
    "PAYLOAD_KEYS",
    "ImageRef",
    "Result",
    "ProbeResult",
    "Component",
    "ProcessRunner",
    "Completed",
    "default_opener",
    "BumpError",
    "PayloadError",
    "EnvironmentProblem",
    "Interrupted",
]

# --------------------------------------------------------------------------
# 1. Constants
# --------------------------------------------------------------------------

DEFAULT_NAMESPACE = "noetl"
DEFAULT_DEPLOYMENTS = ("noetl-server", "noetl-worker", "ollama-bridge")

#: Sent on every manifest request: without the OCI types, distribution answers 404
#: for an OCI manifest or index.
MANIFEST_ACCEPT = ", ".join((
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))
HTTP_TIMEOUT = 15.0            # seconds, every registry and token request
BODY_LIMIT = 1 << 20           # bytes read at most from a token or error body
RETRY_AFTER_CAP = 60.0         # seconds: the longest Retry-After we honour
TOKEN_MIN_LIFETIME = 60        # seconds, as the Docker token spec says
TOKEN_MAX_LIFETIME = 86400     # seconds: a longer expires_in is clamped to this
PAYLOAD_LIMIT = 1 << 20        # bytes of payload read from a file or stdin

KUBECTL_REQUEST_TIMEOUT = 20   # seconds, kubectl's own --request-timeout
KUBECTL_CALL_TIMEOUT = 30.0    # seconds before a read or write is killed
ROLLOUT_GRACE = 10.0           # extra seconds before a rollout wait is killed
ROLLBACK_TIMEOUT_CAP = 300     # seconds at most waiting for a rollback

CHANGE_CAUSE = "kubernetes.io/change-cause"
REVISION = "deployment.kubernetes.io/revision"
FIELD_MANAGER = "bump_image"

#: Container waiting reasons that mean "this pod will not start by itself".
BAD_WAITING_REASONS = frozenset((
    "ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
    "CrashLoopBackOff", "CreateContainerConfigError", "CreateContainerError",
    "RunContainerError", "PreStartHookError", "PostStartHookError",
))
#: Reasons that alternate for one cause count as one problem.
_REASON_CLASS = {"ErrImagePull": "pull", "ImagePullBackOff": "pull"}

# --------------------------------------------------------------------------
# 2. Errors
# --------------------------------------------------------------------------


class BumpError(Exception):
    """Base error: a stable ``code``, the process ``exit_code`` and a ``hint``."""

    code = "error"
    exit_code = 1

    def __init__(self, message, code=None, hint=None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.hint = hint

    def event(self):
        """The one JSON error line the CLI prints for this error."""
        return {"event": "error",
                "error": {"code": self.code, "message": self.message, "hint": self.hint},
                "exit_code": self.exit_code}


class PayloadError(BumpError):
    """The payload is invalid; nothing was contacted (exit 2)."""

    code = "invalid_payload"
    exit_code = 2


class UsageError(PayloadError):
    """The command line is invalid; nothing was contacted (exit 2)."""

    code = "usage"


class EnvironmentProblem(BumpError):
    """kubectl is missing or the context guard refused (exit 4)."""

    code = "environment"
    exit_code = 4


class KubectlFailed(BumpError):
    """A kubectl call failed; the component reports ``kubectl_failed``."""

    code = "kubectl_failed"


class ContainerNotFound(BumpError):
    """The named container is not in the Deployment."""

    code = "container_not_found"


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; carries the signal number (exit 128 + signum)."""

    def __init__(self, signum=2):
        super().__init__(signum)
        self.signum = signum


# --------------------------------------------------------------------------
# 3. Image references (the distribution reference grammar)
# --------------------------------------------------------------------------

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT_RE = re.compile(_ALNUM + r"(?:" + _SEPARATOR + _ALNUM + r")*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    r"(?:" + _DOMAIN_COMPONENT + r"(?:\." + _DOMAIN_COMPONENT + r")*"
    r"|\[[a-fA-F0-9:]+\])(?::[0-9]{1,5})?")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}
_DIGEST_RE = re.compile(r"(sha256|sha384|sha512):([0-9a-f]+)")
NAME_MAX = 255


def is_digest(text):
    """True for ``sha256:`` + 64 lower-case hex digits (or sha384/sha512)."""
    m = _DIGEST_RE.fullmatch(text)
    return bool(m) and len(m.group(2)) == _DIGEST_HEX[m.group(1)]


@dataclass(frozen=True, eq=False)
class ImageRef:
    """A parsed, normalized image reference.

    ``domain`` is the registry host as normalized (``docker.io`` for Docker Hub),
    ``path`` the repository path (``library/`` added for one-part Hub names),
    ``tag`` and ``digest`` may be None.  ``explicit_domain`` tells whether the text
    named a registry host; ``text`` is the reference as the user wrote it.
    """

    domain: str
    path: str
    tag: str = None              # or None
    digest: str = None           # or None
    explicit_domain: bool = True
    text: str = ""

    @property
    def name(self):
        """``domain/path``, the normalized repository."""
        return self.domain + "/" + self.path

    @property
    def host(self):
        """The registry host without its port."""
        host = self.domain
        if host.startswith("["):
            return host[1:host.index("]")]
        return host.rsplit(":", 1)[0] if ":" in host else host

    def canonical(self):
        """The fully qualified form, e.g. ``docker.io/library/nginx:latest``."""
        out = self.name
        if self.tag is not None or self.digest is None:
            out += ":" + (self.tag or "latest")
        if self.digest:
            out += "@" + self.digest
        return out

    def same_image(self, other):
        """True when a container at ``other`` already runs this reference.

        Same repository and: both digests equal when both carry one; else the same
        tag (``latest`` when absent); a digest on one side only never matches.
        """
        if self.name != other.name:
            return False
        if self.digest or other.digest:
            return self.digest == other.digest
        return (self.tag or "latest") == (other.tag or "latest")

    def pinned(self, digest):
        """The user's reference with ``digest`` attached (any old digest replaced)."""
        return self.text.split("@", 1)[0] + "@" + digest

    def __eq__(self, other):
        return isinstance(other, ImageRef) and self.canonical() == other.canonical()

    def __hash__(self):
        return hash(self.canonical())

    def __repr__(self):
        return "ImageRef(%r)" % self.canonical()


def parse_image(text):
    """Parse an image reference; raise ``ValueError`` with a reason when invalid.

    Follows the distribution reference grammar: ``[host[:port]/]path[:tag][@digest]``;
    the first component is a host when it holds a ``.`` or ``:``, is ``localhost``,
    or has upper-case letters.  Docker Hub names normalize to ``docker.io/library/x``.
    """
    if not isinstance(text, str):
        raise ValueError("an image reference must be a string")
    if not text:
        raise ValueError("the image reference is empty")
    bad = next((ch for ch in text if ch.isspace() or ord(ch) < 32 or ord(ch) == 127), None)
    if bad is not None:
        raise ValueError("the image reference contains white space or a control character")
    if text.startswith("-"):
        raise ValueError("an image reference cannot start with '-'")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not is_digest(digest):
            raise ValueError("invalid digest %r (expected sha256: and 64 lower-case hex digits)"
                             % digest)
    tag = None
    colon, slash = rest.rfind(":"), rest.rfind("/")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG_RE.fullmatch(tag):
            raise ValueError("invalid tag %r (letters, digits, '_', '.', '-'; at most 128,"
                             " not starting with '.' or '-')" % tag)
    if not rest:
        raise ValueError("the image reference has no repository name")
    domain, path, explicit = "docker.io", rest, False
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        if not _DOMAIN_RE.fullmatch(first):
            raise ValueError("invalid registry host %r" % first)
        port = re.search(r":([0-9]+)$", first)
        if port and int(port.group(1)) > 65535:
            raise ValueError("invalid registry port in %r (at most 65535)" % first)
        domain, path, explicit = first, remainder, True
    if domain == "index.docker.io":
        domain = "docker.io"
    for component in path.split("/"):
        if not _PATH_COMPONENT_RE.fullmatch(component):
            if component.lower() != component:
                raise ValueError("repository name must be lower-case: %r" % path)
            raise ValueError("invalid repository path component %r in %r" % (component, path))
    if domain == "docker.io" and "/" not in path:
        path = "library/" + path
    if len(domain) + 1 + len(path) > NAME_MAX:
        raise ValueError("repository name longer than %d characters" % NAME_MAX)
    return ImageRef(domain, path, tag, digest, explicit, text)


def parse_image_or_none(text):
    """Parse an image found in the cluster; None when it is not a valid reference."""
    try:
        return parse_image(text)
    except ValueError:
        return None


def is_local_registry(ref):
    """True for references the ``auto`` probe skips: no host, or a local one."""
    if not ref.explicit_domain:
        return True
    host = ref.host.lower()
    return (host == "localhost" or host.endswith(".localhost") or host.endswith(".local")
            or host == "kind-registry" or _is_loopback(host))


def _is_loopback(host):
    """True for ``localhost``, 127.0.0.0/8 and ::1 (host without brackets or port)."""
    host = (host or "").lower().strip("[]")
    if host == "localhost" or host == "::1":
        return True
    parts = host.split(".")
    return (len(parts) == 4 and parts[0] == "127"
            and all(p.isdigit() and int(p) < 256 for p in parts))


def will_probe(ref, mode):
    """The probe rule: ``never``; ``always``; ``auto`` = external registries only."""
    if mode == "never":
        return False
    return mode == "always" or not is_local_registry(ref)


# --------------------------------------------------------------------------
# 4. Payload: the key table, one checker per value type, parse_payload
# --------------------------------------------------------------------------

_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS_LABEL_RE = re.compile(_DNS_LABEL)
_DNS_SUBDOMAIN_RE = re.compile(_DNS_LABEL + r"(?:\." + _DNS_LABEL + r")*")
_CONTEXT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
PROBE_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class Key:
    """One payload key: its value type, default, range or choices, and meaning.

    ``kind`` names the checker (``_CHECKERS``); ``attr`` the ``Settings`` field it
    fills (None for keys that are combined with others, such as the image forms);
    ``alias_of`` makes this key another spelling of that one.  ``shown`` is the
    default as the help and README print it, where the value alone does not say it.
    """

    name: str
    kind: str
    meaning: str
    default: object = None
    low: float = None
    high: float = None
    choices: tuple = ()
    attr: str = None
    alias_of: str = None
    shown: str = None

    def type_text(self):
        """The value type as the help and README's payload table print it."""
        if self.kind in ("integer", "number"):
            return "%s %g–%g" % (self.kind, self.low, self.high)
        if self.kind == "choice":
            return " / ".join("`%s`" % c for c in self.choices)
        return _TYPE_TEXT[self.kind]

    def default_text(self):
        """The default as the help and README's payload table print it."""
        if self.shown is not None:
            return self.shown
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, str):
            return "`%s`" % self.default
        return "%g" % self.default


_TYPE_TEXT = {
    "image": "string", "repository": "string", "tag": "string", "label": "string",
    "subdomain": "string", "context": "string", "path": "string", "boolean": "boolean",
    "names": "list of strings", "mirrors": "object: registry host → base URL",
}

#: Every payload key, in the order README.md documents them.  The one source of
#: truth for validation, ``--help`` and README's payload table (a test holds README
#: to it).
PAYLOAD_KEYS = (
    Key("image", "image", "target reference, e.g. `ghcr.io/noetl/noetl:v2.35.9`; a tag,"
        " a digest (`@sha256:…`) or both", shown="—"),
    Key("image_repository", "repository", "playbook form: image = `image_repository:"
        "target_tag`; both or neither; if `image` is given too they must agree", shown="—"),
    Key("target_tag", "tag", "playbook form: the tag that goes with `image_repository`",
        shown="—"),
    Key("namespace", "label", "Kubernetes namespace (a DNS-1123 label)",
        default=DEFAULT_NAMESPACE, attr="namespace"),
    Key("deployment", "subdomain", "one Deployment", shown="—"),
    Key("deployments", "names", "several Deployments, processed in this order; no"
        " duplicates", shown="the three defaults"),
    Key("components", "names", "the playbook's name for `deployments`",
        alias_of="deployments", shown="the three defaults"),
    Key("container", "label", "the container to update in each Deployment (regular or"
        " init); see [containers](#which-containers)", attr="container", shown="auto"),
    Key("ghcr_probe_attempts", "integer", "manifest probes at most", default=12, low=1,
        high=10000, attr="probe_attempts"),
    Key("ghcr_probe_sleep_seconds", "number", "sleep between probes (none after the last)",
        default=10, low=0, high=3600, attr="probe_sleep"),
    Key("probe", "choice", "`auto` probes external registries only, see"
        " [probe](#registry-probe)", default="auto", choices=PROBE_MODES, attr="probe"),
    Key("registry_mirrors", "mirrors", "probe this endpoint instead of the registry, e.g."
        ' `{"ghcr.io": "https://mirror.internal"}`', attr="mirrors", shown="`{}`"),
    Key("rollout_timeout_seconds", "integer", "per Deployment", default=300, low=1,
        high=86400, attr="rollout_timeout"),
    Key("dry_run", "boolean", "probe and read, report what would change, change nothing",
        default=False, attr="dry_run"),
    Key("expected_kube_context", "context", "refuse to run unless kubectl's context is this"
        " one (skipped in-cluster, where `KUBERNETES_SERVICE_HOST` is set)",
        attr="expected_context", shown="none"),
    Key("context", "context", "passed to kubectl as `--context=`", attr="context",
        shown="none"),
    Key("kubeconfig", "path", "passed to kubectl as `--kubeconfig=`", attr="kubeconfig",
        shown="none"),
    Key("kubectl", "path", "the kubectl binary (a name on `PATH` or a path)",
        default="kubectl", attr="kubectl"),
    Key("pin_digest", "boolean", "set `repo:tag@sha256:<digest>` with the digest the probe"
        " saw", default=False, attr="pin_digest"),
    Key("fail_fast_seconds", "number", "stop waiting for a rollout whose new pods have been"
        " stuck this long (see [rollouts](#rollouts))", default=60, low=0, high=86400,
        attr="fail_fast_seconds"),
    Key("rollback_on_failure", "boolean", "after a failed rollout, `kubectl rollout undo` to"
        " the revision read before the change", default=False, attr="rollback_on_failure"),
    Key("parallel", "boolean", "apply every change first, then wait for all rollouts at"
        " once", default=False, attr="parallel"),
)
KEYS_BY_NAME = {key.name: key for key in PAYLOAD_KEYS}
_LIST_KEYS = ("deployment", "deployments", "components")


@dataclass
class Settings:
    """A validated payload: every key resolved to its value or its default (the
    defaults live in ``PAYLOAD_KEYS``, not here)."""

    image: ImageRef
    deployments: list              # [name], in the order given
    listed: bool                   # True when the payload named them (not the defaults)
    namespace: str
    container: str                 # or None: chosen per Deployment
    probe_attempts: int
    probe_sleep: float
    probe: str
    mirrors: dict
    rollout_timeout: int
    dry_run: bool
    expected_context: str          # or None
    context: str                   # or None
    kubeconfig: str                # or None
    kubectl: str
    pin_digest: bool
    fail_fast_seconds: float
    rollback_on_failure: bool
    parallel: bool


def _describe(value):
    """How a JSON value reads in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "%s (a boolean)" % json.dumps(value)
    if isinstance(value, (int, float)):
        return "%s (a number)" % json.dumps(value)
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return "%s (a string)" % json.dumps(shown)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _did_you_mean(word, choices):
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return "did you mean %r?" % close[0] if close else None


def _number_hint(value):
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return None
        return "write the number without quotes: %s" % value.strip()
    return None


# -- one checker per value type: (key, value) -> the value, or PayloadError ----------

def _check_integer(key, value):
    name, lo, hi = key.name, key.low, key.high
    if isinstance(value, bool) or not isinstance(value, int):
        hint = _number_hint(value)
        if isinstance(value, float) and value == value and value.is_integer():
            hint = "write it as a whole number: %d" % value
        raise PayloadError("%s must be a whole number from %d to %d, got %s"
                           % (name, lo, hi, _describe(value)), hint=hint)
    if not lo <= value <= hi:
        raise PayloadError("%s must be from %d to %d, got %d" % (name, lo, hi, value))
    return value


def _check_number(key, value):
    name, lo, hi = key.name, key.low, key.high
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PayloadError("%s must be a number from %g to %g, got %s"
                           % (name, lo, hi, _describe(value)), hint=_number_hint(value))
    if isinstance(value, float) and not math.isfinite(value):
        raise PayloadError("%s must be a finite number, got %s" % (name, value))
    if not lo <= value <= hi:
        raise PayloadError("%s must be from %g to %g, got %s" % (name, lo, hi, value))
    return value


def _check_boolean(key, value):
    if not isinstance(value, bool):
        hint = None
        if isinstance(value, str) and value.lower() in ("true", "false"):
            hint = "write %s without quotes" % value.lower()
        raise PayloadError("%s must be true or false, got %s" % (key.name, _describe(value)),
                           hint=hint)
    return value


def _check_choice(key, value):
    if value not in key.choices:
        raise PayloadError("%s must be one of %s; got %s" % (
            key.name, ", ".join(key.choices), _describe(value)),
            hint=_did_you_mean(str(value), key.choices))
    return value


def _check_string(key, value):
    if not isinstance(value, str):
        raise PayloadError("%s must be a string, got %s" % (key.name, _describe(value)))
    if not value:
        raise PayloadError("%s must not be empty" % key.name)
    return value


def _check_k8s_name(where, value, subdomain):
    """Kubernetes name rules: a DNS-1123 label (63) or subdomain (253)."""
    limit, rx = (253, _DNS_SUBDOMAIN_RE) if subdomain else (63, _DNS_LABEL_RE)
    if len(value) > limit or not rx.fullmatch(value):
        kind = "DNS-1123 subdomain" if subdomain else "DNS-1123 label"
        hint = None
        if value.lower() != value and rx.fullmatch(value.lower()):
            hint = "Kubernetes names are lower-case: %r" % value.lower()
        raise PayloadError(
            "%s %s is not a valid Kubernetes name (a %s: lower-case letters, digits, '-'%s,"
            " starting and ending with a letter or digit, at most %d characters)"
            % (where, json.dumps(value), kind, " and '.'" if subdomain else "", limit),
            hint=hint)
    return value


def _check_label(key, value):
    return _check_k8s_name(key.name, _check_string(key, value), subdomain=False)


def _check_subdomain(key, value):
    if isinstance(value, list):
        raise PayloadError("%s must be one name (a string), got a list" % key.name,
                           hint="use deployments for a list")
    return _check_k8s_name(key.name, _check_string(key, value), subdomain=True)


def _check_context(key, value):
    value = _check_string(key, value)
    if len(value) > 253 or not _CONTEXT_RE.fullmatch(value):
        raise PayloadError("%s %s is not a usable context name (letters, digits and ._:/@+-,"
                           " not starting with '-')" % (key.name, json.dumps(value)))
    return value


def _check_path(key, value):
    value = _check_string(key, value)
    if _CONTROL_RE.search(value) or value.startswith("-") or len(value) > 4096:
        raise PayloadError("%s %s is not a usable path (no control characters, not starting"
                           " with '-')" % (key.name, json.dumps(value)))
    return value


def _check_names(key, value):
    if not isinstance(value, list):
        hint = "use deployment for one name" if isinstance(value, str) else None
        raise PayloadError("%s must be a list of Deployment names, got %s"
                           % (key.name, _describe(value)), hint=hint)
    if not value:
        raise PayloadError("%s is empty: name at least one Deployment" % key.name,
                           hint="leave the key out for the defaults: "
                                + ", ".join(DEFAULT_DEPLOYMENTS))
    names = []
    for i, item in enumerate(value):
        where = "%s[%d]" % (key.name, i)
        if not isinstance(item, str):
            raise PayloadError("%s must be a string, got %s" % (where, _describe(item)))
        _check_k8s_name(where, item, subdomain=True)
        if item in names:
            raise PayloadError("%s: Deployment %s is listed twice"
                               % (key.name, json.dumps(item)))
        names.append(item)
    return names


def _check_image(key, value):
    value = _check_string(key, value)
    try:
        return parse_image(value)
    except ValueError as exc:
        raise PayloadError("image %s is invalid: %s" % (json.dumps(value), exc))


def _check_repository(key, value):
    value = _check_string(key, value)
    try:
        ref = parse_image(value)
    except ValueError as exc:
        raise PayloadError("image_repository %s is invalid: %s" % (json.dumps(value), exc))
    if ref.tag is not None or ref.digest is not None:
        raise PayloadError("image_repository %s must not carry a tag or digest"
                           % json.dumps(value), hint="put the tag in target_tag")
    return value


def _check_tag(key, value):
    value = _check_string(key, value)
    if not _TAG_RE.fullmatch(value):
        raise PayloadError("target_tag %s is not a valid tag" % json.dumps(value))
    return value


def url_problem(url):
    """Why ``url`` is not a usable http(s) base URL, or None when it is."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https"):
        return "the scheme must be https or http"
    if not parts.hostname:
        return "no host"
    if parts.username or parts.password:
        return "credentials do not belong in the URL (use the Docker config)"
    if "?" in url or "#" in url:
        return "no query or fragment"
    if _CONTROL_RE.search(url) or any(ch.isspace() for ch in url):
        return "white space or control characters"
    return None


def _check_mirrors(key, value):
    if not isinstance(value, dict):
        raise PayloadError("registry_mirrors must be an object of registry host -> base URL,"
                           " got %s" % _describe(value))
    mirrors = {}
    for host, url in value.items():
        if not _DOMAIN_RE.fullmatch(host) or host.lower() != host:
            raise PayloadError("registry_mirrors key %s is not a registry host (e.g. ghcr.io,"
                               " docker.io, registry.example.com:8443)" % json.dumps(host))
        if not isinstance(url, str):
            raise PayloadError("registry_mirrors[%s] must be a URL string, got %s"
                               % (json.dumps(host), _describe(url)))
        why = url_problem(url)
        if why:
            raise PayloadError("registry_mirrors[%s] %s is not a usable base URL: %s"
                               % (json.dumps(host), json.dumps(url), why),
                               hint='e.g. {"ghcr.io": "https://mirror.internal"}')
        mirrors["docker.io" if host == "index.docker.io" else host] = url.rstrip("/")
    return mirrors


_CHECKERS = {
    "integer": _check_integer, "number": _check_number, "boolean": _check_boolean,
    "choice": _check_choice, "label": _check_label, "subdomain": _check_subdomain,
    "context": _check_context, "path": _check_path, "names": _check_names,
    "image": _check_image, "repository": _check_repository, "tag": _check_tag,
    "mirrors": _check_mirrors,
}


def _checked(payload, name):
    """The payload's value for ``name`` checked by its type, or None when not given."""
    value = payload.get(name)
    return None if value is None else _CHECKERS[KEYS_BY_NAME[name].kind](KEYS_BY_NAME[name],
                                                                          value)


# -- rules that join several keys ---------------------------------------------------

def _target_image(payload):
    """``image``, or ``image_repository`` + ``target_tag`` (which must agree with it)."""
    if (payload.get("image_repository") is None) != (payload.get("target_tag") is None):
        raise PayloadError("image_repository and target_tag go together: give both or neither",
                           hint="or give the whole reference as image")
    repository, tag = _checked(payload, "image_repository"), _checked(payload, "target_tag")
    ref = _checked(payload, "image")
    if repository is not None:
        combined = repository + ":" + tag
        try:
            combined_ref = parse_image(combined)
        except ValueError as exc:
            raise PayloadError("image %s is invalid: %s" % (json.dumps(combined), exc))
        if ref is not None and combined_ref != ref:
            raise PayloadError("image %s and image_repository:target_tag %s disagree"
                               % (json.dumps(ref.text), json.dumps(combined)))
        ref = ref or combined_ref
    if ref is None:
        raise PayloadError("image is required", hint='e.g. "image": "ghcr.io/noetl/noetl:v2.35.9"'
                           ' (or image_repository with target_tag)')
    if ref.tag is None and ref.digest is None:
        raise PayloadError("image %s has neither a tag nor a digest" % json.dumps(ref.text),
                           hint="name the release, e.g. %s:v1.2.3" % ref.text)
    return ref


def _selected_deployments(payload):
    """``(names, listed)``: the one list key given, else the defaults."""
    given = [k for k in _LIST_KEYS if payload.get(k) is not None]
    if len(given) > 1:
        raise PayloadError("give only one of deployment, deployments and components; got "
                           + " and ".join(given))
    if not given:
        return list(DEFAULT_DEPLOYMENTS), False
    value = _checked(payload, given[0])
    return ([value] if given[0] == "deployment" else value), True


def parse_payload(payload):
    """Validate a payload (a dict) and return ``Settings``; raise ``PayloadError``.

    Strict: unknown keys (with a "did you mean" hint), wrong types, out-of-range or
    non-finite numbers, bad references and invalid Kubernetes names are rejected.
    A key whose value is null takes its default.
    """
    if not isinstance(payload, dict):
        raise PayloadError("the payload must be a JSON object, got %s" % _describe(payload))
    for name in payload:
        if name not in KEYS_BY_NAME:
            raise PayloadError("unknown key %s" % json.dumps(name),
                               hint=_did_you_mean(str(name), list(KEYS_BY_NAME)))
    ref = _target_image(payload)
    deployments, listed = _selected_deployments(payload)
    values = {}
    for key in PAYLOAD_KEYS:
        if key.attr is not None:
            value = _checked(payload, key.name)
            values[key.attr] = key.default if value is None else value
    values["mirrors"] = values["mirrors"] or {}
    settings = Settings(image=ref, deployments=deployments, listed=listed, **values)
    if settings.pin_digest and ref.digest is None and not will_probe(ref, settings.probe):
        raise PayloadError(
            "pin_digest needs the digest the registry probe sees, but %s is not probed (%s)"
            % (ref.text, "probe is never" if settings.probe == "never" else "a local image"),
            hint='set "probe": "always", or give the image as name:tag@sha256:...')
    return settings


# --------------------------------------------------------------------------
# 5. Registry probe: pure parts
# --------------------------------------------------------------------------

_SCHEME_RE = re.compile(r"\s*,?\s*([A-Za-z][A-Za-z0-9_-]*)\s*")
_CHALLENGE_RE = re.compile(r'\s*([A-Za-z][A-Za-z0-9_.-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')


def parse_challenges(values):
    """Parse ``WWW-Authenticate`` values into ``[(scheme, {param: value})]``.

    Handles quoted values with commas and escapes
    (``scope="repository:a:pull,push"``) and several challenges in one header.
    """
    out = []
    for value in values or ():
        pos, n = 0, len(value)
        while pos < n:
            m = _SCHEME_RE.match(value, pos)
            if not m or m.end() == pos:
                break
            scheme, pos = m.group(1).lower(), m.end()
            params = {}
            while pos < n:
                pm = _CHALLENGE_RE.match(value, pos)
                if not pm or pm.end() == pos:
                    break
                raw = pm.group(2)
                if raw.startswith('"'):
                    raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
                params[pm.group(1).lower()] = raw
                pos = pm.end()
            out.append((scheme, params))
    return out


def parse_retry_after(value, now=None):
    """Seconds to wait from a ``Retry-After`` value (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]+", value):
        return float(value)
    from email.utils import parsedate_to_datetime  # HTTP stack: loaded only for a probe
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class ProbeResult:
    """What the probe of one image found: ``status`` (``available``, ``skipped`` or
    ``unavailable``), the attempts spent, the digest, and an error
    (``{"code", "message"}``) when unavailable."""

    status: str
    attempts: int = 0
    digest: str = None             # or None
    error: dict = None             # or None

    def event(self, image):
        """The ``probe`` output line for ``image`` (its text)."""
        return {"event": "probe", "image": image, "status": self.status,
                "attempts": self.attempts, "digest": self.digest, "error": self.error}


@dataclass
class _Outcome:
    """The verdict on one attempt: available (no ``code``), or a classified failure."""

    code: str = None
    message: str = None
    retryable: bool = True
    digest: str = None
    retry_after: float = None

    @property
    def ok(self):
        return self.code is None


def judge_status(status, headers, reference):
    """Classify the answer to a manifest HEAD (pure).

    200 = available; 404 = not yet; 401/403 = not allowed (yet); 429 and 5xx =
    busy (``Retry-After`` honoured); other answers will not change: give up.
    """
    if 200 <= status < 300:
        digest = (headers.get("Docker-Content-Digest") or "").strip()
        return _Outcome(digest=digest if is_digest(digest) else reference.digest)
    retry_after = parse_retry_after(headers.get("Retry-After"))
    if status == 404:
        return _Outcome("manifest_unknown", "the registry has no manifest for %s (yet)"
                        % reference.text)
    if status in (401, 403):
        return _Outcome("unauthorized" if status == 401 else "denied",
                        "the registry answered %d to an authorized request: the package may be"
                        " private or missing (add credentials for it to the Docker config)"
                        % status)
    if status == 429:
        return _Outcome("rate_limited", "the registry answered 429 Too Many Requests",
                        retry_after=retry_after)
    if status == 408:
        return _Outcome("timeout", "the registry answered 408 Request Timeout")
    if status >= 500:
        return _Outcome("server_error", "the registry answered %d" % status,
                        retry_after=retry_after)
    return _Outcome("registry_error", "the registry answered %d, which will not change by"
                    " waiting" % status, retryable=False)


def classify_transport_error(exc, host, timeout=HTTP_TIMEOUT):
    """Classify a failed request (no HTTP answer): time-out, DNS, TLS, connection."""
    import socket  # HTTP/TLS stack: loaded only for a probe
    import ssl
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return _Outcome("timeout", "no answer from %s within %g s" % (host, timeout))
    if isinstance(reason, socket.gaierror):
        return _Outcome("dns", "cannot resolve %s: %s" % (host, reason.strerror or reason))
    if isinstance(reason, ssl.SSLCertVerificationError):
        return _Outcome("tls", "TLS certificate of %s is not trusted: %s"
                        % (host, reason.verify_message or reason), retryable=False)
    if isinstance(reason, ssl.SSLError):
        return _Outcome("tls", "TLS failed with %s: %s" % (host, reason.reason or reason))
    if isinstance(reason, ConnectionRefusedError):
        return _Outcome("connection", "connection to %s refused" % host)
    if isinstance(reason, str):
        return _Outcome("connection", "request to %s failed: %s" % (host, reason))
    return _Outcome("connection", "request to %s failed: %s" % (
        host, getattr(reason, "strerror", None) or reason or type(reason).__name__))


def registry_endpoint(ref, mirrors):
    """The base URL probed for ``ref``: a mirror, Docker Hub's API host, or the host.

    Plain http is used only for loopback hosts (or a mirror URL that says so).
    """
    if ref.domain in mirrors:
        return mirrors[ref.domain]
    if ref.domain == "docker.io":
        return "https://registry-1.docker.io"
    return ("http://" if _is_loopback(ref.host) else "https://") + ref.domain


def _docker_config_keys(host):
    """The ``auths`` keys under which credentials for ``host`` may be stored."""
    keys = [host]
    if host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        keys += ["https://index.docker.io/v1/", "index.docker.io", "docker.io",
                 "registry-1.docker.io"]
    return keys


def docker_config_path(env):
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    folder = env.get("DOCKER_CONFIG") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".docker")
    return os.path.join(folder, "config.json")


def docker_credentials(host, env, log):
    """(user, password) for ``host`` from the Docker config, or None.

    Reads ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``; entries with
    ``auth`` (base64 user:password) or ``username``/``password``; keys may be URLs.
    Credential helpers (``credsStore``) are not run; ``log`` says so.
    """
    path = docker_config_path(env)
    try:
        with open(path, "rb") as fh:
            config = json.loads(fh.read(PAYLOAD_LIMIT).decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log("cannot read the Docker config %s: %s" % (path, type(exc).__name__))
        return None
    auths = config.get("auths") if isinstance(config, dict) else None
    if not isinstance(auths, dict):
        return None
    by_host = {}
    for key, entry in auths.items():
        bare = re.sub(r"^[a-z]+://", "", str(key)).split("/", 1)[0].lower()
        by_host.setdefault(bare, entry)
        by_host.setdefault(str(key), entry)
    for key in _docker_config_keys(host.lower()):
        entry = by_host.get(key)
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return entry["username"], entry["password"]
        if isinstance(entry.get("auth"), str):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            if user:
                return user, password
    helpers = config.get("credHelpers") if isinstance(config.get("credHelpers"), dict) else {}
    if config.get("credsStore") or any(k in helpers for k in _docker_config_keys(host)):
        log("the Docker config names a credential helper for %s; bump_image does not run"
            " helpers (add an auths entry instead)" % host)
    return None


def _basic_auth(user, password):
    raw = ("%s:%s" % (user, password)).encode("utf-8")
    return "Basic " + base64.b64encode(raw).decode("ascii")


# --------------------------------------------------------------------------
# 6. Registry probe: the HTTP edge
# --------------------------------------------------------------------------


class SocketRegistry:
    """The sockets each thread's current request connected, so that the request's
    whole deadline can be enforced (a socket time-out only bounds each read; a
    server could trickle its answer forever)."""

    def __init__(self):
        self._by_thread = {}
        self._lock = threading.Lock()

    def add(self, sock):
        with self._lock:
            self._by_thread.setdefault(threading.get_ident(), []).append(sock)

    def start(self):
        """Forget the calling thread's sockets; returns the list new ones go to."""
        with self._lock:
            sockets = self._by_thread[threading.get_ident()] = []
        return sockets


@functools.lru_cache(maxsize=None)
def _redirect_handler():
    """The redirect handler class, made once on first use: the HTTP/TLS stack
    (``urllib.request``, ``http.client``, ``ssl``) is imported only when a probe
    runs, which keeps ``--help`` and the kubectl-only paths light."""
    import urllib.error
    import urllib.request

    class SafeRedirectHandler(urllib.request.HTTPRedirectHandler):
        """Keeps HEAD as HEAD and ``Authorization`` on its own origin; refuses
        https -> http (except to loopback)."""

        # Python < 3.11 has no http_error_308; redirect_request below accepts any 3xx
        http_error_308 = urllib.request.HTTPRedirectHandler.http_error_302

        def redirect_request(self, req, fp, code, msg, headers, newurl):
            old, new = urlsplit(req.full_url), urlsplit(newurl)
            if new.scheme not in ("http", "https"):
                return None
            if old.scheme == "https" and new.scheme == "http" and not _is_loopback(new.hostname):
                raise urllib.error.HTTPError(newurl, code, "refusing a redirect from https to"
                                             " http", headers, fp)
            kept = {k: v for k, v in req.headers.items()
                    if k.lower() not in ("authorization", "host", "content-length")}
            new_req = urllib.request.Request(newurl, headers=kept,  # noqa: S310 - http(s) only
                                             method=req.get_method(),
                                             origin_req_host=req.origin_req_host,
                                             unverifiable=True)
            same_origin = (old.scheme, old.hostname, old.port) == (new.scheme, new.hostname,
                                                                  new.port)
            auth = req.unredirected_hdrs.get("Authorization")
            if auth and same_origin:
                new_req.add_unredirected_header("Authorization", auth)
            return new_req

    return SafeRedirectHandler


@functools.lru_cache(maxsize=None)
def _proxy_handler():
    """The proxy handler class (HTTP stack, made on first use): proxies from the
    given environment; loopback hosts and ``no_proxy`` entries go direct."""
    import urllib.request

    class EnvProxyHandler(urllib.request.ProxyHandler):
        def __init__(self, env):
            super().__init__(proxies_from(env))
            self.env = env

        def proxy_open(self, req, proxy, type):
            if bypasses_proxy(urlsplit(req.full_url).hostname, env=self.env):
                return None
            return urllib.request.ProxyHandler.proxy_open(self, req, proxy, type)

    return EnvProxyHandler


@functools.lru_cache(maxsize=None)
def _watched_handlers():
    """The http and https handler classes (HTTP/TLS stack, made on first use) whose
    connections add their sockets to a ``SocketRegistry``."""
    import http.client
    import urllib.request

    def watched(connection):
        class Watched(connection):
            def __init__(self, *args, sockets, **kwargs):
                super().__init__(*args, **kwargs)
                self.registry = sockets

            def connect(self):
                connection.connect(self)
                self.registry.add(self.sock)
        return Watched

    plain, tls = watched(http.client.HTTPConnection), watched(http.client.HTTPSConnection)

    class WatchedHTTPHandler(urllib.request.HTTPHandler):
        def __init__(self, sockets):
            super().__init__()
            self.sockets = sockets

        def http_open(self, req):
            return self.do_open(functools.partial(plain, sockets=self.sockets), req)

    class WatchedHTTPSHandler(urllib.request.HTTPSHandler):
        def __init__(self, sockets, context):
            super().__init__(context=context)
            self.sockets = sockets
            self.ssl_context = context

        def https_open(self, req):
            return self.do_open(functools.partial(tls, sockets=self.sockets), req,
                                context=self.ssl_context)

    return WatchedHTTPHandler, WatchedHTTPSHandler


def proxies_from(env):
    """``{"http": url, "https": url}`` from ``http_proxy``/``https_proxy`` in ``env``."""
    proxies = {}
    for scheme in ("http", "https"):
        value = env.get(scheme + "_proxy") or env.get(scheme.upper() + "_PROXY")
        if value:
            proxies[scheme] = value
    return proxies


def bypasses_proxy(host, env):
    """Loopback hosts and ``no_proxy`` entries (suffix match, ``*`` for all) go direct."""
    host = (host or "").lower().strip("[]")
    if _is_loopback(host):
        return True
    for entry in (env.get("no_proxy") or env.get("NO_PROXY") or "").split(","):
        entry = entry.strip().lower()
        if entry == "*":
            return True
        entry = entry.lstrip("*").lstrip(".").split(":")[0]
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


def default_opener(ssl_context=None, env=None):
    """The urllib opener used for the probe.

    Proxies come from ``http_proxy``/``https_proxy`` of ``env`` (default
    ``os.environ``); loopback hosts and ``no_proxy`` entries are reached directly.
    The opener's ``sockets`` (a ``SocketRegistry``) collects the sockets each
    thread's request connects, so that a request's whole deadline can be enforced.
    """
    import urllib.request  # HTTP/TLS stack: loaded only for a probe
    env = os.environ if env is None else env
    plain, tls = _watched_handlers()
    sockets = SocketRegistry()
    opener = urllib.request.build_opener(_redirect_handler()(), _proxy_handler()(env),
                                         plain(sockets), tls(sockets, ssl_context))
    opener.sockets = sockets
    return opener


def _expire(sockets, expired):
    """The request deadline passed: unblock every read on its sockets."""
    import socket  # HTTP/TLS stack
    expired.append(True)
    for sock in list(sockets):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@dataclass
class _Response:
    status: int
    headers: object
    body: bytes = b""


class _AttemptFailed(Exception):
    def __init__(self, outcome):
        super().__init__(outcome.message)
        self.outcome = outcome


def _read_bounded(fh, clock, deadline):
    """Read at most BODY_LIMIT bytes, giving up at ``deadline`` (the socket time-out
    bounds each read; the deadline, and the request's watchdog, bound a trickle)."""
    chunks, size = [], 0
    read = getattr(fh, "read1", None) or fh.read     # read1: at most one recv per call
    while size <= BODY_LIMIT:
        chunk = read(min(65536, BODY_LIMIT + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if clock() > deadline:
            raise TimeoutError("body not read in time")
    return b"".join(chunks)


def _http_url_parts(url):
    """``urlsplit(url)`` when it is an http(s) URL with a host and a valid port,
    else None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts


class RegistryProbe:
    """Probe one image until its manifest is visible (the contract's probe rules).

    The handshake, per attempt:
      1. HEAD the manifest, with the pull token when one is held and still valid;
      2. a 401 with a Bearer challenge: fetch a token from its realm (credentials
         for the contacted host from the Docker config, when there are any) and HEAD
         again at once, still the same attempt;
      3. judge the answer: 200 available; 404, 401/403, 429, 5xx, time-outs and
         network errors are retried after the sleep (or ``Retry-After``); anything
         else gives up at once.
    A token serves every attempt until it expires or the registry refuses it.
    """

    def __init__(self, ref, settings, opener, sleeper, clock, env, log,
                 timeout=HTTP_TIMEOUT):
        self.ref = ref
        self.attempts_allowed = settings.probe_attempts
        self.sleep_seconds = settings.probe_sleep
        self.timeout = timeout
        self.opener = opener
        self.sleeper = sleeper
        self.clock = clock
        self.env = env
        self.log = log
        self.base = registry_endpoint(ref, settings.mirrors)
        self.host = urlsplit(self.base).netloc
        self.token = None       # (value, expires_at)
        self._creds = False     # not looked up yet
        self.attempts = 0       # attempts answered so far (reported after an interrupt)

    @property
    def url(self):
        return "%s/v2/%s/manifests/%s" % (self.base, self.ref.path,
                                          self.ref.digest or self.ref.tag)

    def run(self):
        """Probe up to ``ghcr_probe_attempts`` times; return a ``ProbeResult``."""
        n = self.attempts_allowed
        outcome = None
        for attempt in range(1, n + 1):
            outcome = self.attempt()
            self.attempts = attempt
            if outcome.ok:
                self.log("probe %s: available%s (attempt %d/%d)" % (
                    self.ref.text, " as " + outcome.digest if outcome.digest else "",
                    attempt, n))
                return ProbeResult("available", attempt, outcome.digest)
            if not outcome.retryable or attempt == n:
                break
            wait = self.sleep_seconds
            if outcome.retry_after is not None:
                wait = min(outcome.retry_after, RETRY_AFTER_CAP)
            self.log("probe %s: attempt %d/%d: %s: %s; next in %g s" % (
                self.ref.text, attempt, n, outcome.code, outcome.message, wait))
            if wait > 0:
                self.sleeper(wait)
        why = "gave up after %d attempt%s" % (attempt, "" if attempt == 1 else "s")
        if not outcome.retryable:
            why = "not retried"
        message = "%s (%s)" % (outcome.message, why)
        self.log("probe %s: %s" % (self.ref.text, message))
        return ProbeResult("unavailable", attempt, None, {"code": outcome.code,
                                                          "message": message})

    # -- one attempt ---------------------------------------------------------

    def attempt(self):
        try:
            token = self._valid_token()
            resp = self._head(token)
            if resp.status == 401:
                if token is not None:
                    self.token = None           # refused: never send it again
                resp = self._answer_challenge(resp)
            elif resp.status == 403 and token is not None:
                self.token = None
            outcome = judge_status(resp.status, resp.headers, self.ref)
            if outcome.code in ("unauthorized", "denied"):
                outcome.message += "; credentials are looked up for %s in %s (%s)" % (
                    self.host, docker_config_path(self.env),
                    "found" if self._credentials() else "none there")
            return outcome
        except _AttemptFailed as failed:
            return failed.outcome

    def _answer_challenge(self, resp):
        challenges = parse_challenges(resp.headers.get_all("WWW-Authenticate") or [])
        schemes = dict(challenges)
        if "bearer" in schemes:
            resp = self._head(self._fetch_token(schemes["bearer"]))
            if resp.status in (401, 403):
                self.token = None               # a fresh token refused: drop it too
            return resp
        if "basic" in schemes:
            creds = self._credentials()
            if creds is None:
                raise _AttemptFailed(_Outcome(
                    "unauthorized", "%s asks for Basic credentials and the Docker config has"
                    " none for it" % self.host))
            return self._head(None, basic=creds)
        raise _AttemptFailed(_Outcome(
            "unauthorized", "%s answered 401 without a Bearer challenge" % self.host))

    def _valid_token(self):
        if self.token and self.clock() < self.token[1]:
            return self.token[0]
        self.token = None
        return None

    def _credentials(self):
        if self._creds is False:
            self._creds = docker_credentials(self.host, self.env, self.log)
        return self._creds

    def _head(self, token, basic=None):
        auth = None
        if token:
            auth = "Bearer " + token
        elif basic:
            auth = _basic_auth(*basic)
        return self._request("HEAD", self.url, {"Accept": MANIFEST_ACCEPT}, auth)

    def _fetch_token(self, params):
        """Exchange a Bearer challenge for a pull token (Docker token protocol)."""
        realm = params.get("realm") or ""
        parts = _http_url_parts(realm)
        if parts is None:
            raise _AttemptFailed(_Outcome("token_failed", "the Bearer challenge of %s has no"
                                          " usable realm: %r" % (self.host, realm[:200])))
        query = {}
        if params.get("service"):
            query["service"] = params["service"]
        query["scope"] = params.get("scope") or "repository:%s:pull" % self.ref.path
        url = realm + ("&" if parts.query else "?") + urlencode(query)
        auth = None
        creds = self._credentials()
        if creds is not None:
            if parts.scheme == "https" or _is_loopback(parts.hostname):
                auth = _basic_auth(*creds)
            else:
                self.log("not sending credentials for %s to the plain-http token realm %s"
                         % (self.host, parts.netloc))
        resp = self._request("GET", url, {"Accept": "application/json"}, auth,
                             read_body=True, host=parts.netloc)
        if resp.status != 200:
            what = "rejected the credentials for %s" % self.host if (
                auth and resp.status in (401, 403)) else "answered %d" % resp.status
            raise _AttemptFailed(_Outcome("token_failed", "token endpoint %s %s"
                                          % (parts.netloc, what)))
        try:
            data = json.loads(resp.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            data = None
        token = None
        if isinstance(data, dict):
            token = data.get("token") or data.get("access_token")
        if not isinstance(token, str) or not token or _CONTROL_RE.search(token):
            raise _AttemptFailed(_Outcome("token_failed", "token endpoint %s answered without"
                                          " a token" % parts.netloc))
        lifetime = data.get("expires_in")
        if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) \
                or not TOKEN_MIN_LIFETIME <= lifetime <= TOKEN_MAX_LIFETIME:
            lifetime = TOKEN_MIN_LIFETIME
        self.token = (token, self.clock() + max(TOKEN_MIN_LIFETIME, lifetime) - 5)
        return token

    def _request(self, method, url, headers, auth, read_body=False, host=None):
        import http.client  # HTTP/TLS stack: loaded only for a probe
        import urllib.error
        import urllib.request
        host = host or self.host
        # the base URL was validated as http(s); the path is built from checked parts
        req = urllib.request.Request(url, method=method, headers=dict(  # noqa: S310
            headers, **{"User-Agent": "bump_image/" + __version__}))
        if auth:
            req.add_unredirected_header("Authorization", auth)
        deadline = self.clock() + self.timeout
        # the whole request's deadline: when it passes, the watchdog shuts the
        # request's sockets down, which ends any read that is still waiting
        expired, watchdog = [], None
        registry = getattr(self.opener, "sockets", None)
        if registry is not None:
            watchdog = threading.Timer(self.timeout, _expire, (registry.start(), expired))
            watchdog.daemon = True
            watchdog.start()
        try:
            try:
                resp = self.opener.open(req, timeout=self.timeout)
            except urllib.error.HTTPError as err:
                if 300 <= err.code < 400:
                    _close_quietly(err)
                    raise _AttemptFailed(_Outcome(
                        "registry_error", "%s redirected and the redirect was not followed: %s"
                        % (host, err.msg), retryable=False))
                resp = err
            try:
                status = resp.getcode() if hasattr(resp, "getcode") else resp.status
                body = b""
                if read_body and status == 200:
                    body = _read_bounded(resp, self.clock, deadline)
                    if expired:
                        raise TimeoutError("the body was not read in time")
                    if len(body) > BODY_LIMIT:
                        raise _AttemptFailed(_Outcome(
                            "token_failed", "the answer of %s is larger than %d bytes"
                            % (host, BODY_LIMIT)))
                return _Response(status, resp.headers, body)
            finally:
                _close_quietly(resp)
        except _AttemptFailed:
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            error = TimeoutError("the request did not finish in time") if expired else exc
            raise _AttemptFailed(classify_transport_error(error, host, self.timeout))
        finally:
            if watchdog is not None:
                watchdog.cancel()


def _close_quietly(resp):
    try:
        resp.close()
    except Exception:  # noqa: S110 - a response that cannot close has nothing left to leak
        pass


# --------------------------------------------------------------------------
# 7. Deployments: pure decisions
# --------------------------------------------------------------------------


def _meta(obj):
    return obj.get("metadata") or {}


def _annotations(obj):
    return _meta(obj).get("annotations") or {}


def _conditions(obj):
    return {c.get("type"): c for c in ((obj.get("status") or {}).get("conditions") or [])
            if isinstance(c, dict)}


def _generation_observed(obj):
    """False while the controller has not seen the latest spec."""
    generation = _meta(obj).get("generation") or 0
    return ((obj.get("status") or {}).get("observedGeneration") or 0) >= generation


def _progress_deadline_exceeded(obj):
    """The ``Progressing`` condition when its reason is ProgressDeadlineExceeded."""
    progressing = _conditions(obj).get("Progressing") or {}
    return progressing if progressing.get("reason") == "ProgressDeadlineExceeded" else None


@dataclass
class Plan:
    """What to do with one Deployment: which containers, and which need the image."""

    containers: list               # [name] checked or updated
    changes: list                  # [(list key, name)] to set
    previous_image: str            # the first chosen container's image before the run

    @property
    def at_target(self):
        return not self.changes


def plan_deployment(deployment, target, container=None):
    """Choose containers and compare images (pure); raise ``ContainerNotFound``.

    With ``container``: that regular or init container.  Otherwise every container
    and init container whose repository is the target's, else the first container.
    """
    name = _meta(deployment).get("name", "?")
    pod = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    entries = [("containers", c) for c in pod.get("containers") or [] if isinstance(c, dict)]
    entries += [("initContainers", c) for c in pod.get("initContainers") or []
                if isinstance(c, dict)]
    if container is not None:
        chosen = [e for e in entries if e[1].get("name") == container]
        if not chosen:
            regular = [c.get("name") for k, c in entries if k == "containers"]
            init = [c.get("name") for k, c in entries if k == "initContainers"]
            raise ContainerNotFound('Deployment "%s" has no container "%s" (containers: %s%s)'
                                    % (name, container, ", ".join(map(str, regular)) or "none",
                                       "; init containers: " + ", ".join(map(str, init))
                                       if init else ""))
    else:
        chosen = [e for e in entries if _same_repository(e[1].get("image"), target)]
        if not chosen:
            chosen = [e for e in entries if e[0] == "containers"][:1]
        if not chosen:
            raise ContainerNotFound('Deployment "%s" has no containers' % name)
    changes = [(k, c.get("name")) for k, c in chosen if not _at_target(c.get("image"), target)]
    return Plan([c.get("name") for _, c in chosen], changes, chosen[0][1].get("image"))


def _same_repository(image, target):
    ref = parse_image_or_none(image) if isinstance(image, str) else None
    return ref is not None and ref.name == target.name


def _at_target(image, target):
    if not isinstance(image, str):
        return False
    ref = parse_image_or_none(image)
    return target.same_image(ref) if ref is not None else image == target.text


def build_patch(plan, image, cause):
    """The strategic merge patch: the new image on each changed container, and
    the change-cause annotation, in one request."""
    spec = {}
    for key, name in plan.changes:
        spec.setdefault(key, []).append({"name": name, "image": image})
    return {"metadata": {"annotations": {CHANGE_CAUSE: cause}},
            "spec": {"template": {"spec": spec}}}


def rollout_verdict(deployment):
    """``(done, message, failed)`` for a Deployment, like kubectl's rollout status.

    The ladder: generation not observed → waiting; progress deadline exceeded →
    failed; fewer updated replicas than wanted, old replicas still there, or
    updated replicas not yet available → waiting; else done.
    """
    name = _meta(deployment).get("name", "?")
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    if not _generation_observed(deployment):
        return False, "waiting for the rollout of %s to be observed" % name, False
    if _progress_deadline_exceeded(deployment):
        return False, 'deployment "%s" exceeded its progress deadline' % name, True
    want = spec.get("replicas", 1)
    updated = status.get("updatedReplicas") or 0
    total = status.get("replicas") or 0
    available = status.get("availableReplicas") or 0
    if updated < want:
        return False, "%d of %d updated replicas are available" % (updated, want), False
    if total > updated:
        return False, "%d old replicas are pending termination" % (total - updated), False
    if available < updated:
        return False, "%d of %d updated replicas are available" % (available, updated), False
    return True, 'deployment "%s" successfully rolled out' % name, False


@dataclass
class Decision:
    """What to do with one Deployment (``decide``'s answer).

    ``action``: ``skip`` (a default that is not there), ``refuse`` (an error with
    ``code`` and ``message``, nothing sent), ``unchanged``, ``wait`` (at the target,
    its rollout still running), ``plan`` (dry run: would change) or ``patch``
    (send ``plan``'s change, then wait for the rollout when ``wait`` is true, else
    finish as ``code``/``message`` say).  ``log`` is the progress line.
    """

    action: str
    code: str = None
    message: str = None
    plan: Plan = None
    wait: bool = False
    log: str = None


def decide(name, deployment, target, container, listed, dry_run, namespace):
    """What to do with one Deployment (pure): its object as read (None when it is
    not there), the target ``ImageRef``, the payload's ``container`` (or None),
    whether it was listed explicitly, and whether this is a dry run.  Raises
    nothing: every problem is a ``refuse``."""
    if deployment is None:
        if listed:
            return Decision("refuse", "not_found", 'Deployment "%s" not found in namespace'
                            ' "%s"' % (name, namespace))
        return Decision("skip", log="%s: not found in namespace %s, skipped (a default)"
                        % (name, namespace))
    try:
        plan = plan_deployment(deployment, target, container)
    except ContainerNotFound as exc:
        return Decision("refuse", exc.code, exc.message)
    spec = deployment.get("spec") or {}
    paused, replicas = bool(spec.get("paused")), spec.get("replicas", 1)
    if plan.at_target:
        done, message, failed = rollout_verdict(deployment)
        if replicas == 0:
            return Decision("refuse", "scaled_to_zero", "already at the target, but"
                            " spec.replicas is 0: no pod runs it", plan)
        if done:
            return Decision("unchanged", plan=plan, log="%s: already at %s"
                            % (name, target.text))
        if failed:
            return Decision("refuse", "rollout_failed", "already at the target, but its"
                            " rollout failed: " + message, plan)
        if paused:
            return Decision("refuse", "deployment_paused", "already at the target, but the"
                            " rollout is paused (kubectl rollout resume deployment/%s)"
                            % name, plan)
        if dry_run:
            return Decision("unchanged", plan=plan, log="%s: at the target, rollout still in"
                            " progress (%s); dry run, not waiting" % (name, message))
        return Decision("wait", plan=plan, log="%s: already at the target; its rollout is not"
                        " complete, waiting (%s)" % (name, message))
    if paused:
        return Decision("refuse", "deployment_paused", "the Deployment is paused; not changed"
                        " (resume it with kubectl rollout resume deployment/%s -n %s and run"
                        " again)" % (name, namespace), plan)
    changes = ", ".join("%s=%s" % (n, target.text) for _, n in plan.changes)
    if dry_run:
        return Decision("plan", plan=plan, log="%s: would set %s (now %s)"
                        % (name, changes, plan.previous_image))
    log = "%s: setting %s (was %s)" % (name, changes, plan.previous_image)
    if replicas == 0:
        return Decision("patch", "scaled_to_zero", "template set to %s, but spec.replicas is"
                        " 0: no pod runs it" % target.text, plan, log=log)
    return Decision("patch", plan=plan, wait=True, log=log)


def _owned_by(obj, owner):
    uid = _meta(owner).get("uid")
    for ref in _meta(obj).get("ownerReferences") or []:
        if uid and ref.get("uid") == uid:
            return True
        if not uid and ref.get("name") == _meta(owner).get("name") and \
                ref.get("kind") == owner.get("kind"):
            return True
    return False


def new_replicaset(deployment, replicasets):
    """The Deployment's current ReplicaSet: owned by it, at its revision."""
    revision = _annotations(deployment).get(REVISION)
    owned = [rs for rs in replicasets if _owned_by(rs, deployment)]
    for rs in owned:
        if revision is not None and _annotations(rs).get(REVISION) == revision:
            return rs
    return None


def _active_pods(rs, pods):
    return [p for p in pods if _owned_by(p, rs) and not _meta(p).get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]


def _statuses(pod):
    status = pod.get("status") or {}
    return (list(status.get("initContainerStatuses") or [])
            + list(status.get("containerStatuses") or []))


def diagnose(deployment, replicasets, pods):
    """Problems that stop a rollout now (pure): ``[(key, message, immediate)]``.

    A container of the new ReplicaSet's pods waiting in a reason such as
    ImagePullBackOff or CrashLoopBackOff, or a ``ReplicaFailure`` condition: the
    caller stops the wait once such a problem has lasted ``fail_fast_seconds``
    (``immediate`` False).  ``ProgressDeadlineExceeded`` stops it at once
    (``immediate`` True).  ``key`` identifies a problem across reads.
    """
    name = _meta(deployment).get("name", "?")
    if not _generation_observed(deployment):
        return []
    problems = []
    progressing = _progress_deadline_exceeded(deployment)
    if progressing:
        problems.append(((name, "deadline"), "ProgressDeadlineExceeded: %s" % (
            progressing.get("message") or "the progress deadline passed"), True))
    failure = _conditions(deployment).get("ReplicaFailure") or {}
    if failure.get("status") == "True":
        problems.append(((name, "replica-failure"), "ReplicaFailure: %s: %s" % (
            failure.get("reason") or "FailedCreate", failure.get("message") or ""), False))
    rs = new_replicaset(deployment, replicasets)
    if rs is None:
        return problems
    for pod in _active_pods(rs, pods):
        pod_name = _meta(pod).get("name", "?")
        for cs in _statuses(pod):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in BAD_WAITING_REASONS:
                key = (pod_name, cs.get("name"), _REASON_CLASS.get(reason, reason))
                text = "%s: %s (pod %s, container %s)" % (
                    reason, (waiting.get("message") or "").strip() or "no message",
                    pod_name, cs.get("name"))
                problems.append((key, text, False))
    return problems


def verify_pods(deployment, replicasets, pods, containers, target, digest):
    """Do the new ReplicaSet's pods run the target? ``(True|False|None, reason)``.

    Terminating and completed pods are ignored; each named container (regular or
    init) must report the target repository and, when the probe saw a digest, an
    ``imageID`` carrying it.  None when there are no pods to check.
    """
    rs = new_replicaset(deployment, replicasets)
    if rs is None:
        return None, "no current ReplicaSet found"
    active = _active_pods(rs, pods)
    if not active:
        return None, "no running pods to check"
    for pod in active:
        pod_name = _meta(pod).get("name", "?")
        by_name = {cs.get("name"): cs for cs in _statuses(pod)}
        for cname in containers:
            cs = by_name.get(cname)
            if cs is None:
                return False, "pod %s has no status for container %s yet" % (pod_name, cname)
            state = cs.get("state") or {}
            image, image_id = cs.get("image") or "", cs.get("imageID") or ""
            if "running" not in state and (state.get("terminated") or {}).get("exitCode") != 0:
                return False, "pod %s container %s is not running" % (pod_name, cname)
            ref = parse_image_or_none(image)
            if ref is not None and ref.name != target.name:
                return False, "pod %s container %s runs %s, not %s" % (
                    pod_name, cname, image, target.text)
            if digest:
                if not (image_id.endswith("@" + digest) or image_id == digest):
                    return False, "pod %s container %s runs %s, not digest %s" % (
                        pod_name, cname, image_id or "an unknown image ID", digest)
            elif ref is not None and not ref.digest and ref.tag and target.tag and \
                    ref.tag != target.tag:
                return False, "pod %s container %s runs %s, not %s" % (
                    pod_name, cname, image, target.text)
    return True, "%d pod%s run%s the target" % (
        len(active), "" if len(active) == 1 else "s", "s" if len(active) == 1 else "")


# --------------------------------------------------------------------------
# 8. kubectl: the subprocess edge
# --------------------------------------------------------------------------


@dataclass
class Completed:
    """The result of one command: exit status, decoded output, whether it timed out."""

    returncode: int
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False


class ProcessRunner:
    """Runs kubectl: an argument list (never a shell), a deadline on every call,
    the child killed when the deadline passes, on ``kill()`` or on an interrupt.

    A runner is any callable ``runner(argv, timeout=, env=, tag=) -> Completed``;
    ``resolve(binary, env)`` and ``kill(tag=None)`` are used when present.
    """

    def __init__(self):
        self._lock = threading.RLock()
        self._live = {}

    @staticmethod
    def resolve(binary, env):
        """The executable's path, or None when it is not there or not executable."""
        return shutil.which(binary, path=(env or os.environ).get("PATH", os.defpath))

    def __call__(self, argv, timeout, env=None, tag=None):
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, start_new_session=True)
        with self._lock:
            self._live[proc] = tag
        try:
            try:
                out, err = proc.communicate(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                out, err = proc.communicate()
                timed_out = True
        except BaseException:
            _kill_group(proc)
            proc.wait()
            raise
        finally:
            with self._lock:
                self._live.pop(proc, None)
        return Completed(proc.returncode, (out or b"").decode("utf-8", "replace"),
                         (err or b"").decode("utf-8", "replace"), timed_out)

    def kill(self, tag=None):
        """Kill the running children started with ``tag`` (all when None)."""
        with self._lock:
            procs = [p for p, t in self._live.items() if tag is None or t == tag]
        for proc in procs:
            _kill_group(proc)


def _kill_group(proc):
    """SIGKILL the child's process group (kubectl and anything a wrapper started).

    The children run in sessions of their own, so their group id is their pid; a
    process that is not such a group leader (or a fake one in tests) gets only
    ``proc.kill()``.
    """
    try:
        if proc.poll() is None and os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
            return
    except (OSError, TypeError):
        pass
    try:
        proc.kill()
    except OSError:
        pass


_KLOG_RE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d")


def kubectl_message(completed):
    """kubectl's own error message, without klog noise, bounded in length."""
    lines = [ln.strip() for ln in completed.stderr.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not _KLOG_RE.match(ln)] or lines
    text = " | ".join(useful) or (completed.stdout.strip()[:200]
                                  or "kubectl exited with status %s" % completed.returncode)
    return text if len(text) <= 1000 else text[:997] + "..."


class Kubectl:
    """kubectl calls for one run: global flags, deadlines, errors as KubectlFailed."""

    def __init__(self, settings, runner, env):
        self.runner = runner
        self.env = env
        self.base = [settings.kubectl]
        if settings.context:
            self.base.append("--context=" + settings.context)
        if settings.kubeconfig:
            self.base.append("--kubeconfig=" + settings.kubeconfig)
        self.ns = "--namespace=" + settings.namespace

    def call(self, args, timeout=KUBECTL_CALL_TIMEOUT, tag=None, request_timeout=True):
        argv = self.base + list(args)
        if request_timeout:
            argv.append("--request-timeout=%ds" % KUBECTL_REQUEST_TIMEOUT)
        try:
            return self.runner(argv, timeout=timeout, env=self.env, tag=tag)
        except OSError as exc:
            raise KubectlFailed("cannot run %s: %s" % (self.base[0], exc.strerror or exc))

    def checked(self, args, what):
        done = self.call(args)
        if done.timed_out:
            raise KubectlFailed("kubectl %s did not finish within %g s" % (what,
                                                                           KUBECTL_CALL_TIMEOUT))
        if done.returncode != 0:
            raise KubectlFailed(kubectl_message(done))
        return done

    def json(self, args, what):
        done = self.checked(args + ["--output=json"], what)
        text = done.stdout.strip()
        if not text:
            return {"kind": "List", "items": []}
        try:
            data = json.loads(text)
        except ValueError:
            raise KubectlFailed("kubectl %s printed output that is not JSON: %s"
                                % (what, text[:200]))
        if not isinstance(data, dict):
            raise KubectlFailed("kubectl %s printed unexpected JSON" % what)
        return data

    def kill(self, tag=None):
        kill = getattr(self.runner, "kill", None)
        if kill is not None:
            kill(tag)


def _items(data):
    if data.get("kind", "").endswith("List") or "items" in data:
        return [i for i in data.get("items") or [] if isinstance(i, dict)]
    return [data]


# --------------------------------------------------------------------------
# 9. The engine: preflight -> probe -> read -> apply -> wait -> verify -> report
# --------------------------------------------------------------------------


def _silent(message):
    """The default progress sink of library use: nothing is printed."""


class StderrProgress:
    """Progress lines on a stream (stderr): ``bump_image: message``; threads may
    write at once, a line is never torn."""

    def __init__(self, stream):
        self.stream = stream
        self._lock = threading.Lock()

    def __call__(self, message):
        with self._lock:
            try:
                self.stream.write("bump_image: %s\n" % message)
                self.stream.flush()
            except (OSError, ValueError):
                pass


@dataclass
class Component:
    """The result for one Deployment: its ``component`` output line (``event()``),
    plus what the run needs to finish it."""

    name: str
    namespace: str
    image: str                     # the target as set (pinned with pin_digest)
    digest: str                    # what the probe saw, or None
    started: float                 # clock() when its work began
    status: str = None             # None until finished
    previous_image: str = None
    containers: list = field(default_factory=list)
    duration: float = None
    error: dict = None
    verified: bool = None          # True/False once its pods were checked, else None
    rolled_back: bool = False
    restored_image: str = None
    revision: str = None           # the Deployment's revision before the change
    rolled_out: bool = False       # a rollout was waited for: check its pods

    def finish(self, status, clock):
        self.status = status
        self.duration = round(clock() - self.started, 3)

    def fail(self, code, message, clock):
        """Finish as ``error`` with ``code`` and ``message``."""
        self.error = {"code": code, "message": message}
        self.finish("error", clock)

    def event(self):
        return {"event": "component", "component": self.name, "namespace": self.namespace,
                "status": self.status, "image": self.image,
                "previous_image": self.previous_image, "containers": self.containers,
                "duration_seconds": self.duration, "error": self.error,
                "digest": self.digest, "verified": self.verified,
                "rolled_back": self.rolled_back, "restored_image": self.restored_image}


@dataclass
class _Wait:
    """One rollout being waited for."""

    comp: Component
    deadline: float                # clock() value
    timeout: float                 # seconds, as the payload gave them
    purpose: str                   # "change", "existing" or "rollback"
    outcome: tuple = None          # None ok, or (code, message)
    failfast: str = None           # set by the fail-fast check before it stops the wait
    failed: tuple = None           # for a rollback: the failure that caused it
    finished: bool = False         # set by the waiting thread when the outcome is known

    @property
    def tag(self):
        return "%s:%s" % (self.comp.name, self.purpose)


@dataclass
class Result:
    """Everything one run produced: the ``probe`` (``ProbeResult``), each
    ``Component``, the exit code, the signal that interrupted it (or None) and the
    duration in seconds."""

    image: str
    probe: ProbeResult
    components: list
    exit_code: int
    interrupted: int = None
    duration: float = 0.0

    def summary(self):
        counts = dict.fromkeys(("changed", "unchanged", "skipped", "planned", "error"), 0)
        for c in self.components:
            counts[c.status] = counts.get(c.status, 0) + 1
        status = "ok" if self.exit_code == 0 else "failed"
        if self.interrupted:
            status = "interrupted"
        return {"event": "summary", "status": status, "image": self.image,
                "changed": counts["changed"], "unchanged": counts["unchanged"],
                "skipped": counts["skipped"], "planned": counts["planned"],
                "errors": counts["error"], "exit_code": self.exit_code,
                "duration_seconds": round(self.duration, 3)}

    def events(self):
        """The output lines as dicts: probe, one per component, summary."""
        return ([self.probe.event(self.image)] + [c.event() for c in self.components]
                + [self.summary()])


class Engine:
    """One run of the tool with its effects injected; see ``bump``."""

    def __init__(self, settings, runner=None, opener=None, sleeper=None, clock=None,
                 env=None, on_event=None, progress=None, http_timeout=HTTP_TIMEOUT):
        self.settings = settings
        self.http_timeout = http_timeout
        self.runner = runner if runner is not None else ProcessRunner()
        self.opener = opener
        self.sleeper = sleeper if sleeper is not None else time.sleep
        self.clock = clock if clock is not None else time.monotonic
        self.env = dict(os.environ if env is None else env)
        self.on_event = on_event if on_event is not None else (lambda event: None)
        self.log = progress if progress is not None else _silent
        self.kubectl = Kubectl(settings, self.runner, self.env)
        self.prober = None
        self.probe_result = None
        self.components = []
        self.interrupted = None
        self._threads = []
        self.target = settings.image
        self.cause = "bump_image " + settings.image.text

    # -- the run -----------------------------------------------------------

    def run(self):
        started = self.clock()
        try:
            self.preflight()
            self.probe_result = self.probe()
            self.on_event(self.probe_result.event(self.settings.image.text))
            if self.probe_result.status != "unavailable":
                self.apply()
        except (Interrupted, KeyboardInterrupt) as exc:
            self.interrupted = getattr(exc, "signum", 2)
            self.kubectl.kill()
            for thread in self._threads:
                thread.join(1.0)
            self.finish_interrupted()
        result = Result(self.settings.image.text, self.probe_result, self.components,
                        self.exit_code(), self.interrupted, self.clock() - started)
        for comp in result.components:
            self.on_event(comp.event())
        self.on_event(result.summary())
        return result

    def exit_code(self):
        if self.interrupted:
            return 128 + self.interrupted
        if self.probe_result.status == "unavailable":
            return 3
        return 1 if any(c.status == "error" for c in self.components) else 0

    def finish_interrupted(self):
        message = "interrupted by %s" % ("SIGTERM" if self.interrupted == 15 else "SIGINT")
        if self.probe_result is None:
            attempts = self.prober.attempts if self.prober is not None else 0
            self.probe_result = ProbeResult("unavailable", attempts, None,
                                            {"code": "interrupted", "message": message})
            self.on_event(self.probe_result.event(self.settings.image.text))
            return
        if self.probe_result.status == "unavailable":
            return
        started = {c.name: c for c in self.components}
        self.components = []
        for name in self.settings.deployments:
            comp = started.get(name)
            if comp is None:
                comp = self.new_component(name)
                comp.fail("interrupted", message + " before this Deployment was checked or"
                          " changed", self.clock)
            elif comp.status is None:
                comp.fail("interrupted", message + " before this Deployment finished (its"
                          " change may have been applied)", self.clock)
            self.components.append(comp)

    def new_component(self, name):
        return Component(name, self.settings.namespace, self._target_image(),
                         self.probe_result.digest, self.clock())

    # -- preflight ---------------------------------------------------------

    def preflight(self):
        """kubectl must exist; the context guard must pass (exit 4 otherwise)."""
        resolve = getattr(self.runner, "resolve", None)
        settings = self.settings
        if resolve is not None and resolve(settings.kubectl, self.env) is None:
            raise EnvironmentProblem(
                "kubectl not found or not executable: %s" % settings.kubectl,
                "kubectl_missing",
                hint='install kubectl or give its path as "kubectl" in the payload')
        expected = settings.expected_context
        if not expected:
            return
        if self.env.get("KUBERNETES_SERVICE_HOST"):
            self.log("in-cluster (KUBERNETES_SERVICE_HOST is set): context guard skipped")
            return
        actual = settings.context
        if actual is None:
            try:
                done = self.kubectl.call(["config", "current-context"], request_timeout=False)
            except KubectlFailed as exc:
                raise EnvironmentProblem(exc.message, "kubectl_missing")
            if done.returncode != 0 or done.timed_out:
                raise EnvironmentProblem("cannot read kubectl's current context: %s"
                                         % kubectl_message(done), "context_mismatch")
            actual = done.stdout.strip()
        if actual != expected:
            raise EnvironmentProblem(
                "kubectl context is %s, expected %s: refusing to run"
                % (json.dumps(actual), json.dumps(expected)), "context_mismatch",
                hint="switch with kubectl config use-context %s, or pass \"context\"" % expected)

    # -- probe -------------------------------------------------------------

    def probe(self):
        settings, ref = self.settings, self.settings.image
        if not will_probe(ref, settings.probe):
            why = "probe is never" if settings.probe == "never" else "no external registry host"
            self.log("probe %s: skipped (%s)" % (ref.text, why))
            return ProbeResult("skipped", 0, ref.digest)
        opener = self.opener if self.opener is not None else default_opener(env=self.env)
        self.prober = RegistryProbe(ref, settings, opener, self.sleeper, self.clock, self.env,
                                    self.log, self.http_timeout)
        return self.prober.run()

    def _target_image(self):
        digest = self.probe_result.digest if self.probe_result else None
        if self.settings.pin_digest and digest:
            return self.settings.image.pinned(digest)
        return self.settings.image.text

    # -- read ----------------------------------------------------------------

    def read(self):
        """All selected Deployments with one kubectl process: ``{name: object}``;
        raises ``KubectlFailed`` (which every component then reports)."""
        data = self.kubectl.json(["get", "deployments"] + list(self.settings.deployments)
                                 + [self.kubectl.ns, "--ignore-not-found"], "get deployments")
        return {_meta(d).get("name"): d for d in _items(data)
                if d.get("kind") in (None, "Deployment")}

    # -- apply ---------------------------------------------------------------

    def apply(self):
        # with pin_digest the comparison target is the pinned reference, so a rerun
        # finds repo:tag@digest already in place
        self.target = parse_image(self._target_image())
        try:
            objects, failure = self.read(), None
        except KubectlFailed as exc:
            objects, failure = {}, exc
        waits = []
        for name in self.settings.deployments:
            comp = self.new_component(name)
            self.components.append(comp)
            if failure is not None:
                comp.fail("kubectl_failed", failure.message, self.clock)
                continue
            wait = self.carry_out(comp, objects.get(name))
            if wait is not None:
                waits.append(wait)
            if waits and not self.settings.parallel:
                self.settle(waits)
                waits = []
        if waits:
            self.settle(waits)
        self.check_pods()

    def carry_out(self, comp, deployment):
        """Decide for one Deployment and carry the decision out; returns a ``_Wait``
        when its rollout must be waited for, else the component is finished."""
        settings = self.settings
        decision = decide(comp.name, deployment, self.target, settings.container,
                          settings.listed, settings.dry_run, settings.namespace)
        if decision.log:
            self.log(decision.log)
        if decision.plan is not None:
            comp.containers = decision.plan.containers
            comp.previous_image = decision.plan.previous_image
            comp.revision = _annotations(deployment).get(REVISION)
        if decision.action == "refuse":
            comp.fail(decision.code, decision.message, self.clock)
        elif decision.action in ("skip", "unchanged"):
            comp.finish(decision.action if decision.action == "unchanged" else "skipped",
                        self.clock)
        elif decision.action == "plan":
            comp.finish("planned", self.clock)
        elif decision.action == "wait":
            return self._wait_for(comp, "existing")
        else:
            return self.patch(comp, decision)
        return None

    def patch(self, comp, decision):
        patch = build_patch(decision.plan, comp.image, self.cause)
        try:
            self.kubectl.checked(["patch", "deployment", comp.name, self.kubectl.ns,
                                  "--type=strategic", "--field-manager=" + FIELD_MANAGER,
                                  "--patch=" + json.dumps(patch, separators=(",", ":"))],
                                 "patch")
        except KubectlFailed as exc:
            comp.fail("kubectl_failed", exc.message, self.clock)
            return None
        if not decision.wait:
            comp.fail(decision.code, decision.message, self.clock)
            return None
        return self._wait_for(comp, "change")

    def _wait_for(self, comp, purpose, timeout=None):
        timeout = timeout or self.settings.rollout_timeout
        return _Wait(comp, self.clock() + timeout, timeout, purpose)

    def settle(self, waits):
        """Wait for rollouts, finish their components, roll back failures."""
        self.wait(waits)
        rollbacks = []
        for w in waits:
            comp = w.comp
            if w.outcome is None:
                comp.rolled_out = True
                self.log("%s: rolled out" % comp.name)
                comp.finish("changed" if w.purpose == "change" else "unchanged", self.clock)
                continue
            code, message = w.outcome
            self.log("%s: %s: %s" % (comp.name, code, message))
            if w.purpose == "change" and self.settings.rollback_on_failure and code in (
                    "rollout_failed", "rollout_timeout"):
                rollback = self.rollback(w)
                if rollback is not None:
                    rollbacks.append(rollback)
                    continue
            comp.fail(code, message, self.clock)
        if rollbacks:
            self.wait(rollbacks)
            for w in rollbacks:
                self.finish_rollback(w)

    def rollback(self, w):
        """``kubectl rollout undo`` to the revision read before the change."""
        comp = w.comp
        code, message = w.outcome
        args = ["rollout", "undo", "deployment/" + comp.name, self.kubectl.ns]
        if comp.revision:
            args.append("--to-revision=" + comp.revision)
        self.log("%s: rolling back to revision %s (%s)" % (
            comp.name, comp.revision or "previous", comp.previous_image))
        try:
            self.kubectl.checked(args, "rollout undo")
        except KubectlFailed as exc:
            comp.fail(code, "%s; rollback failed: %s" % (message, exc.message), self.clock)
            return None
        timeout = min(self.settings.rollout_timeout, ROLLBACK_TIMEOUT_CAP)
        rollback = self._wait_for(comp, "rollback", timeout)
        rollback.failed = (code, message)
        return rollback

    def finish_rollback(self, w):
        comp = w.comp
        code, message = w.failed
        if w.outcome is None:
            comp.rolled_back = True
            comp.restored_image = comp.previous_image
            self.log("%s: rolled back to %s" % (comp.name, comp.previous_image))
            comp.fail(code, "%s; rolled back to revision %s (%s)"
                      % (message, comp.revision or "previous", comp.previous_image), self.clock)
        else:
            comp.fail(code, "%s; rollback did not complete: %s" % (message, w.outcome[1]),
                      self.clock)

    # -- waiting -------------------------------------------------------------

    def wait(self, waits):
        """Wait for rollouts concurrently; fail fast on pods that cannot start.

        Each rollout is a ``kubectl rollout status`` child bounded by its remaining
        time.  Meanwhile one read of the namespace's Deployments, ReplicaSets and Pods
        looks for problems (``diagnose``): after 1, 2 and 3 seconds, so a problem is
        seen soon after it starts, then every ``fail_fast_seconds``/6 (1 to 5 s), and
        again exactly when a problem seen earlier has lasted ``fail_fast_seconds``.  A
        problem that lasted that long (or a passed progress deadline) stops its wait.
        A rollout that completes within a second costs no read at all.
        """
        done = threading.Event()

        def worker(w):
            try:
                w.outcome = self.rollout_status(w)
            except KubectlFailed as exc:
                w.outcome = ("kubectl_failed", exc.message)
            except Exception as exc:  # noqa: BLE001 - never report an unchecked rollout as done
                w.outcome = ("kubectl_failed", "waiting for the rollout failed: %s: %s"
                             % (type(exc).__name__, exc))
            finally:
                w.finished = True
                done.set()

        threads = []
        for w in waits:
            self.log("%s: waiting for the rollout (up to %d s)" % (w.comp.name, w.timeout))
            thread = threading.Thread(target=worker, args=(w,), daemon=True)
            thread.start()
            threads.append(thread)
        self._threads = threads
        interval = min(5.0, max(1.0, self.settings.fail_fast_seconds / 6.0))
        next_poll = self.clock() + 1.0
        first_seen = {}
        polls, polling = 0, True
        while not all(w.finished for w in waits):
            done.wait(max(0.05, min(interval, next_poll - self.clock())))
            done.clear()
            pending = [w for w in waits if not w.finished and not w.failfast]
            if polling and pending and self.clock() >= next_poll:
                polling, due = self.fail_fast(pending, first_seen)
                polls += 1
                next_poll = self.clock() + (1.0 if polls < 3 else interval)
                if due is not None:
                    next_poll = min(next_poll, due)
        for thread in threads:
            thread.join()

    def fail_fast(self, pending, first_seen):
        """One diagnostic read; stop the waits whose problems have lasted long
        enough.  Returns ``(readable, due)``: False when the read is not possible
        (then only the rollouts' own waits remain), and when the earliest problem
        still short of ``fail_fast_seconds`` will reach it (None: no such problem)."""
        cluster = self.read_rollout_state()
        if cluster is None:
            return False, None
        deployments, replicasets, pods = cluster
        now, due = self.clock(), None
        for w in pending:
            dep = deployments.get(w.comp.name)
            if dep is None:
                continue
            for key, message, immediate in diagnose(dep, replicasets, pods):
                since = first_seen.setdefault(key, now)
                if immediate or now - since >= self.settings.fail_fast_seconds:
                    w.failfast = message
                    self.log("%s: %s, stopping the wait" % (w.comp.name, message))
                    self.kubectl.kill(w.tag)
                    break
                when = since + self.settings.fail_fast_seconds
                due = when if due is None else min(due, when)
        return True, due

    def read_rollout_state(self):
        """The namespace's Deployments (by name), ReplicaSets and Pods, for
        diagnosis and verification; None when they cannot be read."""
        try:
            data = self.kubectl.json(["get", "deployments,replicasets,pods", self.kubectl.ns],
                                     "get deployments,replicasets,pods")
        except KubectlFailed as exc:
            self.log("cannot read pods for diagnostics and verification: %s" % exc.message)
            return None
        items = _items(data)
        deployments = {_meta(i).get("name"): i for i in items if i.get("kind") == "Deployment"}
        replicasets = [i for i in items if i.get("kind") == "ReplicaSet"]
        pods = [i for i in items if i.get("kind") == "Pod"]
        return deployments, replicasets, pods

    def rollout_status(self, w):
        """Run ``kubectl rollout status`` for the time left; None when complete."""
        remaining = w.deadline - self.clock()
        if remaining < 1:
            return ("rollout_timeout", "the rollout did not complete within %d s" % w.timeout)
        seconds = int(remaining + 0.999)
        done = self.kubectl.call(
            ["rollout", "status", "deployment/" + w.comp.name, self.kubectl.ns,
             "--watch=true", "--timeout=%ds" % seconds],
            timeout=seconds + ROLLOUT_GRACE, tag=w.tag, request_timeout=False)
        if w.failfast:
            return ("rollout_failed", w.failfast)
        if done.timed_out:
            return ("rollout_timeout", "the rollout did not complete within %d s" % w.timeout)
        if done.returncode == 0:
            return None
        message = kubectl_message(done)
        if "exceeded its progress deadline" in message:
            return ("rollout_failed", "ProgressDeadlineExceeded: " + message)
        if "timed out waiting" in message:
            return ("rollout_timeout", "the rollout did not complete within %d s (%s)"
                    % (w.timeout, message))
        if "not found" in message or "deleted" in message:
            return ("rollout_failed", "the Deployment went away during the rollout: " + message)
        return ("kubectl_failed", message)

    # -- verify --------------------------------------------------------------

    def check_pods(self):
        """Verify the pods of every rolled-out Deployment with one read."""
        todo = [c for c in self.components if c.rolled_out]
        if not todo:
            return
        cluster = self.read_rollout_state()
        if cluster is None:
            return
        deployments, replicasets, pods = cluster
        for comp in todo:
            dep = deployments.get(comp.name)
            if dep is None:
                comp.verified = False
                self.log("%s: verification: the Deployment is gone" % comp.name)
                continue
            comp.verified, reason = verify_pods(dep, replicasets, pods, comp.containers,
                                                self.target, self.probe_result.digest)
            self.log("%s: verification: %s" % (comp.name, reason))


def bump(payload, *, runner=None, opener=None, sleeper=None, clock=None, env=None,
         on_event=None, progress=None, http_timeout=HTTP_TIMEOUT):
    """Run the tool on ``payload`` (a dict) and return a ``Result``.

    Raises ``PayloadError`` for an invalid payload and ``EnvironmentProblem`` when
    kubectl is missing or the context guard refuses; nothing is changed then.
    ``runner``: runs kubectl (default ``ProcessRunner()``); ``opener``: urllib-style
    opener for the probe (default ``default_opener()``); ``sleeper(seconds)``,
    ``clock()`` (monotonic seconds), ``env`` (default ``os.environ``),
    ``on_event(dict)`` (each output line as it is ready), ``progress(str)`` (each
    progress line; default: silent) and ``http_timeout`` (seconds per registry
    request).  No signal handler is installed.
    """
    settings = parse_payload(payload)
    engine = Engine(settings, runner=runner, opener=opener, sleeper=sleeper, clock=clock,
                    env=env, on_event=on_event, progress=progress, http_timeout=http_timeout)
    return engine.run()


# --------------------------------------------------------------------------
# 10. Reporting and the command line
# --------------------------------------------------------------------------


def render_text(events):
    """The ``--format text`` table: one aligned line per component, or one line
    for a failed probe or an error."""
    rows = []
    for e in events:
        if e["event"] == "error":
            err = e["error"]
            rows.append(("error", err["code"], err["message"]
                         + (" (%s)" % err["hint"] if err.get("hint") else "")))
        elif e["event"] == "probe" and e["status"] == "unavailable":
            err = e["error"] or {}
            rows.append(("probe", "unavailable", "%s  %s: %s" % (
                e["image"], err.get("code"), err.get("message"))))
        elif e["event"] == "component":
            text = e["image"]
            if e["error"]:
                text += "  %s: %s" % (e["error"]["code"], e["error"]["message"])
            rows.append((e["component"], e["status"], text))
    if not rows:
        return ""
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "".join("%s  %s  %s\n" % (a.ljust(w0), b.ljust(w1), c) for a, b, c in rows)


def payload_help():
    """Every payload key with its type, default and meaning, for ``--help``."""
    lines = ["payload keys (a JSON object; a key whose value is null takes its default):"]
    for key in PAYLOAD_KEYS:
        if key.alias_of:
            continue
        aliases = "".join(" (alias %s)" % k.name for k in PAYLOAD_KEYS if k.alias_of == key.name)
        default = key.default_text().replace("—", "none")
        lines.append(_plain("  %s%s: %s, default %s" % (key.name, aliases, key.type_text(),
                                                       default)))
        lines.append(textwrap.fill(_plain(key.meaning), 79, initial_indent=" " * 6,
                                   subsequent_indent=" " * 6))
    return "\n".join(lines)


def _plain(markdown):
    """README's markdown as plain text: no backticks, links as their text."""
    return re.sub(r"\[([^]]*)\]\(#[^)]*\)", r"\1", markdown).replace("`", "")


class _Exit(Exception):
    """argparse wants to end the process (after ``--help``)."""

    def __init__(self, status):
        super().__init__(status)
        self.status = status


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ``UsageError`` instead of exiting, and writes to ``out``."""

    def __init__(self, out, **kwargs):
        super().__init__(**kwargs)
        self.out = out

    def error(self, message):
        raise UsageError(message, hint="see %s --help" % self.prog)

    def exit(self, status=0, message=None):
        if message:
            raise UsageError(message.strip())
        raise _Exit(status)

    def _print_message(self, message, file=None):
        if message:
            self.out.write(message)


def argument_parser(out):
    """The command line's parser; help and errors go to ``out``."""
    parser = ArgumentParser(
        out, prog="bump_image", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Move Kubernetes Deployments (default: %s in namespace %s) to one"
                    " container image: probe the registry, set the image where needed,"
                    " wait for the rollouts, report JSON lines." % (
                        ", ".join(DEFAULT_DEPLOYMENTS), DEFAULT_NAMESPACE),
        epilog=payload_help() + "\n\nExit codes: 0 ok, 1 a component failed, 2 bad input,"
               " 3 image unavailable,\n4 kubectl missing or wrong context, 130/143"
               " interrupted.")
    parser.add_argument("--payload", metavar="JSON|@FILE|-",
                        help="the payload: a JSON object, @file to read one, - for stdin")
    parser.add_argument("--image", help="target image (overrides the payload)")
    parser.add_argument("--namespace", help="namespace (overrides the payload)")
    parser.add_argument("--deployment", action="append", metavar="NAME",
                        help="a Deployment to bump; repeat for several (overrides the payload)")
    parser.add_argument("--dry-run", action="store_true", default=None,
                        help="probe and read, report what would change, change nothing")
    parser.add_argument("--format", choices=("jsonl", "text"), default="jsonl",
                        help="stdout format (default: jsonl)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


def _reject_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise PayloadError("the payload names key %s twice" % json.dumps(key))
        out[key] = value
    return out


def _reject_constant(name):
    raise PayloadError("the payload holds %s, which is not a JSON number" % name)


def load_payload(text):
    """Parse payload JSON text strictly (no NaN, no duplicate keys)."""
    if not text.strip():
        raise PayloadError("the payload is empty", hint='e.g. --payload \'{"image": "..."}\'')
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicates,
                          parse_constant=_reject_constant)
    except ValueError as exc:
        raise PayloadError("the payload is not valid JSON: %s" % exc)
    except RecursionError:
        raise PayloadError("the payload is nested too deeply")


def _read_payload(source, stdin):
    if source == "-":
        stream = getattr(stdin, "buffer", stdin)
        raw = stream.read(PAYLOAD_LIMIT + 1)
        where = "stdin"
    elif source.startswith("@"):
        where = source[1:]
        try:
            with open(where, "rb") as fh:
                raw = fh.read(PAYLOAD_LIMIT + 1)
        except (OSError, ValueError) as exc:
            raise PayloadError("cannot read the payload file %s: %s"
                               % (json.dumps(where), getattr(exc, "strerror", None) or exc))
    else:
        return source
    if len(raw) > PAYLOAD_LIMIT:
        raise PayloadError("the payload from %s is larger than %d bytes" % (where, PAYLOAD_LIMIT))
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PayloadError("the payload from %s is not UTF-8 text" % where)


def payload_from_args(args, stdin):
    """The payload dict: ``--payload`` with the override flags applied."""
    if args.payload is None and args.image is None:
        raise UsageError("no payload: give --payload JSON|@FILE|- or at least --image",
                         hint="see bump_image --help")
    payload = {}
    if args.payload is not None:
        payload = load_payload(_read_payload(args.payload, stdin))
        if not isinstance(payload, dict):
            raise PayloadError("the payload must be a JSON object, got %s" % _describe(payload))
    if args.image is not None:
        payload.pop("image_repository", None)
        payload.pop("target_tag", None)
        payload["image"] = args.image
    if args.namespace is not None:
        payload["namespace"] = args.namespace
    if args.deployment:
        for key in _LIST_KEYS:
            payload.pop(key, None)
        payload["deployments"] = args.deployment
    if args.dry_run:
        payload["dry_run"] = True
    return payload


class _Signals:
    """SIGINT and SIGTERM raise ``Interrupted`` once (main thread only)."""

    def __enter__(self):
        self.saved = {}
        if threading.current_thread() is not threading.main_thread():
            return self
        fired = []

        def handler(signum, frame):
            if not fired:
                fired.append(signum)
                raise Interrupted(signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.signal(sig, handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self.saved.items():
            signal.signal(sig, old)


class _Output:
    """stdout: JSON lines as they come, or the text table at the end."""

    def __init__(self, stream):
        self.stream = stream
        self.format = "jsonl"
        self.events = []

    def write(self, event):
        if self.format == "jsonl":
            self.stream.write(json.dumps(event) + "\n")
            self.stream.flush()
        else:
            self.events.append(event)

    def close(self):
        if self.format == "text":
            self.stream.write(render_text(self.events))
            self.stream.flush()


def main(argv=None, *, stdin=None, stdout=None, stderr=None, env=None, runner=None,
         opener=None, sleeper=None, clock=None):
    """The command line; returns the exit code (see the module docstring)."""
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    out = _Output(stdout)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            args = argument_parser(stdout).parse_args(argv)
        except _Exit as done:
            return done.status
        if args.version:
            stdout.write("bump_image %s\n" % __version__)
            stdout.flush()
            return 0
        out.format = args.format
        with _Signals():
            try:
                settings = parse_payload(payload_from_args(args, stdin))
                engine = Engine(settings, runner=runner, opener=opener, sleeper=sleeper,
                                clock=clock, env=env, on_event=out.write,
                                progress=StderrProgress(stderr))
                code = engine.run().exit_code
            except Interrupted as exc:     # before the run started: nothing was contacted
                code = 128 + exc.signum
                out.write({"event": "error", "error": {
                    "code": "interrupted", "message": "interrupted by %s before the run"
                    " started" % ("SIGTERM" if exc.signum == 15 else "SIGINT"), "hint": None},
                    "exit_code": code})
        out.close()
        return code
    except BumpError as exc:
        out.write(exc.event())
        out.close()
        return exc.exit_code
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
