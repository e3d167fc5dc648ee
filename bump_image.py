#!/usr/bin/env python3
"""bump_image - move Kubernetes workloads to new container images, safely.

Command line::

    python3 bump_image.py --payload '{"image": "ghcr.io/noetl/noetl:v2.35.9"}'
    python3 bump_image.py --payload @payload.json --format text
    echo '{"image": "ghcr.io/noetl/noetl:v2.35.9"}' | python3 bump_image.py --payload -
    python3 -m bump_image --image ghcr.io/noetl/noetl:v2.35.9 --deployment sts/redis
    python3 bump_image.py --payload '{"images": {"noetl-server": "ghcr.io/noetl/s:v3",
                                                 "noetl-worker": "ghcr.io/noetl/w:v3"}}'
    bump-image ...                                  # once pip/pipx-installed

Workloads are Deployments (the default three of NoETL, or any named), StatefulSets and
DaemonSets (``sts/NAME``, ``ds/NAME``); each may have an image of its own (``images``).
The cluster is reached through kubectl, or through the API itself with a pod's service
account (``cluster_access``).  What one run does, in this order:

1. validate the payload; nothing is contacted before it passes (exit 2);
2. choose the cluster access and run the context guard (exit 4);
3. probe the registry for every distinct image at once until each manifest is
   visible, external images only, and learn the platforms it provides; give up
   before anything is changed (exit 3);
4. read the selected workloads by name, one kind at a time; for each pick the
   containers (never guessing), compare, refuse an image its nodes cannot run, patch
   only when needed, wait for the rollouts (each judged from its own object, failing
   fast on pods that cannot start), optionally roll back, then verify the pods;
5. print one JSON line per probed image, one per workload and a summary on stdout;
   progress, and at the end what failed and what stays changed, on stderr.  Exit 0
   ok, 1 a component failed (or none was found), 2 bad input, 3 image unavailable, 4
   environment (no kubectl and no service account, wrong context), 130/143
   interrupted.  ``deadline_seconds`` bounds every wait of the run.

Library use::

    import bump_image
    result = bump_image.bump({"image": "ghcr.io/noetl/noetl:v2.35.9"})
    result.exit_code            # as the CLI would exit
    result.events()             # the probe, component and summary lines as dicts
    result.probes               # [ProbeResult]; result.components: [Component]

``bump()`` raises ``PayloadError`` (exit 2) or ``EnvironmentProblem`` (exit 4) when
nothing could run; every other outcome is data in the returned ``Result``.  The
effects are keyword arguments with standard-library defaults: ``runner`` (runs
kubectl, see ``ProcessRunner``), ``opener`` (urllib opener), ``sleeper``, ``clock``,
``env`` (environment mapping), ``on_event`` (called with each line as it is ready)
and ``progress`` (called with each human-readable progress line; silent by
default).  ``bump()`` installs no signal handler.  The payload keys are the table
``PAYLOAD_KEYS`` (``--help`` lists them); output lines and exit codes are described
in README.md.

Where things live, top to bottom:

1. Constants: defaults, media types, time-outs, waiting reasons.
2. Errors: ``BumpError`` and its subclasses, each with a code and an exit status.
3. Image references: ``parse_image`` (the distribution grammar), ``ImageRef``.
4. Payload: the key table ``PAYLOAD_KEYS``, one checker per value type, workloads
   and images, ``parse_payload`` -> ``Settings``, ``parse_payload_lines`` (NoETL's form).
5. Registry probe, pure: challenges, ``Retry-After``, judging an answer, endpoints,
   Docker config credentials.
6. Registry probe, the HTTP edge: ``http_call`` (one request, every wait bounded,
   name resolution included), the opener, ``RegistryProbe`` (one image's attempts:
   token, challenge, digest, platforms).
7. Workloads, pure: ``plan_containers``, ``image_matches``, ``rollout_verdict``
   (kubectl's status viewers per kind), the platforms (``index_entries``,
   ``pod_fits_node``, ``platform_refusal``), ``decide``, the pods of a new revision,
   ``diagnose``, ``describe_pods``, ``verify_pods``, ``union_selector``.
8. Cluster access: the interface ``ClusterAccess`` and its two implementations,
   ``KubectlAccess`` (the subprocess edge: ``ProcessRunner``) and ``ApiAccess`` (the
   API over HTTPS with the pod's ``ServiceAccount``; ``undo_deployment_patch`` and
   ``undo_revision_patch`` are what ``kubectl rollout undo`` sends).
9. Rollouts: ``Rollouts`` (waiting: a bounded poll of each workload by name, its own
   verdict; fail fast) and ``poll_interval``.
10. The engine: ``Engine`` (preflight, probes, read, decide, patch, settle), with
    ``Rollbacks`` and ``Checks`` (platforms before a change, verification after),
    and ``bump``.
11. Reporting and the command line: ``render_text``, ``report_lines``, the argument
    parser, the payload sources (``--payload``, ``--payload-lines``), signals, the
    kept log, ``main``.
"""

import argparse
import ast
import base64
import difflib
import functools
import json
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

__version__ = "3.0.0"

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
    "ClusterAccess",
    "KubectlAccess",
    "ApiAccess",
    "ClusterError",
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

DEADLINE_RESERVE = 1.0         # seconds of deadline_seconds kept for the report
# kubectl's client sends 10 requests at once, then 5 a second (client-go's QPS 5, burst
# 10): so one kubectl reads, patches or waits for at most this many named objects
# (one request each per client) and none of them waits for the rate limiter
CHUNK = 10
# kubectl processes (or API requests) of one read at once: a poll of 100 workloads is
# ten kubectls, four at a time
PARALLEL = 4

#: The workload kinds, as the payload names them and as Kubernetes spells them.
KINDS = {"deployment": "Deployment", "statefulset": "StatefulSet", "daemonset": "DaemonSet"}
KIND_ALIASES = {"deployment": "deployment", "deploy": "deployment",
                "statefulset": "statefulset", "sts": "statefulset",
                "daemonset": "daemonset", "ds": "daemonset"}
DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"
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


class ContainerNotFound(BumpError):
    """The named container is not in the workload."""

    code = "container_not_found"


class ContainerAmbiguous(BumpError):
    """No rule picks the container to update: the payload must name it."""

    code = "container_ambiguous"


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
        """``domain/path``, the normalized repository; host names are case-insensitive,
        so the domain is lower-cased here (``GHCR.io/x`` is ``ghcr.io/x``)."""
        return self.domain.lower() + "/" + self.path

    @property
    def host(self):
        """The registry host without its port."""
        host = self.domain
        if host.startswith("["):
            return host[1:host.index("]")]
        return host.rsplit(":", 1)[0] if ":" in host else host

    def canonical(self):
        """The fully qualified form, e.g. ``docker.io/library/nginx:latest`` (the host
        as written: an upper-case letter is what makes ``UPPER/a`` a host)."""
        out = self.domain + "/" + self.path
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

    def _identity(self):
        shown = self.tag is not None or self.digest is None
        return self.name, (self.tag or "latest") if shown else None, self.digest

    def __eq__(self, other):
        return isinstance(other, ImageRef) and self._identity() == other._identity()

    def __hash__(self):
        return hash(self._identity())

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
    if re.fullmatch(r"[a-f0-9]{64}", text):
        raise ValueError("a bare 64-hex string is an image ID, not a repository name (as"
                         " the registry and kubelet read it)")
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
    if domain.lower() in ("docker.io", "index.docker.io"):
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
ACCESS_MODES = ("auto", "kubectl", "api")


@dataclass(frozen=True)
class Key:
    """One payload key: its value type, default, range or choices, and meaning.

    ``kind`` names the checker (``_CHECKERS``); ``attr`` the ``Settings`` field it
    fills (None for keys that are combined with others: the image forms, the
    workload lists); ``alias_of`` makes this key another spelling of that one.
    ``shown`` is the default as the help and README print it, where the value alone
    does not say it.  ``low_open`` makes ``low`` an open bound (``> low``).
    """

    name: str
    kind: str
    meaning: str
    default: object = None
    low: float = None
    high: float = None
    low_open: bool = False
    choices: tuple = ()
    attr: str = None
    alias_of: str = None
    shown: str = None

    def type_text(self):
        """The value type as the help and README's payload table print it."""
        if self.low_open:
            return "%s > %g (at most %g)" % (self.kind, self.low, self.high)
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
    "workload": "string", "context": "string", "path": "string", "boolean": "boolean",
    "workloads": "list of strings", "mirrors": "object: registry host → base URL",
    "images": "object: workload → image",
}

#: Every payload key, in the order README.md documents them.  The one source of
#: truth for validation, ``--help``, ``--payload-lines`` and README's payload table
#: (a test holds README to it).
PAYLOAD_KEYS = (
    Key("image", "image", "target reference, e.g. `ghcr.io/noetl/noetl:v2.35.9`; a tag,"
        " a digest (`@sha256:…`) or both", shown="—"),
    Key("image_repository", "repository", "playbook form: image = `image_repository:"
        "target_tag`; both or neither; if `image` is given too they must agree", shown="—"),
    Key("target_tag", "tag", "playbook form: the tag that goes with `image_repository`",
        shown="—"),
    Key("images", "images", "an image per workload, e.g. `{\"noetl-server\": \"ghcr.io/noetl/"
        "noetl-server-rust:v3\"}`; without a list key the workloads are its keys, in order;"
        " with one, every key must be listed and `image` is the image of the others",
        shown="—"),
    Key("namespace", "label", "Kubernetes namespace (a DNS-1123 label)",
        default=DEFAULT_NAMESPACE, attr="namespace"),
    Key("deployment", "workload", "one workload: a Deployment's name, or `KIND/NAME` with"
        " KIND `deployment` (`deploy`), `statefulset` (`sts`) or `daemonset` (`ds`)",
        shown="—"),
    Key("deployments", "workloads", "several workloads (names or `KIND/NAME`), processed in"
        " this order; no duplicates", shown="the three defaults"),
    Key("components", "workloads", "the playbook's name for `deployments`",
        alias_of="deployments", shown="the three defaults"),
    Key("container", "label", "the container to update in each workload (regular or"
        " init); see [containers](#which-containers)", attr="container", shown="auto"),
    Key("ghcr_probe_attempts", "integer", "manifest probes at most", default=12, low=1,
        high=10000, attr="probe_attempts"),
    Key("ghcr_probe_sleep_seconds", "number", "sleep between probes (none after the last)",
        default=10, low=0, high=3600, attr="probe_sleep"),
    Key("probe", "choice", "`auto` probes external registries only, see"
        " [probe](#registry-probe)", default="auto", choices=PROBE_MODES, attr="probe"),
    Key("registry_mirrors", "mirrors", "probe this endpoint instead of the registry, e.g."
        ' `{"ghcr.io": "https://mirror.internal"}`', attr="mirrors", shown="`{}`"),
    Key("rollout_timeout_seconds", "integer", "per workload", default=300, low=1,
        high=86400, attr="rollout_timeout"),
    Key("deadline_seconds", "number", "a budget for the whole run (probe and every rollout),"
        " from the process's start; see [deadline](#a-deadline-for-the-whole-run)", low=0,
        low_open=True, high=604800, attr="deadline_seconds", shown="none"),
    Key("dry_run", "boolean", "probe and read, report what would change, change nothing",
        default=False, attr="dry_run"),
    Key("expected_kube_context", "context", "refuse to run unless kubectl's context (`context`,"
        " else its current one) is this one, in a pod or not; skipped only when kubectl has no"
        " context in a pod, or under `cluster_access: api`; see [the context guard]"
        "(#the-context-guard)", attr="expected_context", shown="none"),
    Key("context", "context", "passed to kubectl as `--context=`", attr="context",
        shown="none"),
    Key("kubeconfig", "path", "passed to kubectl as `--kubeconfig=`", attr="kubeconfig",
        shown="none"),
    Key("kubectl", "path", "the kubectl binary (a name on `PATH` or a path)",
        default="kubectl", attr="kubectl"),
    Key("check_platforms", "choice", "before any change, compare the platforms a probed image"
        " provides with the os/arch of the nodes each workload can run on; `always` refuses"
        " when that cannot be known; see [platforms](#platform-check)", default="auto",
        choices=PROBE_MODES, attr="check_platforms"),
    Key("cluster_access", "choice", "`kubectl`; `api`: the Kubernetes API with the pod's"
        " service account (no kubectl needed); `auto`: kubectl when it is there, else the API"
        " in a pod; see [cluster access](#cluster-access)", default="auto",
        choices=ACCESS_MODES, attr="cluster_access"),
    Key("pin_digest", "boolean", "set `repo:tag@sha256:<digest>` with the digest the probe"
        " saw", default=False, attr="pin_digest"),
    Key("fail_fast_seconds", "number", "stop waiting for a rollout whose new pods have been"
        " stuck this long (see [rollouts](#rollouts))", default=60, low=0, high=86400,
        attr="fail_fast_seconds"),
    Key("rollback_on_failure", "boolean", "after a workload's own rollout failed, undo it as"
        " `kubectl rollout undo` does, to the revision read before the change",
        default=False, attr="rollback_on_failure"),
    Key("parallel", "boolean", "apply every change first, then wait for all rollouts at"
        " once", default=False, attr="parallel"),
)
KEYS_BY_NAME = {key.name: key for key in PAYLOAD_KEYS}
_LIST_KEYS = ("deployment", "deployments", "components")


@dataclass(frozen=True)
class Workload:
    """One selected workload: its kind (``deployment``, ``statefulset`` or
    ``daemonset``), its name, and its target image as the payload gave it."""

    kind: str
    name: str
    image: ImageRef = field(default=None, compare=False)

    @property
    def key(self):
        """How the payload and the output name it: a bare name for a Deployment."""
        return self.name if self.kind == "deployment" else self.resource

    @property
    def resource(self):
        """``kind/name``, as kubectl takes it."""
        return "%s/%s" % (self.kind, self.name)

    @property
    def title(self):
        """The kind as Kubernetes spells it, e.g. ``StatefulSet``."""
        return KINDS[self.kind]


@dataclass
class Settings:
    """A validated payload: every key resolved to its value or its default (the
    defaults live in ``PAYLOAD_KEYS``, not here)."""

    workloads: list                # [Workload], in the order given
    listed: bool                   # True when the payload named them (not the defaults)
    images: list                   # [ImageRef], distinct, in order of first use
    namespace: str
    container: str                 # or None: chosen per workload
    probe_attempts: int
    probe_sleep: float
    probe: str
    mirrors: dict
    rollout_timeout: int
    deadline_seconds: float        # or None
    dry_run: bool
    expected_context: str          # or None
    context: str                   # or None
    kubeconfig: str                # or None
    kubectl: str
    check_platforms: str
    cluster_access: str
    pin_digest: bool
    fail_fast_seconds: float
    rollback_on_failure: bool
    parallel: bool

    @property
    def image(self):
        """The one target image, or None when the workloads have several."""
        return self.images[0] if len(self.images) == 1 else None


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
    bounds = ("greater than %g and at most %g" if key.low_open else "from %g to %g") % (lo, hi)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PayloadError("%s must be a number %s, got %s" % (name, bounds, _describe(value)),
                           hint=_number_hint(value))
    if isinstance(value, float) and not math.isfinite(value):
        raise PayloadError("%s must be a finite number, got %s" % (name, value))
    if not (lo < value if key.low_open else lo <= value) or value > hi:
        raise PayloadError("%s must be %s, got %s" % (name, bounds, value))
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


def _check_string(key, value, where=None):
    where = where or key.name
    if not isinstance(value, str):
        raise PayloadError("%s must be a string, got %s" % (where, _describe(value)))
    if not value:
        raise PayloadError("%s must not be empty" % where)
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


def _parse_workload(where, text):
    """A ``Workload`` (no image yet) from ``KIND/NAME`` or a bare Deployment name."""
    kind, name = "deployment", text
    if "/" in text:
        given, _, name = text.partition("/")
        kind = KIND_ALIASES.get(given.lower())
        if kind is None:
            raise PayloadError("%s %s: unknown kind %s" % (where, json.dumps(text),
                                                          json.dumps(given)),
                               hint="KIND is deployment (deploy), statefulset (sts) or"
                                    " daemonset (ds); a bare name is a Deployment")
        if not name:
            raise PayloadError("%s %s has no name after the kind" % (where, json.dumps(text)))
    return Workload(kind, _check_k8s_name(where, name, subdomain=True))


def _check_workload(key, value):
    if isinstance(value, list):
        raise PayloadError("%s must be one name (a string), got a list" % key.name,
                           hint="use deployments for a list")
    return _parse_workload(key.name, _check_string(key, value))


def _check_workloads(key, value):
    if not isinstance(value, list):
        hint = "use deployment for one name" if isinstance(value, str) else None
        raise PayloadError("%s must be a list of workload names, got %s"
                           % (key.name, _describe(value)), hint=hint)
    if not value:
        raise PayloadError("%s is empty: name at least one workload" % key.name,
                           hint="leave the key out for the defaults: "
                                + ", ".join(DEFAULT_DEPLOYMENTS))
    workloads = []
    for i, item in enumerate(value):
        where = "%s[%d]" % (key.name, i)
        workload = _parse_workload(where, _check_string(key, item, where))
        if workload in workloads:
            raise PayloadError("%s: %s is listed twice" % (key.name, json.dumps(item)))
        workloads.append(workload)
    return workloads


def _parse_reference(where, value):
    try:
        return parse_image(value)
    except ValueError as exc:
        raise PayloadError("%s %s is invalid: %s" % (where, json.dumps(value), exc))


def _check_image(key, value):
    return _parse_reference("image", _check_string(key, value))


def _check_images(key, value):
    if not isinstance(value, dict):
        raise PayloadError("images must be an object of workload -> image, got %s"
                           % _describe(value), hint='e.g. {"noetl-server": "ghcr.io/noetl/'
                                                    'noetl-server-rust:v3"}')
    if not value:
        raise PayloadError("images is empty: map at least one workload to its image")
    images = {}
    for text, image in value.items():
        where = "images key %s" % json.dumps(text)
        workload = _parse_workload(where, _check_string(key, text, where))
        if workload in images:
            raise PayloadError("images names %s twice" % workload.key)
        where = "images[%s]" % json.dumps(text)
        ref = _parse_reference(where, _check_string(key, image, where))
        if ref.tag is None and ref.digest is None:
            raise PayloadError("%s %s has neither a tag nor a digest"
                               % (where, json.dumps(image)))
        images[workload] = ref
    return images


def _check_repository(key, value):
    value = _check_string(key, value)
    ref = _parse_reference("image_repository", value)
    if ref.tag is not None or ref.digest is not None:
        raise PayloadError("image_repository %s must not carry a tag or digest"
                           % json.dumps(value), hint="put the tag in target_tag")
    return value


def _check_tag(key, value):
    value = _check_string(key, value)
    if not _TAG_RE.fullmatch(value):
        raise PayloadError("target_tag %s is not a valid tag" % json.dumps(value))
    return value


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


def _split_http_url(url):
    """``(urlsplit(url), None)`` for an http(s) URL with a host and a valid port,
    else ``(None, why)``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return None, str(exc)
    if parts.scheme not in ("http", "https"):
        return None, "the scheme must be https or http"
    if not parts.hostname:
        return None, "no host"
    return parts, None


def url_problem(url):
    """Why ``url`` is not a usable http(s) base URL, or None when it is."""
    parts, why = _split_http_url(url)
    if why:
        return why
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
    "choice": _check_choice, "label": _check_label, "workload": _check_workload,
    "workloads": _check_workloads, "context": _check_context, "path": _check_path,
    "image": _check_image, "images": _check_images, "repository": _check_repository,
    "tag": _check_tag, "mirrors": _check_mirrors,
}


def _checked(payload, name):
    """The payload's value for ``name`` checked by its type, or None when not given."""
    value = payload.get(name)
    return None if value is None else _CHECKERS[KEYS_BY_NAME[name].kind](KEYS_BY_NAME[name],
                                                                          value)


# -- rules that join several keys ---------------------------------------------------

def _target_image(payload):
    """``image``, or ``image_repository`` + ``target_tag`` (which must agree with it);
    None when neither is given."""
    if (payload.get("image_repository") is None) != (payload.get("target_tag") is None):
        raise PayloadError("image_repository and target_tag go together: give both or neither",
                           hint="or give the whole reference as image")
    repository, tag = _checked(payload, "image_repository"), _checked(payload, "target_tag")
    ref = _checked(payload, "image")
    if repository is not None:
        combined = _parse_reference("image", repository + ":" + tag)
        if ref is not None and combined != ref:
            raise PayloadError("image %s and image_repository:target_tag %s disagree"
                               % (json.dumps(ref.text), json.dumps(combined.text)))
        ref = ref or combined
    if ref is not None and ref.tag is None and ref.digest is None:
        raise PayloadError("image %s has neither a tag nor a digest" % json.dumps(ref.text),
                           hint="name the release, e.g. %s:v1.2.3" % ref.text)
    return ref


