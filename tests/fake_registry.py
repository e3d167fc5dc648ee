"""An in-process, scriptable OCI registry for fast and precise probe tests.

Standard library only (plus the ``openssl`` CLI when ``tls=True``); runs on
Python 3.8 through 3.13.  Several instances can run side by side, e.g. to
test a redirect to another host.

Usage::

    from fake_registry import FakeRegistry, Resp

    with FakeRegistry(auth=True) as fake:
        digest = fake.add_manifest("noetl/app", "v1")          # 200 when authorised
        fake.script("/v2/noetl/app/manifests/v2", [
            Resp(429, headers={"Retry-After": "1"}),            # 1st request
            Resp(503),                                          # 2nd request
            Resp(200, headers={"Docker-Content-Digest": "sha256:" + "a" * 64}),
        ])                                                      # 3rd and later
        ...  # run the code under test against fake.base_url / fake.host
        assert fake.requests[0]["headers"]["Accept"] == ...

Routes
------
* ``/v2/`` -- ``200 {}`` (``401`` + challenge when ``auth=True``).
* ``/v2/<name>/manifests/<reference>`` (HEAD/GET) -- the scripted responses
  for that path if any (see :meth:`FakeRegistry.script`; a script may be for
  one method only), else the manifests added with
  :meth:`FakeRegistry.add_manifest` (which may leave out the digest header,
  or appear only after a while), else ``404 MANIFEST_UNKNOWN``.
* ``/token`` -- the token endpoint: the Docker token protocol (``GET`` with
  ``service`` and ``scope`` in the query, Basic credentials) and the OAuth2
  refresh-token grant (``POST`` of a form with ``grant_type=refresh_token``,
  ``refresh_token``, ``service``, ``scope``, ``client_id``; answered with
  ``access_token``), behaviour set by ``token_mode`` and friends.
* Any path can be scripted, ``/token`` included; scripts win
  (``Resp(builtin=True)`` in a script falls back to the route above).

Auth (``auth=True``) behaves like Docker Hub / distribution: a manifest
request without a valid ``Authorization: Bearer <token>`` gets ``401`` with
``WWW-Authenticate: Bearer realm="<base>/token",service="fake",
scope="repository:<name>:pull"`` (plus ``error="invalid_token"`` or
``error="insufficient_scope"`` when a token was sent but is unknown, expired
or for another scope).  Tokens are opaque random strings remembered with the
scopes granted.  Knobs (constructor arguments, also plain attributes that
can be changed while the server runs):

* ``token_mode``: ``"token"`` (JSON ``{"token", "expires_in",
  "issued_at"}``), ``"both"`` (``token`` and ``access_token``),
  ``"access_token"`` (only ``access_token``), ``"not-json"`` (200 with an
  HTML body), ``"no-token"`` (200 JSON without a token), ``"error"`` (500).
* ``users={"alice": "pw"}``: Basic credentials for the token endpoint.  With
  ``private=None`` every token request needs them (401 otherwise); with
  ``private={"repo", ...}`` only those repositories do (anonymous requests
  get a token without access to them, as real registries do).  Wrong
  credentials always get 401.
* ``refresh_tokens={"<identity token>": "alice"}``: refresh tokens (what
  ``docker login`` stores as ``identitytoken``) the OAuth2 grant accepts,
  each for a user (who may pull ``private`` repositories); an unknown one is
  ``400 invalid_grant``, another ``grant_type`` ``400
  unsupported_grant_type``.
* ``expires_in``: put into the token JSON and, when a number, enforced (the
  registry treats the token as invalid after that many seconds); ``None``
  omits it and tokens never expire; anything else (``"soon"``) is sent as
  it is and not enforced.
* ``reject_tokens=True``: the registry answers 401 even with a valid token.
* ``challenge=False``: 401 responses carry no ``WWW-Authenticate`` header.
* ``realm``: another token URL for the challenge (e.g. a second instance).
* ``strict_accept=True``: a manifest added with :meth:`add_manifest` is
  ``404`` unless its media type appears in the request's Accept header
  (what distribution does for OCI content).

Every request is appended to ``requests`` (see :meth:`FakeRegistry.requests`):
dicts with ``method``, ``path``, ``query`` (dict of lists), ``raw_query``,
``headers`` (case-insensitive dict, values verbatim: ``Authorization``,
``Accept``, ...; repeated headers joined with ``", "``), ``header_list``
(raw ``(name, value)`` pairs), ``body`` (bytes, ``b""`` without one),
``form`` (a posted ``application/x-www-form-urlencoded`` body as a dict of
lists, else ``{}``), ``time``, ``status`` (``None`` for hung or dropped
requests) and ``tls`` (bool).

The media types, the auth-header helpers and the threaded server come from
``registry_common``, shared with ``registry_harness``.
"""


