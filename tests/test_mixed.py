"""Runs that mix failing and healthy rollouts, end to end (contract version 3: "every
verdict is the workload's own").

The table: three workloads of one kind, one of them failing - stuck (its new pods never
start), past a progress deadline, in ImagePullBackOff, deleted during its rollout, or
forbidden - at the first, middle or last position, sequential or parallel, for
Deployments, StatefulSets and DaemonSets, with ``rollback_on_failure`` on.  Every row
checks every workload's line (status, image, ``rolled_back``, ``restored_image``,
``verified``), the report at the end of stderr, what the cluster holds afterwards
(templates, live pods, revisions), and that only the failing workload was rolled back (the PATCHes and DELETEs in the request
log).  Then 25 Deployments (three chunks of ten for kubectl), in parallel, with one of
each failure in the first chunk.  Last: a workload refused when read is named in the
report at the end of stderr, and two bugs this table found (fixed): in parallel mode a
failed workload's rollback waited for every other rollout, so a neighbour hanging until
``deadline_seconds`` cost it its rollback; and the report said a workload that went
away "is left on" its new image.

Each row runs under every cluster access (``cluster``: kubectl 1.33, kubectl 1.37, the
API).  The whole table (90 rows) runs for the accesses that ``BUMP_IMAGE_FULL_TABLES``
names (``all``, or some of ``1.33``, ``1.37``, ``api``; conftest.py deselects the rest,
marked ``full_table``); otherwise an always-on subset: each failure once, at the middle
position, spread over the three kinds and both orders (``SUBSET``).  tox runs the whole
table once per access, each on another Python.  The ids are the same either way.
"""

import re
import threading
import time

import pytest
from fakes import OLD

pytestmark = pytest.mark.e2e


NEW = "ghcr.io/noetl/noetl:v2.35.9"
#: each failure's own image (the healthy neighbours get NEW)
BAD = {
    "stuck": "ghcr.io/noetl/noetl:v2.35.9-stuck",
    "progress_deadline": "ghcr.io/noetl/noetl:v2.35.9-deadline",
    "crash_loop": "ghcr.io/noetl/noetl:v2.35.9-crash",
    "image_pull_backoff": "ghcr.io/noetl/noetl:v2.35.9-pull",
    "deleted": "ghcr.io/noetl/noetl:v2.35.9-deleted",
    "forbidden": "ghcr.io/noetl/noetl:v2.35.9-forbidden",
}
BEHAVIOURS = {
    "stuck": {"mode": "hang"},
    "progress_deadline": {"mode": "hang"},
    "crash_loop": {"mode": "crash_loop"},
    "image_pull_backoff": {"mode": "image_pull_backoff"},
    "deleted": {"mode": "hang"},            # the wait lasts until the workload is deleted
}
FAST = {"mode": "ready", "delay": 0.1}      # every workload's own pods (the old image, NEW)

#: kind -> (plural, prefix in ``images`` keys, SimClient's add_*, delete_*)
KINDS = {
    "deployment": ("deployments", "", "add_deployment", "delete_deployment"),
    "statefulset": ("statefulsets", "sts/", "add_statefulset", "delete_statefulset"),
    "daemonset": ("daemonsets", "ds/", "add_daemonset", "delete_daemonset"),
}
MODES = ("stuck", "progress_deadline", "image_pull_backoff", "deleted", "forbidden")
POSITIONS = ("first", "middle", "last")
ORDERS = ("sequential", "parallel")
NAMES = ("mix-a", "mix-b", "mix-c")

#: rollout_timeout_seconds: short where a row waits for it (a stuck rollout), long where
#: nothing should (so that a loaded machine cannot turn a healthy neighbour into a
#: time-out).  In a stuck row the healthy neighbours and the rollback must finish within
#: it: healthy rollouts took at most 0.9 s (Deployment), 1.6 s (StatefulSet) and 2.2 s
#: (DaemonSet: three nodes, one at a time) with kubectl 1.33 and three test workers on
#: two cores, so each kind gets well over twice that.
STUCK_TIMEOUT = {"deployment": 4, "statefulset": 4, "daemonset": 6}
SAFE_TIMEOUT = 30
FAIL_FAST = 1
# progressDeadlineSeconds of a Deployment that hangs.  It holds for its rollback too, so
# the rollback must show progress within it, also on a loaded machine.  (The CI failures
# of the 25-workload run were another cause, fixed in the tool: fail fast's look at the
# rolling-back Deployment took the change's own ProgressDeadlineExceeded, which the
# controller keeps until the rollback progresses, for the rollback's failure ("rollback
# failed: … ProgressDeadlineExceeded"); reproduced at load 10, and by
# test_engine.py::test_the_changes_progress_deadline_is_not_the_rollbacks.)
PROGRESS_DEADLINE = 2

