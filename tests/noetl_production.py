"""An emulator of NoETL's production distributed runtime, as far as a playbook of shell
steps (``playbooks/bump_image.yaml``) meets it: server 3.83.1 (orchestrate-core), worker
5.120.0, noetl-tools 3.26 and minijinja 2.24.0 as they ship.  Every rule below cites the
source it follows (``repo@commit:path:line``; server@d9ec700, tools@ded9454,
worker@f6fae7e, minijinja@2.24.0), as read in /tmp/notes/noetl_runtime.md.

What it emulates:

- the workload: the playbook's ``workload:`` defaults, then the request payload, merged
  shallowly (server execute.rs:389-398,1369-1385);
- the server pass: a step's whole tool config (every key but ``kind``: ``command``,
  ``cmds``, ``shell``, ``timeout_seconds``, ...; playbook.rs:918-986) rendered once by
  minijinja (Chainable undefined, JSON null = undefined, the server's filters; only
  strings holding ``{{``..``}}`` or ``{%``..``%}``), then every string re-typed
  (``render_to_value``: JSON object/array text, true/True/false/False, i64, f64,
  null/None/blank -> null), template.rs:23-75,84-162,424-426,459-504;
- the worker: ToolConfig (``timeout`` a u64), the second template pass of noetl-tools on
  every string still holding ``{{`` or ``{%`` (a syntax error fails the step; the result
  JSON-parsed), ShellConfig (``command`` a string, ``shell`` default ``sh``, unknown keys
  ignored), ``<shell> -c <command>`` in a folder like /app with an environment like the
  image's (alpine: busybox, python3; no bash, no kubectl, no HOME), ``timeout_seconds``,
  stdout/stderr read line by line, the ToolResult (tools shell.rs, engine.rs, result.rs);
- the outcome: a non-zero exit or a time-out completes the step; a tool error fails it
  (call.error + command.failed) and the execution ends FAILED "Failed steps: <names>";
  otherwise the ``next`` arcs are rendered by the server engine against the context the
  server builds (state.rs:1066-1173,1245-1268), exclusive first match; no match: the run
  never ends (status RUNNING); a completed step without ``next``, or ``end``, completes it.

What it does not: events, NATS, the database, retries (there are none), loops, ``set:``,
``case``, keychain resolution (``keychain.*`` strings are only left verbatim), ``auth``,
secret scrubbing, results over the 100 KiB inline budget, ``capture: false``, parallel
arcs (of several matching targets only the first is followed).

Where it differs, knowingly.  minijinja's Python binding parses and evaluates; it hands
an integral float to a filter as an int (``2.0 | b64encode`` gives "Mg==", the server
"Mi4w"), a map's ``items()`` is callable, and ``none`` and undefined both reach a filter
as None (the server's context holds no none: JSON null is undefined).  Lists and maps
render as minijinja 2.24 renders them (``["a", 1]``, ``{"k": True}``; the binding's own
repr differs), map keys in payload order (the server's: HashMap order, arbitrary).
Busybox is Debian's (1.35), not Alpine's (1.37); applets that change the machine
(reboot, mount, ...) are left out of PATH; TMPDIR is a folder of the emulator's own (the
image sets none: /tmp) so that nothing is written outside it.  The child runs in a
session of its own (no controlling terminal, as in a pod), and after a time-out its whole
session is killed (the worker kills only the child).
"""

import base64
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import unicodedata

import minijinja
import yaml

#: worker@f6fae7e:Dockerfile:35-56 (ENV); PATH, HOME: not set by NoETL (HOME left unset)
IMAGE_ENV = {
    "WORKER_POOL_NAME": "worker-rust-pool",
    "NOETL_SERVER_URL": "http://noetl.noetl.svc.cluster.local:8082",
    "NATS_URL": "nats://nats.nats.svc.cluster.local:4222", "NATS_STREAM": "NOETL_COMMANDS",
    "NATS_CONSUMER": "noetl_worker_pool", "WORKER_HEARTBEAT_INTERVAL": "15",
    "WORKER_MAX_CONCURRENT": "4", "RUST_LOG": "info,worker_pool=debug"}