import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse

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
    "TOKEN_MODES",
    "Resp",
    "FakeRegistry",
    "make_tls_certificate",
]

TOKEN_MODES = ("token", "both", "access_token", "not-json", "no-token", "error")

_API_VERSION = {"Docker-Distribution-Api-Version": "registry/2.0"}
_MANIFEST_PATH = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)$")


class Resp:
    """One scripted response.

    ``Resp(404)``, ``Resp(200, headers={...}, body=b"...")``,
    ``Resp(hang=True)`` (never answer; the connection stays open until the
    server stops), ``Resp(drop=True)`` (close the connection without any
    response), ``Resp(503, delay=0.5)`` (answer after a pause),
    ``Resp(builtin=True)`` (answer as if the path were not scripted: e.g.
    ``[Resp(429), Resp(builtin=True)]`` for ``/token`` refuses the first
    token request and issues tokens after).

    ``Content-Length`` is added (``len(body)``) unless given in ``headers``;
    a HEAD response sends the headers only.  ``body`` may be ``str``.
    """

    def __init__(self, status=200, headers=None, body=b"", hang=False, drop=False,
                 delay=0.0, builtin=False):
        self.status = int(status)
        self.headers = dict(headers or {})
        self.body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        self.hang = bool(hang)
        self.drop = bool(drop)
        self.delay = float(delay)
        self.builtin = bool(builtin)

    def __repr__(self):
        if self.hang:
            return "Resp(hang=True)"
        if self.drop:
            return "Resp(drop=True)"
        if self.builtin:
            return "Resp(builtin=True)"
        return "Resp(%d, headers=%r, body=<%d bytes>)" % (self.status, self.headers, len(self.body))


class _Headers(dict):
    """A dict of request headers whose look-ups ignore case."""

    def _key(self, name):
        lowered = name.lower()
        for key in dict.keys(self):
            if key.lower() == lowered:
                return key
        return name

    def __getitem__(self, name):
        return dict.__getitem__(self, self._key(name))

    def __contains__(self, name):
        return dict.__contains__(self, self._key(name))

    def get(self, name, default=None):
        key = self._key(name)
        return dict.get(self, key, default)


def make_tls_certificate(directory, hosts=("127.0.0.1", "localhost", "::1")):
    """Create a self-signed CA-style certificate for ``hosts`` with openssl.

    Returns ``(cert_path, key_path)``.  The certificate carries
    subjectAltName entries (IP and DNS), ``basicConstraints=CA:TRUE`` and
    ``keyUsage`` so it can be used directly as a trust anchor
    (``ssl.create_default_context(cafile=cert_path)``), which also satisfies
    the strict X.509 checks of Python 3.13.
    """
    openssl = shutil.which("openssl") or "/usr/bin/openssl"
    cert = os.path.join(directory, "fake-registry-cert.pem")
    key = os.path.join(directory, "fake-registry-key.pem")
    alt = []
    for host in hosts:
        alt.append(("IP:" if re.match(r"^[0-9.]+$|:", host) else "DNS:") + host)
    proc = subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", cert, "-days", "2",
            "-subj", "/CN=fake-registry.test",
            "-addext", "subjectAltName=" + ",".join(alt),
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
            "-addext", "extendedKeyUsage=serverAuth",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=60,
    )
    if proc.returncode != 0:
        raise RuntimeError("openssl failed: " + proc.stderr.decode("utf-8", "replace"))
    return cert, key