#: the always-on rows: each failure once, in the middle, over every kind and both orders
SUBSET = {
    ("deployment", "parallel", "middle", "stuck"),
    ("deployment", "sequential", "middle", "progress_deadline"),
    ("statefulset", "parallel", "middle", "image_pull_backoff"),
    ("daemonset", "sequential", "middle", "deleted"),
    ("deployment", "parallel", "middle", "forbidden"),
}


def rows():
    table = []
    for kind in KINDS:
        for order in ORDERS:
            for position in POSITIONS:
                for mode in MODES:
                    row = (kind, order, position, mode)
                    marks = () if row in SUBSET else (pytest.mark.full_table,)
                    table.append(pytest.param(*row, id="-".join(row), marks=marks))
    return table


# -- helpers -----------------------------------------------------------------------------

def failure_mode(kind, mode):
    """What makes the workload fail: StatefulSets and DaemonSets have no progress
    deadline (only a Deployment's controller sets ProgressDeadlineExceeded), so their
    "progress deadline" column is a crash loop instead."""
    if mode == "progress_deadline" and kind != "deployment":
        return "crash_loop"
    return mode


def add_workload(cluster, kind, name, **keys):
    add = getattr(cluster.sim, KINDS[kind][2])
    return add(name, containers=[{"name": "app", "image": OLD}], behaviour=FAST, **keys)


def key_of(kind, name):
    return KINDS[kind][1] + name


def path_of(kind, name):
    return "/apis/apps/v1/namespaces/noetl/%s/%s" % (KINDS[kind][0], name)


def template_image(cluster, kind, name):
    obj = cluster.sim.get(KINDS[kind][0], name)
    return None if obj is None else obj["spec"]["template"]["spec"]["containers"][0]["image"]


def live_pod_images(cluster, name):
    """The images the workload's pods run, terminating pods left out."""
    return {p["spec"]["containers"][0]["image"]
            for p in cluster.sim.list("pods", namespace="noetl", label_selector="app=" + name)
            if not p["metadata"].get("deletionTimestamp")}


def revision(cluster, kind, name):
    """The workload's current revision number: a Deployment's annotation, else the
    highest of its ControllerRevisions (a rollback re-uses the old one as the next)."""
    obj = cluster.sim.get(KINDS[kind][0], name)
    if kind == "deployment":
        return int(obj["metadata"]["annotations"]["deployment.kubernetes.io/revision"])
    uid = obj["metadata"]["uid"]
    return max(r["revision"] for r in cluster.sim.list("controllerrevisions", namespace="noetl")
               if any(o.get("uid") == uid for o in r["metadata"].get("ownerReferences", [])))


def patches(cluster, kind):
    """The tool's PATCHes of workloads of ``kind``, in order: ``[(name, "change" |
    "undo", status)]`` - a change carries ``fieldManager=bump_image``, an undo (as
    ``kubectl rollout undo`` sends it) does not."""
    plural = KINDS[kind][0]
    found = []
    for r in cluster.api_requests("PATCH"):
        m = re.search(r"/namespaces/noetl/%s/([^/]+)$" % plural, r["path"])
        if m:
            what = "change" if "bump_image" in (r["query"].get("fieldManager") or []) \
                else "undo"
            found.append((m.group(1), what, r["status"]))
    return found


