"""The command line: payload sources, override flags, formats, exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import IMAGE, OLD, FakeKubectl, NoNetwork, run_cli

import bump_image

ROOT = Path(__file__).resolve().parent.parent


def test_payload_from_a_file(env, tmp_path):
    path = tmp_path / "payload.json"
    path.write_text(json.dumps({"image": IMAGE, "probe": "never", "deployment": "noetl-server"}))
    run = run_cli(["--payload", "@" + str(path)], runner=FakeKubectl(), env=env)
    assert run.code == 0 and list(run.components) == ["noetl-server"]


def test_payload_from_stdin(env):
    run = run_cli(["--payload", "-"], stdin=json.dumps({"image": IMAGE, "probe": "never"}),
                  runner=FakeKubectl(), env=env)
    assert run.code == 0 and run.summary["changed"] == 3


@pytest.mark.parametrize("argv, stdin, message", [
    (["--payload", "{"], "", "not valid JSON"),
    (["--payload", ""], "", "payload is empty"),
    (["--payload", "-"], "", "payload is empty"),
    (["--payload", "[1]"], "", "must be a JSON object"),
    (["--payload", '{"image": "a:1", "image": "b:1"}'], "", 'names key "image" twice'),
    (["--payload", '{"image": "a:1", "ghcr_probe_sleep_seconds": NaN}'], "", "NaN"),
    (["--payload", '{"image": "a:1", "ghcr_probe_sleep_seconds": Infinity}'], "", "Infinity"),
    (["--payload", "@/nonexistent/payload.json"], "", "cannot read the payload file"),
    (["--payload", "-"], " " * (bump_image.PAYLOAD_LIMIT + 5), "larger than"),
    (["--payload", "[" * 100000], "", "nested too deeply|not valid JSON"),
])
def test_bad_payloads(env, argv, stdin, message):
    kubectl, net = FakeKubectl(), NoNetwork()
    run = run_cli(argv, stdin=stdin, runner=kubectl, opener=net, env=env)
    assert run.code == 2
    (event,) = run.events
    assert event["event"] == "error" and event["exit_code"] == 2
    assert event["error"]["code"] == "invalid_payload"
    assert __import__("re").search(message, event["error"]["message"])
    assert kubectl.calls == [] and net.used == []


@pytest.mark.parametrize("argv, message", [
    ([], "no payload"),
    (["--format", "yaml", "--image", IMAGE], "invalid choice"),
    (["--bogus"], "unrecognized arguments"),
    (["--payload"], "expected one argument"),
])
def test_usage_errors(env, argv, message):
    kubectl = FakeKubectl()
    run = run_cli(argv, runner=kubectl, env=env)
    assert run.code == 2
    (event,) = run.events
    assert event["error"]["code"] == "usage" and message in event["error"]["message"]
    assert kubectl.calls == []


def test_invalid_payload_contacts_nothing(env):
    kubectl, net = FakeKubectl(), NoNetwork()
    run = run_cli(["--payload", json.dumps({"image": IMAGE, "deployments": []})],
                  runner=kubectl, opener=net, env=env)
    assert run.code == 2 and kubectl.calls == [] and net.used == []
    # one JSON line on stdout; stderr says the same to a person, in one line
    (error,) = [e["error"] for e in run.events]
    assert error["hint"]
    assert run.stderr == "bump_image: invalid_payload (exit 2): %s (%s)\n" % (
        error["message"], error["hint"])


def test_override_flags(env):
    kubectl = FakeKubectl()
    run = run_cli(["--payload", json.dumps({"image_repository": "ghcr.io/x/y", "target_tag": "1",
                                            "components": ["ollama-bridge"], "probe": "never"}),
                   "--image", IMAGE, "--deployment", "noetl-server", "--deployment",
                   "noetl-worker", "--namespace", "noetl", "--dry-run"], runner=kubectl, env=env)
    assert run.code == 0
    assert list(run.components) == ["noetl-server", "noetl-worker"]
    assert {e["status"] for e in run.event("component")} == {"planned"}
    assert run.summary["image"] == IMAGE


def test_flags_alone_make_a_payload(env):
    kubectl = FakeKubectl()
    run = run_cli(["--image", "noetl:dev", "--deployment", "noetl-server"], runner=kubectl,
                  env=env)
    assert run.code == 0 and run.event("probe")[0]["status"] == "skipped"


def test_text_format(env):
    kubectl = FakeKubectl()
    kubectl.rollout["ollama-bridge"] = "stuck"
    cli = run_cli(["--payload", json.dumps({"image": IMAGE, "probe": "never",
                                            "rollout_timeout_seconds": 1}), "--format",
                   "text"], runner=kubectl, env=env)
    assert cli.code == 1
    lines = cli.stdout.splitlines()
    assert lines[0] == "noetl-server   changed  " + IMAGE
    assert lines[1] == "noetl-worker   changed  " + IMAGE
    assert lines[2].startswith("ollama-bridge  error    " + IMAGE + "  rollout_timeout: ")


def test_text_format_errors(env):
    run = run_cli(["--format", "text", "--payload", '{"imag": 1}'], env=env)
    assert run.code == 2
    assert run.stdout == ('error  invalid_payload  unknown key "imag"'
                          " (did you mean 'image'?)\n")


def test_text_format_failed_probe(env):
    class NotFound:
        def open(self, request, timeout=None):
            import urllib.error
            raise urllib.error.HTTPError(request.full_url, 404, "Not Found", {}, None)

    run = run_cli(["--format", "text", "--payload", json.dumps({
        "image": IMAGE, "ghcr_probe_attempts": 2})], runner=FakeKubectl(), opener=NotFound(),
        env=env)
    assert run.code == 3
    assert run.stdout.startswith("probe  unavailable  " + IMAGE + "  manifest_unknown: ")
    assert len(run.stdout.splitlines()) == 1


def test_stdout_is_only_json_and_progress_is_on_stderr(env):
    run = run_cli(["--payload", json.dumps({"image": IMAGE, "probe": "never"})],
                  runner=FakeKubectl(), env=env)
    for line in run.stdout.splitlines():
        json.loads(line)
    assert all(line.startswith("bump_image: ") for line in run.stderr.splitlines())
    assert "noetl-server: setting server=" + IMAGE + " (was " + OLD + ")" in run.stderr


def test_version_and_help(env):
    run = run_cli(["--version"], env=env)
    assert run.code == 0 and run.stdout == "bump_image %s\n" % bump_image.__version__
    run = run_cli(["--help"], env=env)
    assert run.code == 0 and "--payload" in run.stdout and "Exit codes" in run.stdout


def test_runs_as_a_script_and_as_a_module():
    for argv in ([sys.executable, str(ROOT / "bump_image.py"), "--version"],
                 [sys.executable, "-m", "bump_image", "--version"]):
        done = subprocess.run(argv, cwd=str(ROOT), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60)
        assert done.returncode == 0
        assert done.stdout.decode().strip() == "bump_image " + bump_image.__version__


def test_a_bad_payload_from_a_real_process_has_no_traceback():
    done = subprocess.run([sys.executable, str(ROOT / "bump_image.py"), "--payload", "{"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert done.returncode == 2
    assert b"Traceback" not in done.stderr
    assert done.stderr.startswith(b"bump_image: invalid_payload (exit 2): the payload is not"
                                  b" valid JSON") and done.stderr.count(b"\n") == 1
    assert json.loads(done.stdout)["error"]["code"] == "invalid_payload"


def test_console_script_when_installed():
    """tox installs the package: the ``bump-image`` console script is the same CLI."""
    script = os.path.join(os.path.dirname(sys.executable), "bump-image")
    if not os.path.exists(script):
        if os.environ.get("BUMP_IMAGE_REQUIRE_REAL") == "1":
            pytest.fail("bump-image is not installed beside %s" % sys.executable)
        pytest.skip("bump-image is not installed (pip install .)")
    done = subprocess.run([script, "--payload", "{"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=60)
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"]["code"] == "invalid_payload"
    done = subprocess.run([script, "--version"], stdout=subprocess.PIPE, timeout=60)
    assert done.stdout.decode().strip() == "bump_image " + bump_image.__version__


def test_help_lists_every_payload_key_with_its_default(env):
    run = run_cli(["--help"], env=env)
    assert run.code == 0
    for key in bump_image.PAYLOAD_KEYS:
        if key.alias_of:
            assert "(alias %s)" % key.name in run.stdout
            continue
        line = next(ln for ln in run.stdout.splitlines()
                    if ln.startswith("  %s:" % key.name) or ln.startswith("  %s " % key.name))
        default = key.default_text().replace("`", "").replace("—", "none")
        assert line.endswith("default " + default), line


def test_format_summary_prints_only_the_summary_line(env):
    run = run_cli(["--format", "summary", "--payload", json.dumps({"image": IMAGE,
                                                                    "probe": "never"})],
                  runner=FakeKubectl(), env=env)
    assert run.code == 0
    (line,) = run.stdout.splitlines()
    assert json.loads(line)["event"] == "summary" and json.loads(line)["changed"] == 3


def test_log_dir_keeps_every_line_and_the_progress(env, tmp_path):
    logs = tmp_path / "logs"
    run = run_cli(["--format", "summary", "--log-dir", str(logs), "--payload", json.dumps(
        {"image": IMAGE, "probe": "never"})], runner=FakeKubectl(), env=env)
    assert run.code == 0
    kept = [json.loads(x) for x in (logs / "last.jsonl").read_text().splitlines()]
    assert [e["event"] for e in kept] == ["probe", "component", "component", "component",
                                          "summary"]
    assert (logs / "last.log").read_text() == run.stderr and run.stderr
    assert os.path.islink(str(logs / "last.jsonl"))
    assert oct(os.stat(str(logs)).st_mode & 0o777) == "0o700"
    again = run_cli(["--log-dir", str(logs), "--payload", '{"imag": 1}'], env=env)
    assert again.code == 2
    assert json.loads((logs / "last.jsonl").read_text())["error"]["code"] == "invalid_payload"
    assert len(list(logs.glob("*.jsonl"))) == 3          # two runs and last.jsonl


def test_log_dir_default_and_a_folder_that_is_not_ours(env, tmp_path):
    run = run_cli(["--log-dir", "--payload", json.dumps({"image": IMAGE, "probe": "never"})],
                  runner=FakeKubectl(), env=dict(env, BUMP_IMAGE_LOG_DIR=str(tmp_path / "d")))
    assert run.code == 0 and (tmp_path / "d" / "last.jsonl").exists()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    run = run_cli(["--log-dir", str(shared), "--payload", json.dumps(
        {"image": IMAGE, "probe": "never"})], runner=FakeKubectl(), env=env)
    # v3: no log is kept there, stderr says why, and the run goes on
    assert run.code == 0 and run.summary["changed"] == 3
    assert "not keeping a log: %s is not a folder of this user's own" % shared in run.stderr
    assert os.listdir(str(shared)) == []


def test_log_dir_never_follows_a_planted_link(env, tmp_path):
    """Defect 9: $TMPDIR/bump_image-<uid> planted as a link to another folder: no file
    lands in the link's target and its last.* stay as they were."""
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    (target / "precious.jsonl").write_text("{}\n")
    os.symlink("precious.jsonl", str(target / "last.jsonl"))
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    os.symlink(str(target), str(tmpdir / ("bump_image-%d" % os.getuid())))
    run = run_cli(["--log-dir", "--payload", json.dumps({"image": IMAGE, "probe": "never"})],
                  runner=FakeKubectl(), env=dict(env, TMPDIR=str(tmpdir)))
    assert run.code == 0
    assert "not keeping a log" in run.stderr and "symbolic link" in run.stderr
    assert sorted(os.listdir(str(target))) == ["last.jsonl", "precious.jsonl"]
    assert os.readlink(str(target / "last.jsonl")) == "precious.jsonl"