class _Server(common.QuietThreadingServer):
    allow_reuse_address = True

    def __init__(self, owner, handler):
        self.owner = owner
        common.QuietThreadingServer.__init__(self, ("127.0.0.1", 0), handler)

    def finish_request(self, request, client_address):
        # Runs in the per-connection thread, so a slow or failing TLS
        # handshake never blocks the accept loop.
        owner = self.owner
        owner._track(request, True)
        try:
            context = owner._ssl_context
            if context is None:
                self.RequestHandlerClass(request, client_address, self)
                return
            request.settimeout(10)
            try:
                tls_sock = context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                owner._note_tls_error(client_address, exc)
                return
            tls_sock.settimeout(None)
            owner._track(tls_sock, True)
            try:
                self.RequestHandlerClass(tls_sock, client_address, self)
            finally:
                owner._track(tls_sock, False)
                try:
                    tls_sock.close()
                except OSError:
                    pass
        finally:
            owner._track(request, False)


class FakeRegistry(common.Serving):
    """Scriptable registry on ``127.0.0.1:<ephemeral port>`` (see module doc).

    Attributes: ``base_url`` (``http://`` or ``https://127.0.0.1:PORT``),
    ``host`` (``127.0.0.1:PORT``), ``port``, ``cert_path`` (PEM to trust when
    ``tls=True``, else ``None``), ``requests`` (request log),
    ``tokens`` (``{token: {"scopes", "user", "issued"}}``), ``tls_errors``
    (failed handshakes).
    """

    def __init__(self, auth=False, tls=False, users=None, private=None,
                 token_mode="token", expires_in=300, reject_tokens=False,
                 challenge=True, realm=None, service="fake", strict_accept=False,
                 refresh_tokens=None):
        if token_mode not in TOKEN_MODES:
            raise ValueError("token_mode must be one of %s" % (TOKEN_MODES,))
        self.auth = auth
        self.tls = tls
        self.users = dict(users or {})
        self.refresh_tokens = dict(refresh_tokens or {})
        self.private = None if private is None else set(private)
        self.token_mode = token_mode
        self.expires_in = expires_in
        self.reject_tokens = reject_tokens
        self.challenge = challenge
        self.realm = realm
        self.service = service
        self.strict_accept = strict_accept
        self.cert_path = None
        self.key_path = None
        self.tokens = {}
        self.tls_errors = []
        self._requests = []
        self._scripts = {}
        self._manifests = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._sockets = set()
        self._port = None
        self._server = None
        self._thread = None
        self._tmpdir = None
        self._ssl_context = None

    # -- lifecycle (``with`` starts and stops: common.Serving) ------------
    def start(self):
        """Start serving (in a daemon thread); return self."""
        if self._server is not None:
            return self
        self._stopping.clear()
        if self.tls:
            self._tmpdir = tempfile.mkdtemp(prefix="fake-registry-")
            self.cert_path, self.key_path = make_tls_certificate(self._tmpdir)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.cert_path, self.key_path)
            self._ssl_context = context
        self._server = _Server(self, common.handler_class(self._handle, "fake-registry/1.0"))
        self._port = self._server.server_address[1]
        self._thread = common.serve_in_thread(self._server, "fake-registry-%d" % self.port,
                                       poll_interval=0.05)
        return self

    def stop(self):
        """Stop serving, release hung handlers, close open connections and
        remove the certificate directory.  Never waits on hung handlers;
        safe to call twice."""
        self._stopping.set()
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        common.shut_down(server, thread)
        with self._lock:
            open_sockets = list(self._sockets)
            self._sockets.clear()
        for sock in open_sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    # -- addresses --------------------------------------------------------
    @property
    def port(self):
        """The listening port (kept after :meth:`stop`, for "connection
        refused" tests)."""
        if self._port is None:
            raise RuntimeError("FakeRegistry was never started")
        return self._port

    @property
    def host(self):
        """``127.0.0.1:PORT``."""
        return "127.0.0.1:%d" % self.port

    @property
    def base_url(self):
        """``http://127.0.0.1:PORT`` (``https://`` when ``tls=True``)."""
        return ("https://" if self.tls else "http://") + self.host

    @property
    def token_url(self):
        """The realm announced in challenges."""
        return self.realm or self.base_url + "/token"

    # -- configuration ----------------------------------------------------
    def script(self, path, responses, require_auth=None, method=None):
        """Answer requests for ``path`` (no query string) with ``responses``.

        One response is consumed per request; the last one repeats.
        ``require_auth``: ``None`` follows ``self.auth`` (with auth on, a
        request without a valid token is challenged and does not consume
        the script); ``False`` serves the script to everybody; ``True``
        demands a token even if ``self.auth`` is off.  ``method`` (e.g.
        ``"GET"``): script only that method's requests (a script for the
        method wins over one for every method, which ``None`` sets).
        """
        if isinstance(responses, Resp):
            responses = [responses]
        responses = list(responses)
        if not responses:
            raise ValueError("at least one response is needed")
        with self._lock:
            self._scripts[(path, method)] = {"responses": responses, "served": 0,
                                             "require_auth": require_auth}

    def served(self, path, method=None):
        """How many scripted responses were served for ``path`` (by the script
        set with that ``method``)."""
        with self._lock:
            entry = self._scripts.get((path, method))
            return entry["served"] if entry else 0

    def add_manifest(self, repository, reference, digest=None,
                     media_type=MEDIA_DOCKER_MANIFEST, body=None, send_digest=True,
                     after=0.0):
        """Serve a manifest for ``repository`` at ``reference`` (a tag) and at
        its digest; return the digest.

        ``body`` defaults to a small JSON manifest naming repository and
        reference; ``digest`` defaults to ``sha256:`` of ``body`` (give one
        to make the header lie).  ``send_digest=False``: answer without
        ``Docker-Content-Digest`` (and ``Etag``), as some registries and
        proxies do.  ``after``: the manifest appears only that many seconds
        from now (``404 MANIFEST_UNKNOWN`` until then), like a push that
        lands while a client polls.
        """
        if body is None:
            body = json.dumps({
                "schemaVersion": 2,
                "mediaType": media_type,
                "annotations": {"fake": "%s:%s" % (repository, reference)},
            }, sort_keys=True).encode("utf-8")
        elif isinstance(body, str):
            body = body.encode("utf-8")
        if digest is None:
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
        entry = {"digest": digest, "media_type": media_type, "body": body,
                 "send_digest": bool(send_digest), "visible_at": time.time() + after}
        with self._lock:
            self._manifests[(repository, reference)] = entry
            self._manifests[(repository, digest)] = entry
        return digest

    def remove_manifest(self, repository, reference):
        with self._lock:
            self._manifests.pop((repository, reference), None)

    def revoke_tokens(self):
        """Forget every issued token (clients must fetch new ones)."""
        with self._lock:
            self.tokens.clear()

    # -- request log ------------------------------------------------------
    @property
    def requests(self):
        """A copy of the request log (list of dicts, oldest first)."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, path_prefix):
        """Logged requests whose path starts with ``path_prefix``."""
        return [r for r in self.requests if r["path"].startswith(path_prefix)]

    @property
    def token_requests(self):
        return [r for r in self.requests if r["path"] == "/token"]

    @property
    def manifest_requests(self):
        return [r for r in self.requests if _MANIFEST_PATH.match(r["path"])]

    def clear_log(self):
        with self._lock:
            del self._requests[:]

    # -- internals ----------------------------------------------------------
    def _track(self, sock, add):
        with self._lock:
            if add:
                self._sockets.add(sock)
            else:
                self._sockets.discard(sock)

    def _note_tls_error(self, client_address, exc):
        with self._lock:
            self.tls_errors.append({"client": client_address, "error": repr(exc),
                                    "time": time.time()})

    def _log(self, handler, asked, body):
        headers = _Headers()
        for name, value in handler.headers.items():
            existing = headers.get(name)
            if existing is None:
                headers[name] = value
            else:
                headers[headers._key(name)] = existing + ", " + value
        record = {
            "method": handler.command,
            "path": asked.path,
            "query": asked.query,
            "raw_query": urllib.parse.urlsplit(handler.path).query,
            "headers": headers,
            "header_list": list(handler.headers.items()),
            "body": body,
            "form": asked.form,
            "time": time.time(),
            "status": None,
            "tls": self.tls,
        }
        with self._lock:
            self._requests.append(record)
        return record

    def _script_entry(self, path, method):
        return self._scripts.get((path, method)) or self._scripts.get((path, None))

    def _next_scripted(self, path, method):
        with self._lock:
            entry = self._script_entry(path, method)
            if entry is None:
                return None, None
            index = min(entry["served"], len(entry["responses"]) - 1)
            entry["served"] += 1
            return entry["responses"][index], entry["require_auth"]

    def _peek_script(self, path, method):
        """Return (scripted?, require_auth) for ``path`` and ``method``."""
        with self._lock:
            entry = self._script_entry(path, method)
            if entry is None:
                return False, None
            return True, entry["require_auth"]

    def _challenge_headers(self, scope=None, error=None):
        if not self.challenge:
            return {}
        return {"WWW-Authenticate": common.bearer_challenge(self.token_url, self.service, scope, error)}

    def _check_bearer(self, handler, repository):
        """Return None if authorised, else the error for the challenge."""
        value = common.bearer_token(handler.headers.get("Authorization"))
        if value is None:
            return ""  # no usable credentials: plain challenge
        if self.reject_tokens:
            return "invalid_token"
        with self._lock:
            info = self.tokens.get(value)
        if info is None:
            return "invalid_token"
        lifetime = self.expires_in
        if isinstance(lifetime, (int, float)) and not isinstance(lifetime, bool) \
                and time.time() > info["issued"] + lifetime:
            return "invalid_token"
        if repository is not None and not _grants(info["scopes"], repository, "pull"):
            return "insufficient_scope"
        return None

    def _token_user(self, asked):
        """``(user or None, None)`` for an accepted token request, else
        ``(None, answer)`` with the refusal to send."""
        if asked.method == "POST":  # OAuth2: only the refresh-token grant
            if asked.grant_type != "refresh_token":
                return None, _json(400, {"error": "unsupported_grant_type"})
            user = self.refresh_tokens.get(asked.refresh_token or "")
            if user is None:
                return None, _json(400, {"error": "invalid_grant",
                                         "error_description": "unknown refresh token"})
            return user, None
        if asked.authorization:
            if asked.user is None or self.users.get(asked.user) != asked.password:
                return None, _json(401, {"details": "incorrect username or password"},
                                   {"WWW-Authenticate": 'Basic realm="fake"'})
            return asked.user, None
        if self.users and self.private is None:
            return None, _json(401, {"details": "credentials required"},
                               {"WWW-Authenticate": 'Basic realm="fake"'})
        return None, None

    def _token_response(self, asked):
        mode = self.token_mode
        if mode == "error":
            return 500, {"Content-Type": "text/plain"}, b"token service unavailable\n"
        user, refusal = self._token_user(asked)
        if refusal is not None:
            return refusal
        granted = []
        for scope in asked.scopes:
            kind, name, actions = common.parse_scope(scope) or (None, None, [])
            if kind != "repository":
                continue
            allowed = [a for a in actions if a == "pull"]
            if self.private is not None and name in self.private and user is None:
                allowed = []
            granted.append((name, tuple(allowed)))
        if mode == "not-json":
            return 200, {"Content-Type": "text/html"}, b"<html><body>Welcome!</body></html>"
        if mode == "no-token":
            return _json(200, {"details": "no token for you", "expires_in": 300})
        token = secrets.token_urlsafe(24)
        now = time.time()
        with self._lock:
            self.tokens[token] = {"scopes": granted, "user": user, "issued": now}
        if asked.method == "POST":      # an OAuth2 answer names it access_token only
            fields = ("access_token",)
        else:
            fields = {"token": ("token",), "both": ("token", "access_token"),
                      "access_token": ("access_token",)}[mode]
        payload = common.token_answer(token, fields, self.expires_in, now)
        if asked.method == "POST":
            payload["scope"] = " ".join(asked.scopes)
        return _json(200, payload)

    def _builtin(self, handler, asked):
        """Default routes; returns (status, headers, body)."""
        path = asked.path
        if path == "/token":
            return self._token_response(asked)
        if path in ("/v2", "/v2/"):
            if self.auth:
                error = self._check_bearer(handler, None)
                if error is not None:
                    return _unauthorized(self._challenge_headers(None, error or None))
            return _json(200, {})
        match = _MANIFEST_PATH.match(path)
        if match is None:
            return _json(404, {"errors": [{"code": "NOT_FOUND", "message": "no route"}]})
        if handler.command not in ("GET", "HEAD"):
            return _json(405, {"errors": [{"code": "UNSUPPORTED", "message": "fake is read-only"}]})
        repository, reference = match.group("name"), match.group("reference")
        with self._lock:
            entry = self._manifests.get((repository, reference))
        if entry is None or time.time() < entry["visible_at"] or (
                self.strict_accept
                and entry["media_type"] not in common.accepted_types(handler.headers)):
            return _json(404, {"errors": [{"code": "MANIFEST_UNKNOWN",
                                           "message": "manifest unknown",
                                           "detail": {"Tag": reference}}]})
        headers = {"Content-Type": entry["media_type"]}
        if entry["send_digest"]:
            headers["Docker-Content-Digest"] = entry["digest"]
            headers["Etag"] = '"%s"' % entry["digest"]
        headers.update(_API_VERSION)
        return 200, headers, entry["body"]

    def _handle(self, handler):
        # Read the request body (keep-alive stays in sync; the log keeps it).
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        asked = common.TokenRequest.read(handler, body)
        record = self._log(handler, asked, body)

        path = asked.path
        match = _MANIFEST_PATH.match(path)
        repository = match.group("name") if match else None
        scripted, require_auth = self._peek_script(path, handler.command)
        if scripted:
            needs_auth = self.auth if require_auth is None else require_auth
        else:
            needs_auth = self.auth and (match is not None)
        if needs_auth and path != "/token":
            error = self._check_bearer(handler, repository)
            if error is not None:
                scope = "repository:%s:pull" % repository if repository else None
                status, headers, body = _unauthorized(
                    self._challenge_headers(scope, error or None))
                return self._send(handler, record, Resp(status, headers, body))
        resp = self._next_scripted(path, handler.command)[0] if scripted else None
        if resp is None or resp.builtin:
            resp = Resp(*self._builtin(handler, asked), delay=resp.delay if resp else 0.0)
        self._send(handler, record, resp)

    def _send(self, handler, record, resp):
        if resp.delay:
            if self._stopping.wait(resp.delay):
                handler.close_connection = True
                return
        if resp.hang:
            self._stopping.wait()  # released by stop()
            handler.close_connection = True
            return
        if resp.drop:
            handler.close_connection = True
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        record["status"] = resp.status  # before writing: the client may look at once
        common.write_answer(handler, resp.status, resp.headers, resp.body)


def _grants(scopes, repository, action):
    for name, actions in scopes:
        if name == repository and (action in actions or "*" in actions):
            return True
    return False


def _json(status, payload, headers=None):
    """A JSON answer with distribution's API-version header (and ``headers``)."""
    return common.json_answer(status, payload, dict(_API_VERSION, **(headers or {})))


def _unauthorized(challenge):
    return _json(401, {"errors": [{"code": "UNAUTHORIZED",
                                   "message": "authentication required"}]}, challenge)