class DeleteDuringWait:
    """Delete a workload through the admin API once the tool has patched it and read
    it again after that (its rollout is being waited for)."""

    def __init__(self, cluster, kind, name, timeout=60):
        self.cluster, self.kind, self.name, self.timeout = cluster, kind, name, timeout
        self.path = path_of(kind, name)
        self.error = None
        self.deleted_at = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def polled_after_patch(self):
        mine = [r for r in self.cluster.api_requests() if r["path"] == self.path]
        patched = [i for i, r in enumerate(mine) if r["method"] == "PATCH"]
        return bool(patched) and any(r["method"] == "GET" for r in mine[patched[0] + 1:])

    def _run(self):
        try:
            until = time.monotonic() + self.timeout
            while not self.polled_after_patch():
                if time.monotonic() > until:
                    raise AssertionError("%s was never patched and read again" % self.path)
                time.sleep(0.05)
            getattr(self.cluster.sim, KINDS[self.kind][3])(self.name)
            self.deleted_at = time.time()
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.join()

    def join(self):
        self.thread.join(self.timeout + 5)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def forbid(cluster, kind, name):
    """Every GET and PATCH of that one object answers 403 (as RBAC with resourceNames
    that leave it out would)."""
    regex = r"/namespaces/noetl/%s/%s$" % (KINDS[kind][0], re.escape(name))
    for method in ("GET", "PATCH"):
        cluster.sim.inject_fault(method=method, path_regex=regex, status=403,
                                 reason="Forbidden")


def assert_healthy(comp, cluster, kind, name, stdout, timeout):
    assert comp["kind"] == kind, comp
    assert comp["status"] == "changed" and comp["error"] is None, (comp, stdout)
    assert comp["image"] == NEW and comp["previous_image"] == OLD, comp
    assert comp["containers"] == ["app"], comp
    assert comp["rolled_back"] is False and comp["restored_image"] is None, comp
    assert comp["verified"] is True, comp
    # its own time, not the time the slowest (or the stuck) neighbour took
    assert comp["duration_seconds"] < timeout, comp
    assert template_image(cluster, kind, name) == NEW
    assert live_pod_images(cluster, name) == {NEW}
    assert revision(cluster, kind, name) == 2, "a neighbour was rolled back or changed twice"


def assert_failed(comp, cluster, kind, name, mode, stdout, stderr, timeout):
    """The failing workload's line and what the cluster holds of it."""
    bad = BAD[mode]
    assert comp["kind"] == kind and comp["status"] == "error", (comp, stdout)
    err = comp["error"]
    message = err["message"]
    how = failure_mode(kind, mode)
    if mode == "forbidden":
        assert err["code"] == "kubectl_failed", comp
        assert ("Forbidden (403)" if cluster.api else "(Forbidden)") in message, message
        assert 'cannot get resource "%s"' % KINDS[kind][0] in message, message
        assert comp["rolled_back"] is False and comp["restored_image"] is None, comp
        assert comp["verified"] is None, comp
        assert template_image(cluster, kind, name) == OLD
        assert live_pod_images(cluster, name) == {OLD}
        assert revision(cluster, kind, name) == 1
        return
    assert comp["image"] == bad and comp["previous_image"] == OLD, comp
    if mode == "deleted":
        assert err["code"] == "rollout_failed", comp
        assert "went away during the rollout" in message, message
        assert comp["rolled_back"] is False and comp["restored_image"] is None, comp
        # rollback_on_failure was asked for: the message says why nothing was undone
        assert message.endswith("; not rolled back: there is nothing left to undo"), message
        assert "rollback failed" not in message, message
        assert cluster.sim.get(KINDS[kind][0], name) is None
        return
    if how == "stuck":
        assert err["code"] == "rollout_timeout", comp
        assert "did not complete within %d s" % timeout in message, message
    elif how == "progress_deadline":
        assert err["code"] == "rollout_failed", comp
        assert message.startswith("ProgressDeadlineExceeded: "), message
    elif how == "crash_loop":
        assert err["code"] == "rollout_failed", comp
        assert message.startswith("CrashLoopBackOff: "), message
    else:
        assert err["code"] == "rollout_failed", comp
        # ErrImagePull turns into ImagePullBackOff after 0.5 s; the fail-fast read may
        # land on either (one problem for the tool)
        assert re.match(r"(ImagePullBackOff|ErrImagePull): ", message), message
        assert bad in message, message
    assert comp["rolled_back"] is True and comp["restored_image"] == OLD, (
        message, [line for line in stderr.splitlines() if name in line],
        (cluster.sim.get(KINDS[kind][0], name) or {}).get("status"))
    if kind == "deployment":
        assert message.endswith("; rolled back to revision 1 (%s)" % OLD), message
    else:         # no revision number of its own
        assert message.endswith("; rolled back to its previous revision (%s)" % OLD), message
    assert comp["verified"] is None, comp
    assert template_image(cluster, kind, name) == OLD
    assert live_pod_images(cluster, name) == {OLD}
    assert revision(cluster, kind, name) == 3      # revision 1 again, as the next one