def test_log_dir_keeps_the_newest_runs_only(env, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    for i in range(bump_image.LOG_KEEP + 5):
        for suffix in (".jsonl", ".log"):
            (logs / ("20260101T0000%02dZ-1%s" % (i, suffix))).write_text("")
    (logs / "notes.txt").write_text("mine")
    run = run_cli(["--log-dir", str(logs), "--payload", json.dumps(
        {"image": IMAGE, "probe": "never"})], runner=FakeKubectl(), env=env)
    assert run.code == 0
    kept = sorted(n for n in os.listdir(str(logs)) if n.endswith(".jsonl") and n[0] == "2")
    assert len(kept) == bump_image.LOG_KEEP
    assert "20260101T000000Z-1.jsonl" not in kept and os.readlink(str(logs / "last.jsonl")) \
        == kept[-1]
    assert (logs / "notes.txt").read_text() == "mine"


def test_payload_lines_from_stdin(env):
    lines = "".join("%s=%s\n" % (k.name, {"image": IMAGE, "probe": "never",
                                          "deployment": "noetl-server"}.get(k.name, ""))
                    for k in bump_image.PAYLOAD_KEYS) + "script=bump_image.py\n"
    run = run_cli(["--payload-lines", "-"], stdin=lines, runner=FakeKubectl(), env=env)
    assert run.code == 0 and list(run.components) == ["noetl-server"]
    run = run_cli(["--payload-lines", "-", "--payload", "{}"], env=env)
    assert run.code == 2 and "not allowed with argument" in run.events[0]["error"]["message"]
