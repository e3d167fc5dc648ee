"""A real CNCF distribution registry with Docker token auth, for tests.

This module starts Debian's ``docker-registry`` binary (CNCF distribution
2.8.x) on 127.0.0.1 with ``auth.token`` enabled, next to a small token server
written with :mod:`http.server`.  It needs only the Python standard library,
the ``docker-registry`` binary and the ``openssl`` command line tool, and runs
on Python 3.8 through 3.13.

Usage::

    from registry_harness import DistributionRegistry, FULL_ACCEPT

    with DistributionRegistry(users={"alice": "s3cr3t-Pa55"},
                              private={"noetl/private": {"alice"}}) as reg:
        digest = reg.push_image("noetl/app", "v1", kind="docker")
        # HEAD {reg.base_url}/v2/noetl/app/manifests/v1 -> 401 + Bearer challenge
        # GET  {reg.token_server.realm}?service=...&scope=repository:noetl/app:pull
        # HEAD again with "Authorization: Bearer <token>" -> 200, digest
        print(reg.token_server.requests)   # what reached the token server

Skip tests when :func:`docker_registry_path` returns ``None``.

How the tokens are made acceptable to distribution 2.8
------------------------------------------------------
At start-up an RSA key and a self-signed certificate are generated with the
``openssl`` CLI into a temporary directory.  The certificate is the
registry's ``auth.token.rootcertbundle``.  Tokens are compact JWS (RS256):
the header is ``{"typ": "JWT", "alg": "RS256", "x5c": [<base64 DER of the
certificate>]}``; the signature is ``openssl dgst -sha256 -sign key.pem``
over ``base64url(header) + "." + base64url(claims)``.  Distribution 2.8
(``registry/auth/token/token.go``) checks, in this order: ``iss`` is the
configured issuer, ``aud`` (a plain string in 2.8) is the configured
service, ``exp``/``nbf`` with 60 s of leeway, that the first ``x5c``
certificate chains to a certificate of the root bundle (a self-signed
certificate that *is* in the bundle verifies), and finally the signature
with that certificate's public key.  The ``access`` claim lists
``{"type": "repository", "name": ..., "actions": [...]}`` entries.

Observed behaviour of distribution 2.8.2 (see tests/test_registry_harness.py)
---------------------------------------------------------------------------
* ``GET /v2/`` without a token is ``401`` with
  ``WWW-Authenticate: Bearer realm="...",service="..."``; a manifest request
  adds ``scope="repository:<name>:pull"``.
* A token whose ``access`` does not cover the request (anonymous token for a
  private repository) is also answered ``401`` -- with
  ``error="insufficient_scope"`` in the challenge -- never ``403``.  An
  unparsable or unverifiable token gives ``401`` with
  ``error="invalid_token"``.
* HEAD and GET behave alike (HEAD without a body).  With the full Accept list
  (:data:`FULL_ACCEPT`) every kind answers ``200`` with the pushed digest in
  ``Docker-Content-Digest`` and the pushed media type in ``Content-Type``.
* An OCI image manifest requested with an Accept header that lacks
  ``application/vnd.oci.image.manifest.v1+json`` (Docker types only, ``*/*``
  or no Accept at all) is ``404 MANIFEST_UNKNOWN`` ("OCI manifest found, but
  accept header does not support OCI manifests"); an OCI index likewise
  needs ``application/vnd.oci.image.index.v1+json`` ("OCI index found, but
  accept header does not support OCI indexes").
* A Docker manifest list requested with only the Docker schema 2 type is
  answered with its linux/amd64 child manifest (``200``, the *child's*
  digest).  A Docker schema 2 manifest (or list) requested without the
  schema 2 type is converted to schema 1 on the fly
  (``application/vnd.docker.distribution.manifest.v1+prettyjws``, ``200``, a
  digest that matches nothing that was pushed).
"""


import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import uuid

import registry_common as common
from registry_common import (  # re-exported: part of this module's API
    FULL_ACCEPT,
    MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
)