def expected_patches(names, failing, mode, order):
    """The (name, change|undo) PATCHes the run should send, in order (sequential), or
    as (changes, undos) with every change before any undo (parallel)."""
    changes = [n for n in names if not (n == failing and mode == "forbidden")]
    undo = [failing] if mode not in ("forbidden", "deleted") else []
    if order == "parallel":
        return changes, undo
    seq = []
    for n in names:
        if n in changes:
            seq.append((n, "change"))
        if n in undo:
            seq.append((n, "undo"))
    return seq


def final_report(run):
    """The report that ends stderr (``result: ...`` and the lines after it), without
    the ``bump_image: `` prefix."""
    lines = [line[len("bump_image: "):] for line in run.stderr.splitlines()
             if line.startswith("bump_image: ")]
    starts = [i for i, line in enumerate(lines) if line.startswith("result: ")]
    assert starts, run.stderr
    return lines[starts[-1]:]


def assert_report(run, keys, failing, code, mode, changed):
    """The report names every workload in payload order: a healthy one ``changed: now
    NEW``; the failing one with its code, then ``is back on OLD`` when rolled back, and
    nothing more when it was never changed (forbidden)."""
    lines = final_report(run)
    assert lines[0].startswith("result: failed (exit 1): %d changed" % changed), lines
    rest = lines[1:] + [None]
    at = 0
    for key in keys:
        line, at = rest[at], at + 1
        if key not in failing:
            assert line == "  %s: changed: now %s" % (key, NEW), lines
            continue
        assert line is not None and line.startswith("  %s: %s: " % (key, code[key])), lines
        if mode[key] in ("stuck", "progress_deadline", "image_pull_backoff"):
            assert rest[at] == "    %s is back on %s" % (key, OLD), lines
            at += 1
        elif mode[key] == "deleted":
            assert rest[at] == "    %s is gone: it was deleted during its rollout" % key, lines
            at += 1
    assert rest[at] is None, lines


# -- the table ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind, order, position, mode", rows())
def test_one_failing_workload_among_healthy_neighbours(cluster, kind, order, position, mode):
    names = list(NAMES)
    failing = names[POSITIONS.index(position)]
    how = failure_mode(kind, mode)
    for name in names:
        keys = {}
        if name == failing and how == "progress_deadline":
            keys["progress_deadline_seconds"] = PROGRESS_DEADLINE
        add_workload(cluster, kind, name, **keys)
    if how in BEHAVIOURS:
        cluster.sim.set_image_behaviour(BAD[mode], BEHAVIOURS[how])
    if mode == "forbidden":
        forbid(cluster, kind, failing)
    cluster.sim.clear_requests()
    images = {key_of(kind, n): (BAD[mode] if n == failing else NEW) for n in names}
    timeout = STUCK_TIMEOUT[kind] if how == "stuck" else SAFE_TIMEOUT
    payload = cluster.payload(images=images, parallel=order == "parallel",
                              rollback_on_failure=True, fail_fast_seconds=FAIL_FAST,
                              rollout_timeout_seconds=timeout)
    started = time.monotonic()
    if mode == "deleted":
        with DeleteDuringWait(cluster, kind, failing):
            run = cluster.bump(payload)
    else:
        run = cluster.bump(payload)
    elapsed = time.monotonic() - started
    out = run.stdout + run.stderr

    assert run.code == 1, out
    assert "Traceback" not in run.stderr
    assert [e["event"] for e in run.events] == ["probe", "probe", "component", "component",
                                                "component", "summary"], out
    comps = run.event("component")
    assert [c["component"] for c in comps] == names, out       # payload order
    for comp in comps:
        if comp["component"] == failing:
            assert_failed(comp, cluster, kind, failing, mode, run.stdout, run.stderr, timeout)
        else:
            assert_healthy(comp, cluster, kind, comp["component"], run.stdout, timeout)
    summary = run.summary
    assert (summary["status"], summary["exit_code"], summary["changed"], summary["errors"],
            summary["unchanged"], summary["skipped"]) == ("failed", 1, 2, 1, 0, 0), summary
    # the summary names a workload that is not a Deployment kind/name, in full
    assert summary["images"] == {("" if kind == "deployment" else kind + "/") + n: i for n, i
                                 in zip(names, images.values())}, summary
    assert summary["error"] is None, summary

    code = {"stuck": "rollout_timeout", "forbidden": "kubectl_failed"}.get(how, "rollout_failed")
    key = ("" if kind == "deployment" else kind + "/") + failing
    assert_report(run, [("" if kind == "deployment" else kind + "/") + n for n in names],
                  {key}, {key: code}, {key: mode}, 2)

    # only the failing workload was rolled back, and in the order the mode promises
    sent = patches(cluster, kind)
    assert all(status == 200 for _, _, status in sent), sent
    want = expected_patches(names, failing, mode, order)
    if order == "sequential":
        assert [(n, what) for n, what, _ in sent] == want, sent
    else:
        changes, undo = want
        assert sorted(n for n, what, _ in sent if what == "change") == changes, sent
        assert [n for n, what, _ in sent if what == "undo"] == undo, sent
        assert [what for _, what, _ in sent] == ["change"] * len(changes) + ["undo"] * len(
            undo), sent
    deletes = [r["path"].rsplit("/", 1)[1] for r in cluster.api_requests("DELETE")]
    assert all(p.startswith(failing + "-") for p in deletes), deletes
    if kind == "statefulset" and mode in ("stuck", "progress_deadline",
                                          "image_pull_backoff"):
        assert deletes == [failing + "-0"], deletes    # its pod stuck on the failed revision
    else:
        assert deletes == [], deletes
    # a rollback that touched a neighbour would show in its revision (assert_healthy);
    # nothing but the failure itself should cost much time
    assert elapsed < (timeout * 2 if how == "stuck" else 0) + 30, elapsed


