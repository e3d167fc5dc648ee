"""What the two test registries share: media types, auth headers, the token answer,
and the threaded HTTP server they both run on.

Used by ``fake_registry.FakeRegistry`` (the in-process, scriptable registry) and
``registry_harness`` (the real distribution registry and its token server).
Standard library only; Python 3.8 through 3.13.

Media types
    ``MEDIA_OCI_INDEX``, ``MEDIA_OCI_MANIFEST``, ``MEDIA_DOCKER_LIST``,
    ``MEDIA_DOCKER_MANIFEST``, ``MANIFEST_TYPES`` (the four, in that order) and
    ``FULL_ACCEPT`` (the four joined with ``", "``: what a manifest probe sends).
    ``accepted_types(headers)``: the media types of every ``Accept`` header.

Auth headers
    ``basic_auth(user, password)`` -> ``"Basic <base64>"``;
    ``decode_basic(value)`` -> ``(user, password)`` or ``(None, None)``;
    ``bearer_token(value)`` -> the token of ``"Bearer <token>"`` or ``None``;
    ``bearer_challenge(realm, service, scope=None, error=None)`` -> the
    ``WWW-Authenticate`` value; ``parse_challenge(value)`` -> ``(scheme, {param:
    value})``; ``parse_scope("repository:a/b:pull,push")`` -> ``("repository",
    "a/b", ["pull", "push"])`` or ``None``.

The token endpoint
    ``TokenRequest.read(handler, body)``: a token request as both endpoints see it
    (the Docker token GET with its query, or the OAuth2 POST with its form);
    ``token_answer(token, fields, expires_in, issued)``: the JSON object answered;
    ``rfc3339(timestamp)``.

A client
    ``http(method, url, headers=None, body=None, timeout=30, follow=False,
    context=None)`` -> ``(status, headers, body)``: urllib without
    ``$http_proxy``, redirects not followed unless ``follow``; an HTTP error
    status is a result, not an exception.

Serving
    ``json_answer(status, payload, headers)`` -> ``(status, headers, body)``;
    ``write_answer(handler, status, headers, body)``; ``QuietThreadingServer``;
    ``handler_class(dispatch, server_version=None)``; ``serve_in_thread(server,
    name, poll_interval)``; ``shut_down(server, thread)``; ``Serving`` (a mixin:
    ``with obj:`` calls ``start()`` and ``stop()``).
"""

import base64
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = [
    "MEDIA_OCI_INDEX",
    "MEDIA_OCI_MANIFEST",
    "MEDIA_DOCKER_LIST",
    "MEDIA_DOCKER_MANIFEST",
    "MANIFEST_TYPES",
    "FULL_ACCEPT",
    "accepted_types",
    "basic_auth",
    "decode_basic",
    "bearer_token",
    "bearer_challenge",
    "parse_challenge",
    "parse_scope",
    "TokenRequest",
    "http",
    "token_answer",
    "rfc3339",
    "json_answer",
    "write_answer",
    "QuietThreadingServer",
    "handler_class",
    "serve_in_thread",
    "shut_down",
    "Serving",
]

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST)

#: The Accept header a manifest probe should send: every media type a tag can
#: resolve to.  Distribution answers 404 for OCI content without it.
FULL_ACCEPT = ", ".join(MANIFEST_TYPES)

FORM = "application/x-www-form-urlencoded"


def accepted_types(headers):
    """Media types listed in all ``Accept`` headers, parameters stripped, lower case."""
    types = set()
    for header in headers.get_all("Accept") or []:
        for item in header.split(","):
            media = item.split(";")[0].strip().lower()
            if media:
                types.add(media)
    return types


# -- auth headers ---------------------------------------------------------------


def basic_auth(user, password):
    """The ``Authorization`` value for Basic credentials."""
    raw = ("%s:%s" % (user, password)).encode("utf-8")
    return "Basic " + base64.b64encode(raw).decode("ascii")


def decode_basic(header):
    """Return (user, password) from a ``Basic`` header value, or (None, None)."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None, None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None, None
    return user, password


def bearer_token(header):
    """The token of a ``Bearer <token>`` value; None for another scheme or none."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def bearer_challenge(realm, service=None, scope=None, error=None):
    """``Bearer realm="...",service="...",scope="...",error="..."`` (absent parts left out)."""
    parts = ['realm="%s"' % realm]
    for name, value in (("service", service), ("scope", scope), ("error", error)):
        if value:
            parts.append('%s="%s"' % (name, value))
    return "Bearer " + ",".join(parts)


def parse_challenge(value):
    """``(scheme, {param: value})`` of one simple challenge (quoted values only)."""
    scheme, _, params = value.partition(" ")
    return scheme, dict(re.findall(r'(\w+)="([^"]*)"', params))


def parse_scope(scope):
    """``repository:noetl/app:pull,push`` -> ("repository", "noetl/app", ["pull", "push"])."""
    kind, sep, rest = scope.partition(":")
    if not sep:
        return None
    name, sep, actions = rest.rpartition(":")
    if not sep or not name:
        return None
    return kind, name, [a for a in actions.split(",") if a]


# -- the token endpoint -----------------------------------------------------------