__all__ = [
    "MEDIA_OCI_INDEX",
    "MEDIA_OCI_MANIFEST",
    "MEDIA_DOCKER_LIST",
    "MEDIA_DOCKER_MANIFEST",
    "FULL_ACCEPT",
    "PUSH_KINDS",
    "HarnessError",
    "docker_registry_path",
    "openssl_path",
    "free_port",
    "TokenServer",
    "DistributionRegistry",
]

#: ``kind`` values understood by :meth:`DistributionRegistry.push_image`,
#: mapped to the media type the tag ends up pointing at.
PUSH_KINDS = {
    "docker": MEDIA_DOCKER_MANIFEST,
    "oci": MEDIA_OCI_MANIFEST,
    "oci-index": MEDIA_OCI_INDEX,
    "docker-list": MEDIA_DOCKER_LIST,
}

_CONFIG_MEDIA = {
    "docker": "application/vnd.docker.container.image.v1+json",
    "oci": "application/vnd.oci.image.config.v1+json",
}
_LAYER_MEDIA = {
    "docker": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "oci": "application/vnd.oci.image.layer.v1.tar+gzip",
}


class HarnessError(RuntimeError):
    """The registry or token server could not be started or used."""


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------


def docker_registry_path():
    """Return the path of the distribution binary, or ``None``.

    ``$BUMP_IMAGE_DOCKER_REGISTRY`` may name another binary; otherwise
    ``docker-registry`` on ``$PATH`` or ``/usr/bin/docker-registry``.
    """
    candidates = [
        os.environ.get("BUMP_IMAGE_DOCKER_REGISTRY"),
        shutil.which("docker-registry"),
        "/usr/bin/docker-registry",
    ]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def openssl_path():
    """Return the path of the ``openssl`` CLI, or ``None``."""
    found = shutil.which("openssl")
    if found:
        return found
    if os.path.isfile("/usr/bin/openssl"):
        return "/usr/bin/openssl"
    return None