#: busybox applets left out of the worker's PATH (test hygiene: we run as root)
UNSAFE_APPLETS = {"bash", "halt", "poweroff", "reboot", "init", "linuxrc", "mount", "umount",
                  "swapon", "swapoff", "mkswap", "fdisk", "mke2fs", "mkdosfs", "switch_root",
                  "pivot_root", "run-init", "insmod", "rmmod", "modprobe", "depmod", "hwclock",
                  "ifconfig", "ifup", "ifdown", "ip", "route", "sysctl", "killall"}
BUSYBOX = shutil.which("busybox") or "/usr/bin/busybox"
#: minijinja-py adds minijinja-contrib; the server's crate has only the default features
#: (server@d9ec700:orchestrate-core/Cargo.toml:13; minijinja@2.24.0:minijinja/Cargo.toml)
CONTRIB = {"filters": ("filesizeformat", "pluralize", "truncate", "wordwrap", "striptags",
                       "urlencode", "random", "datetimeformat", "dateformat", "timeformat"),
           "globals": ("cycler", "joiner", "lipsum", "randrange", "now")}
WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006" \
              "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"   # Rust str::trim
I64 = re.compile(r"[+-]?[0-9]+\Z")
F64 = re.compile(r"[+-]?(?:(?i:inf|infinity|nan)|(?:[0-9]+\.?[0-9]*|\.[0-9]+)"
                 r"(?:[eE][+-]?[0-9]+)?)\Z")                   # Rust f64::from_str


class StepFailed(Exception):
    """The tool returned Err: the worker emits call.error + command.failed
    (worker@f6fae7e:src/executor/command.rs:1096-1143)."""


# -- values as minijinja 2.24 shows them ---------------------------------------------------

class _Special:
    def __init__(self, text, shown):
        self.text, self.shown = text, shown

    def __str__(self):
        return self.text

    def __bool__(self):
        return False


UNDEFINED = _Special("", "undefined")   # server: JSON null is Value::UNDEFINED (template.rs:470)
NONE = _Special("None", "None")          # worker: JSON null is none (tools engine.rs:256-260)


class _Value:
    """A list or map that renders as minijinja 2.24 does and, like one, has no methods or
    attributes (pycompat off), but ``items`` (minijinja-py tells a map by it)."""

    proxy = False

    def __getattribute__(self, name):
        if name.startswith("_") or name in ("proxy", "items"):
            return object.__getattribute__(self, name)
        raise AttributeError(name)

    def __str__(self):
        return shown(self)


class _Seq(_Value, list):
    pass


class _Map(_Value, dict):
    def __getitem__(self, key):
        # tools@ded9454:src/template/engine.rs:274-296 (StepResultProxy: .result -> self)
        if self.proxy and key == "result" and not dict.__contains__(self, key):
            return self
        return dict.__getitem__(self, key)


class _ProxyMap(_Map):
    proxy = True


def text(value):
    """``Value::to_string()`` (Display), minijinja@2.24.0:minijinja/src/value/mod.rs:790-820."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"                    # :794 (2.22+)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "-inf" if value < 0 else "inf"
        digits = repr(value)
        if "e" in digits or "E" in digits:                      # Rust Display: no exponent
            from decimal import Decimal
            digits = format(Decimal(digits), "f")
        return digits if "." in digits else digits + ".0"
    if isinstance(value, (list, dict)):
        return shown(value)
    return str(value)


def shown(value):
    """``fmt::Debug`` of a value inside a list or map (value/mod.rs:476-503, object.rs:293-317):
    strings quoted and escaped as Rust does, floats as Rust's Debug."""
    if isinstance(value, _Special):
        return value.shown
    if value is None:
        return "None"
    if isinstance(value, str):
        return '"%s"' % "".join(_escape(c) for c in value)
    if isinstance(value, float) and math.isfinite(value):
        digits = repr(value)
        if "e" in digits:
            mantissa, exponent = digits.split("e")
            digits = "%se%d" % (mantissa, int(exponent))
        return digits
    if isinstance(value, list):
        return "[%s]" % ", ".join(shown(v) for v in value)
    if isinstance(value, dict):
        return "{%s}" % ", ".join("%s: %s" % (shown(k), shown(v)) for k, v in dict.items(value))
    return text(value)