def _selected_workloads(payload):
    """``(workloads with their images, listed)``: the one list key given, else the
    ``images`` keys, else the default Deployments; each workload's image from
    ``images`` or else ``image``."""
    given = [k for k in _LIST_KEYS if payload.get(k) is not None]
    if len(given) > 1:
        raise PayloadError("give only one of deployment, deployments and components; got "
                           + " and ".join(given))
    images = _checked(payload, "images") or {}
    image = _target_image(payload)
    if given:
        value = _checked(payload, given[0])
        workloads, listed = ([value] if given[0] == "deployment" else value), True
        for workload in images:
            if workload not in workloads:
                raise PayloadError("images names %s, which %s does not list"
                                   % (json.dumps(workload.key), given[0]),
                                   hint="add it to %s, or leave it out of images" % given[0])
    elif images:
        workloads, listed = list(images), True
    else:
        workloads = [Workload("deployment", name) for name in DEFAULT_DEPLOYMENTS]
        listed = False
    without = [w.key for w in workloads if w not in images]
    if without and image is None:
        if not images:
            raise PayloadError("image is required", hint='e.g. "image": "ghcr.io/noetl/noetl:'
                               'v2.35.9" (or image_repository with target_tag, or images)')
        raise PayloadError("image is required for %s (not in images)" % ", ".join(without),
                           hint="add them to images, or give image for the others")
    return [Workload(w.kind, w.name, images.get(w, image)) for w in workloads], listed


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
    workloads, listed = _selected_workloads(payload)
    values = {}
    for key in PAYLOAD_KEYS:
        if key.attr is not None:
            value = _checked(payload, key.name)
            values[key.attr] = key.default if value is None else value
    values["mirrors"] = values["mirrors"] or {}
    # one entry per image, compared normalized; written two ways, it is probed if
    # any of its spellings would be, under that spelling
    images = {}
    for ref in (w.image for w in workloads):
        first = images.setdefault(ref, ref)
        if will_probe(ref, values["probe"]) and not will_probe(first, values["probe"]):
            del images[ref]
            images[ref] = ref
    order = list(dict.fromkeys(w.image for w in workloads))
    images = [images[ref] for ref in order]
    settings = Settings(workloads=workloads, listed=listed, images=images, **values)
    kubectl_only = [k for k in ("context", "kubeconfig") if payload.get(k) is not None]
    if settings.cluster_access == "api" and kubectl_only:
        raise PayloadError(
            "%s %s kubectl's, but cluster_access is api (the pod's service account, no"
            " kubeconfig)" % (" and ".join(kubectl_only), "is" if len(kubectl_only) == 1
                              else "are"),
            hint='leave them out, or use "cluster_access": "kubectl"')
    for ref in images:
        if settings.pin_digest and ref.digest is None and not will_probe(ref, settings.probe):
            raise PayloadError(
                "pin_digest needs the digest the registry probe sees, but %s is not probed (%s)"
                % (ref.text, "probe is never" if settings.probe == "never" else "a local image"),
                hint='set "probe": "always", or give the image as name:tag@sha256:...')
    return settings


# -- the payload as key=value lines (NoETL's rendered workload) ------------------------

_LINES_KEYS = tuple(k.name for k in PAYLOAD_KEYS) + ("script",)
_UNRENDERED_RE = re.compile(r"\{\{ ?(?:workload\.)?([A-Za-z_][A-Za-z0-9_]*) ?\}\}")
_COMMENTED_RE = re.compile(r"\{# (.*) #\}", re.S)
_UNRENDERED_B64_RE = re.compile(
    r"\{\{ ?(?:workload\.)?([A-Za-z_][A-Za-z0-9_]*) ?\| ?b64encode ?\}\}")
_B64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def parse_payload_lines(text):
    """A payload dict from ``key=value`` lines, the form a NoETL shell step renders
    (``--payload-lines``; see README's NoETL section).

    Two forms.  Version 2's: every payload key and ``script`` exactly once, in any
    order, and nothing else.  The playbook's (version 3): every key twice, once as
    ``KEY={# {{ workload.KEY }} #}`` and once as ``KEY_b64={{ workload.KEY |
    b64encode }}``, because NoETL's two runtimes render them differently: the local
    runtime substitutes the first as text (the value between ``{# `` and `` #}``)
    and leaves the filter line unrendered; the production runtime drops the
    comment and renders the filter (the value in base64, so that nothing in the
    command holds ``{{`` or ``{%`` and the worker's second template pass never
    evaluates a value).  When both carry a value they must agree, or the run stops
    (exit 2): some template pass changed it.  Either way a value that carries a
    line break cannot add, repeat or drop a key.

    An empty value, or an unrendered one, means "not given"; so do ``null`` and
    ``None`` except from base64 for a key whose value is text (a namespace may be
    named ``null``).  Values are typed by their key: numbers and booleans from their
    text (``12``, ``2.5``, ``true``/``True``), lists and objects as JSON or as
    Python literals (what Jinja renders); the payload's usual rules then apply.
    ``script`` (the playbook's path of this tool) is checked as a path and
    otherwise ignored.
    """
    given = {}
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    names = _LINES_KEYS + tuple(k + "_b64" for k in _LINES_KEYS)
    for number, line in enumerate(lines, 1):
        name, sep, raw = line.partition("=")
        where = "line %d of the payload lines" % number
        if not sep or name not in names:
            raise PayloadError("%s is not KEY=VALUE with a payload key: %s"
                               % (where, json.dumps(line[:60])),
                               hint=_did_you_mean(name, names) if sep else None)
        if name in given:
            raise PayloadError("%s repeats %s: a value may hold a line break"
                               % (where, name))
        if _CONTROL_RE.search(raw):
            raise PayloadError("%s: the value of %s holds a control character"
                               % (where, name))
        given[name] = raw
    both = any(name.endswith("_b64") for name in given)
    missing = [n for n in (names if both else _LINES_KEYS) if n not in given]
    if missing:
        raise PayloadError("the payload lines lack %s (every key is given, empty when"
                           " unset: a value with a line break may have cut them off)"
                           % ", ".join(missing))
    payload = {}
    for name in _LINES_KEYS:
        text, exact = _line_text(name, given[name], given.get(name + "_b64"))
        value = _line_value(KEYS_BY_NAME.get(name), text, exact)
        if value is not None:
            payload[name] = value
    script = payload.pop("script", None)
    if script is not None:
        _check_path(Key("script", "path", "this tool"), script)
    return payload