def free_port():
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
    finally:
        sock.close()


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _sha256_digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _run_openssl(args, stdin=None, timeout=60):
    exe = openssl_path()
    if exe is None:
        raise HarnessError("the openssl command line tool is not installed")
    proc = subprocess.run(
        [exe] + list(args),
        input=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise HarnessError(
            "openssl %s failed (%d): %s"
            % (" ".join(args[:2]), proc.returncode, proc.stderr.decode("utf-8", "replace"))
        )
    return proc.stdout


def _generate_signing_material(directory):
    """Create ``token-key.pem`` (RSA 2048) and a self-signed certificate."""
    key = os.path.join(directory, "token-key.pem")
    cert = os.path.join(directory, "token-cert.pem")
    _run_openssl(
        [
            "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", key, "-out", cert, "-days", "2",
            "-subj", "/CN=bump-image-test-token-signer",
            "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
        ]
    )
    return key, cert


def _pem_to_der_b64(cert_path):
    """Base64 (standard alphabet, no newlines) of the certificate's DER."""
    with open(cert_path) as handle:
        lines = handle.read().strip().splitlines()
    body = [line.strip() for line in lines if line and not line.startswith("-----")]
    der = base64.b64decode("".join(body))
    return base64.b64encode(der).decode("ascii")


# ---------------------------------------------------------------------------
# token server
# ---------------------------------------------------------------------------


class TokenServer:
    """Docker token protocol server (``GET /token``) signing RS256 JWTs.

    Access rules:

    * ``pull`` on a repository is granted to everybody (also anonymous) unless
      the repository is a key of ``private``; then only to the users in
      ``private[repo]`` (and the ``pushers``) who sent correct Basic
      credentials.
    * ``push`` (and ``delete``/``*``) is granted only to users in ``pushers``.
    * Anything not granted is silently dropped: the token is still issued,
      with fewer (possibly no) actions, as real token servers do; the registry
      then refuses the request.
    * Wrong Basic credentials (unknown user / wrong password) get ``401``.

    ``requests`` logs every request received, as dicts with ``method``,
    ``path``, ``query`` (dict of lists), ``scopes`` (list of str),
    ``service``, ``account``, ``authorization_present`` (bool),
    ``auth_scheme`` (e.g. ``"Basic"`` or ``None``), ``user`` (the decoded
    user name or ``None``), ``authenticated`` (the password matched),
    ``granted`` (the ``access`` claim issued), ``status`` and ``time``.
    Passwords are never stored or printed.
    """

    def __init__(self, key_path, cert_path, service, issuer, users=None,
                 private=None, pushers=(), expires_in=300):
        self.key_path = key_path
        self.cert_path = cert_path
        self.service = service
        self.issuer = issuer
        self.users = dict(users or {})
        self.private = {repo: set(members) for repo, members in (private or {}).items()}
        self.pushers = set(pushers)
        self.expires_in = expires_in
        self.requests = []
        self._lock = threading.Lock()
        self._x5c = _pem_to_der_b64(cert_path)
        self._server = None
        self._thread = None

    # -- lifecycle --------------------------------------------------------
    def start(self):
        self._server = common.QuietThreadingServer(("127.0.0.1", 0), common.handler_class(self._handle))
        self._thread = common.serve_in_thread(self._server, "token-server", poll_interval=0.1)
        return self

    def stop(self):
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        common.shut_down(server, thread)

    @property
    def port(self):
        if self._server is None:
            raise HarnessError("token server is not running")
        return self._server.server_address[1]

    @property
    def realm(self):
        """The ``realm`` URL of the Bearer challenge (``http://127.0.0.1:P/token``)."""
        return "http://127.0.0.1:%d/token" % self.port

    # -- tokens ---------------------------------------------------------
    def allowed_actions(self, user, repository, actions):
        """Return the subset of ``actions`` that ``user`` (``None`` = anonymous) gets."""
        granted = []
        for action in actions:
            if action == "pull":
                members = self.private.get(repository)
                if members is None or (user is not None and (
                        user in members or user in self.pushers)):
                    granted.append(action)
            elif user is not None and user in self.pushers:
                granted.append(action)
        return granted

    def issue(self, subject, access, now=None):
        """Return a signed JWT for ``subject`` with the given ``access`` claim."""
        now = int(time.time() if now is None else now)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": self.issuer,
            "sub": subject or "",
            "aud": self.service,
            "exp": now + int(self.expires_in),
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode("utf-8"))
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
        )
        signature = _run_openssl(
            ["dgst", "-sha256", "-sign", self.key_path],
            stdin=signing_input.encode("ascii"),
        )
        return signing_input + "." + _b64url(signature)

    def _handle(self, handler):
        length = int(handler.headers.get("Content-Length") or 0)
        asked = common.TokenRequest.read(handler, handler.rfile.read(length) if length else b"")
        user, authenticated = asked.user, False
        if asked.authorization:
            authenticated = user is not None and self.users.get(user) == asked.password
        record = {
            "method": asked.method,
            "path": asked.path,
            "query": asked.query,
            "scopes": list(asked.query.get("scope", [])),
            "service": (asked.query.get("service") or [None])[0],
            "account": (asked.query.get("account") or [None])[0],
            "authorization_present": bool(asked.authorization),
            "auth_scheme": asked.auth_scheme,
            "user": user,
            "authenticated": authenticated,
            "granted": None,
            "status": None,
            "time": time.time(),
        }
        with self._lock:
            self.requests.append(record)

        if asked.method != "GET" or asked.path != "/token":
            return self._reply(handler, record, 404, {"errors": [{"code": "NOT_FOUND"}]})
        if asked.authorization and not authenticated:
            return self._reply(
                handler, record, 401,
                {"errors": [{"code": "UNAUTHORIZED", "message": "incorrect username or password"}]},
                extra={"WWW-Authenticate": 'Basic realm="%s"' % self.service},
            )

        access = []
        for scope in record["scopes"]:
            parsed_scope = common.parse_scope(scope)
            if parsed_scope is None or parsed_scope[0] != "repository":
                continue
            _, name, actions = parsed_scope
            access.append({
                "type": "repository",
                "name": name,
                "actions": self.allowed_actions(user if authenticated else None, name, actions),
            })
        now = time.time()
        try:
            token = self.issue(user if authenticated else "", access, now=now)
        except Exception as exc:  # report signing problems to the client and the log
            return self._reply(handler, record, 500,
                               {"errors": [{"code": "INTERNAL", "message": str(exc)}]})
        record["granted"] = access
        self._reply(handler, record, 200, common.token_answer(
            token, ("token", "access_token"), int(self.expires_in), now))

    @staticmethod
    def _reply(handler, record, status, payload, extra=None):
        record["status"] = status
        common.write_answer(handler, *common.json_answer(status, payload, extra))


