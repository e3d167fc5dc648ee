"""A byte-counting HTTP/1.1 proxy between kubectl and the Kubernetes API simulator.

Standard library only.  The simulator's request log (``SimClient.requests()``)
records the requests but not the size of its answers, so figure 8 points the tool's
kubeconfig at this proxy instead of the simulator.  The proxy forwards every byte
unchanged, in both directions, and parses the HTTP/1.1 stream on the side:

* client -> server: each request's method and target (path?query);
* server -> client: each response's status, header bytes and **body bytes** (the
  payload of ``Content-Length`` bodies, or the decoded data of ``chunked`` ones:
  a watch's events), attributed to its request in order (kubectl's Go client sends
  one request at a time per connection; it does not pipeline).

kubectl speaks HTTP/1.1 to an ``http://`` server (Go's client uses HTTP/2 only over
TLS), so the parse is exact.  A watch still streaming when ``records()`` is called
shows the bytes sent so far.

    proxy = ApiProxy("http://127.0.0.1:PORT")     # the simulator's base URL
    write_kubeconfig(path, proxy.base_url)
    ...  # run kubectl with that kubeconfig
    total = sum(r["body_bytes"] for r in proxy.records())
    proxy.close()
"""

import collections
import socket
import threading
import time
import urllib.parse


class _Parser:
    """Incremental parser of one direction of an HTTP/1.1 connection.  ``on_head(start
    line, headers, head bytes)`` returns the body's framing: ``("length", n)``,
    ``("chunked",)``, ``("none",)`` or ``("close",)`` (the body runs to the end of the
    connection); ``on_body(n)`` is called with body byte counts; ``on_end()`` when a
    message is complete."""

    def __init__(self, on_head, on_body, on_end):
        self.on_head, self.on_body, self.on_end = on_head, on_body, on_end
        self.buf = b""
        self.state = "head"
        self.remaining = 0

    def _take_body(self):
        """Pass on what has arrived of the current body (at most ``remaining``);
        False when nothing has."""
        take = min(self.remaining, len(self.buf))
        if not take:
            return False
        self.buf = self.buf[take:]
        self.remaining -= take
        self.on_body(take)
        return True

    def feed(self, data):
        self.buf += data
        while True:
            state, buf = self.state, self.buf
            if state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head, self.buf = buf[:end].decode("latin-1"), buf[end + 4:]
                lines = head.split("\r\n")
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                framing = self.on_head(lines[0], headers, end + 4)
                if framing[0] == "length":
                    self.remaining = framing[1]
                    self.state = "length" if self.remaining else "head"
                    if not self.remaining:
                        self.on_end()
                elif framing[0] == "chunked":
                    self.state = "chunk-size"
                elif framing[0] == "close":
                    self.state = "close"
                else:
                    self.on_end()
            elif state == "length":
                if not self._take_body():
                    return
                if not self.remaining:
                    self.state = "head"
                    self.on_end()
            elif state == "chunk-size":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(buf[:end].split(b";")[0].strip() or b"0", 16)
                self.buf = buf[end + 2:]
                if size:
                    self.remaining, self.state = size, "chunk-data"
                else:
                    self.state = "trailer"
            elif state == "chunk-data":
                if not self._take_body():
                    return
                if not self.remaining:
                    self.state = "chunk-crlf"
            elif state == "chunk-crlf":
                if len(buf) < 2:
                    return
                self.buf = buf[2:]
                self.state = "chunk-size"
            elif state == "trailer":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                self.buf = buf[end + 2:]
                if end == 0:
                    self.state = "head"
                    self.on_end()
            else:  # "close": everything until the connection ends is body
                if buf:
                    self.on_body(len(buf))
                self.buf = b""
                return