def _line_text(name, raw, b64):
    """One key's text from its two renderings (see ``parse_payload_lines``):
    ``(text or None, exact)``, ``exact`` when it came through base64."""
    commented = _COMMENTED_RE.fullmatch(raw)
    if commented:
        raw = commented.group(1)
    unrendered = _UNRENDERED_RE.fullmatch(raw)
    if raw == "" or (unrendered and unrendered.group(1) == name):
        raw = None
    decoded = None
    if b64 is not None and b64 != "":
        filtered = _UNRENDERED_B64_RE.fullmatch(b64)
        if not (filtered and filtered.group(1) == name):
            if not _B64_RE.fullmatch(b64) or len(b64) % 4:
                raise PayloadError("%s_b64 is not base64: a template pass changed the"
                                   " payload lines" % name)
            try:
                decoded = base64.b64decode(b64, validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                raise PayloadError("%s_b64 is not base64 of UTF-8 text" % name)
            if _CONTROL_RE.search(decoded):
                raise PayloadError("the value of %s holds a control character" % name)
    if decoded is not None:
        if raw is not None and raw != decoded:
            raise PayloadError(
                "the two renderings of %s disagree (%s and, in base64, %s): a template"
                " pass changed the value; refusing to guess"
                % (name, json.dumps(raw[:60]), json.dumps(decoded[:60])))
        return decoded, True
    return raw, False


def _line_value(key, raw, exact=False):
    """One line's value, typed by its key (see ``parse_payload_lines``)."""
    if raw is None:
        return None
    unrendered = _UNRENDERED_RE.fullmatch(raw)
    textual = key is None or key.kind not in ("integer", "number", "boolean", "workloads",
                                              "images", "mirrors")
    if raw == "" or (unrendered and key is not None and unrendered.group(1) == key.name):
        return None
    if raw in ("null", "None") and not (exact and textual):
        return None
    if textual:
        return raw
    if key.kind == "boolean":
        return {"true": True, "false": False}.get(raw.lower(), raw)
    for parse in (_strict_json, ast.literal_eval):
        try:
            return parse(raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError,
                PayloadError):
            continue
    return raw


def _strict_json(text):
    return json.loads(text, object_pairs_hook=_reject_duplicates,
                      parse_constant=_reject_constant)


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
    ``unavailable``), the attempts spent, the digest, an error (``{"code",
    "message"}``) when unavailable, the image, and the platforms it provides
    (``[(os, arch, variant)]``; None when not learned) with the digests of its
    per-platform manifests (what a runtime may report as a pod's ``imageID``)."""

    status: str
    attempts: int = 0
    digest: str = None             # or None
    error: dict = None             # or None
    image: str = None              # the image's reference as the payload wrote it
    platforms: list = None         # [(os, arch, variant)], or None: not learned
    manifests: list = field(default_factory=list)   # per-platform manifest digests

    def event(self):
        """The ``probe`` output line."""
        return {"event": "probe", "image": self.image, "status": self.status,
                "attempts": self.attempts, "digest": self.digest, "error": self.error,
                "platforms": None if self.platforms is None else [
                    platform_text(p) for p in self.platforms]}


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
    domain = ref.domain.lower()
    if domain in mirrors:
        return mirrors[domain]
    if domain == "docker.io":
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


@dataclass
class Credentials:
    """What the Docker config holds for one host: a user and password, or an
    identity token (an OAuth2 refresh token, as ``docker login`` stores for
    registries that issue them)."""

    user: str = None
    password: str = None
    identity_token: str = None


def docker_credentials(host, env, log):
    """``Credentials`` for ``host`` from the Docker config, or None.

    Reads ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``; entries with
    ``identitytoken``, ``auth`` (base64 user:password) or ``username``/``password``;
    keys may be URLs.  Credential helpers (``credsStore``) are not run; ``log`` says so.
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
        token = entry.get("identitytoken")
        if isinstance(token, str) and token and not _CONTROL_RE.search(token):
            return Credentials(identity_token=token)
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return Credentials(entry["username"], entry["password"])
        if isinstance(entry.get("auth"), str):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            if user:
                return Credentials(user, password)
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

    def expire_all(self):
        """Shut down every request's sockets (an interrupt)."""
        with self._lock:
            lists = list(self._by_thread.values())
        for sockets in lists:
            _expire(sockets, [])


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
    import ssl  # HTTP/TLS stack: loaded only for a probe
    import urllib.request
    env = os.environ if env is None else env
    if ssl_context is None:     # one context (and one load of the CA store) per opener
        ssl_context = ssl.create_default_context()
    plain, tls = _watched_handlers()
    sockets = SocketRegistry()
    opener = urllib.request.build_opener(_redirect_handler()(), _proxy_handler()(env),
                                         plain(sockets), tls(sockets, ssl_context))
    opener.sockets = sockets
    return opener


_PROBE_STOPS = ("interrupted", "deadline_exceeded")   # outcomes that end a probe early


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


def _read_bounded(fh, clock, deadline, limit=BODY_LIMIT):
    """Read at most ``limit`` bytes (one more tells that there were more), giving up
    at ``deadline`` (the socket time-out bounds each read; the deadline, and the
    request's watchdog, bound a trickle)."""
    chunks, size = [], 0
    read = getattr(fh, "read1", None) or fh.read     # read1: at most one recv per call
    while size <= limit:
        chunk = read(min(65536, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if clock() > deadline:
            raise TimeoutError("body not read in time")
    return b"".join(chunks)


class _Opening:
    """One ``opener.open`` running in a thread of its own (see ``_open``)."""

    def __init__(self):
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.sockets = []
        self.response = None
        self.error = None
        self.abandoned = False


def _open(opener, req, timeout, stopped=None):
    """``opener.open(req)``, given up after ``timeout`` seconds or once ``stopped()``
    is true: name resolution (``getaddrinfo`` cannot be interrupted), connect, TLS
    and the answer's headers all count.  It runs in a thread that is abandoned
    when time is up (its sockets are shut down; a late answer is closed).  Returns
    ``(response, sockets)``; raises what ``open`` raised, or ``TimeoutError``."""
    registry = getattr(opener, "sockets", None)
    opening = _Opening()

    def run():
        if registry is not None:
            opening.sockets = registry.start()
        try:
            response = opener.open(req, timeout=timeout)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller as is
            opening.error = exc
        else:
            with opening.lock:
                opening.response = response
                late = opening.abandoned
            if late:
                _close_quietly(response)
        finally:
            opening.done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    until = time.monotonic() + timeout
    while not opening.done.wait(min(_POLL, max(0.0, until - time.monotonic()))):
        if time.monotonic() >= until or (stopped is not None and stopped()):
            with opening.lock:
                opening.abandoned = True
                response = opening.response
            if response is None:
                _expire(opening.sockets, [])
                raise TimeoutError("no answer in time")
            break
    if opening.error is not None:
        raise opening.error
    return opening.response, opening.sockets


def http_call(opener, clock, method, url, headers, *, auth=None, data=None,
              timeout=HTTP_TIMEOUT, cut=False, read_body=False, error_body=False,
              body_limit=BODY_LIMIT, host=None, too_large="registry_error", stopped=None):
    """One HTTP request whose whole duration is bounded by ``timeout``: resolving,
    connecting, TLS, the headers (``_open``) and the body (a watchdog shuts the
    sockets down when time is up; ``_read_bounded``).  ``Authorization`` goes to
    the request's own origin only.  The body is read when ``read_body`` and the
    status is 200, or for any status with ``error_body``, up to ``body_limit``
    bytes.  Returns a ``_Response``; raises ``_AttemptFailed`` with the outcome:
    a transport error as ``classify_transport_error`` names it, or
    ``deadline_exceeded`` when ``cut`` (the timeout is what was left of the run's
    deadline) and the time ran out."""
    import http.client  # HTTP/TLS stack: loaded only for a request
    import urllib.error
    import urllib.request
    host = host or urlsplit(url).netloc
    # callers validate the URL as http(s); the path is built from checked parts
    req = urllib.request.Request(url, data=data, method=method, headers=dict(  # noqa: S310
        headers, **{"User-Agent": "bump_image/" + __version__}))
    if auth:
        req.add_unredirected_header("Authorization", auth)
    deadline = clock() + timeout
    expired, watchdog, sockets = [], None, []
    try:
        try:
            try:
                resp, sockets = _open(opener, req, timeout, stopped)
            except urllib.error.HTTPError as err:
                if 300 <= err.code < 400:
                    _close_quietly(err)
                    raise _AttemptFailed(_Outcome(
                        "registry_error", "%s redirected and the redirect was not followed: %s"
                        % (host, err.msg), retryable=False))
                resp = err
            # the rest of the request's deadline: when it passes, the watchdog shuts
            # the request's sockets down, which ends any read that is still waiting
            left = deadline - clock()
            if left <= 0 and not expired:
                _expire(sockets, expired)
            elif sockets:
                watchdog = threading.Timer(left, _expire, (sockets, expired))
                watchdog.daemon = True
                watchdog.start()
            try:
                status = resp.getcode() if hasattr(resp, "getcode") else resp.status
                if expired or clock() > deadline:
                    # headers cut short by the deadline: http.client may still have
                    # made a response of what came (a 200 with half its headers)
                    raise TimeoutError("the answer's headers did not arrive in time")
                body = b""
                if (read_body and status == 200) or error_body:
                    body = _read_bounded(resp, clock, deadline, body_limit)
                    if expired:
                        raise TimeoutError("the body was not read in time")
                    if len(body) > body_limit:
                        if read_body and status == 200:
                            raise _AttemptFailed(_Outcome(
                                too_large, "the answer of %s is larger than %d bytes"
                                % (host, body_limit)))
                        body = body[:body_limit]
                return _Response(status, resp.headers, body)
            finally:
                _close_quietly(resp)
        except _AttemptFailed:
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            timed_out = bool(expired) or isinstance(exc, TimeoutError) or isinstance(
                getattr(exc, "reason", None), TimeoutError)
            if cut and timed_out:
                raise _AttemptFailed(_Outcome("deadline_exceeded", "the run's deadline came"
                                              " before %s answered" % host, retryable=False))
            error = TimeoutError("the request did not finish in time") if expired else exc
            raise _AttemptFailed(classify_transport_error(error, host, timeout))
    finally:
        if watchdog is not None:
            watchdog.cancel()


class RegistryProbe:
    """Probe one image until its manifest is visible (the contract's probe rules).

    The handshake, per attempt:
      1. HEAD the manifest, with the pull token when one is held and still valid;
      2. a 401 with a Bearer challenge: fetch a token from its realm (credentials
         for the contacted host from the Docker config, when there are any: Basic
         for a user and password, the refresh-token grant for an identity token)
         and HEAD again at once, still the same attempt;
      3. judge the answer: 200 available; 404, 401/403, 429, 5xx, time-outs and
         network errors are retried after the sleep (or ``Retry-After``); anything
         else gives up at once;
      4. when the digest is needed (``pin_digest``) and the 200 carried no
         ``Docker-Content-Digest``: GET the manifest (bounded) and take its sha256.
    A token serves every attempt until it expires or the registry refuses it.
    Attempts, sleeps and requests end at ``deadline`` (a ``clock()`` value, or
    None); ``stopped()`` true ends the probe before its next attempt.
    """

    def __init__(self, ref, settings, opener, sleeper, clock, env, log,
                 timeout=HTTP_TIMEOUT, deadline=None, stopped=None):
        self.ref = ref
        self.attempts_allowed = settings.probe_attempts
        self.sleep_seconds = settings.probe_sleep
        self.need_digest = settings.pin_digest and ref.digest is None
        self.want_platforms = settings.check_platforms != "never"
        self.auth = None        # the Authorization that the last answer accepted
        self.timeout = timeout
        self.opener = opener
        self.sleeper = sleeper
        self.clock = clock
        self.env = env
        self.log = log
        self.deadline = deadline
        self.stopped = stopped or (lambda: False)
        self.base = registry_endpoint(ref, settings.mirrors)
        self.host = urlsplit(self.base).netloc
        self.token = None       # (value, expires_at)
        self._creds = False     # not looked up yet
        self.attempts = 0       # attempts answered so far (reported after an interrupt)

    @property
    def url(self):
        return "%s/v2/%s/manifests/%s" % (self.base, self.ref.path,
                                          self.ref.digest or self.ref.tag)

    def _left(self):
        """Seconds left before the run's deadline (None: no deadline)."""
        return None if self.deadline is None else self.deadline - self.clock()

    def run(self):
        """Probe up to ``ghcr_probe_attempts`` times; return a ``ProbeResult``."""
        n, text = self.attempts_allowed, self.ref.text
        outcome = None
        for attempt in range(1, n + 1):
            outcome = self._stop() or self.attempt()
            if outcome.code in _PROBE_STOPS:
                break
            self.attempts = attempt
            if outcome.ok:
                self.log("probe %s: available%s (attempt %d/%d)" % (
                    text, " as " + outcome.digest if outcome.digest else "", attempt, n))
                result = ProbeResult("available", attempt, outcome.digest, image=text)
                if self.want_platforms:
                    result.platforms, result.manifests = self.learn_platforms(outcome.digest)
                return result
            if not outcome.retryable or attempt == n:
                break
            wait = self.sleep_seconds
            if outcome.retry_after is not None:
                wait = min(outcome.retry_after, RETRY_AFTER_CAP)
            left = self._left()
            if left is not None:
                wait = max(0.0, min(wait, left))
            self.log("probe %s: attempt %d/%d: %s: %s; next in %g s" % (
                text, attempt, n, outcome.code, outcome.message, wait))
            if wait > 0:
                self.sleeper(wait)
        plural = "" if self.attempts == 1 else "s"
        if outcome.code in _PROBE_STOPS:
            why = "after %d attempt%s" % (self.attempts, plural)
        elif not outcome.retryable:
            why = "not retried"
        else:
            why = "gave up after %d attempt%s" % (self.attempts, plural)
        message = "%s (%s)" % (outcome.message, why)
        self.log("probe %s: %s" % (text, message))
        return ProbeResult("unavailable", self.attempts, None,
                           {"code": outcome.code, "message": message}, image=text)

    def _stop(self):
        """An outcome that ends the probe before its next attempt, or None."""
        if self.stopped():
            return _Outcome("interrupted", "interrupted", retryable=False)
        left = self._left()
        if left is not None and left <= 0:
            return _Outcome("deadline_exceeded", "the run's deadline passed before %s was seen"
                            % self.ref.text, retryable=False)
        return None

    # -- one attempt ---------------------------------------------------------

    def attempt(self):
        try:
            token = self._valid_token()
            resp, auth = self._manifest("HEAD", token)
            if resp.status == 401:
                if token is not None:
                    self.token = None           # refused: never send it again
                resp, auth = self._answer_challenge(resp)
            elif resp.status == 403 and token is not None:
                self.token = None
            outcome = judge_status(resp.status, resp.headers, self.ref)
            if outcome.code in ("unauthorized", "denied"):
                outcome.message += "; credentials are looked up for %s in %s (%s)" % (
                    self.host, docker_config_path(self.env),
                    "found" if self._credentials() else "none there")
            if outcome.ok:
                self.auth = auth
            if outcome.ok and not outcome.digest and self.need_digest:
                outcome.digest = self._digest_of_manifest(auth)
            return outcome
        except _AttemptFailed as failed:
            return failed.outcome

    def _answer_challenge(self, resp):
        challenges = parse_challenges(resp.headers.get_all("WWW-Authenticate") or [])
        schemes = dict(challenges)
        if "bearer" in schemes:
            resp, auth = self._manifest("HEAD", self._fetch_token(schemes["bearer"]))
            if resp.status in (401, 403):
                self.token = None               # a fresh token refused: drop it too
            return resp, auth
        if "basic" in schemes:
            creds = self._credentials()
            if creds is None or creds.user is None:
                raise _AttemptFailed(_Outcome(
                    "unauthorized", "%s asks for Basic credentials and the Docker config has"
                    " none for it" % self.host))
            return self._manifest("HEAD", None, basic=creds)
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

    def _manifest(self, method, token, basic=None):
        """HEAD or GET the manifest; returns ``(response, the Authorization sent)``."""
        auth = None
        if token:
            auth = "Bearer " + token
        elif basic:
            auth = _basic_auth(basic.user, basic.password)
        return self._request(method, self.url, {"Accept": MANIFEST_ACCEPT}, auth,
                             read_body=method == "GET", too_large="digest_unknown"), auth

    def _digest_of_manifest(self, auth):
        """The sha256 of the manifest's bytes (the registry sent no digest header)."""
        import hashlib  # HTTP stack: only for a registry that sends no digest
        resp = self._request("GET", self.url, {"Accept": MANIFEST_ACCEPT}, auth,
                             read_body=True, too_large="digest_unknown")
        if resp.status != 200:
            raise _AttemptFailed(_Outcome(
                "digest_unknown", "the registry sent no Docker-Content-Digest and answered %d"
                " to GET the manifest" % resp.status))
        digest = (resp.headers.get("Docker-Content-Digest") or "").strip()
        if not is_digest(digest):
            digest = "sha256:" + hashlib.sha256(resp.body).hexdigest()
        self.log("probe %s: no Docker-Content-Digest on HEAD; the manifest's sha256 is %s"
                 % (self.ref.text, digest))
        return digest

    # -- the image's platforms -------------------------------------------------

    def learn_platforms(self, digest):
        """The platforms the image provides and its per-platform manifests' digests,
        read with bounded GETs after the probe saw it: the manifest (by the digest the
        probe saw), an index's nested indexes (two levels at most), or a single
        manifest's config blob (a redirect to storage is followed without
        ``Authorization``).  ``(None, [])`` when they cannot be learned (logged)."""
        requests = {"count": 0, "bytes": 0}
        try:
            reference = digest or self.ref.digest or self.ref.tag
            body, media = self._get_json(self._url("manifests", reference), requests)
            platforms, manifests = [], []
            pending = [(body, media, 0)]
            while pending:
                doc, media, depth = pending.pop(0)
                if media in MEDIA_INDEXES or "manifests" in doc:
                    found, nested = index_entries(doc)
                    platforms += [p for p in found if p not in platforms]
                    manifests += [e.get("digest") for e in doc.get("manifests") or []
                                  if isinstance(e, dict) and e.get("mediaType")
                                  in MEDIA_MANIFESTS and is_digest(str(e.get("digest")))]
                    if depth < 2:
                        for child in nested[:8]:
                            pending.append(self._get_json(self._url("manifests", child),
                                                          requests) + (depth + 1,))
                    continue
                config = (doc.get("config") or {}).get("digest")
                if not is_digest(str(config or "")):
                    raise _AttemptFailed(_Outcome("platforms_unknown", "the manifest names no"
                                                  " config blob"))
                blob, _ = self._get_json(self._url("blobs", config), requests)
                found = normalize_platform(blob.get("os"), blob.get("architecture"),
                                           blob.get("variant"))
                if found[0] and found[1] and found not in platforms:
                    platforms.append(found)
        except _AttemptFailed as failed:
            self.log("probe %s: cannot learn its platforms: %s" % (self.ref.text,
                                                                   failed.outcome.message))
            return None, []
        self.log("probe %s: provides %s (%d GET%s, %d bytes)" % (
            self.ref.text, ", ".join(platform_text(p) for p in platforms) or "no platform",
            requests["count"], "" if requests["count"] == 1 else "s", requests["bytes"]))
        return platforms, manifests

    def _url(self, kind, reference):
        return "%s/v2/%s/%s/%s" % (self.base, self.ref.path, kind, reference)

    def _get_json(self, url, requests):
        """GET a manifest or blob (bounded) as JSON: ``(document, media type)``."""
        resp = self._request("GET", url, {"Accept": MANIFEST_ACCEPT}, self.auth,
                             read_body=True, too_large="platforms_unknown")
        requests["count"] += 1
        requests["bytes"] += len(resp.body)
        if resp.status != 200:
            raise _AttemptFailed(_Outcome("platforms_unknown", "%s answered %d to GET %s"
                                          % (self.host, resp.status, urlsplit(url).path)))
        try:
            doc = json.loads(resp.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            doc = None
        if not isinstance(doc, dict):
            raise _AttemptFailed(_Outcome("platforms_unknown", "GET %s answered something"
                                          " that is not a JSON object" % urlsplit(url).path))
        media = doc.get("mediaType") or (resp.headers.get("Content-Type") or "").split(";")[0]
        return doc, media.strip()

    def _fetch_token(self, params):
        """Exchange a Bearer challenge for a pull token (Docker token protocol; the
        OAuth2 refresh-token grant when the Docker config holds an identity token)."""
        realm = params.get("realm") or ""
        parts, _ = _split_http_url(realm)
        if parts is None:
            raise _AttemptFailed(_Outcome("token_failed", "the Bearer challenge of %s has no"
                                          " usable realm: %r" % (self.host, realm[:200])))
        query = {}
        if params.get("service"):
            query["service"] = params["service"]
        query["scope"] = params.get("scope") or "repository:%s:pull" % self.ref.path
        creds = self._credentials()
        if creds is not None and not (parts.scheme == "https" or _is_loopback(parts.hostname)):
            self.log("not sending credentials for %s to the plain-http token realm %s"
                     % (self.host, parts.netloc))
            creds = None
        if creds is not None and creds.identity_token:
            form = dict(query, grant_type="refresh_token", client_id="bump_image",
                        refresh_token=creds.identity_token)
            resp = self._request("POST", realm, {
                "Accept": "application/json",
                "Content-Type": "application/x-www-form-urlencoded"}, None, read_body=True,
                host=parts.netloc, data=urlencode(form).encode("ascii"))
        else:
            auth = _basic_auth(creds.user, creds.password) if creds is not None else None
            url = realm + ("&" if parts.query else "?") + urlencode(query)
            resp = self._request("GET", url, {"Accept": "application/json"}, auth,
                                 read_body=True, host=parts.netloc)
        if resp.status == 429:
            raise _AttemptFailed(_Outcome(
                "rate_limited", "token endpoint %s answered 429 Too Many Requests"
                % parts.netloc, retry_after=parse_retry_after(resp.headers.get("Retry-After"))))
        if resp.status != 200:
            what = "rejected the credentials for %s" % self.host if (
                creds is not None and resp.status in (401, 403)) else "answered %d" % resp.status
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
                or lifetime != lifetime or lifetime < TOKEN_MIN_LIFETIME:
            lifetime = TOKEN_MIN_LIFETIME
        lifetime = min(lifetime, TOKEN_MAX_LIFETIME)
        self.token = (token, self.clock() + lifetime - 5)
        return token

    def _request(self, method, url, headers, auth, read_body=False, host=None, data=None,
                 too_large="token_failed"):
        timeout, left = self.timeout, self._left()
        cut = left is not None and left < timeout
        if cut:
            timeout = max(0.1, left)
        return http_call(self.opener, self.clock, method, url, headers, auth=auth, data=data,
                         timeout=timeout, cut=cut, read_body=read_body,
                         host=host or self.host, too_large=too_large, stopped=self.stopped)


def _close_quietly(resp):
    try:
        resp.close()
    except Exception:  # noqa: S110 - a response that cannot close has nothing left to leak
        pass


# --------------------------------------------------------------------------
# 7. Workloads: pure decisions
# --------------------------------------------------------------------------


def _meta(obj):
    return obj.get("metadata") or {}


def _annotations(obj):
    return _meta(obj).get("annotations") or {}


def _conditions(obj):
    return {c.get("type"): c for c in ((obj.get("status") or {}).get("conditions") or [])
            if isinstance(c, dict)}


def _pod_template(obj):
    return (obj.get("spec") or {}).get("template") or {}


def _update_strategy(obj):
    """``RollingUpdate`` or ``OnDelete`` (a Deployment's strategy is never OnDelete)."""
    spec = obj.get("spec") or {}
    return (spec.get("updateStrategy") or {}).get("type") or "RollingUpdate"


@dataclass
class Plan:
    """What to do with one workload: which containers, and which need the image."""

    containers: list               # [name] checked or updated
    changes: list                  # [(list key, name)] to set
    previous: dict                 # {name: image} of the chosen containers before the run
    admitted: list = field(default_factory=list)   # [name] at the target plus a digest

    @property
    def at_target(self):
        return not self.changes

    @property
    def previous_image(self):
        """The first chosen container's image before the run."""
        return self.previous[self.containers[0]]


def _container_entries(obj):
    pod = _pod_template(obj).get("spec") or {}
    return ([("containers", c) for c in pod.get("containers") or [] if isinstance(c, dict)]
            + [("initContainers", c) for c in pod.get("initContainers") or []
               if isinstance(c, dict)])


def _names(entries, key):
    return ", ".join(str(c.get("name")) for k, c in entries if k == key) or "none"


def plan_containers(obj, workload, target, container=None, digest=None):
    """Choose the containers to update and compare their images (pure); raise
    ``ContainerNotFound`` or ``ContainerAmbiguous``.  ``digest`` is what the probe
    of the target saw (None when it was not probed), for ``image_matches``.

    In this order: the payload's ``container`` (regular or init); every container
    and init container whose repository is the target's; the container named by
    the ``kubectl.kubernetes.io/default-container`` annotation (on the pod
    template, or on the workload); the only regular container.  Never "the first".
    """
    what = '%s "%s"' % (workload.title, workload.name)
    entries = _container_entries(obj)
    listing = "containers: %s%s" % (_names(entries, "containers"), (
        "; init containers: " + _names(entries, "initContainers"))
        if any(k == "initContainers" for k, _ in entries) else "")
    if container is not None:
        chosen = [e for e in entries if e[1].get("name") == container]
        if not chosen:
            raise ContainerNotFound('%s has no container "%s" (%s)' % (what, container, listing))
    else:
        chosen = [e for e in entries if _same_repository(e[1].get("image"), target)]
        named = (_annotations(_pod_template(obj)).get(DEFAULT_CONTAINER)
                 or _annotations(obj).get(DEFAULT_CONTAINER))
        if not chosen and named:
            chosen = [e for e in entries if e[1].get("name") == named]
        regular = [e for e in entries if e[0] == "containers"]
        if not chosen and len(regular) == 1:
            chosen = regular
        if not chosen:
            if not entries:
                raise ContainerNotFound("%s has no containers" % what)
            raise ContainerAmbiguous(
                "%s has %d containers (%s), none runs %s%s: not changed; name the one to"
                ' update with "container", or annotate the pod template with %s'
                % (what, len(regular), listing, target.name, (
                    ' and its %s annotation names "%s", which it does not have'
                    % (DEFAULT_CONTAINER, named)) if named else "", DEFAULT_CONTAINER))
    changes = [(k, c.get("name")) for k, c in chosen
               if not image_matches(c.get("image"), target, digest)]
    admitted = [c.get("name") for k, c in chosen if (k, c.get("name")) not in changes
                and not _at_target(c.get("image"), target)]
    return Plan([c.get("name") for _, c in chosen], changes,
                {c.get("name"): c.get("image") for _, c in chosen}, admitted)


def _same_repository(image, target):
    ref = parse_image_or_none(image) if isinstance(image, str) else None
    return ref is not None and ref.name == target.name


def _at_target(image, target):
    if not isinstance(image, str):
        return False
    ref = parse_image_or_none(image)
    return target.same_image(ref) if ref is not None else image == target.text


def image_matches(have, target, digest=None):
    """Is a container set to ``have`` (text) at ``target`` (an ``ImageRef``)? (pure)

    The same normalized reference; or ``have`` is the target's tag plus a digest
    where the target names none: a mutating admission (Kyverno ``verifyImages``
    with ``mutateDigest``, common in clusters that sign images) pins every
    ``repo:tag`` to ``repo:tag@sha256:…``.  That is the target when the digest is
    the one the probe saw, or when the image was not probed (``digest`` None:
    the caller says it is unchecked).
    """
    if _at_target(have, target):
        return True
    ref = parse_image_or_none(have) if isinstance(have, str) else None
    return (ref is not None and target.digest is None and ref.digest is not None
            and ref.tag is not None and ref.name == target.name
            and ref.tag == (target.tag or "latest") and digest in (None, ref.digest))


def build_patch(plan, image, cause):
    """The strategic merge patch: the new image on each changed container, and
    the change-cause annotation, in one request."""
    spec = {}
    for key, name in plan.changes:
        spec.setdefault(key, []).append({"name": name, "image": image})
    return {"metadata": {"annotations": {CHANGE_CAUSE: cause}},
            "spec": {"template": {"spec": spec}}}


# -- rollout verdicts: kubectl's status viewers as pure functions -------------------

def _deployment_verdict(obj, name, spec, status):
    progressing = _conditions(obj).get("Progressing") or {}
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return False, 'deployment "%s" exceeded its progress deadline' % name, True
    want, updated = spec.get("replicas"), status.get("updatedReplicas") or 0
    total, available = status.get("replicas") or 0, status.get("availableReplicas") or 0
    waiting = 'Waiting for deployment "%s" rollout to finish: ' % name
    if want is not None and updated < want:
        return False, waiting + "%d out of %d new replicas have been updated..." % (
            updated, want), False
    if total > updated:
        return False, waiting + "%d old replicas are pending termination..." % (
            total - updated), False
    if available < updated:
        return False, waiting + "%d of %d updated replicas are available..." % (
            available, updated), False
    return True, 'deployment "%s" successfully rolled out' % name, False


def _statefulset_verdict(obj, name, spec, status):
    want, ready = spec.get("replicas"), status.get("readyReplicas") or 0
    updated = status.get("updatedReplicas") or 0
    if want is not None and ready < want:
        return False, "Waiting for %d pods to be ready..." % (want - ready), False
    rolling = spec.get("updateStrategy") or {}
    if rolling.get("rollingUpdate") is not None:
        partition = rolling["rollingUpdate"].get("partition")
        if want is not None and partition is not None and updated < want - partition:
            return False, ("Waiting for partitioned roll out to finish: %d out of %d new pods"
                           " have been updated..." % (updated, want - partition)), False
        return True, "partitioned roll out complete: %d new pods have been updated..." % (
            updated), False
    if status.get("updateRevision") != status.get("currentRevision"):
        return False, ("waiting for statefulset rolling update to complete %d pods at revision"
                       " %s..." % (updated, status.get("updateRevision"))), False
    return True, "statefulset rolling update complete %d pods at revision %s..." % (
        status.get("currentReplicas") or 0, status.get("currentRevision")), False


def _daemonset_verdict(obj, name, spec, status):
    desired = status.get("desiredNumberScheduled") or 0
    waiting = 'Waiting for daemon set "%s" rollout to finish: ' % name
    if (status.get("updatedNumberScheduled") or 0) < desired:
        return False, waiting + "%d out of %d new pods have been updated..." % (
            status.get("updatedNumberScheduled") or 0, desired), False
    if (status.get("numberAvailable") or 0) < desired:
        return False, waiting + "%d of %d updated pods are available..." % (
            status.get("numberAvailable") or 0, desired), False
    return True, 'daemon set "%s" successfully rolled out' % name, False


def progress_deadline_mark(obj):
    """A Deployment's ``ProgressDeadlineExceeded`` condition as a comparable mark
    (its times and message), or None when it has none (pure)."""
    progressing = _conditions(obj).get("Progressing") or {}
    if progressing.get("reason") != "ProgressDeadlineExceeded":
        return None
    return (progressing.get("lastUpdateTime"), progressing.get("lastTransitionTime"),
            progressing.get("message"))


def without_progress_deadline(obj):
    """``obj`` without its ``ProgressDeadlineExceeded`` condition (a shallow copy)."""
    status = dict(obj.get("status") or {})
    status["conditions"] = [
        c for c in status.get("conditions") or []
        if not (isinstance(c, dict) and c.get("type") == "Progressing"
                and c.get("reason") == "ProgressDeadlineExceeded")]
    return dict(obj, status=status)


_VERDICTS = {"Deployment": _deployment_verdict, "StatefulSet": _statefulset_verdict,
             "DaemonSet": _daemonset_verdict}


def rollout_verdict(obj):
    """``(done, message, failed)`` for a Deployment, StatefulSet or DaemonSet, as
    ``kubectl rollout status`` judges it (its status viewers, as a ladder of
    guards): the spec not yet observed → waiting; a Deployment past its progress
    deadline → failed; then per kind: replicas updated, old ones gone, updated
    ones available (Deployment); pods ready and the partition's pods updated, or
    the update revision current (StatefulSet); pods updated and available
    (DaemonSet).  OnDelete workloads are the caller's: kubectl refuses them.
    """
    kind = obj.get("kind") or "Deployment"
    name = _meta(obj).get("name", "?")
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    generation = _meta(obj).get("generation") or 0
    observed = status.get("observedGeneration") or 0
    if observed < generation or (kind == "StatefulSet" and not observed):
        return False, "Waiting for %s spec update to be observed..." % {
            "Deployment": "deployment", "StatefulSet": "statefulset",
            "DaemonSet": "daemon set"}.get(kind, kind), False
    return _VERDICTS.get(kind, _deployment_verdict)(obj, name, spec, status)


# -- platforms: what an image provides, where a pod can run (pure) ---------------------

MEDIA_INDEXES = frozenset(("application/vnd.oci.image.index.v1+json",
                           "application/vnd.docker.distribution.manifest.list.v2+json"))
MEDIA_MANIFESTS = frozenset(("application/vnd.oci.image.manifest.v1+json",
                             "application/vnd.docker.distribution.manifest.v2+json"))
ATTESTATION = "attestation-manifest"
#: Tolerations every pod has (the DefaultTolerationSeconds admission plugin), and what the
#: DaemonSet controller adds to its pods (pkg/controller/daemon/util).
DEFAULT_TOLERATIONS = ({"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                        "effect": "NoExecute"},
                       {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                        "effect": "NoExecute"})
DAEMONSET_TOLERATIONS = DEFAULT_TOLERATIONS + tuple(
    {"key": "node.kubernetes.io/" + key, "operator": "Exists", "effect": "NoSchedule"}
    for key in ("disk-pressure", "memory-pressure", "pid-pressure", "unschedulable"))


def normalize_platform(os_name, arch, variant=None):
    """``(os, arch, variant or None)`` as containerd normalizes them (pure):
    ``aarch64`` is ``arm64`` (whose ``v8`` is no variant), ``x86_64`` is ``amd64``,
    ``armhf`` is ``arm/v7``, ``armel`` ``arm/v6``, a bare ``arm`` ``arm/v7``."""
    os_name = (os_name or "").lower() or None
    arch, variant = (arch or "").lower(), (variant or "").lower()
    if os_name == "macos":
        os_name = "darwin"
    if arch == "i386":
        arch, variant = "386", ""
    elif arch in ("x86_64", "x86-64", "amd64"):
        arch, variant = "amd64", "" if variant == "v1" else variant
    elif arch in ("aarch64", "arm64"):
        arch = "arm64"
        variant = {"8": "", "v8": "", "v8.0": "", "9": "v9", "9.0": "v9",
                   "v9.0": "v9"}.get(variant, variant)
    elif arch == "armhf":
        arch, variant = "arm", "v7"
    elif arch == "armel":
        arch, variant = "arm", "v6"
    elif arch == "arm":
        variant = {"": "v7", "7": "v7", "5": "v5", "6": "v6", "8": "v8"}.get(variant, variant)
    return os_name, arch or None, variant or None


def platform_text(platform):
    """``linux/arm/v7`` from ``("linux", "arm", "v7")``."""
    return "/".join(p for p in platform if p)


def index_entries(index):
    """The platforms an index's entries name, and the nested indexes to read (pure):
    ``([(os, arch, variant)], [digest])``.  Attestation entries (BuildKit's
    ``unknown/unknown`` with ``vnd.docker.reference.type: attestation-manifest``)
    and entries of unknown media types are not platforms."""
    platforms, nested = [], []
    for entry in (index or {}).get("manifests") or []:
        if not isinstance(entry, dict):
            continue
        media = entry.get("mediaType")
        if media in MEDIA_INDEXES:
            if is_digest(str(entry.get("digest") or "")):
                nested.append(entry["digest"])
            continue
        if media not in MEDIA_MANIFESTS:
            continue
        annotations = entry.get("annotations") or {}
        platform = entry.get("platform") or {}
        if annotations.get("vnd.docker.reference.type") == ATTESTATION or (
                platform.get("os") == "unknown" and platform.get("architecture") == "unknown"):
            continue
        found = normalize_platform(platform.get("os"), platform.get("architecture"),
                                   platform.get("variant"))
        if found[0] and found[1] and found not in platforms:
            platforms.append(found)
    return platforms, nested


def provides(platforms, wanted):
    """Does an image with ``platforms`` run where ``wanted`` (os, arch, variant) is?
    The os and arch must be equal; a variant missing on either side matches (pure)."""
    os_name, arch, variant = wanted
    return any(p[0] == os_name and p[1] == arch and (not p[2] or not variant or p[2] == variant)
               for p in platforms)


def node_platform(node):
    """A node's (os, arch, None) from its ``kubernetes.io/os`` and ``/arch`` labels
    (the beta labels, or ``status.nodeInfo``, when they are missing)."""
    labels = _meta(node).get("labels") or {}
    info = (node.get("status") or {}).get("nodeInfo") or {}
    os_name = (labels.get("kubernetes.io/os") or labels.get("beta.kubernetes.io/os")
               or info.get("operatingSystem"))
    arch = (labels.get("kubernetes.io/arch") or labels.get("beta.kubernetes.io/arch")
            or info.get("architecture"))
    found = normalize_platform(os_name, arch)
    return found[0], found[1], None     # nodes do not say their arm variant


def _requirement_holds(requirement, value):
    """One node selector requirement (``In``, ``NotIn``, ``Exists``, ``DoesNotExist``,
    ``Gt``, ``Lt``) against a label's value (None: no such label)."""
    op, values = requirement.get("operator"), requirement.get("values") or []
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt"):
        try:
            have, limit = int(value), int(values[0])
        except (TypeError, ValueError, IndexError):
            return False
        return have > limit if op == "Gt" else have < limit
    return False


def _term_matches(term, node):
    """A ``nodeSelectorTerm``: every expression (labels) and field (``metadata.name``)
    holds; a term with neither matches nothing (as the scheduler reads it)."""
    labels = _meta(node).get("labels") or {}
    fields = {"metadata.name": _meta(node).get("name")}
    exprs, field_exprs = term.get("matchExpressions") or [], term.get("matchFields") or []
    if not exprs and not field_exprs:
        return False
    return (all(_requirement_holds(r, labels.get(r.get("key"))) for r in exprs)
            and all(_requirement_holds(r, fields.get(r.get("key"))) for r in field_exprs))


def _tolerates(tolerations, taint):
    """Does a toleration of the list tolerate ``taint``? (Equal with key and value,
    Exists with key, Exists with no key tolerates all; an empty effect matches all.)"""
    for tol in tolerations:
        if tol.get("effect") and tol.get("effect") != taint.get("effect"):
            continue
        op = tol.get("operator") or "Equal"
        if op == "Exists" and not tol.get("key"):
            return True
        if tol.get("key") != taint.get("key"):
            continue
        if op == "Exists" or (tol.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def pod_fits_node(pod_spec, node, daemonset=False):
    """Can a pod of this template land on ``node``? (pure; the scheduler's rules that
    decide where an image must run): its ``nodeSelector``, its required node affinity
    (terms ORed, expressions ANDed), and every ``NoSchedule``/``NoExecute`` taint
    tolerated (by the pod's tolerations, the ones every pod gets, and for a DaemonSet
    the ones its controller adds).  A cordoned node takes no new pod but a
    DaemonSet's.  Returns ``(True, None)`` or ``(False, why)``."""
    pod_spec = pod_spec or {}
    labels = _meta(node).get("labels") or {}
    for key, value in (pod_spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False, "nodeSelector %s=%s" % (key, value)
    required = (((pod_spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms")
    if terms is not None and not any(_term_matches(t, node) for t in terms):
        return False, "required node affinity"
    tolerations = list(pod_spec.get("tolerations") or []) + list(
        DAEMONSET_TOLERATIONS if daemonset else DEFAULT_TOLERATIONS)
    taints = list((node.get("spec") or {}).get("taints") or [])
    if (node.get("spec") or {}).get("unschedulable"):
        taints.append({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"})
    for taint in taints:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and \
                not _tolerates(tolerations, taint):
            return False, "taint %s%s:%s" % (taint.get("key"), "=" + taint["value"]
                                             if taint.get("value") else "", taint["effect"])
    return True, None


def platform_refusal(image, platforms, template, nodes, daemonset=False):
    """The platform check of one workload (pure): None when every node its pods can
    land on runs a platform the image provides, else the message of
    ``platform_unsupported``, naming the missing platforms and one node, e.g.
    ``image X provides linux/amd64 only; node w2 is linux/arm64 (3 of 5 eligible
    nodes)``."""
    spec = (template or {}).get("spec") or {}
    eligible = [n for n in nodes if pod_fits_node(spec, n, daemonset)[0]]
    missing = [n for n in eligible if not provides(platforms, node_platform(n))]
    if not missing:
        return None
    lacking = list(dict.fromkeys(platform_text(node_platform(n)) for n in missing))
    offered = ", ".join(platform_text(p) for p in platforms) or "no platform"
    return "image %s provides %s%s; node %s is %s (%d of %d eligible node%s%s)" % (
        image, offered, " only" if platforms else "", _meta(missing[0]).get("name", "?"),
        platform_text(node_platform(missing[0])), len(missing), len(eligible),
        "" if len(eligible) == 1 else "s",
        "; missing: " + ", ".join(lacking) if len(lacking) > 1 else "")


# -- what to do with one workload --------------------------------------------------

@dataclass
class Decision:
    """What to do with one workload (``decide``'s answer).

    ``action``: ``skip`` (a default that is not there), ``refuse`` (an error with
    ``code`` and ``message``, nothing sent), ``unchanged``, ``wait`` (at the target,
    its rollout still running), ``plan`` (dry run: would change) or ``patch``
    (send ``plan``'s change, then wait for the rollout when ``wait`` is true; else
    it is ``changed`` with nothing to wait for, and ``note`` says why).  ``log`` is
    the progress line.
    """

    action: str
    code: str = None
    message: str = None
    plan: Plan = None
    wait: bool = False
    log: str = None
    note: str = None


def decide(workload, obj, target, container=None, dry_run=False, namespace=DEFAULT_NAMESPACE,
           listed=True, digest=None):
    """What to do with one workload (pure): the ``Workload``, its object as read
    (None when it is not there), the target ``ImageRef``, the payload's
    ``container`` (or None), whether this is a dry run, the namespace, and whether
    the payload listed it (a missing default is skipped).  Raises nothing: every
    problem is a ``refuse``.

    The ladder: not there → skip or ``not_found``; containers → ``plan_containers``
    (``container_not_found``, ``container_ambiguous``); at the target → unchanged
    (also scaled to zero, or OnDelete), waiting for an unfinished rollout, or the
    rollout's failure or pause; otherwise paused → ``deployment_paused``; dry run →
    plan; scaled to zero or OnDelete → patch without waiting; else patch and wait.
    """
    kind = workload.kind
    if obj is None:
        if listed:
            return Decision("refuse", "not_found", '%s "%s" not found in namespace "%s"'
                            % (workload.title, workload.name, namespace))
        return Decision("skip", log="%s: not found in namespace %s, skipped (a default)"
                        % (workload.key, namespace))
    try:
        plan = plan_containers(obj, workload, target, container, digest)
    except (ContainerNotFound, ContainerAmbiguous) as exc:
        return Decision("refuse", exc.code, exc.message)
    spec = obj.get("spec") or {}
    state = {"paused": kind == "deployment" and bool(spec.get("paused")),
             "scaled_to_zero": kind != "daemonset" and spec.get("replicas", 1) == 0,
             "on_delete": kind != "deployment" and _update_strategy(obj) == "OnDelete"}
    if plan.at_target:
        decision = _decide_at_target(workload, obj, plan, target, dry_run, **state)
        if plan.admitted and decision.log:
            decision.log += " (%s: the target's tag plus %s, pinned by an admission%s)" % (
                ", ".join(plan.admitted), "the probed digest" if digest else "a digest",
                "" if digest else "; the digest is unchecked: the image was not probed")
        return decision
    return _decide_change(workload, plan, target, dry_run, namespace, **state)


def _decide_at_target(workload, obj, plan, target, dry_run, paused, scaled_to_zero,
                      on_delete):
    """``decide`` for a workload already at the target: unchanged, or its unfinished
    rollout waited for, or refused when that rollout failed or is paused."""
    key = workload.key
    if scaled_to_zero or on_delete:
        why = "replicas: 0" if scaled_to_zero else "updateStrategy OnDelete, not waited for"
        return Decision("unchanged", plan=plan, log="%s: already at %s (%s)"
                        % (key, target.text, why))
    done, message, failed = rollout_verdict(obj)
    if done:
        return Decision("unchanged", plan=plan, log="%s: already at %s" % (key, target.text))
    if failed:
        return Decision("refuse", "rollout_failed", "already at the target, but its"
                        " rollout failed: " + message, plan)
    if paused:
        return Decision("refuse", "deployment_paused", "already at the target, but the"
                        " rollout is paused (kubectl rollout resume deployment/%s)"
                        % workload.name, plan)
    if dry_run:
        return Decision("unchanged", plan=plan, log="%s: at the target, rollout still in"
                        " progress (%s); dry run, not waiting" % (key, message))
    return Decision("wait", plan=plan, log="%s: already at the target; its rollout is not"
                    " complete, waiting (%s)" % (key, message))


def _decide_change(workload, plan, target, dry_run, namespace, paused, scaled_to_zero,
                   on_delete):
    """``decide`` for a workload that is not at the target: refused when paused,
    planned in a dry run, else patched (and waited for, unless nothing rolls it)."""
    key = workload.key
    if paused:
        return Decision("refuse", "deployment_paused", "the Deployment is paused; not changed"
                        " (resume it with kubectl rollout resume deployment/%s -n %s and run"
                        " again)" % (workload.name, namespace), plan)
    changes = ", ".join("%s=%s" % (n, target.text) for _, n in plan.changes)
    if dry_run:
        return Decision("plan", plan=plan, log="%s: would set %s (now %s)"
                        % (key, changes, plan.previous_image))
    log = "%s: setting %s (was %s)" % (key, changes, plan.previous_image)
    if scaled_to_zero:
        return Decision("patch", plan=plan, log=log, note="%s: spec.replicas is 0: the"
                        " template now names %s and no pod runs it; it will when scaled up"
                        " (nothing to wait for, verified: null)" % (key, target.text))
    if on_delete:
        return Decision("patch", plan=plan, log=log, note="%s: updateStrategy is OnDelete:"
                        " the template now names %s, and each pod takes it when it is deleted"
                        " (nothing to wait for, verified: null)" % (key, target.text))
    return Decision("patch", plan=plan, wait=True, log=log)


# -- the pods of a rollout: diagnosis and verification -------------------------------

def union_selector(selectors):
    """One label selector that every object matching any of ``selectors`` (each a
    ``matchLabels`` dict) matches, for a single narrowed read: the keys they all
    share, ``key=value`` or ``key in (v1,v2)``.  None when there is no such key
    (then the namespace is read whole).  It may match more; callers filter by owner.
    """
    if not selectors or not all(selectors):
        return None
    shared = set.intersection(*(set(s) for s in selectors))
    parts = []
    for key in sorted(shared):
        values = sorted({str(s[key]) for s in selectors})
        parts.append("%s=%s" % (key, values[0]) if len(values) == 1
                     else "%s in (%s)" % (key, ",".join(values)))
    return ",".join(parts) or None


def _owned_by(obj, uid):
    return any(ref.get("uid") == uid for ref in _meta(obj).get("ownerReferences") or [])


def _runs(template_or_pod, expected, digest=None):
    """True when a pod (or pod template) sets each container in ``expected``
    (``{name: image}``) to that image (``image_matches``: an admission may have
    pinned it to a digest)."""
    entries = {c.get("name"): c.get("image") for _, c in _container_entries(
        {"spec": {"template": template_or_pod}})}
    for name, image in expected.items():
        have, want = entries.get(name), parse_image_or_none(image)
        if not (have == image or (want is not None and image_matches(have, want, digest))):
            return False
    return True


def new_pods(uid, expected, replicasets, pods, digest=None):
    """The active pods of a workload's new revision (pure): owned by the workload
    (``uid``), directly or through a ReplicaSet it owns, whose spec sets each
    container of ``expected`` (``{name: image}``) to that image.  Terminating and
    completed pods are left out."""
    owners = {uid} | {_meta(rs).get("uid") for rs in replicasets if _owned_by(rs, uid)}
    return [p for p in pods
            if any(_owned_by(p, owner) for owner in owners) and _runs(p, expected, digest)
            and not _meta(p).get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]


def _ready(pod):
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _statuses(pod):
    status = pod.get("status") or {}
    return (list(status.get("initContainerStatuses") or [])
            + list(status.get("containerStatuses") or []))


def diagnose(workload_obj, uid, expected, replicasets, pods, digest=None):
    """Problems that stop a rollout (pure): ``[(key, message, immediate)]``, ``key``
    identifying a problem across reads.

    A container of the new revision's pods waiting in a reason such as
    ImagePullBackOff or CrashLoopBackOff, or a ``ReplicaFailure`` condition on the
    Deployment or its new ReplicaSet: the caller stops the wait once such a problem
    has lasted ``fail_fast_seconds``.  A Deployment past its progress deadline
    (when the read found it) stops it at once (``immediate``).
    """
    problems, failures = [], []
    if workload_obj is not None:
        done, message, failed = rollout_verdict(workload_obj)
        if failed:
            progressing = _conditions(workload_obj).get("Progressing") or {}
            problems.append(((uid, "deadline"), "ProgressDeadlineExceeded: %s" % (
                progressing.get("message") or message), True))
        failures.append(_conditions(workload_obj).get("ReplicaFailure"))
    failures += [_conditions(rs).get("ReplicaFailure") for rs in replicasets
                 if _owned_by(rs, uid) and _runs(_pod_template(rs), expected, digest)]
    failure = next((f for f in failures if f and f.get("status") == "True"), None)
    if failure:
        problems.append(((uid, "replica-failure"), "ReplicaFailure: %s: %s" % (
            failure.get("reason") or "FailedCreate", failure.get("message") or ""), False))
    for pod in new_pods(uid, expected, replicasets, pods, digest):
        pod_name = _meta(pod).get("name", "?")
        for cs in _statuses(pod):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in BAD_WAITING_REASONS:
                key = (pod_name, cs.get("name"), _REASON_CLASS.get(reason, reason))
                problems.append((key, "%s: %s (pod %s, container %s)" % (
                    reason, (waiting.get("message") or "").strip() or "no message",
                    pod_name, cs.get("name")), False))
    return problems


def describe_pods(pods):
    """What the new revision's pods report, in a few words (pure): how many are
    ready and, for up to three that are not, each container's state, e.g.
    ``0 of 1 new pods ready: pod a-7d9f-x Running: app running, not ready
    (readiness probe not passing), 3 restarts``."""
    if not pods:
        return "no pod of the new revision yet"
    ready = [p for p in pods if _ready(p)]
    notes = []
    for pod in pods:
        if _ready(pod):
            continue
        probes = {c.get("name"): c for _, c in _container_entries({"spec": {"template": pod}})}
        states = []
        for cs in _statuses(pod):
            state, name = cs.get("state") or {}, cs.get("name")
            if "running" in state:
                if cs.get("ready"):
                    continue
                text = "%s running, not ready" % name
                if (probes.get(name) or {}).get("readinessProbe"):
                    text += " (readiness probe not passing)"
            elif "waiting" in state:
                text = "%s waiting: %s" % (name, (state["waiting"] or {}).get("reason")
                                           or "no reason")
            elif "terminated" in state:
                exit_code = (state["terminated"] or {}).get("exitCode")
                if exit_code == 0:
                    continue
                text = "%s exited %s" % (name, exit_code)
            else:
                continue
            restarts = cs.get("restartCount") or 0
            if restarts:
                text += ", %d restart%s" % (restarts, "" if restarts == 1 else "s")
            states.append(text)
        if not states:
            ready_condition = next((c for c in (pod.get("status") or {}).get("conditions") or []
                                    if c.get("type") == "Ready"), {})
            states.append(ready_condition.get("message") or ready_condition.get("reason")
                          or "not ready")
        notes.append("pod %s %s: %s" % (_meta(pod).get("name", "?"), (pod.get("status") or {})
                                         .get("phase") or "Pending", "; ".join(states)))
        if len(notes) == 3:
            break
    return "%d of %d new pod%s ready%s" % (len(ready), len(pods), "" if len(pods) == 1 else "s",
                                           ": " + "; ".join(notes) if notes else "")


def verify_pods(pods, containers, target, digest, manifests=()):
    """Do the new revision's ``pods`` run the target? ``(True|False|None, reason)``.

    Each named container (regular or init) must report the target repository and,
    when a digest is known, carry it: in ``imageID`` (containerd, Docker), or as
    ``imageID`` one of the index's per-platform manifests (``manifests``, learned by
    the platform check: CRI-O reports the per-platform digest), or, when the target
    is pinned to it, in the reported image reference.  None when there are no pods
    to check.
    """
    if not pods:
        return None, "no running pods of the new revision to check"
    by_reference = by_platform = 0
    for pod in pods:
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
                if image_id.endswith("@" + digest) or image_id == digest:
                    continue
                if any(image_id.endswith("@" + m) or image_id == m for m in manifests):
                    by_platform += 1
                    continue
                if target.digest == digest and ref is not None and ref.digest == digest:
                    by_reference += 1
                    continue
                return False, "pod %s container %s runs %s, not digest %s" % (
                    pod_name, cname, image_id or "an unknown image ID", digest)
            elif ref is not None and not ref.digest and ref.tag and target.tag and \
                    ref.tag != target.tag:
                return False, "pod %s container %s runs %s, not %s" % (
                    pod_name, cname, image, target.text)
    how = ""
    if digest:
        how = " (digest matched by imageID)"
        if by_platform:
            how = (" (imageID is the index's per-platform manifest for %d container%s, as"
                   " CRI-O reports it)" % (by_platform, "" if by_platform == 1 else "s"))
        if by_reference:
            how = (" (digest matched by the pinned image reference for %d container%s: their"
                   " imageID is another digest, the per-platform one CRI-O reports)"
                   % (by_reference, "" if by_reference == 1 else "s"))
    return True, "%d pod%s run%s the target%s" % (
        len(pods), "" if len(pods) == 1 else "s", "s" if len(pods) == 1 else "", how)


# --------------------------------------------------------------------------
# 8. Cluster access: the operations the engine asks for, and their errors
# --------------------------------------------------------------------------


class ClusterError(BumpError):
    """A request to the cluster failed.  ``code`` is ``kubectl_failed`` (the
    contract's code for a failed cluster request, under either access, so that
    scripts match one code; the message says what failed) or
    ``deadline_exceeded`` (the run's deadline cut it); ``status`` is the HTTP
    status when it is known (the API access), else None; ``timed_out`` tells a
    request that got no answer in time (a write may still have been applied)."""

    code = "kubectl_failed"

    def __init__(self, message, code=None, status=None, timed_out=False):
        super().__init__(message, code)
        self.status = status
        self.timed_out = timed_out


KubectlFailed = ClusterError       # version 2's name


def deadline_error(what, deadline_seconds):
    """The ``ClusterError`` of work that the run's deadline cut."""
    return ClusterError("the run's deadline (deadline_seconds: %g) cut %s short"
                        % (deadline_seconds or 0, what), "deadline_exceeded", timed_out=True)


@dataclass
class Reading:
    """One read of named workloads of one kind: ``objects`` (``{name: object}``)
    found, ``errors`` (``{name: ClusterError}``) for names that could not be
    read; a name in neither does not exist."""

    objects: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)


def _chunks(names, size=None):
    size = size or CHUNK
    return [list(names[i:i + size]) for i in range(0, len(names), size)]


def in_parallel(work, items, width=None):
    """``work(item)`` for every item, ``width`` at a time (``PARALLEL``), in threads;
    returns when all have ended.  An exception one raised (an interrupt) is raised
    here, after the others have ended; results are the callers' to collect."""
    width = width or PARALLEL
    if len(items) <= 1 or width <= 1:
        for item in items:
            work(item)
        return
    pending, lock, raised = list(items), threading.Lock(), []

    def worker():
        while True:
            with lock:
                if not pending or raised:
                    return
                item = pending.pop(0)
            try:
                work(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                with lock:
                    raised.append(exc)
    threads = [threading.Thread(target=worker, daemon=True)
               for _ in range(min(width, len(items)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if raised:
        raise raised[0]


class ClusterAccess:
    """The cluster operations of one run.  Two implementations: ``KubectlAccess``
    (kubectl as a subprocess) and ``ApiAccess`` (the Kubernetes API over HTTPS,
    with the pod's service account).  Every operation touches only what it is
    given (workloads by name; ReplicaSets and Pods by a label selector), raises
    ``ClusterError`` for what failed, and ends every wait by the run's deadline.

    ``check()``
        the access can work here at all; else ``EnvironmentProblem`` (exit 4).
    ``current_context()``
        kubectl's current context, or None when there is none (the API access).
    ``read(kind, names) -> Reading``
        workloads of one kind (``deployment``, ``statefulset``, ``daemonset``).
    ``patch(kind, names, body) -> {name: None | ClusterError}``
        one strategic merge patch (JSON text) for each named workload.
    ``pods(selector, replicasets) -> ([ReplicaSet], [Pod])``
        by a label selector (None: the whole namespace); ReplicaSets on request.
    ``undo(workload, revision) -> message``
        what ``kubectl rollout undo`` does (a Deployment ``--to-revision``).
    ``delete_pods(names)``, ``nodes() -> [Node]``, ``stop()`` (an interrupt).
    """

    name = None

    def __init__(self, settings, time_left=None):
        self.settings = settings
        self.time_left = time_left or (lambda: None)

    def budget(self, timeout):
        """``(seconds, cut)``: ``timeout`` cut to what is left of the run's deadline,
        and whether it was cut."""
        left = self.time_left()
        if left is None or left >= timeout:
            return timeout, False
        return max(0.1, left), True

    def out_of_time(self):
        left = self.time_left()
        return left is not None and left <= 0.25

    def deadline_error(self, what):
        return deadline_error(what, self.settings.deadline_seconds)

    def stop(self):
        """End what is running (an interrupt)."""


# -- kubectl: the subprocess edge --------------------------------------------------


@dataclass
class Completed:
    """The result of one command: exit status, decoded output, whether it timed out."""

    returncode: int
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False


def _parent_death_signal():
    """A ``preexec_fn`` that makes the child die with SIGKILL when this process
    dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``); None where that is not
    available.  ctypes (4 ms of import) is loaded only here, when kubectl is about
    to run for the first time."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes  # platform facility, loaded on first use (see the docstring)
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    parent = os.getpid()

    def die_with_parent():
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:      # the parent died before the call took effect
            os.kill(os.getpid(), signal.SIGKILL)
    return die_with_parent


class ProcessRunner:
    """Runs kubectl: an argument list (never a shell), a deadline on every call,
    the child's process group killed when the deadline passes, on ``kill()``, or
    when ``stopped()`` turns true (an interrupt: ``Interrupted`` is raised).

    A call returns when kubectl exits, even if something it started keeps its
    output open (the rest of its group is then killed after a short grace).  On
    Linux the children die with this process, even when it is killed with SIGKILL.

    A runner is any callable ``runner(argv, timeout=, env=, tag=) -> Completed``;
    ``resolve(binary, env)`` and ``kill(tag=None)`` are used when present.
    """

    def __init__(self, stopped=None):
        self._lock = threading.RLock()
        self._live = {}
        self.stopped = stopped or (lambda: None)
        self._preexec = _parent_death_signal()

    @staticmethod
    def resolve(binary, env):
        """The executable's path, or None when it is not there or not executable."""
        return shutil.which(binary, path=(env or os.environ).get("PATH", os.defpath))

    def __call__(self, argv, timeout, env=None, tag=None):
        signum = self.stopped()
        if signum:
            raise Interrupted(signum)
        with self._lock:        # registered before anything else can happen to it
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env, start_new_session=True,
                                    preexec_fn=self._preexec)  # noqa: PLW1509 - see docstring
            self._live[proc] = tag
        try:
            out, err, timed_out = self._wait(proc, time.monotonic() + timeout)
        finally:
            with self._lock:
                self._live.pop(proc, None)
        return Completed(proc.returncode, out.decode("utf-8", "replace"),
                         err.decode("utf-8", "replace"), timed_out)

    def _wait(self, proc, deadline):
        """Collect the output until the child exits (then a short grace for what it
        left running) or the deadline passes (then its group is killed)."""
        exited_at = None
        while True:
            try:
                out, err = proc.communicate(timeout=_POLL)
                return out or b"", err or b"", False
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            signum = self.stopped()
            if signum or now >= deadline:
                _kill_group(proc)
                out, err = _drain(proc)
                if signum:
                    raise Interrupted(signum)
                return out, err, exited_at is None
            if exited_at is None and _exited(proc):
                exited_at = now
            elif exited_at is not None and now - exited_at >= _PIPE_GRACE:
                _kill_group(proc)       # kubectl is done; a grandchild holds its output
                return _drain(proc) + (False,)

    def kill(self, tag=None):
        """Kill the running children started with ``tag`` (all when None)."""
        with self._lock:
            procs = [p for p, t in self._live.items() if tag is None or t == tag]
        for proc in procs:
            _kill_group(proc)


_POLL = 0.05          # seconds between checks of a running child
_PIPE_GRACE = 0.5     # seconds to wait for output after the child itself exited
_PR_SET_PDEATHSIG = 1


def _exited(proc):
    """True once the child has exited; where possible it is left unreaped, so that
    its process group can still be found and killed."""
    if proc.returncode is None and hasattr(os, "waitid"):
        try:
            flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
            return os.waitid(os.P_PID, proc.pid, flags) is not None
        except OSError:
            pass
    return proc.poll() is not None


def _drain(proc):
    """What is left of a killed child's output (bounded: a process that escaped its
    group could hold the pipes forever)."""
    try:
        out, err = proc.communicate(timeout=2.0)
    except subprocess.TimeoutExpired:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()
        out, err = b"", b""
    return out or b"", err or b""


def _kill_group(proc):
    """SIGKILL the child's process group (kubectl and anything a wrapper started).

    The children run in sessions of their own, so their group id is their pid; a
    process that is not such a group leader (or a fake one in tests) gets only
    ``proc.kill()``.
    """
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
            return
    except (OSError, TypeError):
        pass
    try:
        proc.kill()
    except OSError:
        pass


_KLOG_RE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d")
_NO_CONTEXT_RE = re.compile(r"current-context is not set", re.I)


def kubectl_message(completed):
    """kubectl's own error message, without klog noise, bounded in length."""
    lines = [ln.strip() for ln in completed.stderr.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not _KLOG_RE.match(ln)] or lines
    text = " | ".join(useful) or (completed.stdout.strip()[:200]
                                  or "kubectl exited with status %s" % completed.returncode)
    return text if len(text) <= 1000 else text[:997] + "..."


class KubectlAccess(ClusterAccess):
    """The cluster through kubectl: global flags, one argument list per call (never
    a shell), a deadline on every call (cut to what is left of the run's), and
    kubectl's failures as ``ClusterError`` with its own message."""

    name = "kubectl"

    def __init__(self, settings, runner, env, time_left=None):
        super().__init__(settings, time_left)
        self.runner = runner
        self.env = env
        self.base = [settings.kubectl]
        if settings.context:
            self.base.append("--context=" + settings.context)
        if settings.kubeconfig:
            self.base.append("--kubeconfig=" + settings.kubeconfig)
        self.cache = not env.get("HOME")     # made on first use (see call)
        self.cache_lock = threading.Lock()   # reads run in threads (in_parallel)
        self.ns = "--namespace=" + settings.namespace

    def check(self):
        resolve = getattr(self.runner, "resolve", None)
        if resolve is not None and resolve(self.settings.kubectl, self.env) is None:
            raise EnvironmentProblem(
                "kubectl not found or not executable: %s" % self.settings.kubectl,
                "kubectl_missing",
                hint='install kubectl, give its path as "kubectl" in the payload, or run in'
                     ' a pod with "cluster_access": "api"')

    # -- calls -------------------------------------------------------------

    def call(self, args, timeout=KUBECTL_CALL_TIMEOUT, tag=None, request_timeout=True):
        """Run kubectl; a ``Completed`` whose ``cut`` says the run's deadline
        shortened its time-out."""
        seconds, cut = self.budget(timeout)
        if self.cache:
            # no HOME (NoETL's distributed runtime): kubectl would put its discovery
            # cache in ./.kube of whatever folder it runs in
            with self.cache_lock:
                if self.cache:
                    self.base.append("--cache-dir=" + _private_cache_dir(self.env))
                    self.cache = False
        argv = self.base + list(args)
        if request_timeout:
            # milliseconds: a whole-second time-out rounded down gave up early
            argv.append("--request-timeout=%dms" % max(
                100, int(min(KUBECTL_REQUEST_TIMEOUT, seconds) * 1000)))
        try:
            done = self.runner(argv, timeout=seconds, env=self.env, tag=tag)
        except OSError as exc:
            raise ClusterError("cannot run %s: %s" % (self.base[0], exc.strerror or exc))
        done.cut = cut
        done.seconds = seconds
        return done

    def failure(self, done, what):
        """The ``ClusterError`` of a call that failed or timed out."""
        if getattr(done, "cut", False) and self.out_of_time():
            return self.deadline_error("kubectl " + what)
        if done.timed_out:
            return ClusterError("kubectl %s did not finish within %g s"
                                % (what, getattr(done, "seconds", KUBECTL_CALL_TIMEOUT)),
                                timed_out=True)
        message = kubectl_message(done)
        return ClusterError(message, timed_out=bool(_CLIENT_TIMEOUT_RE.search(message)))

    def checked(self, args, what):
        done = self.call(args)
        if done.timed_out or done.returncode != 0:
            raise self.failure(done, what)
        return done

    def json(self, args, what):
        done = self.checked(args + ["--output=json"], what)
        text = done.stdout.strip()
        if not text:
            return {"kind": "List", "items": []}
        try:
            data = json.loads(text)
        except ValueError:
            raise ClusterError("kubectl %s printed output that is not JSON: %s"
                               % (what, text[:200]))
        if not isinstance(data, dict):
            raise ClusterError("kubectl %s printed unexpected JSON" % what)
        return data

    # -- the operations ----------------------------------------------------

    def current_context(self):
        done = self.call(["config", "current-context"], request_timeout=False)
        if done.returncode == 0 and not done.timed_out:
            return done.stdout.strip() or None
        if not done.timed_out and _NO_CONTEXT_RE.search(done.stderr):
            return None
        raise ClusterError("cannot read kubectl's current context: %s"
                           % self.failure(done, "config current-context").message)

    def read(self, kind, names):
        reading = Reading()
        in_parallel(lambda chunk: self._read(kind, chunk, reading), _chunks(names))
        return reading

    def _read(self, kind, names, reading):
        """One kubectl for up to CHUNK names; when it fails, which name failed is
        found by reading each on its own (a Forbidden or missing kind fails only
        its own workloads)."""
        try:
            data = self.json(["get"] + ["%s/%s" % (kind, n) for n in names]
                             + [self.ns, "--ignore-not-found"], "get %ss" % kind)
        except ClusterError as exc:
            # a time-out is nobody's in particular: reading each again would only wait
            # as long again, once per name
            if len(names) == 1 or exc.code == "deadline_exceeded" or exc.timed_out:
                reading.errors.update(dict.fromkeys(names, exc))
            else:
                for name in names:
                    self._read(kind, [name], reading)
            return
        title = KINDS[kind]
        for obj in _items(data):
            name = _meta(obj).get("name")
            if obj.get("kind") == title and name in names:
                reading.objects[name] = obj

    def patch(self, kind, names, body):
        results = {}
        for chunk in _chunks(names):      # in the payload's order (the log reads in order)
            self._patch(kind, chunk, body, results)
        return results

    def _patch(self, kind, names, body, results):
        done = self.call(["patch", kind] + names + [
            self.ns, "--type=strategic", "--field-manager=" + FIELD_MANAGER,
            "--patch=" + body, "--output=name"])
        patched = {line.rsplit("/", 1)[-1] for line in done.stdout.splitlines()}
        ok = done.returncode == 0 and not done.timed_out
        for name in names:
            if ok or name in patched:
                results[name] = None
        rest = [n for n in names if n not in results]
        if not rest:
            return
        error = self.failure(done, "patch")
        if error.timed_out or error.code == "deadline_exceeded":
            results.update(dict.fromkeys(rest, error))
            return
        # kubectl patches in the order given and stops at the first failure: that
        # one failed, the rest were not tried
        results[rest[0]] = error
        if rest[1:]:
            self._patch(kind, rest[1:], body, results)

    def pods(self, selector, replicasets=True):
        kinds = "replicasets,pods" if replicasets else "pods"
        args = ["get", kinds, self.ns]
        if selector:
            args.append("--selector=" + selector)
        items = _items(self.json(args, "get " + kinds))
        return ([i for i in items if i.get("kind") == "ReplicaSet"],
                [i for i in items if i.get("kind") == "Pod"])

    def undo(self, workload, revision):
        args = ["rollout", "undo", workload.resource, self.ns]
        if revision and workload.kind == "deployment":
            args.append("--to-revision=" + revision)
        return self.checked(args, "rollout undo").stdout.strip()

    def delete_pods(self, names):
        self.checked(["delete", "pod"] + list(names) + [self.ns, "--wait=false"],
                     "delete pod")

    def nodes(self):
        return [n for n in _items(self.json(["get", "nodes"], "get nodes"))
                if n.get("kind") == "Node"]

    def stop(self):
        kill = getattr(self.runner, "kill", None)
        if kill is not None:
            kill(None)


#: kubectl's words for a request that got no answer in time (a write may have landed).
_CLIENT_TIMEOUT_RE = re.compile(r"Client\.Timeout|context deadline exceeded|i/o timeout|"
                                r"timed out|Timeout exceeded", re.I)


def _private_cache_dir(env):
    """A folder of this user's own for kubectl's cache, under ``$TMPDIR`` or /tmp:
    a shared one when it is safely ours, else one for this process."""
    base = os.path.join(env.get("TMPDIR") or "/tmp", "bump_image-kube-cache-%d" % os.getuid())  # noqa: S108
    for path in (base, "%s-%d" % (base, os.getpid())):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError:
            continue
        info = os.lstat(path)
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and \
                not info.st_mode & 0o022:
            return path
    return os.path.join(base + "-%d" % os.getpid(), "cache")


def _items(data):
    if data.get("kind", "").endswith("List") or "items" in data:
        return [i for i in data.get("items") or [] if isinstance(i, dict)]
    return [data]


# -- the API itself, with the pod's service account -----------------------------

SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
API_REQUEST_TIMEOUT = 20.0     # seconds per API request (kubectl's --request-timeout)
API_BODY_LIMIT = 64 << 20      # bytes of one API answer at most (a page of 500 pods)
API_PAGE = 500                 # objects per page of a list (kubectl's chunk size)
API_RETRIES = 3                # answers 429, 409 (a write), 5xx + Retry-After: retries
RBAC_POINTER = "README.md, section RBAC, and deploy/rbac.yaml"

#: Where each kind lives in the API: (group-version path, plural).
API_PATHS = {
    "deployment": ("/apis/apps/v1", "deployments"), "statefulset": ("/apis/apps/v1",
                                                                    "statefulsets"),
    "daemonset": ("/apis/apps/v1", "daemonsets"), "replicaset": ("/apis/apps/v1",
                                                                 "replicasets"),
    "controllerrevision": ("/apis/apps/v1", "controllerrevisions"),
    "pod": ("/api/v1", "pods"), "node": ("/api/v1", "nodes"),
}
#: Deployment annotations ``rollout undo`` keeps from the Deployment, not the ReplicaSet.
UNDO_KEEPS = frozenset((
    "kubectl.kubernetes.io/last-applied-configuration", REVISION,
    "deployment.kubernetes.io/revision-history", "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas", "deprecated.deployment.rollback.to"))
POD_TEMPLATE_HASH = "pod-template-hash"


class ServiceAccount:
    """The pod's credentials: the API server from ``KUBERNETES_SERVICE_HOST``/
    ``_PORT``, the token and CA certificate from the service-account folder
    (``$BUMP_IMAGE_SERVICEACCOUNT_DIR``, else the standard one).  The token is
    read again whenever its file changes (projected tokens rotate: the kubelet
    swaps the file)."""

    def __init__(self, env):
        self.folder = env.get("BUMP_IMAGE_SERVICEACCOUNT_DIR") or SERVICEACCOUNT_DIR
        host = (env.get("KUBERNETES_SERVICE_HOST") or "").strip()
        port = (env.get("KUBERNETES_SERVICE_PORT") or "443").strip()
        self.server = self._problem = None
        if not host:
            self._problem = "KUBERNETES_SERVICE_HOST is not set (not in a pod)"
        elif not port.isdigit() or _split_http_url("https://%s:%s/" % (
                "[%s]" % host if ":" in host else host, port))[0] is None:
            self._problem = "KUBERNETES_SERVICE_HOST/_PORT do not make a URL: %r:%r" % (
                host, port)
        else:
            self.server = "https://%s:%s" % ("[%s]" % host if ":" in host else host, port)
        self.token_path = os.path.join(self.folder, "token")
        self.ca_path = os.path.join(self.folder, "ca.crt")
        self._token = None
        self._stamp = None
        self._lock = threading.Lock()

    def problem(self):
        """Why the service account cannot be used here, or None."""
        if self._problem:
            return self._problem
        for path in (self.token_path, self.ca_path):
            if not os.access(path, os.R_OK):
                return "no readable %s (the service account's folder is %s)" % (path, self.folder)
        return None

    def token(self):
        """The current token; raises ``ClusterError`` when it cannot be read."""
        with self._lock:
            try:
                info = os.stat(self.token_path)
                stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
                if stamp != self._stamp or self._token is None:
                    with open(self.token_path, "rb") as fh:
                        token = fh.read(PAYLOAD_LIMIT).decode("ascii").strip()
                    if not token or _CONTROL_RE.search(token) or " " in token:
                        raise ValueError("it is empty or not a token")
                    self._token, self._stamp = token, stamp
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                raise ClusterError("cannot read the service account's token %s: %s"
                                   % (self.token_path, getattr(exc, "strerror", None) or exc))
            return self._token

    def forget(self):
        """Read the token again next time (the API refused it: it may have rotated)."""
        with self._lock:
            self._stamp = None


def selector_text(label_selector):
    """A ``LabelSelector`` object as the selector text of a list request (pure);
    None when it selects everything."""
    label_selector = label_selector or {}
    parts = ["%s=%s" % (k, v) for k, v in sorted((label_selector.get("matchLabels")
                                                   or {}).items())]
    for expr in label_selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In":
            parts.append("%s in (%s)" % (key, ",".join(values)))
        elif op == "NotIn":
            parts.append("%s notin (%s)" % (key, ",".join(values)))
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append("!" + key)
    return ",".join(parts) or None


def _controlled_by(obj, uid):
    return any(ref.get("uid") == uid and ref.get("controller")
               for ref in _meta(obj).get("ownerReferences") or [])


def _without_hash(template):
    template = json.loads(json.dumps(template or {}))
    labels = (template.get("metadata") or {}).get("labels")
    if isinstance(labels, dict):
        labels.pop(POD_TEMPLATE_HASH, None)
    return template


def _plain_template(template):
    """A template as compared by ``rollout undo``: without a null creationTimestamp
    (kubectl up to 1.33 writes one into revisions) or the ``$patch`` directive."""
    template = json.loads(json.dumps(template or {}))
    template.pop("$patch", None)
    meta = template.get("metadata")
    if isinstance(meta, dict) and meta.get("creationTimestamp") is None:
        meta.pop("creationTimestamp", None)
        if not meta:
            template.pop("metadata")
    return template


def undo_deployment_patch(deployment, replicasets, revision):
    """What ``kubectl rollout undo deployment --to-revision=N`` sends (pure, after
    kubectl's DeploymentRollbacker): ``(json patch, None)`` that restores the
    ReplicaSet of ``revision`` (the previous one when None): its template without
    the ``pod-template-hash`` label, and its annotations (but those the Deployment
    keeps); ``(None, message)`` when there is nothing to send (already at that
    revision); raises ``ClusterError`` when the revision is not in the history."""
    uid = _meta(deployment).get("uid")
    history = []
    for rs in replicasets:
        number = _annotations(rs).get(REVISION)
        if _controlled_by(rs, uid) and isinstance(number, str) and number.isdigit():
            history.append((int(number), rs))
    history.sort(key=lambda item: item[0])
    if revision:
        found = [rs for number, rs in history if str(number) == str(revision)]
        if not found:
            raise ClusterError("unable to find specified revision %s in history" % revision)
        target, number = found[0], revision
    else:
        if len(history) < 2:
            raise ClusterError('no rollout history found for deployment "%s"'
                               % _meta(deployment).get("name"))
        number, target = history[-2]
    if (deployment.get("spec") or {}).get("paused"):
        raise ClusterError("you cannot rollback a paused deployment; resume it first with"
                           " 'kubectl rollout resume' and try again")
    template = _without_hash(_pod_template(target))
    if template == _without_hash(_pod_template(deployment)):
        return None, "skipped rollback (current template already matches revision %s)" % number
    annotations = {k: v for k, v in _annotations(deployment).items() if k in UNDO_KEEPS}
    annotations.update((k, v) for k, v in _annotations(target).items() if k not in UNDO_KEEPS)
    return [{"op": "replace", "path": "/spec/template", "value": template},
            {"op": "replace", "path": "/metadata/annotations", "value": annotations}], None


def undo_revision_patch(obj, revisions):
    """What ``kubectl rollout undo`` sends for a StatefulSet or DaemonSet (pure,
    after kubectl's rollbackers): ``(the previous ControllerRevision's data, None)``,
    or ``(None, message)`` when the template already matches it; raises
    ``ClusterError`` when there is no previous revision."""
    uid = _meta(obj).get("uid")
    history = sorted((r for r in revisions if _controlled_by(r, uid)),
                     key=lambda r: r.get("revision") or 0)
    if len(history) <= 1:
        raise ClusterError("no last revision to roll back to")
    target = history[-2]
    data = target.get("data") or {}
    wanted = _plain_template((data.get("spec") or {}).get("template"))
    if wanted == _plain_template(_pod_template(obj)):
        return None, ("skipped rollback (current template already matches revision %s)"
                      % target.get("revision"))
    return data, None


#: How the API server's RBAC authorizer words a refusal.
_RBAC_DENIAL_RE = re.compile(r'cannot [a-z]+ resource "')


class ApiAccess(ClusterAccess):
    """The cluster through its API, as a pod speaks to it: HTTPS to
    ``KUBERNETES_SERVICE_HOST``, TLS verified against the service account's CA
    (always), its bearer token (read again when the file changes, and once more
    after a 401), requests scoped to the namespace with a time-out each (cut to
    the run's deadline).  A 429 (or a 5xx with ``Retry-After``) is retried after its
    ``Retry-After``, a 409 on a write after a second, ``API_RETRIES`` times.  A 401 or 403 names
    what the service account lacks and where README's RBAC is."""

    name = "api"

    def __init__(self, settings, env, time_left=None, clock=None, stopped=None, log=None,
                 opener=None):
        super().__init__(settings, time_left)
        self.env = env
        self.account = ServiceAccount(env)
        self.clock = clock or time.monotonic
        self.stopped = stopped or (lambda: False)
        self.log = log or _silent
        self._opener = opener
        self.ns = settings.namespace

    def unavailable(self):
        return self.account.problem()

    def check(self):
        why = self.unavailable()
        if why is not None:
            raise EnvironmentProblem(
                "cluster_access is api, but there is no usable service account: %s" % why,
                "serviceaccount_missing",
                hint="run in a pod with a service account, set $BUMP_IMAGE_SERVICEACCOUNT_DIR,"
                     ' or use "cluster_access": "kubectl"')

    def opener(self):
        if self._opener is None:
            import ssl  # HTTP/TLS stack: loaded only when the API is used
            context = ssl.create_default_context(cafile=self.account.ca_path)
            self._opener = default_opener(ssl_context=context, env=self.env)
        return self._opener

    # -- requests --------------------------------------------------------------

    def path(self, kind, name=None, sub=None, namespaced=True):
        prefix, plural = API_PATHS[kind]
        out = prefix + ("/namespaces/%s" % self.ns if namespaced else "") + "/" + plural
        if name is not None:
            out += "/" + name
        return out + ("/" + sub if sub else "")

    def request(self, method, path, what, query=None, body=None, content_type=None):
        """One API call: the answer as a dict; raises ``ClusterError``."""
        url = self.account.server + path + ("?" + urlencode(query) if query else "")
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        attempt, refreshed = 0, False
        while True:
            seconds, cut = self.budget(API_REQUEST_TIMEOUT)
            headers = {"Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = content_type or "application/json"
            try:
                resp = http_call(self.opener(), self.clock, method, url, headers,
                                 auth="Bearer " + self.account.token(), data=data,
                                 timeout=seconds, cut=cut, read_body=True, error_body=True,
                                 body_limit=API_BODY_LIMIT, too_large="kubectl_failed",
                                 stopped=self.stopped)
            except _AttemptFailed as failed:
                outcome = failed.outcome
                if outcome.code == "deadline_exceeded" or (cut and self.out_of_time()):
                    raise self.deadline_error("the API request to " + what)
                raise ClusterError("%s: %s" % (what, outcome.message),
                                   timed_out=outcome.code == "timeout")
            if 200 <= resp.status < 300:
                return self._json(resp, what)
            message = self._status_message(resp)
            if resp.status == 401 and not refreshed:
                self.account.forget()          # a rotated token: read it again, once
                refreshed = True
                continue
            # client-go's rule: a 429, or a 5xx that says when to come back; and a
            # conflict on a write (our patches carry no resourceVersion: safe to resend)
            retry = resp.status == 429 or (resp.status >= 500 and resp.headers.get(
                "Retry-After")) or (resp.status == 409 and method != "GET")
            if retry and attempt < API_RETRIES:
                attempt += 1
                wait = parse_retry_after(resp.headers.get("Retry-After"))
                wait = min(RETRY_AFTER_CAP, 1.0 if wait is None else wait)
                left = self.time_left()
                if left is not None and left - wait < 1.0:
                    raise self.refused(resp.status, message, what)
                self.log("API %s answered %d (%s); again in %g s (%d of %d)" % (
                    what, resp.status, message, wait, attempt, API_RETRIES))
                self._sleep(wait)
                continue
            raise self.refused(resp.status, message, what)

    def _sleep(self, seconds):
        until = self.clock() + seconds
        while not self.stopped() and self.clock() < until:
            time.sleep(min(_POLL, max(0.0, until - self.clock())))

    @staticmethod
    def _json(resp, what):
        try:
            data = json.loads(resp.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ClusterError("the API answered %s with something that is not JSON: %r"
                               % (what, resp.body[:200]))
        if not isinstance(data, dict):
            raise ClusterError("the API answered %s with unexpected JSON" % what)
        return data

    @staticmethod
    def _status_message(resp):
        try:
            status = json.loads(resp.body.decode("utf-8"))
            message = status.get("message") if isinstance(status, dict) else None
        except (UnicodeDecodeError, ValueError, RecursionError):
            message = None
        if not isinstance(message, str) or not message:
            message = resp.body[:200].decode("utf-8", "replace").strip() or "no message"
        return message if len(message) <= 1000 else message[:997] + "..."

    def refused(self, status, message, what):
        """The ``ClusterError`` of an answer that will not change by retrying."""
        if status == 401:
            return ClusterError(
                "the API refused the service account's token (401 Unauthorized) for %s: the"
                " token at %s is not valid for this cluster (expired, or of another cluster);"
                " see %s" % (what, self.account.token_path, RBAC_POINTER), status=401)
        if status == 403:
            if _RBAC_DENIAL_RE.search(message):      # not, e.g., an admission webhook's word
                message += ": the service account lacks this permission; see " + RBAC_POINTER
            return ClusterError("Forbidden (403): " + message, status=403)
        return ClusterError("the API answered %d to %s: %s" % (status, what, message),
                            status=status)

    def get(self, kind, name, what=None, namespaced=True):
        """One object, or None when it does not exist."""
        try:
            return self.request("GET", self.path(kind, name, namespaced=namespaced),
                                what or "get %ss/%s" % (kind, name))
        except ClusterError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind, selector=None, namespaced=True):
        """Every object of ``kind`` (by ``selector``), page by page (``continue``)."""
        title = {"pod": "Pod", "node": "Node", "replicaset": "ReplicaSet",
                 "controllerrevision": "ControllerRevision"}.get(kind, KINDS.get(kind))
        items, token = [], None
        while True:
            query = {"limit": str(API_PAGE)}
            if selector:
                query["labelSelector"] = selector
            if token:
                query["continue"] = token
            data = self.request("GET", self.path(kind, namespaced=namespaced),
                                "list %ss%s" % (kind, " -l " + selector if selector else ""),
                                query=query)
            for item in data.get("items") or []:
                if isinstance(item, dict):
                    item.setdefault("kind", title)
                    items.append(item)
            token = (data.get("metadata") or {}).get("continue")
            if not token:
                return items

    # -- the operations ----------------------------------------------------------

    def current_context(self):
        return None

    def read(self, kind, names):
        reading = Reading()

        def one(name):
            if self.out_of_time() and reading.errors:
                reading.errors[name] = self.deadline_error("the API request to get %ss/%s"
                                                           % (kind, name))
                return
            try:
                obj = self.get(kind, name)
            except ClusterError as exc:
                reading.errors[name] = exc
                return
            if obj is not None:
                obj.setdefault("kind", KINDS[kind])
                reading.objects[name] = obj
        in_parallel(one, list(names))
        return reading

    def patch(self, kind, names, body):
        results = {}
        patch = json.loads(body)
        for name in names:                # in the payload's order (the log reads in order)
            try:
                self.request("PATCH", self.path(kind, name), "patch %ss/%s" % (kind, name),
                             query={"fieldManager": FIELD_MANAGER}, body=patch,
                             content_type="application/strategic-merge-patch+json")
                results[name] = None
            except ClusterError as exc:
                results[name] = exc
        return results

    def pods(self, selector, replicasets=True):
        return (self.list("replicaset", selector) if replicasets else [],
                self.list("pod", selector))

    def undo(self, workload, revision):
        what = "rollout undo %s" % workload.resource
        obj = self.get(workload.kind, workload.name)
        if obj is None:
            raise ClusterError('%s "%s" not found' % (workload.title, workload.name),
                               status=404)
        selector = selector_text((obj.get("spec") or {}).get("selector"))
        if workload.kind == "deployment":
            patch, skipped = undo_deployment_patch(obj, self.list("replicaset", selector),
                                                   revision)
            content_type = "application/json-patch+json"
        else:
            patch, skipped = undo_revision_patch(obj, self.list("controllerrevision", selector))
            content_type = "application/strategic-merge-patch+json"
        if skipped:
            return skipped
        self.request("PATCH", self.path(workload.kind, workload.name), what, body=patch,
                     content_type=content_type)
        return "%s rolled back" % workload.resource

    def delete_pods(self, names):
        for name in names:
            try:
                self.request("DELETE", self.path("pod", name), "delete pods/" + name)
            except ClusterError as exc:
                if exc.status != 404:
                    raise

    def nodes(self):
        return self.list("node", namespaced=False)

    def stop(self):
        sockets = getattr(self._opener, "sockets", None)
        if sockets is not None:
            sockets.expire_all()


# --------------------------------------------------------------------------
# 9. Rollouts: each workload's verdict from its own object
# --------------------------------------------------------------------------

#: Seconds between polls of the workloads being waited for, by the wait's age:
#: often at first (most rollouts end within seconds), then ever less often.
POLL_STEPS = ((10.0, 0.5), (30.0, 1.0), (120.0, 2.0), (None, 5.0))
POLL_FIRST = 0.25       # seconds after a wait starts before its first poll
POLL_RATE = 20.0        # objects read per second at most, on average, while polling
READ_STRIKES = 3        # failed reads of one workload in a row that end its wait
_FIRST_DIAGNOSIS = 2.0  # seconds after a wait starts before the first look at its pods


def poll_interval(elapsed, pending):
    """Seconds until the next poll (pure): by the wait's age (``POLL_STEPS``), and
    never more than ``POLL_RATE`` objects a second on average."""
    step = POLL_STEPS[-1][1]
    for until, seconds in POLL_STEPS:
        if until is None or elapsed < until:
            step = seconds
            break
    return max(step, pending / POLL_RATE)


@dataclass(eq=False)
class _Wait:
    """One rollout being waited for: a change, an unfinished rollout found at the
    target ("existing"), or a rollback."""

    comp: object                   # the Component
    deadline: float                # clock() value
    timeout: float                 # seconds, as the payload gave them
    purpose: str                   # "change", "existing" or "rollback"
    expected: dict                 # {container: image} the new pods run
    by_run_deadline: bool = False  # the deadline is the run's, not the rollout's
    finished: bool = False
    error: tuple = None            # (code, message) once finished badly
    failed: tuple = None           # for a rollback: the failure that caused it
    obj: dict = None               # the workload as last read
    strikes: int = 0               # failed reads in a row
    said: str = None               # the last progress line about its status
    pods_said: str = None          # ... and about its pods
    gone: bool = False             # the workload went away: nothing to roll back
    ended_at: float = None         # clock() when its verdict came
    stale: tuple = None            # for a rollback: the progress deadline the change hit

    def end(self, error=None):
        self.finished, self.error = True, error


class Rollouts:
    """Waiting for rollouts.  Each workload's verdict comes from its own object: a
    bounded poll reads the workloads being waited for by name
    (``ClusterAccess.read``, one request per object, one kind at a time) and
    judges each with ``rollout_verdict`` (kubectl's status viewers), so a
    workload that hangs, fails, is forbidden or goes away changes nothing for
    another, in any order and at any number.  Polls come ``POLL_FIRST`` after
    the wait starts, then by ``poll_interval``; only the workloads still pending
    are read.

    Meanwhile one read of their ReplicaSets and Pods (by a label selector that
    covers them all) looks for pods that cannot start (``diagnose``): 2 s after
    the wait starts, then every ``fail_fast_seconds``/6 (1 to 5 s), and again
    exactly when a problem seen earlier has lasted ``fail_fast_seconds``; such a
    problem stops that workload's wait.  The same read says what the pods report
    (``describe_pods``) in the progress lines and in a time-out's message.
    """

    def __init__(self, engine):
        self.engine = engine

    def wait(self, waits, ended=None):
        """Wait until every rollout of ``waits`` has its verdict.  ``ended(w)`` is
        called as soon as each one has it (not when the last one does) and may return
        new waits to add (a rollback)."""
        e = self.engine
        started = e.clock()
        waits = list(waits)
        self.announce(waits)
        interval = min(5.0, max(1.0, e.settings.fail_fast_seconds / 6.0))
        next_poll = started + POLL_FIRST
        next_look, looking, first_seen = started + _FIRST_DIAGNOSIS, True, {}
        while True:
            e.check_signals()
            now = e.clock()
            for w in list(waits):
                if w.finished and w.ended_at is None:
                    w.ended_at = now      # each its own: a verdict is not held for others
                    more = ended(w) if ended is not None else None
                    if more:
                        self.announce(more)
                        waits += more
                        next_poll = min(next_poll, e.clock() + POLL_FIRST)
            pending = [w for w in waits if not w.finished]
            if not pending:
                return
            late = [w for w in pending if e.clock() >= w.deadline]
            if late:
                self.time_out(late)
                continue
            if e.clock() >= next_poll:
                self.poll(pending)
                pending = [w for w in waits if not w.finished]
                next_poll = e.clock() + poll_interval(e.clock() - started, len(pending))
            if looking and pending and e.clock() >= next_look:
                looking, due = self.fail_fast(pending, first_seen)
                next_look = e.clock() + interval
                if due is not None:
                    next_look = min(next_look, due)
                pending = [w for w in waits if not w.finished]
            if pending:
                wake = min([next_poll] + [w.deadline for w in pending]
                           + ([next_look] if looking else []))
                e.pause(wake - e.clock())

    def announce(self, waits):
        for w in waits:
            self.engine.log("%s: waiting for %s (up to %d s)" % (
                w.comp.workload.key, "the rollback" if w.purpose == "rollback" else
                "the rollout", max(0, int(w.deadline - self.engine.clock() + 0.5))))

    # -- the poll ------------------------------------------------------------

    def poll(self, pending):
        """Read the pending workloads by name, one kind at a time, and judge each."""
        by_kind = {}
        for w in pending:
            by_kind.setdefault(w.comp.workload.kind, []).append(w)
        for kind, group in by_kind.items():
            reading = self.engine.access.read(kind, [w.comp.name for w in group])
            for w in group:
                self.judge(w, reading)

    def judge(self, w, reading):
        """One workload's verdict from what the poll read of it."""
        e, comp = self.engine, w.comp
        key, name = comp.workload.key, comp.name
        error = reading.errors.get(name)
        if error is not None:
            if error.code == "deadline_exceeded":
                w.end(self.timed_out(w) if w.by_run_deadline else (error.code, error.message))
                return
            w.strikes += 1
            if w.strikes >= READ_STRIKES or error.status in (401, 403):
                w.end(("kubectl_failed", "cannot read it during its rollout: " + error.message))
            else:
                e.log("%s: reading it failed (%d of %d): %s" % (
                    key, w.strikes, READ_STRIKES, error.message))
            return
        w.strikes = 0
        obj = reading.objects.get(name)
        if obj is None or (comp.uid and _meta(obj).get("uid") != comp.uid):
            w.gone = True
            w.end(("rollout_failed", '%s "%s" went away during the rollout (%s in namespace'
                   ' "%s")' % (comp.workload.title, name, "not found" if obj is None else
                               "deleted and created again", e.settings.namespace)))
            return
        first = w.obj is None             # the wait's first reading of it
        if w.purpose == "rollback":
            # The controller leaves the change's ProgressDeadlineExceeded in place until
            # the rollback makes progress (kubernetes' syncRolloutStatus): that one, seen
            # before the undo or at the rollback's first read, is not the rollback's own.
            # A new one (another lastUpdateTime) is.
            mark = progress_deadline_mark(obj)
            if first and w.stale is None:
                w.stale = mark
            if mark is not None and mark == w.stale:
                obj = without_progress_deadline(obj)
        w.obj = obj
        done, message, failed = rollout_verdict(obj)
        if done:
            w.end(None)
        elif failed:
            progressing = _conditions(obj).get("Progressing") or {}
            w.end(("rollout_failed", "ProgressDeadlineExceeded: %s%s" % (
                message, ": " + progressing["message"] if progressing.get("message") else "")))
        elif message != w.said:
            w.said = message
            e.log("%s: %s" % (key, message))

    # -- time-outs -----------------------------------------------------------

    def timed_out(self, w):
        if w.by_run_deadline:
            return ("deadline_exceeded", "the run's deadline (deadline_seconds: %g) passed"
                    " before the rollout completed; the change stays applied and rolls on in"
                    " the cluster" % self.engine.settings.deadline_seconds)
        return ("rollout_timeout", "the rollout did not complete within %d s" % w.timeout)

    def time_out(self, late):
        """End the waits whose time is up, saying what their pods report (one read
        for all of them, when there is time for it)."""
        e = self.engine
        state = None if e.out_of_time(0.5) else e.checks.pods_of([w.comp for w in late])
        for w in late:
            code, message = self.timed_out(w)
            said = [w.said] if w.said else []
            if state is not None:
                said.append(describe_pods(new_pods(w.comp.uid, w.expected, state[0], state[1],
                                                   w.comp.digest)))
            if said:
                message += ": " + "; ".join(said)
            w.end((code, message))

    # -- fail fast -------------------------------------------------------------

    def fail_fast(self, pending, first_seen):
        """One read of the pending workloads' pods; end the waits whose problems
        have lasted long enough.  Returns ``(readable, due)``: False when the read is
        not possible (then only the polls remain), and when the earliest problem still
        short of ``fail_fast_seconds`` will reach it (None: no such problem)."""
        e = self.engine
        state = e.checks.pods_of([w.comp for w in pending])
        if state is None:
            return False, None
        replicasets, pods = state
        now, due, limit = e.clock(), None, e.settings.fail_fast_seconds
        for w in pending:
            comp = w.comp
            for key, message, immediate in diagnose(w.obj, comp.uid, w.expected, replicasets,
                                                    pods, comp.digest):
                # each wait's own: a rollback does not inherit its change's problems
                since = first_seen.setdefault((id(w), key), now)
                if immediate or now - since >= limit:
                    w.end(("rollout_failed", message))
                    e.log("%s: %s, stopping the wait" % (comp.workload.key, message))
                    break
                when = since + limit
                due = when if due is None else min(due, when)
            if not w.finished:
                text = describe_pods(new_pods(comp.uid, w.expected, replicasets, pods,
                                              comp.digest))
                if text != w.pods_said:
                    w.pods_said = text
                    e.log("%s: %s" % (comp.workload.key, text))
        return True, due


# --------------------------------------------------------------------------
# 10. The engine: preflight -> probe -> read -> apply -> wait -> verify -> report
# --------------------------------------------------------------------------


def _silent(message):
    """The default progress sink of library use: nothing is printed."""


class Progress:
    """Progress lines on a stream (stderr), and on a log file when one is kept:
    ``bump_image: message``; threads may write at once, a line is never torn."""

    def __init__(self, stream, also=None):
        self.streams = [s for s in (stream, also) if s is not None]
        self._lock = threading.Lock()

    def __call__(self, message):
        with self._lock:
            for stream in self.streams:
                try:
                    stream.write("bump_image: %s\n" % message)
                    stream.flush()
                except (OSError, ValueError):
                    pass


class NoSignals:
    """The signals of library use: none is ever received (``bump()`` installs no
    handler)."""

    def first(self):
        return None

    def count(self):
        return 0


@dataclass
class Component:
    """The result for one workload: its ``component`` output line (``event()``),
    plus what the run needs to finish it."""

    workload: Workload
    namespace: str
    image: str                     # the target as set (pinned with pin_digest)
    digest: str                    # what the probe of its image saw, or None
    started: float                 # clock() when its work began
    probed: bool = False           # its image was probed (and found)
    status: str = None             # None until finished
    previous_image: str = None
    containers: list = field(default_factory=list)
    duration: float = None
    error: dict = None
    verified: bool = None          # True/False once its pods were checked, else None
    rolled_back: bool = False
    restored_image: str = None
    revision: str = None           # a Deployment's revision before the change
    uid: str = None                # the workload object's uid, once read
    selector: dict = None          # its spec.selector.matchLabels
    previous: dict = None          # {container: image} before the change
    rolled_out: bool = False       # a rollout was waited for: check its pods
    platforms_checked: bool = False  # the platform check compared it with the nodes
    applied: bool = False          # its change was applied (a patch answered, or read back)
    gone: bool = False             # it went away during its rollout
    manifests: list = field(default_factory=list)  # its image's per-platform digests

    @property
    def name(self):
        return self.workload.name

    @property
    def expected(self):
        """``{container: image}`` that its pods run once its change has rolled out."""
        return dict.fromkeys(self.containers, self.image)

    @property
    def target(self):
        """The target as an ``ImageRef`` (pinned with pin_digest, so that a rerun
        finds ``repo:tag@digest`` already in place)."""
        return parse_image(self.image)

    def finish(self, status, clock, at=None):
        """Finish with ``status``; ``at``: when its verdict came (default now)."""
        self.status = status
        self.duration = round((clock() if at is None else at) - self.started, 3)

    def fail(self, code, message, clock, at=None):
        """Finish as ``error`` with ``code`` and ``message``."""
        self.error = {"code": code, "message": message}
        self.finish("error", clock, at)

    def event(self):
        return {"event": "component", "component": self.name, "kind": self.workload.kind,
                "namespace": self.namespace, "status": self.status, "image": self.image,
                "previous_image": self.previous_image, "containers": self.containers,
                "duration_seconds": self.duration, "error": self.error,
                "digest": self.digest, "verified": self.verified,
                "rolled_back": self.rolled_back, "restored_image": self.restored_image,
                "platforms_checked": self.platforms_checked}


@dataclass
class Result:
    """Everything one run produced: a ``ProbeResult`` per distinct image (in order
    of first use), a ``Component`` per workload, the exit code, the signal that
    interrupted it (or None), the duration in seconds, the images by workload, and
    a run-level error (``none_found``) or None."""

    probes: list
    components: list
    exit_code: int
    image: str                     # the one target image, or None when there are several
    images: dict                   # {workload: image}
    interrupted: int = None
    duration: float = 0.0
    error: dict = None
    cluster_access: str = None     # "kubectl" or "api"; None when none was chosen

    @property
    def probe(self):
        """The first image's ``ProbeResult``."""
        return self.probes[0] if self.probes else None

    def summary(self):
        counts = dict.fromkeys(("changed", "unchanged", "skipped", "planned", "error"), 0)
        for c in self.components:
            counts[c.status] = counts.get(c.status, 0) + 1
        status = "ok" if self.exit_code == 0 else "failed"
        if self.interrupted:
            status = "interrupted"
        return {"event": "summary", "status": status, "image": self.image,
                "images": self.images, "changed": counts["changed"],
                "unchanged": counts["unchanged"], "skipped": counts["skipped"],
                "planned": counts["planned"], "errors": counts["error"],
                "exit_code": self.exit_code, "error": self.error,
                "cluster_access": self.cluster_access,
                "duration_seconds": round(self.duration, 3)}

    def events(self):
        """The output lines as dicts: the probes, one per component, the summary."""
        return ([p.event() for p in self.probes] + [c.event() for c in self.components]
                + [self.summary()])


class Engine:
    """One run of the tool with its effects injected; see ``bump``.  The stages, in
    order: ``preflight`` (the cluster access, the context guard), ``probe``,
    ``apply`` (read, decide, patch; ``settle`` waits through ``Rollouts`` and rolls
    back), ``check_pods`` (verification), then the report (``run``)."""

    def __init__(self, settings, runner=None, opener=None, sleeper=None, clock=None,
                 env=None, on_event=None, progress=None, http_timeout=HTTP_TIMEOUT,
                 signals=None, started=None, access=None):
        self.settings = settings
        self.http_timeout = http_timeout
        self.signals = signals if signals is not None else NoSignals()
        self.stop = threading.Event()          # set once the run is interrupted
        self.runner = runner if runner is not None else ProcessRunner(self.signals.first)
        self.opener = opener
        self.sleeper = sleeper if sleeper is not None else self.stop.wait
        self.clock = clock if clock is not None else time.monotonic
        self.started = self.clock() if started is None else started
        self.deadline = None
        if settings.deadline_seconds is not None:
            budget = settings.deadline_seconds
            self.deadline = self.started + budget - min(DEADLINE_RESERVE, budget / 2.0)
        self.env = dict(os.environ if env is None else env)
        self.on_event = on_event if on_event is not None else (lambda event: None)
        self.log = progress if progress is not None else _silent
        self.access = access                   # chosen by preflight() unless given
        self.rollouts = Rollouts(self)
        self.rollbacks = Rollbacks(self)
        self.checks = Checks(self)
        self.probers = {}
        self.probes = None
        self.components = []
        self.interrupted = None
        self.error = None
        self.context = None            # kubectl's current context, once read
        self._threads = []

    # -- time and signals ------------------------------------------------------

    def time_left(self):
        """Seconds before the run's deadline (less a reserve for the report), or
        None without one."""
        return None if self.deadline is None else self.deadline - self.clock()

    def out_of_time(self, margin=0.0):
        left = self.time_left()
        return left is not None and left <= margin

    def check_signals(self):
        """Raise ``Interrupted`` once a signal has been received."""
        signum = self.signals.first()
        if signum:
            self.stop.set()
            raise Interrupted(signum)

    def pause(self, seconds):
        """Wait up to ``seconds`` (a slice at a time, so that a signal is seen at once)."""
        if seconds > 0:
            self.stop.wait(min(seconds, _POLL))

    # -- the run -----------------------------------------------------------

    def run(self):
        try:
            self.preflight()
            self.probe()
            for probe in self.probes:
                self.on_event(probe.event())
            if not any(p.status == "unavailable" for p in self.probes):
                self.apply()
        except (Interrupted, KeyboardInterrupt) as exc:
            self.interrupted = getattr(exc, "signum", 2)
            self.stop.set()
            if self.access is not None:
                self.access.stop()
            self.join_threads()
            self.finish_interrupted()
        image = self.settings.image
        result = Result(self.probes, self.components, self.exit_code(),
                        image.text if image else None,
                        {w.key: w.image.text for w in self.settings.workloads},
                        self.interrupted, self.clock() - self.started, self.error,
                        self.access.name if self.access is not None else None)
        for comp in result.components:
            self.on_event(comp.event())
        self.on_event(result.summary())
        return result

    def join_threads(self, seconds=1.0):
        """Give the probe threads ``seconds`` each to end after an interrupt; a
        second signal ends the waiting at once."""
        for thread in self._threads:
            until = time.monotonic() + seconds
            while thread.is_alive() and time.monotonic() < until and self.signals.count() < 2:
                thread.join(_POLL)

    def exit_code(self):
        if self.interrupted:
            return 128 + self.interrupted
        if any(p.status == "unavailable" for p in self.probes):
            return 3
        return 1 if self.error or any(c.status == "error" for c in self.components) else 0

    def finish_interrupted(self):
        message = "interrupted by %s" % ("SIGTERM" if self.interrupted == 15 else "SIGINT")
        if self.probes is None:
            self.probes = []
            for ref in self.settings.images:
                prober = self.probers.get(ref)
                self.probes.append(ProbeResult(
                    "unavailable", prober.attempts if prober else 0, None,
                    {"code": "interrupted", "message": message}, image=ref.text))
                self.on_event(self.probes[-1].event())
            return
        if any(p.status == "unavailable" for p in self.probes):
            return
        started = {c.workload: c for c in self.components}
        self.components = []
        for workload in self.settings.workloads:
            comp = started.get(workload)
            if comp is None:
                comp = self.new_component(workload)
                comp.fail("interrupted", message + " before this workload was checked or"
                          " changed", self.clock)
            elif comp.status is None:
                comp.fail("interrupted", message + " before this workload finished (its"
                          " change may have been applied)", self.clock)
            self.components.append(comp)

    def new_component(self, workload):
        probe = self.probes[self.settings.images.index(workload.image)]
        image = workload.image.text
        if self.settings.pin_digest and probe.digest:
            image = workload.image.pinned(probe.digest)
        return Component(workload, self.settings.namespace, image, probe.digest, self.clock(),
                         probed=probe.status == "available", manifests=probe.manifests)

    # -- preflight ---------------------------------------------------------

    def preflight(self):
        """The cluster access must be usable, and the context guard must pass
        (exit 4 otherwise).  The guard takes ``context``, else kubectl's current
        context; a context must be the expected one, in a pod or not.  It is
        skipped only when kubectl has no current context in a pod (kubectl then
        uses the pod's service account), or under the API access."""
        if self.access is None:
            self.access = self.choose_access()
        expected = self.settings.expected_context
        if not expected:
            return
        if self.access.name == "api":
            self.log("context guard skipped: cluster_access is api, which reaches only the"
                     " cluster this pod runs in, with its service account (there is no kubectl"
                     " context to compare)")
            return
        actual = self.settings.context
        if actual is None:
            try:
                actual = self.context = self.access.current_context()
            except ClusterError as exc:
                raise EnvironmentProblem(exc.message, "context_mismatch")
        if actual is None and self.env.get("KUBERNETES_SERVICE_HOST"):
            self.log("context guard skipped: kubectl has no current context and"
                     " KUBERNETES_SERVICE_HOST is set, so kubectl uses this pod's service"
                     " account (the cluster the pod runs in)")
            return
        if actual != expected:
            raise EnvironmentProblem(
                "kubectl context is %s, expected %s: refusing to run"
                % (json.dumps(actual) if actual else "not set", json.dumps(expected)),
                "context_mismatch",
                hint="switch with kubectl config use-context %s, or pass \"context\"" % expected)

    def choose_access(self):
        """The cluster access ``cluster_access`` names; under ``auto``, kubectl when
        its program is there, else the API when this is a pod with a service
        account; else exit 4."""
        mode = getattr(self.settings, "cluster_access", "kubectl")
        kubectl = KubectlAccess(self.settings, self.runner, self.env, self.time_left)
        if mode == "kubectl":
            kubectl.check()
            return kubectl
        api = ApiAccess(self.settings, self.env, self.time_left, clock=self.clock,
                        stopped=lambda: self.stop.is_set() or bool(self.signals.first()),
                        log=self.log)
        if mode == "api":
            api.check()
            return api
        try:
            kubectl.check()
            return kubectl
        except EnvironmentProblem as missing:
            why = api.unavailable()
            named = [k for k in ("context", "kubeconfig") if getattr(self.settings, k)]
            if named:           # they name a cluster: the pod's own may be another one
                why = "%s name%s a cluster for kubectl" % (" and ".join(named),
                                                          "s" if len(named) == 1 else "")
            if why is None:
                self.log("kubectl not found (%s): speaking to the API with this pod's service"
                         " account (cluster_access auto -> api)" % self.settings.kubectl)
                return api
            raise EnvironmentProblem("%s, and the API cannot be used instead: %s"
                                     % (missing.message, why), missing.code, hint=missing.hint)

    # -- probe -------------------------------------------------------------

    def probe(self):
        """Probe every distinct image at once (each in a thread, so a signal is seen
        at once); every probe ends before anything changes."""
        settings = self.settings
        results = {}
        opener = self.opener
        for ref in settings.images:
            if will_probe(ref, settings.probe):
                if opener is None:      # one for every probe: its sockets are per thread
                    opener = default_opener(env=self.env)
                self.probers[ref] = RegistryProbe(
                    ref, settings, opener, self.sleeper, self.clock, self.env, self.log,
                    self.http_timeout, deadline=self.deadline, stopped=self.stop.is_set)
            else:
                why = "probe is never" if settings.probe == "never" else "no external registry"
                self.log("probe %s: skipped (%s)" % (ref.text, why))
                results[ref] = ProbeResult("skipped", 0, ref.digest, image=ref.text)

        def probe_one(ref, prober):
            try:
                results[ref] = prober.run()
            except Exception as exc:  # noqa: BLE001 - a probe that breaks is unavailable
                results[ref] = ProbeResult("unavailable", prober.attempts, None, {
                    "code": "probe_failed", "message": "%s: %s" % (type(exc).__name__, exc)},
                    image=ref.text)
        self._threads = [threading.Thread(target=probe_one, args=item, daemon=True)
                         for item in self.probers.items()]
        for thread in self._threads:
            thread.start()
        for thread in self._threads:
            while thread.is_alive():
                self.check_signals()
                thread.join(_POLL)
        self.probes = [results[ref] for ref in settings.images]

    # -- read ----------------------------------------------------------------

    def read(self):
        """Every selected workload by name, one kind at a time: ``({Workload:
        object}, {Workload: ClusterError})``; a workload in neither is not there."""
        by_kind = {}
        for workload in self.settings.workloads:
            by_kind.setdefault(workload.kind, []).append(workload.name)
        objects, errors = {}, {}
        for kind, names in by_kind.items():
            reading = self.access.read(kind, names)
            objects.update((Workload(kind, n), o) for n, o in reading.objects.items())
            errors.update((Workload(kind, n), e) for n, e in reading.errors.items())
        return objects, errors

    # -- apply ---------------------------------------------------------------

    def apply(self):
        settings = self.settings
        objects, errors, failure = {}, {}, None
        if self.out_of_time():
            failure = ("deadline_exceeded", "not checked or changed: the run's deadline came"
                       " first")
        else:
            objects, errors = self.read()
        waits, changes = [], []
        for workload in settings.workloads:
            comp = self.new_component(workload)
            self.components.append(comp)
            error = errors.get(workload)
            if failure is not None:
                comp.fail(failure[0], failure[1], self.clock)
            elif error is not None:
                comp.fail(error.code, error.message, self.clock)
            elif self.out_of_time():
                comp.fail("deadline_exceeded", "not checked or changed: the run's deadline"
                          " (deadline_seconds: %g) came first" % settings.deadline_seconds,
                          self.clock)
            else:
                self.check_signals()
                outcome = self.carry_out(comp, objects.get(workload))
                if isinstance(outcome, _Wait):
                    waits.append(outcome)
                elif outcome is not None:
                    changes.append(outcome)
            if not settings.parallel:
                waits += self.patch(changes)
                changes = []
                if waits:
                    self.settle(waits)
                    waits = []
        waits += self.patch(changes)
        if waits:
            self.settle(waits)
        if failure is None and not objects and not errors:
            self.none_found()
        self.checks.verify()

    def none_found(self):
        """None of the selected workloads exists: most likely the wrong namespace or
        context, which a run must not report as a success."""
        settings = self.settings
        in_pod = "in-cluster (the pod's service account)"
        if settings.context:
            where = 'context "%s"' % settings.context
        elif self.access.name == "api":
            where = in_pod
        else:
            context = self.context
            if context is None:
                try:
                    context = self.access.current_context()
                except ClusterError:
                    context = None
            where = 'context "%s"' % context if context else (
                in_pod if self.env.get("KUBERNETES_SERVICE_HOST") else "kubectl's current"
                " context")
        message = ('none of the selected workloads (%s) exists in namespace "%s", %s: check'
                   " the namespace and the context" % (
                       ", ".join(w.key for w in settings.workloads), settings.namespace, where))
        self.log(message)
        self.error = {"code": "none_found", "message": message}

    def carry_out(self, comp, obj):
        """Decide for one workload and carry the decision out; returns a ``_Wait``
        when its rollout must be waited for, ``(comp, decision)`` when a change is to
        be sent (``patch``), else None: the component is finished."""
        settings = self.settings
        decision = decide(comp.workload, obj, comp.target, settings.container,
                          settings.dry_run, settings.namespace, settings.listed,
                          digest=comp.digest if comp.probed else None)
        if decision.log:
            self.log(decision.log)
        if decision.plan is not None:
            comp.containers = decision.plan.containers
            comp.previous_image = decision.plan.previous_image
            comp.previous = decision.plan.previous
            comp.revision = _annotations(obj).get(REVISION)
            comp.uid = _meta(obj).get("uid")
            comp.selector = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels")
        if decision.action in ("patch", "plan"):
            refusal = self.checks.platforms(comp, obj)
            if refusal is not None:
                self.log("%s: %s: %s; not changed" % (comp.workload.key, refusal[0],
                                                       refusal[1]))
                decision = Decision("refuse", refusal[0], refusal[1])
        if decision.action == "refuse":
            comp.fail(decision.code, decision.message, self.clock)
        elif decision.action in ("skip", "unchanged", "plan"):
            comp.finish({"skip": "skipped", "plan": "planned"}.get(
                decision.action, decision.action), self.clock)
        elif decision.action == "wait":
            return self.wait_for(comp, "existing")
        else:
            return comp, decision
        return None

    def patch(self, changes):
        """Send the changes (``[(comp, decision)]``): workloads of one kind that take
        the same patch (the same containers and image) share the access's calls, so
        that many workloads cost few processes; returns their ``_Wait``s."""
        groups = {}
        for comp, decision in changes:
            body = json.dumps(build_patch(decision.plan, comp.image,
                                          "bump_image " + comp.workload.image.text),
                              separators=(",", ":"), sort_keys=True)
            groups.setdefault((comp.workload.kind, body), []).append((comp, decision))
        waits = []
        for (kind, body), members in groups.items():
            if self.out_of_time(margin=1.0):
                for comp, _ in members:
                    comp.fail("deadline_exceeded", "not changed: too little of the run's"
                              " deadline (deadline_seconds: %g) was left to change it"
                              % self.settings.deadline_seconds, self.clock)
                continue
            results = self.access.patch(kind, [c.name for c, _ in members], body)
            for comp, decision in members:
                error = results.get(comp.name)
                if error is not None and error.timed_out:
                    error = self.patch_unanswered(comp, error)
                if error is None:
                    waits += self.patched(comp, decision)
                else:
                    comp.fail(error.code, error.message, self.clock)
        return waits

    def patch_unanswered(self, comp, error):
        """A patch that got no answer in time may still have been applied: read the
        workload again (when there is time) and go on when it is at the target; else
        the error, saying so.  Returns None (applied) or a ``ClusterError``."""
        note = "; the change may still have been applied: run again to find out"
        if self.out_of_time(1.0):
            return ClusterError(error.message + note, error.code)
        reading = self.access.read(comp.workload.kind, [comp.name])
        obj = reading.objects.get(comp.name)
        if obj is not None:
            plan = plan_containers(obj, comp.workload, comp.target, self.settings.container)
            if plan.at_target:
                self.log("%s: the patch got no answer in time, but the workload now names"
                         " the target: it was applied" % comp.workload.key)
                return None
            return ClusterError(error.message + "; it was not applied (read again after)",
                                error.code)
        return ClusterError(error.message + note, error.code)

    def patched(self, comp, decision):
        """The change is applied: wait for its rollout, or finish (nothing to wait
        for: scaled to zero, OnDelete)."""
        comp.applied = True
        if not decision.wait:
            self.log(decision.note)
            comp.finish("changed", self.clock)
            return []
        return [self.wait_for(comp, "change")]

    def wait_for(self, comp, purpose, timeout=None):
        timeout = timeout or self.settings.rollout_timeout
        deadline, by_run = self.clock() + timeout, False
        if self.deadline is not None and self.deadline < deadline:
            deadline, by_run = self.deadline, True
        expected = comp.previous if purpose == "rollback" else comp.expected
        return _Wait(comp, deadline, timeout, purpose, expected, by_run)

    # -- settle: verdicts and rollbacks ---------------------------------------

    def settle(self, waits):
        """Wait for rollouts and finish each component as soon as its own verdict
        comes; a failed change is rolled back (when asked) at once, while the other
        rollouts still run."""
        self.rollouts.wait(waits, self.verdict)

    def verdict(self, w):
        """One rollout's verdict has come: finish its component, or start its rollback
        (returned, to be waited for too)."""
        comp = w.comp
        if w.purpose == "rollback":
            self.rollbacks.finish(w)
            return []
        if w.error is None:
            comp.rolled_out = True
            self.log("%s: rolled out" % comp.workload.key)
            comp.finish("changed" if w.purpose == "change" else "unchanged", self.clock,
                        w.ended_at)
            return []
        code, message = w.error
        comp.gone = w.gone
        self.log("%s: %s: %s" % (comp.workload.key, code, message))
        if w.purpose == "change" and self.settings.rollback_on_failure and code in (
                "rollout_failed", "rollout_timeout"):
            if w.gone:
                message += "; not rolled back: there is nothing left to undo"
            elif self.out_of_time(1.0):
                message += "; not rolled back: too little of the run's deadline was left"
            else:
                rollback = self.rollbacks.start(w)
                return [rollback] if rollback is not None else []  # else: finished, said
        comp.fail(code, message, self.clock, w.ended_at)
        return []


def _revision_text(comp):
    """The revision a rollback restores, as the messages say it."""
    if comp.workload.kind == "deployment" and comp.revision:
        return "revision %s" % comp.revision
    return "its previous revision"


class Rollbacks:
    """Undoing a workload's failed change, with the same result as ``kubectl rollout
    undo`` (``ClusterAccess.undo``), and saying so when it cannot be undone."""

    def __init__(self, engine):
        self.engine = engine

    def start(self, w):
        """Undo ``w``'s change as ``kubectl rollout undo`` does: a Deployment to the
        revision read before the change, a StatefulSet or DaemonSet to its previous
        revision.  Returns the rollback's ``_Wait``, or None when it failed (the
        component is then finished, its message ending ``rollback failed: …``)."""
        e = self.engine
        comp = w.comp
        code, message = w.error
        e.log("%s: rolling back to %s (%s)" % (comp.workload.key, _revision_text(comp),
                                                comp.previous_image))
        try:
            said = e.access.undo(comp.workload, comp.revision)
            if said:
                e.log("%s: %s" % (comp.workload.key, said))
            if comp.workload.kind == "statefulset":
                self.delete_stuck_pods(w)
        except ClusterError as exc:
            comp.fail(code, "%s; rollback failed: %s" % (message.rstrip("."), exc.message),
                      e.clock)
            return None
        timeout = min(e.settings.rollout_timeout, ROLLBACK_TIMEOUT_CAP)
        rollback = e.wait_for(comp, "rollback", timeout)
        rollback.failed = (code, message)
        if w.obj is not None:
            rollback.stale = progress_deadline_mark(w.obj)
        return rollback

    def delete_stuck_pods(self, w):
        """A StatefulSet does not replace a pod of the failed revision that never got
        ready, even once its template is reverted (Kubernetes' "forced rollback"):
        delete those pods, and only those, so that the old revision comes back."""
        e = self.engine
        state = e.checks.pods_of([w.comp])
        if state is None:
            return
        replicasets, pods = state
        stuck = [_meta(p).get("name") for p in new_pods(w.comp.uid, w.expected, replicasets,
                                                         pods, w.comp.digest) if not _ready(p)]
        if stuck:
            e.log("%s: deleting %s, stuck on the failed revision (a StatefulSet does not"
                  " replace such pods by itself)" % (w.comp.workload.key, ", ".join(stuck)))
            e.access.delete_pods(stuck)

    def finish(self, w):
        """The rollback's own wait has ended: the component is finished as an error
        either way, saying whether the old image is back."""
        e = self.engine
        comp = w.comp
        code, message = w.failed
        if w.error is None:
            comp.rolled_back = True
            comp.restored_image = comp.previous_image
            e.log("%s: rolled back to %s" % (comp.workload.key, comp.previous_image))
            comp.fail(code, "%s; rolled back to %s (%s)"
                      % (message.rstrip("."), _revision_text(comp), comp.previous_image),
                      e.clock)
        else:
            comp.fail(code, "%s; rollback failed: its rollout did not complete: %s"
                      % (message.rstrip("."), w.error[1]), e.clock)


class Checks:
    """What is checked around a change: the platforms before it (``check_platforms``:
    the image's, against the nodes the workload can run on) and the pods after it
    (verification), with the one read of ReplicaSets and Pods that fail fast uses too."""

    def __init__(self, engine):
        self.engine = engine
        self.nodes = None              # the nodes (or why they cannot be read), once read
        self.noted = set()             # notes said once per run

    def platforms(self, comp, obj):
        """The platform check of one workload about to change: None (go on), or the
        refusal ``(code, message)``.  Only probed images are checked; the nodes are
        read once per run.  What cannot be known is skipped with a note under
        ``auto``, refused as ``platform_unknown`` under ``always``."""
        e = self.engine
        mode = e.settings.check_platforms
        if mode == "never" or not comp.probed:
            return None
        probe = e.probes[e.settings.images.index(comp.workload.image)]
        if probe.platforms is None:
            why = "the platforms of image %s could not be learned from the registry" % (
                comp.workload.image.text)
        else:
            nodes = self.read_nodes()
            if isinstance(nodes, ClusterError):
                why = "the nodes cannot be read: %s (the check needs list on nodes, a" \
                      " ClusterRole: README.md, section RBAC)" % nodes.message
            else:
                comp.platforms_checked = True
                message = platform_refusal(comp.workload.image.text, probe.platforms,
                                           _pod_template(obj), nodes,
                                           comp.workload.kind == "daemonset")
                return None if message is None else ("platform_unsupported", message)
        if mode == "always":
            return "platform_unknown", why + "; not changed (check_platforms: always)"
        if why not in self.noted:
            self.noted.add(why)
            e.log("platform check skipped: %s" % why)
        return None

    def read_nodes(self):
        """The cluster's nodes, read once per run (a list), or the ``ClusterError``."""
        e = self.engine
        if self.nodes is None:
            try:
                self.nodes = e.access.nodes()
            except ClusterError as exc:
                self.nodes = exc
        return self.nodes

    def pods_of(self, comps):
        """The ReplicaSets and Pods of ``comps``' workloads, read once, narrowed by a
        label selector that covers all of them: ``([ReplicaSet], [Pod])``, or None
        when they cannot be read (said on stderr)."""
        e = self.engine
        selector = union_selector([c.selector for c in comps])
        replicasets = any(c.workload.kind == "deployment" for c in comps)
        try:
            return e.access.pods(selector, replicasets)
        except ClusterError as exc:
            e.log("cannot read pods for diagnostics and verification: %s" % exc.message)
            return None

    def verify(self):
        """Verify the pods of every rolled-out workload with one read."""
        e = self.engine
        todo = [c for c in e.components if c.rolled_out]
        if not todo or e.out_of_time(0.5):
            return
        state = self.pods_of(todo)
        if state is None:
            return
        replicasets, pods = state
        for comp in todo:
            comp.verified, reason = verify_pods(
                new_pods(comp.uid, comp.expected, replicasets, pods, comp.digest),
                comp.containers, comp.target, comp.digest, comp.manifests)
            e.log("%s: verification: %s" % (comp.workload.key, reason))


def bump(payload, *, runner=None, opener=None, sleeper=None, clock=None, env=None,
         on_event=None, progress=None, http_timeout=HTTP_TIMEOUT):
    """Run the tool on ``payload`` (a dict) and return a ``Result``.

    Raises ``PayloadError`` for an invalid payload and ``EnvironmentProblem`` when
    the cluster cannot be reached at all (no kubectl and no service account) or
    the context guard refuses; nothing is changed then.  ``runner``: runs kubectl
    (default ``ProcessRunner()``); ``opener``: urllib-style opener for the probe
    (default ``default_opener()``); ``sleeper(seconds)``, ``clock()`` (monotonic
    seconds), ``env`` (default ``os.environ``), ``on_event(dict)`` (each output
    line as it is ready), ``progress(str)`` (each progress line; default: silent)
    and ``http_timeout`` (seconds per registry request).  No signal handler is
    installed; ``deadline_seconds`` counts from this call.
    """
    settings = parse_payload(payload)
    engine = Engine(settings, runner=runner, opener=opener, sleeper=sleeper, clock=clock,
                    env=env, on_event=on_event, progress=progress, http_timeout=http_timeout)
    return engine.run()


# --------------------------------------------------------------------------
# 11. Reporting and the command line
# --------------------------------------------------------------------------


def render_text(events):
    """The ``--format text`` table: one aligned line per component (named
    ``kind/name`` unless a Deployment), or one line per failed probe, or the error."""
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
            name = e["component"] if e.get("kind", "deployment") == "deployment" else \
                "%s/%s" % (e["kind"], e["component"])
            text = e["image"]
            if e["error"]:
                text += "  %s: %s" % (e["error"]["code"], e["error"]["message"])
            rows.append((name, e["status"], text))
        elif e["event"] == "summary" and e.get("error"):
            rows.append(("summary", e["status"], "%s: %s" % (e["error"]["code"],
                                                             e["error"]["message"])))
    if not rows:
        return ""
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "".join("%s  %s  %s\n" % (a.ljust(w0), b.ljust(w1), c) for a, b, c in rows)


def report_lines(result):
    """The run's outcome for a person, the last progress lines (pure): what failed
    and why, and what the cluster is left with — under NoETL's local runtime the
    terminal is all an operator sees."""
    summary = result.summary()
    head = "result: %s (exit %d)" % (summary["status"], result.exit_code)
    unavailable = [p for p in result.probes or () if p.status == "unavailable"]
    if unavailable:
        lines = [head + ": nothing was changed"]
        for probe in unavailable:
            lines.append("  image %s unavailable: %s: %s" % (
                probe.image, probe.error["code"], probe.error["message"]))
        return lines
    counts = ", ".join("%d %s" % (summary[k], "error" if k == "errors" and summary[k] == 1
                                  else k) for k in (
        "changed", "unchanged", "planned", "skipped", "errors") if summary[k])
    lines = [head + (": " + counts if counts else "")]
    if summary["error"]:
        lines.append("  %s: %s" % (summary["error"]["code"], summary["error"]["message"]))
    if result.exit_code == 0:
        return lines
    for comp in result.components:
        key = comp.workload.key
        if comp.status == "error":
            lines.append("  %s: %s: %s" % (key, comp.error["code"], comp.error["message"]))
            if comp.rolled_back:
                lines.append("    %s is back on %s" % (key, comp.restored_image))
            elif comp.gone:
                lines.append("    %s is gone: it was deleted during its rollout" % key)
            elif comp.applied:
                lines.append("    %s is left on %s (its change stays applied)"
                             % (key, comp.image))
        elif comp.status == "changed":
            lines.append("  %s: changed: now %s" % (key, comp.image))
    return lines


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
        description=textwrap.fill(
            "Move Kubernetes workloads (default: the Deployments %s in namespace %s) to new"
            " container images: probe the registry, set the image where needed, wait for the"
            " rollouts, report JSON lines." % (", ".join(DEFAULT_DEPLOYMENTS),
                                               DEFAULT_NAMESPACE), 79),
        epilog=payload_help() + "\n\nExit codes: 0 ok, 1 a component failed or none was"
               " found, 2 bad input,\n3 image unavailable, 4 kubectl missing or wrong"
               " context, 130/143 interrupted.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--payload", metavar="JSON|@FILE|-",
                        help="the payload: a JSON object, @file to read one, - for stdin")
    source.add_argument("--payload-lines", metavar="FILE|-",
                        help="the payload as KEY=VALUE lines, every key once (the form a"
                             " NoETL shell step renders; see README)")
    parser.add_argument("--image", help="target image (overrides the payload)")
    parser.add_argument("--namespace", help="namespace (overrides the payload)")
    parser.add_argument("--deployment", action="append", metavar="NAME",
                        help="a workload (NAME or KIND/NAME) to bump; repeat for several"
                             " (overrides the payload)")
    parser.add_argument("--dry-run", action="store_true", default=None,
                        help="probe and read, report what would change, change nothing")
    parser.add_argument("--format", choices=("jsonl", "text", "summary"), default="jsonl",
                        help="stdout: JSON lines (default), a text table, or only the"
                             " summary line")
    parser.add_argument("--log-dir", nargs="?", const="", metavar="DIR",
                        help="also keep this run's JSON lines and progress lines in DIR"
                             " (default %s): <time>-<pid>.jsonl and .log, and"
                             " last.jsonl/last.log pointing at them; the %d newest runs"
                             " are kept" % (_LOG_DIR_TEXT, LOG_KEEP))
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


_LOG_DIR_TEXT = "$BUMP_IMAGE_LOG_DIR, else $TMPDIR/bump_image-<uid>"


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
        return _strict_json(text)
    except ValueError as exc:
        raise PayloadError("the payload is not valid JSON: %s" % exc)
    except RecursionError:
        raise PayloadError("the payload is nested too deeply")


def _read_payload(source, stdin, at_file=True):
    """The payload text from ``-`` (stdin), ``@FILE`` (or FILE, for the lines), or
    the argument itself."""
    if source == "-":
        stream = getattr(stdin, "buffer", stdin)
        raw = stream.read(PAYLOAD_LIMIT + 1)
        where = "stdin"
    elif source.startswith("@") or not at_file:
        where = source[1:] if at_file else source
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
    """The payload dict: ``--payload`` or ``--payload-lines`` with the override
    flags applied."""
    if args.payload is None and args.payload_lines is None and args.image is None:
        raise UsageError("no payload: give --payload JSON|@FILE|- (or --payload-lines) or at"
                         " least --image", hint="see bump_image --help")
    payload = {}
    if args.payload is not None:
        payload = load_payload(_read_payload(args.payload, stdin))
        if not isinstance(payload, dict):
            raise PayloadError("the payload must be a JSON object, got %s" % _describe(payload))
    elif args.payload_lines is not None:
        payload = parse_payload_lines(_read_payload(args.payload_lines, stdin, at_file=False))
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


class Signals:
    """SIGINT and SIGTERM for the command line (main thread only).

    While the payload is read (``raising``), the first signal raises
    ``Interrupted``: nothing has been contacted yet.  Once the run has started the
    handler only records the signal; the run checks ``first()`` where it waits (the
    kubectl runner, the wait loop, between workloads, the probe) and a second signal
    (``count()`` > 1) cuts its clean-up short.
    """

    def __init__(self):
        self.received = []
        self.raising = True
        self.saved = {}

    def first(self):
        return self.received[0] if self.received else None

    def count(self):
        return len(self.received)

    def _handler(self, signum, frame):
        self.received.append(signum)
        if self.raising and len(self.received) == 1:
            raise Interrupted(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self.saved.items():
            signal.signal(sig, old)


class _Output:
    """stdout: JSON lines as they come, the text table or the summary line at the
    end; every line also goes to the kept JSON-lines file, when there is one."""

    def __init__(self, stream):
        self.stream = stream
        self.format = "jsonl"
        self.events = []
        self.keep = None               # the kept .jsonl file (--log-dir)
        self.kept = None               # ... and its path
        self.progress_log = None       # the kept .log file

    def write(self, event):
        line = json.dumps(event) + "\n"
        if self.keep is not None:
            self.keep.write(line)
            self.keep.flush()
        if self.format == "jsonl":
            self.stream.write(line)
            self.stream.flush()
        else:
            self.events.append(event)

    def close(self):
        if self.format == "text":
            self.stream.write(render_text(self.events))
        elif self.format == "summary" and self.events:
            self.stream.write(json.dumps(self.events[-1]) + "\n")
        self.stream.flush()
        for kept in (self.keep, self.progress_log):
            if kept is not None:
                kept.close()


LOG_KEEP = 50          # runs whose kept logs stay in the folder; older ones are removed


def open_log_files(folder, env):
    """This run's ``<time>-<pid>.jsonl`` and ``.log`` in ``folder`` (or the default,
    a folder of this user's own), with ``last.jsonl``/``last.log`` pointing at
    them, and the oldest runs' files removed (``LOG_KEEP`` runs stay).

    Returns ``((jsonl file, log file, jsonl path), None)``, or ``((None, None,
    None), why)`` when no log can be kept: the folder must be a real folder (not a
    link), owned by this user and not writable by others.  Every file is made relative to the folder
    opened once (``O_NOFOLLOW``), so nothing is written through a link swapped in
    after the check."""
    folder = folder or env.get("BUMP_IMAGE_LOG_DIR") or os.path.join(
        env.get("TMPDIR") or "/tmp", "bump_image-%d" % os.getuid())  # noqa: S108
    dfd = None
    try:
        try:
            os.makedirs(folder, mode=0o700)
        except FileExistsError:
            pass
        if stat.S_ISLNK(os.lstat(folder).st_mode):
            return (None, None, None), "%s is a symbolic link, not a folder" % folder
        dfd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
                      | getattr(os, "O_NOFOLLOW", 0))
        info = os.fstat(dfd)
        if info.st_uid != os.getuid() or info.st_mode & 0o022:
            return (None, None, None), ("%s is not a folder of this user's own (owned by uid %d,"
                                  " mode %o: writable only by its owner is required)"
                                  % (folder, info.st_uid, info.st_mode & 0o777))
        base = stem = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-%d" % os.getpid()
        names = set(os.listdir(dfd))
        for again in range(2, 100):     # another run of this process in the same second
            if stem + ".jsonl" not in names:
                break
            stem = "%s-%d" % (base, again)
        files = []
        for suffix in (".jsonl", ".log"):
            fd = os.open(stem + suffix, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | getattr(os, "O_NOFOLLOW", 0), 0o600, dir_fd=dfd)
            files.append(os.fdopen(fd, "w", encoding="utf-8"))
            link = "last" + suffix
            try:
                os.unlink(link + ".new", dir_fd=dfd)
            except FileNotFoundError:
                pass
            os.symlink(stem + suffix, link + ".new", dir_fd=dfd)
            os.replace(link + ".new", link, src_dir_fd=dfd, dst_dir_fd=dfd)
        _prune_logs(dfd, names | {stem + ".jsonl"})
        return (files[0], files[1], os.path.join(folder, stem + ".jsonl")), None
    except OSError as exc:
        return (None, None, None), "cannot keep the log in %s: %s" % (folder, exc.strerror or exc)
    finally:
        if dfd is not None:
            os.close(dfd)


_RUN_LOG_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9]+(?:-[0-9]+)?\.(?:jsonl|log)")


def _prune_logs(dfd, names):
    """Remove the kept files of all but the ``LOG_KEEP`` newest runs (the names sort
    by their UTC time)."""
    runs = sorted({n.rsplit(".", 1)[0] for n in names if _RUN_LOG_RE.fullmatch(n)})
    for stem in runs[:-LOG_KEEP]:
        for suffix in (".jsonl", ".log"):
            try:
                os.unlink(stem + suffix, dir_fd=dfd)
            except OSError:
                pass


def _process_age():
    """Seconds since this process started (Linux: /proc/self/stat), else 0."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[19])             # field 22, starttime, in clock ticks after boot
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf(
            "SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def main(argv=None, *, stdin=None, stdout=None, stderr=None, env=None, runner=None,
         opener=None, sleeper=None, clock=None):
    """The command line; returns the exit code (see the module docstring).  As a
    program (``argv`` None), ``deadline_seconds`` counts from the process's start."""
    started = clock() if clock is not None else time.monotonic() - (
        _process_age() if argv is None else 0.0)
    clock = clock if clock is not None else time.monotonic
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    env = os.environ if env is None else env
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
        if args.log_dir is not None:
            (out.keep, out.progress_log, out.kept), why = open_log_files(args.log_dir, env)
            if why:
                stderr.write("bump_image: not keeping a log: %s\n" % why)
        progress = Progress(stderr, out.progress_log)
        with Signals() as signals:
            try:
                settings = parse_payload(payload_from_args(args, stdin))
                signals.raising = False
                engine = Engine(settings, runner=runner, opener=opener, sleeper=sleeper,
                                clock=clock, env=env, on_event=out.write, progress=progress,
                                signals=signals, started=started)
                result = engine.run()
                code = result.exit_code
                for line in report_lines(result):
                    progress(line)
                if out.kept is not None:
                    progress("the lines are kept in %s" % out.kept)
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
        Progress(stderr, out.progress_log)("%s (exit %d): %s%s" % (
            exc.code, exc.exit_code, exc.message, " (%s)" % exc.hint if exc.hint else ""))
        out.close()
        return exc.exit_code
    except BrokenPipeError:
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug still ends in one JSON line, no traceback
        out.write({"event": "error", "error": {
            "code": "internal_error", "message": "%s: %s" % (type(exc).__name__, exc),
            "hint": "please report this with the command's stderr"}, "exit_code": 1})
        out.close()
        return 1


if __name__ == "__main__":
    sys.exit(main())