# ---------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------


class DistributionRegistry(common.Serving):
    """A ``docker-registry`` (distribution 2.8) subprocess with token auth.

    ``users`` maps user names to passwords (Basic credentials accepted by the
    token server); ``private`` maps repository names to the set of users who
    may pull them (all other repositories are public).  The harness adds its
    own push user (``pusher``); only it may push.

    Attributes after :meth:`start`: ``base_url`` (``http://127.0.0.1:PORT``),
    ``host`` (``127.0.0.1:PORT``), ``port``, ``token_server``
    (:class:`TokenServer`, with ``.requests`` and ``.realm``), ``service``,
    ``issuer``, ``workdir`` (temporary directory), ``log_path`` (registry
    log), ``cert_path`` (token signing certificate) and ``pushed``: a dict
    ``{(repo, tag): {"digest", "media_type", "kind", "children"}}``.
    """

    def __init__(self, users=None, private=None, service="bump-image-test-registry",
                 issuer="bump-image-test-issuer", binary=None, start_timeout=20.0,
                 log_level="warn", token_expires_in=300):
        self.service = service
        self.issuer = issuer
        self.binary = binary
        self.start_timeout = start_timeout
        self.log_level = log_level
        self.token_expires_in = token_expires_in
        self.users = dict(users or {})
        self.private = {repo: set(members) for repo, members in (private or {}).items()}
        self.pusher = "harness-pusher"
        self.pusher_password = "push-" + uuid.uuid4().hex
        self.pushed = {}
        self.token_server = None
        self.workdir = None
        self.log_path = None
        self.cert_path = None
        self.port = None
        self._proc = None
        self._log_handle = None
        self._push_tokens = {}

    # -- lifecycle (``with`` starts and stops: common.Serving) ------------
    def start(self):
        """Generate keys, start the token server and the registry; return self."""
        if self._proc is not None:
            return self
        binary = self.binary or docker_registry_path()
        if binary is None:
            raise HarnessError("docker-registry (CNCF distribution) is not installed")
        self.workdir = tempfile.mkdtemp(prefix="bump-image-registry-")
        try:
            key_path, self.cert_path = _generate_signing_material(self.workdir)
            users = dict(self.users)
            users[self.pusher] = self.pusher_password
            self.token_server = TokenServer(
                key_path, self.cert_path, self.service, self.issuer, users=users,
                private=self.private, pushers={self.pusher},
                expires_in=self.token_expires_in,
            ).start()
            last_error = None
            for _attempt in range(3):  # the free port may be taken in between
                try:
                    self._start_registry(binary)
                    return self
                except _PortInUse as exc:
                    last_error = exc
            raise HarnessError("docker-registry could not bind a port: %s" % last_error)
        except BaseException:
            self.stop()
            raise

    def _start_registry(self, binary):
        self.port = free_port()
        storage = os.path.join(self.workdir, "storage")
        config = {
            "version": "0.1",
            "log": {
                "level": self.log_level,
                "formatter": "text",
                "accesslog": {"disabled": True},
            },
            "storage": {
                "filesystem": {"rootdirectory": storage},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": "127.0.0.1:%d" % self.port,
                "secret": uuid.uuid4().hex,
            },
            "auth": {
                "token": {
                    "realm": self.token_server.realm,
                    "service": self.service,
                    "issuer": self.issuer,
                    "rootcertbundle": self.cert_path,
                },
            },
            "health": {"storagedriver": {"enabled": False}},
        }
        # JSON is valid YAML, and sidesteps every quoting question.
        config_path = os.path.join(self.workdir, "config.yml")
        with open(config_path, "w") as handle:
            json.dump(config, handle, indent=2)
        self.log_path = os.path.join(self.workdir, "registry-%d.log" % self.port)
        self._log_handle = open(self.log_path, "wb")
        self._proc = subprocess.Popen(
            [binary, "serve", config_path],
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        deadline = time.monotonic() + self.start_timeout
        last = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                text = self.log_text()
                self._terminate()
                if "address already in use" in text:
                    raise _PortInUse(text.strip()[-300:])
                raise HarnessError(
                    "docker-registry exited with code %s during start-up; log:\n%s"
                    % (self._proc_returncode, text)
                )
            try:
                status, _, _ = common.http("GET", self.base_url + "/v2/", timeout=2)
                if status == 401:
                    return
                last = "GET /v2/ answered %d" % status
            except (OSError, urllib.error.URLError) as exc:
                last = repr(exc)
            time.sleep(0.05)
        text = self.log_text()
        self._terminate()
        raise HarnessError(
            "docker-registry did not answer GET /v2/ with 401 within %.0fs (last: %s); log:\n%s"
            % (self.start_timeout, last, text)
        )

    def _terminate(self):
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()  # SIGTERM to this pid only
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            self._proc_returncode = proc.returncode
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    _proc_returncode = None

    def stop(self):
        """Stop the registry (SIGTERM, SIGKILL after 5 s) and the token server,
        then remove the temporary directory.  Safe to call twice."""
        self._terminate()
        if self.token_server is not None:
            self.token_server.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    @property
    def pid(self):
        return self._proc.pid if self._proc is not None else None

    @property
    def host(self):
        """``127.0.0.1:PORT`` -- the registry part of an image reference."""
        if self.port is None:
            raise HarnessError("registry is not running")
        return "127.0.0.1:%d" % self.port

    @property
    def base_url(self):
        """``http://127.0.0.1:PORT``."""
        return "http://" + self.host

    def log_text(self):
        """The registry's log so far (for failure messages)."""
        if self.log_path and os.path.exists(self.log_path):
            with open(self.log_path, "rb") as handle:
                return handle.read().decode("utf-8", "replace")
        return ""

    # -- tokens -----------------------------------------------------------
    def fetch_token(self, repository, actions="pull", user=None, password=None):
        """Fetch a token from the token server like a client would; return
        (status, parsed JSON or None)."""
        query = urllib.parse.urlencode({
            "service": self.service,
            "scope": "repository:%s:%s" % (repository, actions),
        })
        headers = {}
        if user is not None:
            headers["Authorization"] = common.basic_auth(user, password or "")
        status, _, body = common.http("GET", self.token_server.realm + "?" + query, headers=headers)
        try:
            return status, json.loads(body.decode("utf-8"))
        except ValueError:
            return status, None

    def push_token(self, repository):
        """A cached pull+push token for ``repository`` (harness pusher)."""
        token = self._push_tokens.get(repository)
        if token is None:
            status, payload = self.fetch_token(
                repository, "pull,push", self.pusher, self.pusher_password)
            if status != 200 or not payload:
                raise HarnessError("push token request failed: %s %r" % (status, payload))
            token = payload["token"]
            self._push_tokens[repository] = token
        return token

    def _authed(self, method, repository, path, headers=None, body=None):
        all_headers = {"Authorization": "Bearer " + self.push_token(repository)}
        all_headers.update(headers or {})
        url = path if path.startswith("http") else self.base_url + path
        return common.http(method, url, headers=all_headers, body=body)

    # -- pushes -----------------------------------------------------------
    def push_blob(self, repository, data):
        """Upload ``data`` as a blob (POST upload, then monolithic PUT); return digest."""
        digest = _sha256_digest(data)
        status, headers, body = self._authed("POST", repository, "/v2/%s/blobs/uploads/" % repository)
        if status != 202:
            raise HarnessError("starting blob upload: %d %r" % (status, body[:300]))
        location = urllib.parse.urljoin(self.base_url + "/", headers["Location"])
        separator = "&" if "?" in location else "?"
        location += separator + urllib.parse.urlencode({"digest": digest})
        status, headers, body = self._authed(
            "PUT", repository, location,
            headers={"Content-Type": "application/octet-stream"}, body=data)
        if status != 201:
            raise HarnessError("finishing blob upload: %d %r" % (status, body[:300]))
        if headers.get("Docker-Content-Digest") not in (None, digest):
            raise HarnessError("blob digest mismatch: %s" % headers.get("Docker-Content-Digest"))
        return digest

    def push_manifest(self, repository, reference, payload, media_type):
        """PUT the exact bytes ``payload`` as a manifest; return its digest
        after checking it against ``Docker-Content-Digest``."""
        digest = _sha256_digest(payload)
        status, headers, body = self._authed(
            "PUT", repository, "/v2/%s/manifests/%s" % (repository, reference),
            headers={"Content-Type": media_type}, body=payload)
        if status != 201:
            raise HarnessError("manifest PUT %s:%s answered %d: %s"
                               % (repository, reference, status, body[:500]))
        returned = headers.get("Docker-Content-Digest")
        if returned != digest:
            raise HarnessError("registry digest %s != pushed %s" % (returned, digest))
        return digest

    def _push_single(self, repository, tag, flavour, label, platform="linux/amd64"):
        """Upload a config (for ``platform``, ``os/arch[/variant]``) + one layer;
        return (manifest bytes, media type)."""
        layer_tar = _tiny_layer(("%s:%s:%s:%s" % (repository, tag, label, platform)
                                 ).encode("utf-8"))
        layer = _gzip(layer_tar)
        os_name, arch, variant = (platform.split("/") + [None])[:3]
        extra = {"variant": variant} if variant else {}
        config = json.dumps(dict({
            "architecture": arch,
            "os": os_name,
            "config": {"Labels": {"bump-image.test/ref": "%s:%s" % (repository, tag),
                                  "bump-image.test/variant": label}},
            "rootfs": {"type": "layers",
                       "diff_ids": [_sha256_digest(layer_tar)]},
            "history": [{"created_by": "registry_harness"}],
        }, **extra), sort_keys=True).encode("utf-8")
        config_digest = self.push_blob(repository, config)
        layer_digest = self.push_blob(repository, layer)
        media_type = MEDIA_DOCKER_MANIFEST if flavour == "docker" else MEDIA_OCI_MANIFEST
        manifest = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": _CONFIG_MEDIA[flavour], "size": len(config),
                       "digest": config_digest},
            "layers": [{"mediaType": _LAYER_MEDIA[flavour], "size": len(layer),
                        "digest": layer_digest}],
        }
        return json.dumps(manifest, indent=3).encode("utf-8"), media_type

    def push_image(self, repository, tag, kind="docker"):
        """Push a small image and tag it; return the tag's manifest digest.

        ``kind``:

        * ``"docker"`` -- Docker image manifest v2 schema 2
          (``application/vnd.docker.distribution.manifest.v2+json``);
        * ``"oci"`` -- OCI image manifest
          (``application/vnd.oci.image.manifest.v1+json``).  Distribution
          answers ``404`` for it unless the request's Accept lists the OCI
          manifest type;
        * ``"oci-index"`` -- OCI image index whose only child (an OCI image
          manifest for linux/amd64) is pushed by digest first; the tag points
          at the index only.  Needs the OCI index type in Accept;
        * ``"docker-list"`` -- the same with a Docker manifest list and a
          Docker schema 2 child.

        The digest is ``sha256:`` of the exact bytes pushed and is checked
        against the registry's ``Docker-Content-Digest``.  The config blob
        names ``repository:tag``, so every (repository, tag) gets a distinct
        digest.  Details land in ``self.pushed[(repository, tag)]``.
        """
        if kind not in PUSH_KINDS:
            raise ValueError("kind must be one of %s, not %r" % (sorted(PUSH_KINDS), kind))
        children = []
        if kind in ("docker", "oci"):
            payload, media_type = self._push_single(repository, tag, kind, kind)
        else:
            flavour = "oci" if kind == "oci-index" else "docker"
            child, child_type = self._push_single(repository, tag, flavour, kind + "-child")
            child_digest = _sha256_digest(child)
            self.push_manifest(repository, child_digest, child, child_type)
            children.append(child_digest)
            media_type = PUSH_KINDS[kind]
            payload = json.dumps({
                "schemaVersion": 2,
                "mediaType": media_type,
                "manifests": [{
                    "mediaType": child_type,
                    "size": len(child),
                    "digest": child_digest,
                    "platform": {"architecture": "amd64", "os": "linux"},
                }],
            }, indent=3).encode("utf-8")
        digest = self.push_manifest(repository, tag, payload, media_type)
        self.pushed[(repository, tag)] = {
            "digest": digest,
            "media_type": media_type,
            "kind": kind,
            "children": children,
        }
        return digest


    def push_platform_image(self, repository, tag, platforms, flavour="oci",
                            attestation=False, nested=False, index=True):
        """Push an image for ``platforms`` (``["linux/amd64", "linux/arm/v7", ...]``)
        and tag it; return the tag's digest.

        With ``index`` (the default): one manifest per platform, each with a config
        blob naming its os, architecture and variant, and an index (OCI index, or a
        Docker manifest list with ``flavour="docker"``) whose entries carry the
        platforms.  ``attestation``: a ``docker buildx``-style attestation manifest
        per platform (platform ``unknown/unknown``, annotations
        ``vnd.docker.reference.type: attestation-manifest`` and
        ``vnd.docker.reference.digest``).  ``nested``: the tagged index holds one
        entry, another index holding the platforms.  Without ``index``: one
        manifest, for the first platform, whose config blob says it.
        Details land in ``self.pushed[(repository, tag)]``."""
        if not index:
            payload, media_type = self._push_single(repository, tag, flavour, "single",
                                                    platforms[0])
            digest = self.push_manifest(repository, tag, payload, media_type)
            self.pushed[(repository, tag)] = {"digest": digest, "media_type": media_type,
                                              "kind": "single", "children": []}
            return digest
        entries, children = [], []
        for platform in platforms:
            child, child_type = self._push_single(repository, tag, flavour, "platform",
                                                  platform)
            child_digest = self.push_manifest(repository, _sha256_digest(child), child,
                                              child_type)
            children.append(child_digest)
            os_name, arch, variant = (platform.split("/") + [None])[:3]
            entry = {"mediaType": child_type, "size": len(child), "digest": child_digest,
                     "platform": dict({"architecture": arch, "os": os_name},
                                      **({"variant": variant} if variant else {}))}
            entries.append(entry)
            if attestation:
                note, note_type = self._push_single(repository, tag, "oci", "attestation",
                                                    "unknown/unknown")
                note_digest = self.push_manifest(repository, _sha256_digest(note), note,
                                                 note_type)
                entries.append({"mediaType": note_type, "size": len(note),
                                "digest": note_digest,
                                "platform": {"architecture": "unknown", "os": "unknown"},
                                "annotations": {
                                    "vnd.docker.reference.digest": child_digest,
                                    "vnd.docker.reference.type": "attestation-manifest"}})
        media_type = MEDIA_DOCKER_LIST if flavour == "docker" else MEDIA_OCI_INDEX
        payload = json.dumps({"schemaVersion": 2, "mediaType": media_type,
                              "manifests": entries}, indent=3).encode("utf-8")
        if nested:
            inner = self.push_manifest(repository, _sha256_digest(payload), payload,
                                       media_type)
            payload = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX,
                                  "manifests": [{"mediaType": media_type,
                                                 "size": len(payload), "digest": inner}]},
                                 indent=3).encode("utf-8")
            media_type = MEDIA_OCI_INDEX
            children.append(inner)
        digest = self.push_manifest(repository, tag, payload, media_type)
        self.pushed[(repository, tag)] = {"digest": digest, "media_type": media_type,
                                          "kind": "platforms", "children": children}
        return digest


class _PortInUse(HarnessError):
    pass


def _tiny_layer(content):
    """An uncompressed tar holding one small deterministic file."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("bump-image-test.txt")
        info.size = len(content)
        info.mtime = 0
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _gzip(data):
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as handle:
        handle.write(data)
    return buf.getvalue()