# -- 25 workloads: three chunks of ten, one of each failure in the first -----------------

MANY = ["many-%02d" % i for i in range(1, 26)]
#: the failures, all in the first chunk of ten
MANY_FAILING = {"many-01": "stuck", "many-03": "progress_deadline",
                "many-05": "image_pull_backoff", "many-07": "deleted", "many-10": "forbidden"}
#: the stuck one waits this long; 20 healthy neighbours must finish well within it
MANY_TIMEOUT = 8


def test_twenty_five_deployments_with_every_failure_in_the_first_chunk(cluster):
    for name in MANY:
        keys = {}
        if MANY_FAILING.get(name) == "progress_deadline":
            keys["progress_deadline_seconds"] = PROGRESS_DEADLINE
        add_workload(cluster, "deployment", name, **keys)
    for mode in MANY_FAILING.values():
        if mode in BEHAVIOURS:
            cluster.sim.set_image_behaviour(BAD[mode], BEHAVIOURS[mode])
    forbid(cluster, "deployment", "many-10")
    cluster.sim.clear_requests()
    images = {n: BAD[MANY_FAILING[n]] if n in MANY_FAILING else NEW for n in MANY}
    payload = cluster.payload(images=images, parallel=True, rollback_on_failure=True,
                              fail_fast_seconds=FAIL_FAST,
                              rollout_timeout_seconds=MANY_TIMEOUT)
    started = time.monotonic()
    with DeleteDuringWait(cluster, "deployment", "many-07"):
        run = cluster.bump(payload)
    elapsed = time.monotonic() - started
    out = run.stdout + run.stderr
    assert run.code == 1, out
    assert "Traceback" not in run.stderr
    comps = run.event("component")
    assert [c["component"] for c in comps] == MANY, out
    for comp in comps:
        name = comp["component"]
        if name in MANY_FAILING:
            assert_failed(comp, cluster, "deployment", name, MANY_FAILING[name], run.stdout,
                          run.stderr, timeout=MANY_TIMEOUT)
        else:
            assert_healthy(comp, cluster, "deployment", name, run.stdout, MANY_TIMEOUT)
    summary = run.summary
    assert (summary["status"], summary["exit_code"], summary["changed"],
            summary["errors"]) == ("failed", 1, 20, 5), summary
    codes = {n: {"stuck": "rollout_timeout", "forbidden": "kubectl_failed"}.get(
        m, "rollout_failed") for n, m in MANY_FAILING.items()}
    assert_report(run, MANY, set(MANY_FAILING), codes, MANY_FAILING, 20)
    sent = patches(cluster, "deployment")
    assert all(status == 200 for _, _, status in sent), sent
    changes = sorted(n for n, what, _ in sent if what == "change")
    assert changes == [n for n in MANY if n != "many-10"], sent
    undos = sorted(n for n, what, _ in sent if what == "undo")
    assert undos == ["many-01", "many-03", "many-05"], sent
    assert [what for _, what, _ in sent] == ["change"] * 24 + ["undo"] * 3, sent
    assert cluster.api_requests("DELETE") == []
    assert elapsed < MANY_TIMEOUT * 2 + 30, elapsed