class _Connection:
    """One client connection and its upstream connection; requests in flight."""

    def __init__(self, proxy, number):
        self.proxy = proxy
        self.number = number
        self.pending = collections.deque()    # records sent, response not yet started
        self.current = None                   # record whose response is streaming
        self.request_body = None
        self.requests = _Parser(self._request_head, self._request_body, self._request_end)
        self.responses = _Parser(self._response_head, self._response_body,
                                 self._response_end)

    # -- client -> server ---------------------------------------------------------
    def _request_head(self, start, headers, size):
        method, _, rest = start.partition(" ")
        target = rest.rsplit(" ", 1)[0]
        url = urllib.parse.urlsplit(target)
        record = {"connection": self.number, "method": method, "target": target,
                  "path": url.path, "query": url.query,
                  "user_agent": headers.get("user-agent", ""),
                  "accept": headers.get("accept", ""),
                  "accept_encoding": headers.get("accept-encoding", ""),
                  "request_header_bytes": size, "request_body_bytes": 0,
                  "status": None, "header_bytes": 0, "body_bytes": 0,
                  "content_encoding": "", "started": time.time(), "ended": None}
        self.request_body = record
        self.proxy._add(record)
        with self.proxy.lock:
            self.pending.append(record)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return ("chunked",)
        length = int(headers.get("content-length") or 0)
        return ("length", length) if length else ("none",)

    def _request_body(self, n):
        with self.proxy.lock:
            self.request_body["request_body_bytes"] += n

    def _request_end(self):
        pass

    # -- server -> client ---------------------------------------------------------
    def _response_head(self, start, headers, size):
        parts = start.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        with self.proxy.lock:
            if 100 <= status < 200:                 # interim answer: the request waits on
                record = self.pending[0] if self.pending else None
                if record is not None:
                    record["header_bytes"] += size
                return ("none",)
            record = self.pending.popleft() if self.pending else None
            if record is None:                      # cannot happen with HTTP/1.1; keep count
                record = {"connection": self.number, "method": "?", "target": "?",
                          "path": "?", "query": "", "user_agent": "", "accept": "",
                          "accept_encoding": "", "request_header_bytes": 0,
                          "request_body_bytes": 0, "status": None, "header_bytes": 0,
                          "body_bytes": 0, "content_encoding": "", "started": time.time(),
                          "ended": None}
                self.proxy.log.append(record)
            record["status"] = status
            record["header_bytes"] += size
            record["content_encoding"] = headers.get("content-encoding", "")
            self.current = record
        if record["method"] == "HEAD" or status in (204, 304):
            return ("none",)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return ("chunked",)
        if "content-length" in headers:
            return ("length", int(headers["content-length"]))
        return ("close",)

    def _response_body(self, n):
        with self.proxy.lock:
            if self.current is not None:
                self.current["body_bytes"] += n

    def _response_end(self):
        with self.proxy.lock:
            if self.current is not None:
                self.current["ended"] = time.time()
            self.current = None


class ApiProxy:
    """Listen on 127.0.0.1 (an ephemeral port), forward to ``upstream`` (an
    ``http://host:port`` URL), count what goes through; see the module docstring."""

    def __init__(self, upstream):
        url = urllib.parse.urlsplit(upstream)
        self.upstream = (url.hostname, url.port or 80)
        self.lock = threading.Lock()
        self.log = []
        self.wire = {"to_server": 0, "to_client": 0}
        self._connections = 0
        self._open = set()
        self._closed = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.base_url = "http://127.0.0.1:%d" % self.listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="apiproxy", daemon=True)
        self._thread.start()

    def _add(self, record):
        with self.lock:
            self.log.append(record)

    def records(self):
        """Copies of the records so far (a streaming watch: the bytes until now)."""
        with self.lock:
            return [dict(r) for r in self.log]

    def clear(self):
        with self.lock:
            self.log = []
            self.wire = {"to_server": 0, "to_client": 0}

    def wire_bytes(self):
        with self.lock:
            return dict(self.wire)

    def close(self):
        self._closed.set()
        try:
            self.listener.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self._open)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- plumbing -----------------------------------------------------------------
    def _accept(self):
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.lock:
            self._connections += 1
            conn = _Connection(self, self._connections)
            self._open.update((client, upstream))
        back = threading.Thread(target=self._pump,
                                args=(upstream, client, conn.responses, "to_client"),
                                daemon=True)
        back.start()
        self._pump(client, upstream, conn.requests, "to_server")
        back.join()
        with self.lock:
            self._open.difference_update((client, upstream))
        for sock in (client, upstream):
            try:
                sock.close()
            except OSError:
                pass

    def _pump(self, src, dst, parser, direction):
        """Copy src -> dst until src ends; then end dst's writing side.  A failure on
        either side ends both (so the simulator notices a killed kubectl)."""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                with self.lock:
                    self.wire[direction] += len(data)
                try:
                    parser.feed(data)
                except (ValueError, IndexError):      # unparsable: keep forwarding
                    parser.state = "close"
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        except OSError:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