class TokenRequest:
    """A request to a token endpoint: the Docker token protocol's GET (parameters in
    the query, credentials as Basic) or the OAuth2 POST (parameters in a form body).

    Attributes: ``method``, ``path``, ``query`` (dict of lists), ``form`` (dict of
    lists; empty unless a form was posted), ``grant_type`` (None for the GET),
    ``service``, ``account``, ``scopes`` (list: every ``scope`` value; OAuth2
    space-separated scopes are split), ``refresh_token``, ``client_id``,
    ``authorization`` (the header or None), ``auth_scheme`` (``"Basic"``, ... or
    None), ``user``, ``password`` (decoded Basic, else None).
    """

    def __init__(self, method, path, query, form, authorization):
        self.method = method
        self.path = path
        self.query = query
        self.form = form
        params = dict(query)
        params.update(form)
        self.grant_type = _first(form, "grant_type")
        self.service = _first(params, "service")
        self.account = _first(params, "account")
        self.refresh_token = _first(form, "refresh_token")
        self.client_id = _first(params, "client_id")
        scopes = list(query.get("scope", []))
        for value in form.get("scope", []):
            scopes.extend(s for s in value.split(" ") if s)
        self.scopes = scopes
        self.authorization = authorization
        self.auth_scheme = (authorization or "").partition(" ")[0] or None
        self.user, self.password = decode_basic(authorization) if authorization \
            else (None, None)

    @classmethod
    def read(cls, handler, body=b""):
        """The request ``handler`` received; ``body`` is its (already read) body."""
        parsed = urllib.parse.urlsplit(handler.path)
        query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
        form = {}
        content_type = (handler.headers.get("Content-Type") or "").split(";")[0].strip()
        if body and content_type.lower() == FORM:
            form = urllib.parse.parse_qs(body.decode("utf-8", "replace"),
                                         keep_blank_values=True)
        return cls(handler.command, parsed.path, query, form,
                   handler.headers.get("Authorization"))


def _first(params, name):
    values = params.get(name)
    return values[0] if values else None


def rfc3339(timestamp):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def token_answer(token, fields=("token", "access_token"), expires_in=None, issued=None):
    """The token endpoint's JSON object: ``token`` under each of ``fields`` (``token``
    for the Docker protocol, ``access_token`` for OAuth2), ``expires_in`` unless
    None, ``issued_at`` (RFC 3339) unless ``issued`` is None."""
    answer = dict.fromkeys(fields, token)
    if expires_in is not None:
        answer["expires_in"] = expires_in
    if issued is not None:
        answer["issued_at"] = rfc3339(issued)
    return answer


# -- a client ---------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENERS = {}


def _opener(follow, context):
    # Openers are cached: building one creates a default TLS context, which
    # costs tens of milliseconds on Python 3.13.
    key = (follow, id(context))
    if key not in _OPENERS:
        handlers = [urllib.request.ProxyHandler({})]  # ignore $http_proxy: all is local
        if not follow:
            handlers.append(_NoRedirect())
        if context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=context))
        _OPENERS[key] = (urllib.request.build_opener(*handlers), context)
    return _OPENERS[key][0]


def http(method, url, headers=None, body=None, timeout=30, follow=False, context=None):
    """Return (status, headers, body); HTTP error statuses are results, not raised."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _opener(follow, context).open(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        try:
            return err.code, err.headers, err.read()
        finally:
            err.close()


# -- serving --------------------------------------------------------------------


def json_answer(status, payload, headers=None):
    """``(status, headers, body)`` of a JSON answer (``Content-Type`` set)."""
    all_headers = {"Content-Type": "application/json"}
    all_headers.update(headers or {})
    return status, all_headers, json.dumps(payload).encode("utf-8")


def write_answer(handler, status, headers, body):
    """Send one answer; ``Content-Length`` is added unless given; a HEAD gets no body."""
    handler.send_response(status)
    if not any(k.lower() == "content-length" for k in headers):
        handler.send_header("Content-Length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    if handler.command != "HEAD" and body:
        handler.wfile.write(body)


class QuietThreadingServer(ThreadingHTTPServer):
    """A threaded server whose threads never block exit and whose errors (client
    disconnects, shutdown races) are expected, so not printed."""

    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):  # pragma: no cover - noise only
        pass


def handler_class(dispatch, server_version=None):
    """A request handler class: HTTP/1.1 keep-alive, no Nagle delay, no log lines;
    every method calls ``dispatch(handler)``; a dropped connection just ends it."""
    import socket
    import ssl

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls on keep-alive

        def _dispatch(self):
            try:
                dispatch(self)
            except (ConnectionError, socket.timeout, ssl.SSLError):
                self.close_connection = True

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

        def log_message(self, fmt, *args):
            pass

    if server_version:
        Handler.server_version = server_version
    return Handler


def serve_in_thread(server, name, poll_interval=0.1):
    """Run ``server.serve_forever`` in a daemon thread; return the thread."""
    thread = threading.Thread(target=server.serve_forever,
                              kwargs={"poll_interval": poll_interval}, name=name, daemon=True)
    thread.start()
    return thread


def shut_down(server, thread, wait=5):
    """Stop ``server`` (either may be None) and wait up to ``wait`` s for its thread."""
    if server is not None:
        server.shutdown()
        server.server_close()
    if thread is not None:
        thread.join(wait)


class Serving:
    """``with obj:`` starts it (``start()`` returns what ``as`` binds) and stops it."""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()