# -- a failure's rollback does not wait for another workload's rollout -------------------

@pytest.mark.parametrize("order", [
    "sequential", "parallel"])
def test_a_hanging_neighbour_does_not_cost_a_failed_workload_its_rollback(cluster, order):
    """Contract v3: a workload that hangs changes nothing about another's outcome.
    ``pull`` fails (ImagePullBackOff) within seconds; ``stuck`` hangs until the run's
    deadline.  ``pull`` must be rolled back - it failed with most of the budget left -
    whether the run is sequential or parallel; ``stuck`` is cut by the deadline (its
    change stays applied, no rollback is started for it)."""
    for name in ("pull", "stuck"):
        add_workload(cluster, "deployment", name)
    cluster.sim.set_image_behaviour(BAD["image_pull_backoff"], BEHAVIOURS["image_pull_backoff"])
    cluster.sim.set_image_behaviour(BAD["stuck"], BEHAVIOURS["stuck"])
    run = cluster.bump(cluster.payload(
        images={"pull": BAD["image_pull_backoff"], "stuck": BAD["stuck"]},
        parallel=order == "parallel", rollback_on_failure=True, fail_fast_seconds=FAIL_FAST,
        rollout_timeout_seconds=SAFE_TIMEOUT, deadline_seconds=9))
    out = run.stdout + run.stderr
    assert run.code == 1, out
    stuck = run.components["stuck"]
    assert stuck["error"]["code"] == "deadline_exceeded", stuck
    assert stuck["rolled_back"] is False and template_image(cluster, "deployment",
                                                            "stuck") == BAD["stuck"]
    pull = run.components["pull"]
    assert pull["error"]["code"] == "rollout_failed", pull
    assert pull["rolled_back"] is True and pull["restored_image"] == OLD, (pull, run.stderr)
    assert template_image(cluster, "deployment", "pull") == OLD


def test_a_workload_refused_when_read_is_in_the_report(cluster):
    """With ``--format summary`` (what the NoETL playbook prints) stdout only counts the
    errors; the report at the end of stderr must say which workload was refused, and
    why, and claim no change for it."""
    for name in NAMES:
        add_workload(cluster, "deployment", name)
    forbid(cluster, "deployment", "mix-b")
    run = cluster.bump(cluster.payload(image=NEW, deployments=list(NAMES)),
                       "--format", "summary")
    assert run.code == 1 and run.summary["errors"] == 1, run.stdout + run.stderr
    assert [e["event"] for e in run.events] == ["summary"], run.stdout
    lines = final_report(run)
    said = [line for line in lines if "mix-b" in line]
    assert len(said) == 1 and said[0].startswith("  mix-b: kubectl_failed: "), lines
    assert 'deployments.apps "mix-b" is forbidden' in said[0], lines


def test_the_report_of_a_deleted_workload_leaves_it_on_nothing(cluster):
    for name in ("mix-a", "mix-b"):
        add_workload(cluster, "deployment", name)
    cluster.sim.set_image_behaviour(BAD["deleted"], BEHAVIOURS["deleted"])
    payload = cluster.payload(images={"mix-a": BAD["deleted"], "mix-b": NEW},
                              rollback_on_failure=True, fail_fast_seconds=FAIL_FAST,
                              rollout_timeout_seconds=SAFE_TIMEOUT)
    with DeleteDuringWait(cluster, "deployment", "mix-a"):
        run = cluster.bump(payload)
    assert run.code == 1, run.stdout + run.stderr
    assert "went away" in run.components["mix-a"]["error"]["message"]
    assert cluster.sim.get("deployments", "mix-a") is None
    lines = final_report(run)
    assert not any(line.startswith("    mix-a is left on") for line in lines), lines
    assert "    mix-a is gone: it was deleted during its rollout" in lines, lines