def _escape(char):
    special = {"\0": "\\0", "\t": "\\t", "\r": "\\r", "\n": "\\n", "\\": "\\\\", '"': '\\"'}
    if char in special:
        return special[char]
    if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Mn", "Me") or \
            (unicodedata.category(char) == "Zs" and char != " "):
        return "\\u{%x}" % ord(char)                            # approximately is_printable
    return char


def to_jinja(value, null):
    """A JSON value for the binding: lists and maps that render as minijinja 2.24 does."""
    if value is None:
        return null
    if isinstance(value, list):
        return _Seq(to_jinja(v, null) for v in value)
    if isinstance(value, dict):
        cls = _ProxyMap if null is NONE else _Map
        return cls((k, to_jinja(v, null)) for k, v in value.items())
    return value


def to_json(value, floats_as_text):
    """A filter's value as JSON: server ``minijinja_to_json`` (template.rs:747-780: undefined
    and none null, an integral number an int, any other non-string scalar its text) or
    minijinja's Serialize (tools ``tojson``)."""
    if value is None or isinstance(value, _Special):
        return None
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if value.is_integer() and floats_as_text:
            return int(value)
        return text(value) if floats_as_text else value
    if isinstance(value, list):
        return [to_json(v, floats_as_text) for v in value]
    if isinstance(value, dict):
        return {text(k): to_json(v, floats_as_text) for k, v in dict.items(value)}
    return text(value)


def b64encode(v):
    """``STANDARD.encode(value.to_string())`` (template.rs:501-504, engine.rs:418-421)."""
    return base64.b64encode(text(v).encode()).decode()


