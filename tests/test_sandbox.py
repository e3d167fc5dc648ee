"""The newcomer demo, tests/sandbox.py (``tox -e demo``), run as a subprocess."""

import json
import os
import re
import subprocess
import sys

import pytest
import sandbox
from conftest import need
from registry_harness import docker_registry_path

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox.py")


@pytest.mark.e2e
@pytest.mark.registry
def test_sandbox_changes_then_finds_unchanged():
    need(docker_registry_path(), "docker-registry")
    need(sandbox.find_kubectl(), "kubectl")
    done = subprocess.run([sys.executable, SCRIPT], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=120)
    out = done.stdout
    assert done.returncode == 0, out
    components = [json.loads(line) for line in out.splitlines()
                  if line.strip().startswith('{"event": "component"')]
    assert [(c["component"], c["status"]) for c in components] == \
        [(name, "changed") for name in sandbox.DEPLOYMENTS] + \
        [(name, "unchanged") for name in sandbox.DEPLOYMENTS]
    assert all(c["verified"] is True for c in components[:3])
    assert out.index('"status": "changed"') < out.index('"status": "unchanged"')
    assert "python3 bump_image.py --payload '{\"image\": \"ghcr.io/noetl/noetl:v2.35.9\"" in out
    assert "bump_image: probe ghcr.io/noetl/noetl:v2.35.9: available" in out
    assert "bump_image ghcr.io/noetl/noetl:v2.35.9" in out.split("rollout history")[-1]
    assert "sandbox: OK" in out
    # the simulator and the registry were stopped
    stopped = re.search(r"stopped registry \(pid (\d+)\), simulator \(pid (\d+)\)", out)
    assert stopped, out
    for pid in stopped.groups():
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue            # gone (or no /proc)
        assert b"docker-registry" not in cmdline and b"k8s_sim" not in cmdline


def test_sandbox_without_docker_registry_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "docker_registry_path", lambda: None)
    assert sandbox.main([]) == 2
    out = capsys.readouterr().out
    assert "docker-registry" in out and ".ci/run -e demo" in out


def test_sandbox_reads_both_output_formats():
    jsonl = "\n".join([
        '{"event": "probe", "status": "available"}',
        '{"event": "component", "component": "noetl-server", "status": "changed"}',
        '{"event": "summary", "status": "ok"}'])
    assert sandbox.statuses(jsonl, "jsonl") == [("noetl-server", "changed")]
    text = "noetl-server   changed    ghcr.io/noetl/noetl:v2.35.9\n" \
           "ollama-bridge  error      ghcr.io/noetl/noetl:v2.35.9  rollout_timeout: x\n"
    assert sandbox.statuses(text, "text") == [("noetl-server", "changed"),
                                              ("ollama-bridge", "error")]
    assert not sandbox.check("first", 0, text, "text", "changed")