def b64decode(v):
    try:
        return base64.b64decode(text(v), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError("b64decode error: %s" % err)


def parse_json(raw):
    """``serde_json::from_str``: no NaN/Infinity; integers beyond 64 bits are floats."""
    def constant(name):
        raise ValueError(name)

    def number(digits):
        n = int(digits)
        return n if -2 ** 63 <= n < 2 ** 64 else float(digits)
    return json.loads(raw, parse_constant=constant, parse_int=number)


def retype(rendered, retry):
    """``render_to_value``'s type rules, server@d9ec700:orchestrate-core/src/template.rs:102-162."""
    trimmed = rendered.strip(WHITE_SPACE)
    if (trimmed[:1], trimmed[-1:]) in (("{", "}"), ("[", "]")):          # :111-134
        try:
            return parse_json(rendered)
        except ValueError:
            again = retry()
            if again is not None:
                return again
    if trimmed in ("true", "True", "false", "False"):                  # :146-148, :416-422
        return trimmed in ("true", "True")
    if I64.match(trimmed) and -2 ** 63 <= int(trimmed) < 2 ** 63:      # :149-151
        return int(trimmed)
    if F64.match(trimmed) and math.isfinite(float(trimmed)):           # :152-156
        return float(trimmed)
    if trimmed in ("null", "None", ""):                                # :157-159
        return None
    return rendered


# -- the two engines ---------------------------------------------------------------------

class Engine:
    """minijinja with Chainable undefined and NoETL's filters: the server's
    (``server=True``, orchestrate-core/src/template.rs:23-75,496-745) or the worker's
    (noetl-tools src/template/engine.rs:36-69,307-430)."""

    def __init__(self, server):
        self.server = server
        env = minijinja.Environment(undefined_behavior="chainable", pycompat=False,
                                    debug=False)
        for remove, names in ((env.remove_filter, CONTRIB["filters"]),
                              (env.remove_global, CONTRIB["globals"])):
            for name in names:
                with contextlib.suppress(Exception):    # a name this binding lacks
                    remove(name)
        filters = self._server_filters() if server else self._worker_filters()
        for name, func in filters.items():
            env.add_filter(name, func)
        if server:                         # template.rs:66-72 (None is undefined here)
            env.add_test("defined", lambda v: v is not None and v is not UNDEFINED)
            env.add_test("undefined", lambda v: v is None or v is UNDEFINED)
            env.add_test("none", lambda v: False)
        self.env = env

    def _server_filters(self):
        def int_(v):                                           # template.rs:549-560
            if isinstance(v, (bool, int)):
                return int(v)
            if F64.match(text(v)):
                number = float(text(v))
                return 0 if math.isnan(number) else int(max(min(number, 2 ** 63 - 1), -2 ** 63))
            raise ValueError("int error: invalid digit found in string")

        def float_(v):                                         # template.rs:563-570
            if isinstance(v, (bool, int)) or F64.match(text(v)):
                return float(v if isinstance(v, (bool, int)) else text(v))
            raise ValueError("float error: invalid float literal")

        def seq(v, what, at=None):                             # template.rs:602-627
            if v is None or isinstance(v, (bool, int, float, _Special)):
                raise ValueError("%s requires a sequence" % what)
            if at is not None and not list(v):
                raise ValueError("sequence is empty")
            return list(v) if at is None else list(v)[at]

        def length(v):                                         # template.rs:630-641
            if not isinstance(v, (str, list, dict)):
                raise ValueError("length requires string, sequence, or mapping")
            return len(v.encode()) if isinstance(v, str) else len(v)

        def mapping(v, what):                                  # template.rs:644-700
            if not isinstance(v, dict):
                raise ValueError("%s requires a mapping" % what)
            return v

        return {
            "b64encode": b64encode, "b64decode": b64decode,                       # :501-517
            "tojson": lambda v: json.dumps(to_json(v, True), ensure_ascii=False,
                                           separators=(",", ":")),                # :520-525
            "fromjson": lambda v: to_jinja(parse_json(text(v)), UNDEFINED),       # :528-537
            "default": lambda v, d="": d if v is None or v is UNDEFINED else v,   # :540-546
            "int": int_, "float": float_,
            "string": text,                                                       # :573-575
            "lower": lambda v: text(v).lower(), "upper": lambda v: text(v).upper(),
            "trim": lambda v: text(v).strip(WHITE_SPACE),                         # :587-590
            "split": lambda v, sep=" ": _Seq(text(v).split(text(sep))),           # :593-599
            "join": lambda v, sep="": text(sep).join(text(i) for i in seq(v, "join")),
            "first": lambda v: seq(v, "first", 0), "last": lambda v: seq(v, "last", -1),
            "length": length,
            "keys": lambda v: _Seq(text(k) for k in mapping(v, "keys")),
            "values": lambda v: _Seq(dict.values(mapping(v, "values"))),
            "items": lambda v: _Seq(_Seq(kv) for kv in dict.items(mapping(v, "items"))),
            "get": lambda v, k: dict.get(v, k, UNDEFINED) if isinstance(v, dict) else UNDEFINED,
            "safe": lambda v: v,
        }

    def _worker_filters(self):
        def number(v, kind):                                   # engine.rs:309-334
            raw = text(v)
            if kind is int and I64.match(raw):
                return int(raw)
            if F64.match(raw):
                value = float(raw)
                return value if kind is float else (0 if math.isnan(value) else int(value))
            return kind(0)

        def fromjson(v):                                       # engine.rs:348-352
            try:
                return to_jinja(parse_json(text(v)), NONE)
            except ValueError:
                return NONE

        def default(v, d=""):                                  # engine.rs:336-342
            return d if v is None or isinstance(v, _Special) else v

        def length(v):                                         # engine.rs:354-361
            if isinstance(v, str):
                return len(v.encode())
            return len(v) if isinstance(v, (list, dict)) else 0

        def end(v, at):                                        # engine.rs:400-416
            return v[at] if isinstance(v, (list, str)) and len(v) else UNDEFINED

        return {
            "int": lambda v: number(v, int), "float": lambda v: number(v, float),
            "default": default, "d": default,
            "tojson": lambda v: json.dumps(to_json(v, False), ensure_ascii=False,
                                           separators=(",", ":")),
            "fromjson": fromjson, "length": length, "len": length,
            "upper": lambda v: text(v).upper(), "lower": lambda v: text(v).lower(),
            "trim": lambda v: text(v).strip(WHITE_SPACE),
            "replace": lambda v, old, new: text(v).replace(text(old), text(new)),
            "split": lambda v, sep: _Seq(text(v).split(text(sep))),
            "join": lambda v, sep="": text(sep).join(text(i) for i in v)
            if isinstance(v, (list, dict, str)) else text(v),
            "first": lambda v: end(v, 0), "last": lambda v: end(v, -1),
            "b64encode": b64encode, "b64decode": b64decode,
        }

    def render(self, source, context):
        """Render; raise ``TemplateFailure(stage, message)``."""
        try:
            self.env.add_template("<string>", source)
        except minijinja.TemplateError as err:
            raise TemplateFailure("parse", err.message)
        try:
            return self.env.render_template("<string>", **context)
        except minijinja.TemplateError as err:
            raise TemplateFailure("render", err.message)
        finally:
            self.env.remove_template("<string>")


class TemplateFailure(Exception):
    def __init__(self, stage, message):
        Exception.__init__(self, message)
        self.stage, self.message = stage, message


def server_syntax(s):
    """template.rs:424-426: ``{{`` with ``}}``, or ``{%`` with ``%}``."""
    return ("{{" in s and "}}" in s) or ("{%" in s and "%}" in s)


def worker_syntax(s):
    """tools@ded9454:src/template/engine.rs:144-146: ``{{`` or ``{%``, nothing more."""
    return "{{" in s or "{%" in s


def _single_expression(source, marker):
    trimmed = source.strip(WHITE_SPACE)
    if not (trimmed.startswith("{{") and trimmed.endswith("}}") and trimmed.count("{{") == 1):
        return None
    inner = trimmed[2:-2]
    return None if marker in inner else "{{ %s | tojson }}" % inner.strip(WHITE_SPACE)


class Server:
    """The server's TemplateRenderer (template.rs) over a JSON context."""

    def __init__(self):
        self.engine = Engine(server=True)

    def context(self, ctx):
        # template.rs:459-494: JSON null is undefined (a missing key at the top level)
        return {k: to_jinja(v, UNDEFINED) for k, v in ctx.items() if v is not None}

    def render(self, source, ctx):
        if not server_syntax(source):                                    # :84-86
            return source
        try:
            return self.engine.render(source, self.context(ctx))
        except TemplateFailure as err:                                   # :91-97
            raise TemplateFailure(err.stage, "Template %s error: %s" % (err.stage, err.message))

    def render_to_value(self, source, ctx):
        def retry():                                                     # :173-189
            again = _single_expression(source, "tojson")
            try:
                return None if again is None else parse_json(self.render(again, ctx))
            except (ValueError, TemplateFailure):
                return None
        return retype(self.render(source, ctx), retry)

    def render_value(self, value, ctx):
        """``render_value_deferring_keychain`` (template.rs:314-348)."""
        if isinstance(value, str):
            if server_syntax(value) and self._keychain(value):
                return value
            return self.render_to_value(value, ctx)
        if isinstance(value, dict):
            return {(k if server_syntax(k) and self._keychain(k) else self.render(k, ctx)):
                    self.render_value(v, ctx) for k, v in value.items()}
        if isinstance(value, list):
            return [self.render_value(v, ctx) for v in value]
        return value

    def _keychain(self, source):
        try:
            return "keychain" in self.engine.env.undeclared_variables_in_str(source)
        except minijinja.TemplateError:
            return False

    def condition(self, when, ctx):
        """``evaluate_condition`` (template.rs:370-400)."""
        source = when if server_syntax(when) else "{{ %s }}" % when
        rendered = self.render(source, ctx).strip(WHITE_SPACE).lower()
        return rendered not in ("", "false", "0", "no", "none", "null", "off", "{}", "[]")


class Worker:
    """One worker of the image: the second template pass, ShellConfig, the shell."""

    def __init__(self, root, python=None, extra_env=None):
        self.app = os.path.join(root, "app")             # WORKDIR /app (Dockerfile)
        self.bin = os.path.join(root, "bin")
        self.tmp = os.path.join(root, "tmp")
        for folder in (self.app, self.bin, self.tmp):
            os.makedirs(folder, exist_ok=True)
        applets = subprocess.run([BUSYBOX, "--list"], stdout=subprocess.PIPE, check=True,
                                 text=True).stdout.split()
        for applet in applets:
            if applet not in UNSAFE_APPLETS and "/" not in applet:
                _link(BUSYBOX, os.path.join(self.bin, applet))
        _link(python or sys.executable, os.path.join(self.bin, "python3"))
        self.env = dict(IMAGE_ENV, PATH=self.bin, TMPDIR=self.tmp)
        self.env.update(extra_env or {})
        self.engine = Engine(server=False)

    def second_pass(self, value, ctx):
        """``render_value_with`` (tools@ded9454:src/template/engine.rs:173-231)."""
        if isinstance(value, str) and worker_syntax(value):
            try:
                rendered = self.engine.render(value, ctx)
            except TemplateFailure as err:             # engine.rs:128-132, error.rs:86-90
                raise StepFailed("Template error: %s" % err.message)
            try:
                return parse_json(rendered)
            except ValueError:
                again = _single_expression(value, "|tojson")
                if again is not None:
                    try:
                        return parse_json(self.engine.render(again, ctx))
                    except (ValueError, TemplateFailure):
                        pass
                return rendered
        if isinstance(value, dict):
            return {k: self.second_pass(v, ctx) for k, v in value.items()}
        if isinstance(value, list):
            return [self.second_pass(v, ctx) for v in value]
        return value

    def execute(self, config, render_context, step):
        """The shell tool on a server-rendered config; returns the ToolResult (a dict) or
        raises ``StepFailed`` with the error text the worker reports."""
        timeout = config.get("timeout")              # tools registry.rs:22-24 (ToolConfig)
        if timeout is not None and not _u64(timeout):
            raise StepFailed("malformed tool config (pre-dispatch deserialization): invalid"
                             " type for timeout: %s, expected u64"   # worker command.rs:694-716
                             % json.dumps(timeout))
        ctx = {k: to_jinja(v, NONE) for k, v in render_context.items()}
        ctx.update(workload=to_jinja(render_context, NONE), ctx=to_jinja(render_context, NONE),
                   step=step, execution_id="1", command_id="1", worker_id="emulated",
                   server_url=IMAGE_ENV["NOETL_SERVER_URL"])    # tools context.rs:110-130
        rendered = self.second_pass(config, ctx)                  # shell.rs:186-190
        shell = shell_config(rendered)                            # shell.rs:193-194
        if timeout is not None:
            shell["timeout_seconds"] = timeout                    # shell.rs:196-199
        return self.run(shell["command"], shell["shell"], shell.get("cwd"),
                        shell.get("env") or {}, shell.get("timeout_seconds"))

    def run(self, command, shell="sh", cwd=None, env=None, timeout=None):
        """``execute_command`` (tools@ded9454:src/tools/shell.rs:79-178)."""
        started = time.monotonic()
        program = shell if "/" in shell else shutil.which(shell, path=self.bin) or shell
        child_env = dict(self.env, **(env or {}))
        try:
            child = subprocess.Popen([program, "-c", command], cwd=cwd or self.app,
                                     env=child_env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)    # no controlling terminal
        except OSError as err:                                   # :111-113
            raise StepFailed("Process error: Failed to spawn process: %s (os error %d)"
                             % (os.strerror(err.errno), err.errno))
        out, err = _Lines(child.stdout), _Lines(child.stderr)
        try:
            code = child.wait(timeout)
        except subprocess.TimeoutExpired:                        # :154-163
            child.kill()
            _reap(child, out, err)
            return {"status": "timeout", "error": "Execution timed out after %d seconds"
                    % timeout, "duration_ms": int((time.monotonic() - started) * 1000)}
        code = code if code >= 0 else -1                         # :171 (a signal: -1)
        stdout, stderr = out.text(), err.text()                  # :172-173
        result = {"status": "success" if code == 0 else "error",  # result.rs:145-170
                  "data": {"exit_code": code, "stdout": stdout, "stderr": stderr},
                  "stdout": stdout, "stderr": stderr, "exit_code": code,
                  "duration_ms": int((time.monotonic() - started) * 1000)}
        if code:
            result["error"] = "Command exited with code %d" % code
        return result


def _u64(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 64


def shell_config(config):
    """``serde_json::from_value::<ShellConfig>`` (tools@ded9454:src/tools/shell.rs:18-63):
    fields in key order (serde_json's Map is sorted), unknown keys ignored."""
    def unexpected(value):
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "boolean `%s`" % ("true" if value else "false")
        if isinstance(value, int):
            return "integer `%d`" % value
        if isinstance(value, float):
            return "floating point `%s`" % text(value)
        if isinstance(value, str):
            return "string %s" % json.dumps(value, ensure_ascii=False)
        return "sequence" if isinstance(value, list) else "map"

    def fail(message):
        raise StepFailed("Configuration error: Invalid shell config: %s" % message)

    out = {"shell": "sh", "capture": True}
    for key in sorted(config):
        value = config[key]
        if key in ("command", "shell") or (key == "cwd" and value is not None):
            if not isinstance(value, str):
                fail("invalid type: %s, expected a string" % unexpected(value))
        elif key == "env":
            if not isinstance(value, dict):
                fail("invalid type: %s, expected a map" % unexpected(value))
            for item in value.values():
                if not isinstance(item, str):
                    fail("invalid type: %s, expected a string" % unexpected(item))
        elif key == "timeout_seconds" and value is not None and not _u64(value):
            if isinstance(value, int) and not isinstance(value, bool):
                fail("invalid value: integer `%d`, expected u64" % value)
            fail("invalid type: %s, expected u64" % unexpected(value))
        elif key == "capture" and not isinstance(value, bool):
            fail("invalid type: %s, expected a boolean" % unexpected(value))
        elif key not in ("command", "shell", "cwd", "env", "timeout_seconds", "capture"):
            continue
        out[key] = value
    if "command" not in out:
        fail("missing field `command`")
    return out


class _Lines:
    """A stream read as ``BufReader::lines()`` does (shell.rs:121-143): each line without
    its ``\\n`` or ``\\r\\n``, then ``\\n``; reading stops at the first line that is not
    UTF-8 (the emulator drains the rest so that a test never hangs)."""

    def __init__(self, stream):
        self.parts, self.broken = [], False
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        for raw in iter(stream.readline, b""):
            if self.broken:
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.broken = True
                continue
            if line.endswith("\n"):
                line = line[:-2] if line.endswith("\r\n") else line[:-1]
            self.parts.append(line + "\n")
        stream.close()

    def text(self, wait=None):
        self.thread.join(wait)
        return "".join(self.parts)


def _reap(child, *readers):
    """Test hygiene, not the worker's behaviour (it kills only the child): end the
    child's whole session so that no grandchild outlives the test."""
    try:
        os.killpg(child.pid, 9)
    except OSError:
        pass
    child.wait()
    for reader in readers:
        reader.text(5)


def _link(target, path):
    if not os.path.lexists(path):
        os.symlink(target, path)


# -- the execution -------------------------------------------------------------------------

class StepRun:
    """One step as it ran: ``state`` COMPLETED or FAILED; ``config`` the tool config the
    server rendered; ``result`` the ToolResult (COMPLETED) or ``error`` (FAILED)."""

    def __init__(self, name, state, config=None, result=None, error=None):
        self.name, self.state, self.config = name, state, config
        self.result, self.error = result, error

    def __repr__(self):
        return "StepRun(%r, %r, error=%r)" % (self.name, self.state, self.error)


class Execution:
    """``status``: COMPLETED, FAILED (``error`` "Failed steps: ..."), RUNNING (no arc
    matched: the execution never ends) or REJECTED (the start step's config did not
    render: POST /api/execute answers 500 after playbook_started, execute.rs:427-436)."""

    def __init__(self):
        self.status, self.error, self.steps, self.skipped = "RUNNING", None, {}, []

    def __repr__(self):
        return "Execution(%r, %r, steps=%r)" % (self.status, self.error, list(self.steps))


class Production:
    """``noetl run <path> -r distributed --payload ...`` against the emulated stack."""

    def __init__(self, playbook, root, extra_env=None, python=None):
        with open(str(playbook)) as fh:
            self.book = yaml.safe_load(fh)
        self.steps = {s["step"]: s for s in self.book["workflow"]}
        assert self.book.get("apiVersion") == "noetl.io/v2" and "start" in self.steps, \
            "not a playbook the server accepts (parser.rs:165-186)"
        self.server = Server()
        self.worker = Worker(str(root), python=python, extra_env=extra_env)

    def run(self, payload, max_steps=20):
        execution = Execution()
        workload = dict(self.book.get("workload") or {})           # execute.rs:389-398
        workload.update(payload)
        name = "start"
        for _ in range(max_steps):
            step = self.steps[name]
            ctx = self.context(workload, execution)
            try:
                config = self.render_tool(step, ctx)
            except TemplateFailure as err:
                if name == "start":
                    execution.status, execution.error = "REJECTED", "500: " + err.message
                else:                          # events.rs:3801-3835 (the wasm drive)
                    execution.status = "FAILED"
                    execution.error = "Orchestrator drive failed (off-server): " + err.message
                return execution
            flat = {k: v for k, v in ctx.items() if k not in ("ctx", "workload")}
            try:
                result = self.worker.execute(config, flat, name)
            except StepFailed as err:                              # state.rs:950-987
                execution.steps[name] = StepRun(name, "FAILED", config, error=str(err))
                execution.status = "FAILED"                        # orchestrator.rs:709-775
                execution.error = "Failed steps: " + ", ".join(
                    s.name for s in execution.steps.values() if s.state == "FAILED")
                return execution
            execution.steps[name] = StepRun(name, "COMPLETED", config, result=result)
            if name == "end" or not step.get("next"):              # orchestrator.rs:1936-1960
                execution.status = "COMPLETED"
                return execution
            try:
                chosen = self.route(step["next"], self.context(workload, execution), execution)
            except TemplateFailure as err:
                execution.status = "FAILED"
                execution.error = "Orchestrator drive failed (off-server): " + err.message
                return execution
            if not chosen:                                         # nonconvergence_sweep.rs:19-25
                return execution
            name = chosen
        raise RuntimeError("more than %d steps" % max_steps)

    def render_tool(self, step, ctx):
        """The step's tool config as the server builds it (commands.rs:361-389)."""
        tool = dict(step["tool"])
        tool.pop("kind", None)
        if "input" in tool:
            tool["args"] = tool.pop("input")
        return self.server.render_value(tool, ctx)

    def context(self, workload, execution):
        """The render context: the start step's (execute.rs:1361-1385, commands.rs:134-141),
        else ``build_context`` (state.rs:1066-1173) with the ``ctx`` shim."""
        ctx = dict(workload)
        ctx["workload"] = dict(workload)
        if execution.steps:
            steps = {}
            for run in execution.steps.values():
                if run.result is None:
                    continue
                envelope = {"status": "COMPLETED", "context": {            # worker :1021-1034
                    "command_id": "1", "call_index": 0,
                    "result": {"status": run.result["status"], "context": run.result}}}
                steps[run.name] = envelope
                data = user_data(envelope)
                if isinstance(data, dict) and "data" not in data:          # state.rs:1128-1135
                    data = dict(data, data=data)
                ctx[run.name] = data
            ctx["steps"] = steps
            ctx.update(execution_id="1", catalog_id="1")
        ctx.setdefault("ctx", dict(ctx))
        return ctx

    def route(self, arcs, ctx, execution):
        """``next`` (playbook.rs:579-594; evaluator.rs:109-127,205-301): exclusive, the
        first arc whose ``when`` holds; the targets not taken are skipped.  (Inclusive
        arcs and a list of names fire every match: only the first is followed here.)"""
        mode = "exclusive"
        if isinstance(arcs, str):
            arcs = [{"step": arcs}]
        elif isinstance(arcs, dict):
            mode = str((arcs.get("spec") or {}).get("mode", mode)).lower()
            arcs = arcs.get("arcs") or []
        elif all(isinstance(a, str) for a in arcs):
            mode, arcs = "inclusive", [{"step": a} for a in arcs]
        else:
            mode = str((self.book.get("spec") or {}).get("next_mode", mode)).lower()
        chosen = []
        for arc in arcs:
            when = arc.get("when")
            if (not chosen or mode == "inclusive") and \
                    (when is None or self.server.condition(str(when), ctx)):
                chosen.append(arc["step"])
            else:
                execution.skipped.append(arc["step"])
        return chosen[0] if chosen else None


def user_data(result):
    """``extract_user_data`` (state.rs:1245-1268)."""
    inner = (((result.get("context") or {}).get("result") or {}).get("context") or {})
    if isinstance(inner, dict) and "data" in inner:
        return inner["data"]
    context = result.get("context")
    if isinstance(context, dict):
        return context.get("data", context)
    return result
