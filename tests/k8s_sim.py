#!/usr/bin/env python3
"""A small Kubernetes API server simulator for end-to-end tests with the real kubectl.

Standard library only (and the ``openssl`` CLI for its test CA); runs on Python
3.8 - 3.13.  It serves plain HTTP on 127.0.0.1, so a kubeconfig with ``server:
http://127.0.0.1:PORT`` (and an empty user) is all kubectl needs; the same API, on
the same state, is also served over HTTPS on a second port, where a bearer token is
required and its rules are enforced (see "HTTPS, tokens and RBAC" below).

Usage as a script::

    python3 tests/k8s_sim.py [--port 0] [--server-version 1.32.4] [--port-file PATH]
        [--https-port 0] [--tls-dir DIR | --no-https] [--verbose]

The first (and only) line printed on stdout is ``listening http://127.0.0.1:PORT
https://127.0.0.1:PORT2 ca=/path/ca.pem`` (just ``listening http://127.0.0.1:PORT``
with ``--no-https``, or when openssl fails: a warning then goes to stderr).  The
server runs until SIGTERM/SIGINT and then exits 0 without a traceback.

Usage from tests::

    from k8s_sim import start_sim, stop_sim, write_kubeconfig
    proc, sim = start_sim(server_version="1.32.4")   # SimClient
    try:
        write_kubeconfig(tmp / "kubeconfig", sim.base_url, contexts=("sim", "other"))
        sim.add_deployment("web", containers=[{"name": "app", "image": "repo/web:1"}])
        sim.set_image_behaviour("repo/web:bad", {"mode": "image_pull_backoff"})
        ...  # run kubectl --kubeconfig ... with HOME set to a temporary directory
        assert any(r["method"] == "PATCH" for r in sim.requests())
        # the same over HTTPS, as a service account allowed to get and patch Deployments
        sim.set_token("t0k3n", "system:serviceaccount:noetl:bump-image", [
            {"namespace": "noetl", "apiGroups": ["apps"], "resources": ["deployments"],
             "verbs": ["get", "patch"]}])
        write_kubeconfig(tmp / "secure", sim.https_url, ca_path=sim.ca_path, token="t0k3n")
    finally:
        stop_sim(proc)

Sections of this file (each starts with a ``# ----`` banner), in order
----------------------------------------------------------------------
1. Constants - default version, timings, label/annotation keys, behaviour modes
2. Small helpers - copies, timestamps, uids, hash encoding, image references
3. Label and field selectors - parsing and matching
4. Patches - strategic merge, JSON merge (RFC 7386) and JSON patch (RFC 6902)
5. Resource types, errors, defaults, validation - the served kinds, API-server defaulting
6. Object store with watch support - objects, resourceVersions, event history, watchers
7. Behaviours - what a simulated container does (ready, hang, image_pull_backoff, ...)
8. ControllerRevision history and pods of StatefulSets/DaemonSets - shared by 9 and 11
9. StatefulSet controller (a mixin of the Cluster)
10. Nodes - Node objects, node affinity, taints and tolerations (what 11 places pods by)
11. DaemonSet controller (a mixin of the Cluster)
12. The Cluster: control loop, Deployment and ReplicaSet controllers, kubelet
13. The simulator state shared by the HTTP handlers - admin operations (add_*, reset, tokens)
14. Request attributes - what the authorizer sees of a request; RBAC rules, 403 messages
15. HTTP layer - routing, authentication, the admin API, the Kubernetes API (list, watch,
    write, scale), the HTTP and HTTPS listeners
16. TLS - a test CA and a server certificate made with the openssl CLI
17. Test-side helpers: client, process control, kubeconfig - SimClient, start_sim, ...
18. Script entry point - main()

What is simulated
-----------------
* ``/version``; legacy discovery (``/api``, ``/apis``, ``/api/v1``, ``/apis/apps``,
  ``/apis/apps/v1``).  kubectl asks for *aggregated* discovery first (1.27-1.29:
  ``Accept: application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,
  application/json``; 1.30+: ``v=v2``); the simulator answers the plain
  ``application/json`` documents and kubectl silently falls back to fetching
  ``/api/v1`` and ``/apis/apps/v1`` (nothing on stderr).  ``/openapi/*`` and every
  unknown path answer a 404 ``Status``; none of the commands below needs OpenAPI.
* Plain HTTP, and HTTPS with a test CA, bearer tokens and RBAC rules (see "HTTPS,
  tokens and RBAC" below); both serve the same API on the same state.
* Resources: v1 Namespaces (``default``, ``kube-system`` and ``noetl`` always
  exist), v1 Pods, apps/v1 Deployments, ReplicaSets, StatefulSets (short name
  ``sts``), DaemonSets (``ds``) - these five with a ``/status`` subresource and in
  the ``all`` category -, ControllerRevisions and v1 Nodes (cluster-scoped, short
  name ``no``, with ``/status``; see below):
  GET, LIST (``labelSelector`` with ``=``, ``==``, ``!=``, ``in``, ``notin``,
  exists/``!``; ``fieldSelector`` on any dotted path such as ``metadata.name``;
  ``limit``/``continue`` in etcd's key order, with a real-looking token), WATCH
  (``watch=true|1``, ``resourceVersion``, ``timeoutSeconds``,
  ``allowWatchBookmarks`` and the WatchList protocol
  ``sendInitialEvents=true&resourceVersionMatch=NotOlderThan``), POST, PUT,
  PATCH (strategic merge, JSON merge patch RFC 7386, JSON patch RFC 6902) and
  DELETE, all honouring ``?dryRun=All``; the autoscaling/v1 ``/scale``
  subresource of Deployments, ReplicaSets and StatefulSets (``kubectl scale``).
  Every write bumps a global ``resourceVersion`` and notifies watchers;
  ``metadata.generation`` of the four workload kinds grows when ``spec`` changes
  (a DaemonSet's ``deprecated.daemonset.template.generation`` annotation when its
  template does).  The API defaults are applied (StatefulSet: ``podManagementPolicy:
  OrderedReady``, ``updateStrategy: {type: RollingUpdate, rollingUpdate:
  {partition: 0}}`` - but an explicit ``{type: RollingUpdate}`` keeps
  ``rollingUpdate`` unset, as on a real server; DaemonSet: ``maxUnavailable: 1``,
  ``maxSurge: 0``) and the usual validation (StatefulSet spec fields other than
  replicas/ordinals/template/updateStrategy/persistentVolumeClaimRetentionPolicy/
  minReadySeconds are immutable; ``rollingUpdate`` only with RollingUpdate).
  Errors are ``Status`` objects (``NotFound``, ``AlreadyExists``, ``Conflict``,
  ``Invalid``, ...), so kubectl prints e.g. ``Error from server (NotFound):
  deployments.apps "x" not found``.  Bodies are compact JSON, as the real server's.
* Controllers (one daemon thread; a pass at most every 50 ms, and only after a
  write or when a timer such as a pod's delay is due): a Deployment controller with the
  real RollingUpdate arithmetic (maxSurge/maxUnavailable, 25 %/25 % by default)
  and Recreate, ReplicaSet naming ``<deploy>-<pod-template-hash>``, revisions
  (an older ReplicaSet whose template matches is re-used and gets the next
  revision - this is what ``kubectl rollout undo`` relies on), change-cause
  copying, ``revisionHistoryLimit`` clean-up, ``paused``, progress deadline and
  the ``Progressing``/``Available``/``ReplicaFailure`` conditions; a ReplicaSet
  controller; a StatefulSet and a DaemonSet controller (below); and a "kubelet"
  that derives each pod's status from its behaviour.
* StatefulSet controller (after pkg/controller/statefulset, without volumes):
  pods ``<name>-<ordinal>`` with labels ``controller-revision-hash: <revision
  name>``, ``statefulset.kubernetes.io/pod-name`` and
  ``apps.kubernetes.io/pod-index``, ``hostname``/``subdomain`` set and a controller
  ownerReference; ``podManagementPolicy`` OrderedReady (create in ordinal order,
  each after its predecessor is Ready; scale down from the highest ordinal) or
  Parallel; ``updateStrategy`` RollingUpdate (replace the highest ordinal not at
  the update revision, one at a time, each waiting for readiness; only ordinals
  ``>= rollingUpdate.partition``; when every pod is updated and ready
  ``currentRevision`` becomes ``updateRevision``) or OnDelete (pods are left
  alone; a deleted one comes back at the update revision).  Status: ``replicas``,
  ``readyReplicas``, ``currentReplicas``, ``updatedReplicas``,
  ``availableReplicas`` (``minReadySeconds``), ``currentRevision``,
  ``updateRevision``, ``observedGeneration``, ``collisionCount``.
* Nodes: v1 Node objects ``sim-node-1`` ... ``sim-node-3`` by default; ``set_nodes``
  takes a count or a list of specs ``{"name", "labels", "taints"}``.  Each node has
  what a kubelet registers: labels ``kubernetes.io/os=linux``, ``kubernetes.io/arch=
  amd64``, ``kubernetes.io/hostname=<name>`` and the deprecated ``beta.kubernetes.io/
  os``/``arch`` (a spec's labels win; the ``beta.`` ones follow the GA ones),
  ``status.nodeInfo`` (``operatingSystem``/``architecture`` from those labels,
  ``kubeletVersion`` the server version at creation), ``Ready`` True (no pressure),
  an ``InternalIP`` (``10.0.0.<9+n>`` for ``...-n``; pods report it as ``hostIP``),
  ``spec.taints`` from the spec.  GET, LIST, WATCH; writes go through the generic
  handlers (``kubectl label node`` works), but no kubelet fills in a node created
  through the API.
* DaemonSet controller (after pkg/controller/daemon): one pod ``<name>-<5 chars>``
  on every Node the pod template fits (daemon.NodeShouldRunDaemonPod): its
  ``spec.nodeName`` if set, ``spec.nodeSelector`` (every label equal), the required
  node affinity (``nodeSelectorTerms`` ORed; ``matchExpressions`` ANDed with In,
  NotIn, Exists, DoesNotExist, Gt, Lt; ``matchFields`` on ``metadata.name``; an
  empty or unparsable term matches nothing) and the node's NoSchedule/NoExecute
  taints tolerated by the template's tolerations plus the controller's own
  (``DAEMONSET_TOLERATIONS``).  A pod already on a node that gained an untolerated
  NoSchedule taint stays (counted in ``numberMisscheduled``); an untolerated
  NoExecute taint, a removed node or a no longer matching selector deletes it.
  ``desiredNumberScheduled`` counts the fitting nodes only.  (``add_*`` take
  ``node_selector``, ``tolerations`` and ``affinity`` for the pod template.)  Pods get
  ``nodeName``,
  a node affinity on ``metadata.name`` (replacing the template's required terms),
  the DaemonSet tolerations and labels ``controller-revision-hash: <hash>`` and
  ``pod-template-generation``.
  RollingUpdate honours ``maxUnavailable`` (delete old pods within it, then
  create) and ``maxSurge`` (start a new pod next to the old one, delete the old
  one when the new one is available); OnDelete as above.  Status:
  ``desiredNumberScheduled``, ``currentNumberScheduled``,
  ``updatedNumberScheduled``, ``numberReady``, ``numberAvailable``,
  ``numberUnavailable``, ``numberMisscheduled``, ``observedGeneration`` (Go's
  ``omitempty`` respected: zero counts other than the always-present ones are
  left out), counted on the oldest non-terminating pod of each node.
* ControllerRevisions ``<name>-<hash>`` of both: labels of the pod template plus
  ``controller-revision-hash: <hash>``, the owner's annotations (so a
  ``kubernetes.io/change-cause`` shows in ``kubectl rollout history``), a
  controller ownerReference, ``revision`` numbers counting up and ``data`` as
  the real controllers write it: ``{"spec": {"template": {..., "$patch":
  "replace"}}}`` with sorted keys and, for a server version below 1.34,
  ``"creationTimestamp": null`` in the template's metadata.  A revision whose
  template equals the new one is re-used with the next number (``rollout undo``
  relies on it); ``revisionHistoryLimit`` old revisions no pod uses are kept.

HTTPS, tokens and RBAC
----------------------
The HTTPS port serves the Kubernetes API (not ``/_sim``) with a server certificate
for ``IP:127.0.0.1`` and ``DNS:localhost`` signed by a test CA (EC P-256, made with
the openssl CLI: ``make_ca``, ``make_server_cert``; ``make_unrelated_ca`` makes a
second CA that signed nothing, for "a wrong CA is refused").  ``start_sim`` makes
them once per test process (``shared_tls_dir``, ~100 ms) and hands the directory to
every simulator; the script alone makes them in a temporary directory.  No HTTP/2
(ALPN offers only http/1.1; kubectl falls back silently).

Authentication is by bearer token only (``Authorization: Bearer <token>``; tokens
from ``PUT /_sim/tokens`` / ``SimClient.set_token``).  On HTTPS a request without
one, or with an unknown or revoked one, gets 401 with the real body
``{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":
"Unauthorized","reason":"Unauthorized","code":401}``.  On the plain HTTP port a
request with a bearer token is authenticated and authorized the same way, one
without is allowed everything (as before tokens existed).

Authorization follows the RBAC authorizer.  A token's rules are PolicyRules plus
where they apply: ``{"namespace": "noetl" | null, "apiGroups": [...],
"resources": [...], "verbs": [...], "resourceNames": [...]}`` - a namespace for a
Role bound by a RoleBinding there (it never reaches cluster-scoped resources), null
for a ClusterRole bound by a ClusterRoleBinding; ``"*"`` matches any verb, group or
resource, ``"*/scale"`` any resource's subresource.  The request's attributes are
RequestInfo's (``request_attributes``): verb get (a named object), list, watch
(``watch=true|1``), create, update, patch, delete, deletecollection (a DELETE
without a name); group ``""`` for ``/api/v1``, ``apps`` for ``/apis/apps/v1``;
resource ``deployments``, or ``deployments/status``, ``deployments/scale``;
``/api/v1/namespaces/X`` is in namespace X.  ``resourceNames`` match only requests
that name an object - and, as on a real server, a list or watch whose
``fieldSelector`` pins ``metadata.name=X`` names X (so ``resourceNames: [web]`` with
list and watch covers ``kubectl rollout status deployment/web``).  Non-resource
URLs (``/version``, ``/api``, ``/apis``, ``/api/v1``, ``/apis/apps/v1``,
``/openapi/...``) are allowed to every authenticated user, as ``system:discovery``
does.  A denied request gets 403, reason Forbidden, details ``{name?, group,
kind}`` (kind is the resource, as in the real errors; group ``""`` for the core
group) and the real message (``forbidden_message``): ``deployments.apps "a" is
forbidden: User "system:serviceaccount:noetl:bump-image" cannot patch resource
"deployments" in API group "apps" in the namespace "noetl"``; ``replicasets.apps
is forbidden: User "..." cannot list resource "replicasets" in API group "apps" in
the namespace "noetl"``; ``nodes is forbidden: User "..." cannot list resource
"nodes" in API group "" at the cluster scope``.  Authentication and authorization
come before injected faults.

Behaviours
----------
A behaviour is resolved for every container when its pod is created: the
image's behaviour (``set_image_behaviour``) wins, else the default behaviour of
the pod's Deployment/StatefulSet/DaemonSet (``add_*(behaviour=...)``/
``set_behaviour``), else ``{"mode": "ready", "delay": 0.3}``.  Init containers run one after the other,
then the app containers start.  Modes (optional keys: ``delay`` seconds before
the mode shows, ``message`` to override the default message):

``ready``              running and ready after ``delay`` (default 0.3 s)
``not_ready``          running (``started: true``, pod ``Running``) but never ready, as
                       with a failing readiness probe: Ready/ContainersReady False,
                       ``ContainersNotReady``, ``containers with unready status: [NAME]``;
                       a Deployment's rollout never completes.  ``restart_interval``
                       (seconds): also restarted that often, as a failing liveness probe
                       does (``restartCount`` grows, ``lastState.terminated`` exit code 1
                       or ``exit_code``, reason ``Error``)
``hang``               stays ``ContainerCreating`` (pod Pending) forever
``image_pull_backoff`` waiting ``ErrImagePull``, 0.5 s later ``ImagePullBackOff``
                       (``Back-off pulling image "X"``)
``crash_loop``         ``CrashLoopBackOff``; ``restartCount`` grows every
                       ``interval`` seconds (default 1), ``lastState.terminated``
                       has ``exitCode`` 1 (or ``exit_code``)
``config_error``       waiting ``CreateContainerConfigError``
``replica_failure``    the ReplicaSet cannot create pods: RS and Deployment get a
                       ``ReplicaFailure`` condition, reason ``FailedCreate``,
                       message ``pods "x-..." is forbidden: exceeded quota: ...``;
                       a StatefulSet/DaemonSet just creates no pod (the real
                       controllers only emit an event)

Behaviours are snapshotted when a pod is created; changing them later does not
touch existing pods.  ``imageID`` is ``<repo>@sha256:<digest>`` where the digest
comes from ``set_digest(image, digest)`` or defaults to sha256(image).

Admin API (JSON in and out; not recorded in the request log; wrapped by SimClient)
-------------------------------------------------------------------------------
``GET    /_sim/health``                        -> ``{"ok": true, "server_version": ...}``
``POST   /_sim/reset``                         delete all but namespaces; clear log, faults,
                                              behaviours, digests, tokens; restore server
                                              version and the 3 nodes
``POST   /_sim/deployments``                   body: the keyword arguments of
                                              ``SimClient.add_deployment`` -> the Deployment
``POST   /_sim/statefulsets``, ``/_sim/daemonsets``  likewise (``add_statefulset``,
                                              ``add_daemonset``)
``DELETE /_sim/{deployments|statefulsets|daemonsets}/{ns}/{name}``  delete it at once
                                              with its ReplicaSets, ControllerRevisions, pods
``PUT    /_sim/behaviours/{ns}/{name}``        ``{"behaviour": {...} | null, "kind":
                                              "Deployment" | "StatefulSet" | "DaemonSet"}``
``PUT    /_sim/nodes`` / ``GET``                ``{"count": n}`` or ``{"nodes": [{"name", "labels",
                                              "taints"} | name, ...]}`` -> ``{"nodes": [names]}``
``PUT    /_sim/image-behaviours``              ``{"image": ..., "behaviour": {...} | null}``
``PUT    /_sim/digests``                       ``{"image": ..., "digest": ...}``
``PUT    /_sim/server-version``                ``{"version": "1.29.3"}``
``PUT    /_sim/max-page``                      ``{"max_page": n | null}``: every list answers at
                                              most n items (and a ``continue`` token)
``GET    /_sim/requests`` / ``DELETE``         the API request log / clear it
``GET    /_sim/objects/{kind}/{ns}/{name}``    raw object (``ns`` = ``-`` if cluster scoped)
``GET    /_sim/objects/{kind}?namespace=&labelSelector=``  list of raw objects
``POST   /_sim/faults`` / ``DELETE``           inject a fault (-> ``{"id": n}``) / clear all
``PUT    /_sim/tokens``                        ``{"token": T, "user": "system:serviceaccount:
                                              noetl:bump-image", "rules": [...]}`` adds or
                                              replaces a token; ``"rules": null`` revokes it
``DELETE /_sim/tokens``                        ``{"token": T}`` revokes it (no body: all)
``GET    /_sim/tokens``                        ``[{"token", "user", "rules"}, ...]``

The admin API is served on the plain HTTP port only, without authentication.

Each request-log entry is a dict: ``method``, ``path``, ``query`` (dict of
lists), ``raw_query``, ``content_type``, ``accept``, ``body`` (parsed JSON when
JSON, else text, None when empty), ``user_agent``, ``time`` (epoch seconds),
``status`` (the HTTP status answered; None while a watch is still streaming),
``bytes``, the size of the response body (0 until answered; for a watch, its event
lines so far, without the chunked framing) - what a benchmark compares when the
traffic is TLS and a proxy cannot count it -, ``user`` (the bearer token's user, None
without a known token) and ``scheme`` (``"http"`` or ``"https"``).

A fault matches API requests by ``method`` (None = any) and ``path_regex``
(``re.search`` on ``path`` or ``path?query``; None = any).  It answers a
``Status`` with ``status``/``reason``/``message``, or the text ``raw_body``
verbatim, with the extra response ``headers`` (a dict, e.g. ``{"Retry-After":
"1"}``).  When ``message`` is None the real server's text for that reason is made
up: Forbidden ``deployments.apps "x" is forbidden: User "sim-user" cannot patch
resource "deployments" in API group "apps" in the namespace "noetl"`` (the token's
user when the request has one; the verb as the authorizer sees it, see below),
Conflict ``Operation cannot be fulfilled on deployments.apps "x": the object has
been modified; please apply your changes to the latest version and try again``,
TooManyRequests ``Too many requests, please try again later.`` (with
``details.retryAfterSeconds`` from a numeric ``Retry-After``; client-go waits that
long and retries, so ``count=1`` makes kubectl succeed a second later).  The real
API server's priority-and-fairness 429 is that sentence as ``text/plain``: use
``raw_body`` for it.  ``delay`` sleeps first; with ``status=None`` the request
is then served normally (a slow server).  ``count`` limits how often it fires
(None = forever).  Faults are checked after authentication and authorization.

kubectl on this machine (findings)
----------------------------------
``/usr/bin/kubectl`` is the Google Cloud SDK *dispatcher* (``kubectl version
--client`` says ``v1.32.4-dispatcher``).  Before running any command it sends
``GET /version?timeout=5s`` with ``User-Agent: kubectl-dispatcher/v1.0`` to the
cluster of the selected context and reads the ``major``/``minor`` fields (not
``gitVersion``; a trailing ``+`` as in GKE's ``"29+"`` is ignored).  For server
minor 27, 28, 29, 30, 31 and 33 it execs
``/usr/lib/google-cloud-sdk/bin/kubectl.1.<minor>`` with the same argv (seen
with ``strace -f -e trace=execve``; the User-Agent then is
``kubectl/v1.27.16``, ``v1.28.15``, ``v1.29.14``, ``v1.30.13``, ``v1.31.9``,
``v1.33.1``).  For 1.32, for any version outside 1.27-1.33 and when ``/version``
fails it runs its built-in ``kubectl/v1.32.4`` (no exec).  The ``/version``
answer lands in the HTTP cache under ``$HOME/.kube/cache/http`` and later runs
re-use it without asking, so give every kubectl run a fresh ``HOME`` when the
server version changes.  ``--server-version`` (or ``PUT /_sim/server-version``)
therefore selects the kubectl that runs.

Request sequences observed (discovery left out):

``kubectl rollout status deployment/X`` with kubectl 1.27-1.33 (the dispatcher's)::

    GET /apis/apps/v1/namespaces/NS/deployments/X
    GET .../deployments?fieldSelector=metadata.name%3DX&limit=500&resourceVersion=0
    GET .../deployments?allowWatchBookmarks=true&fieldSelector=metadata.name%3DX
        &resourceVersion=<the list's RV>&timeoutSeconds=<random>&watch=true

and on ``--timeout`` expiry it prints ``error: timed out waiting for the condition``.
With kubectl 1.37 the list disappears; a single WatchList request replaces it::

    GET /apis/apps/v1/namespaces/NS/deployments/X
    GET .../deployments?allowWatchBookmarks=true&fieldSelector=metadata.name%3DX
        &resourceVersionMatch=NotOlderThan&sendInitialEvents=true&timeoutSeconds=...&watch=true

which must start with ADDED events for the existing objects and then a
BOOKMARK whose object has ``metadata.annotations["k8s.io/initial-events-end"]
= "true"`` (else kubectl waits for its timeout).  The same holds for
``kubectl wait``.  ``kubectl get -w`` (all versions) lists, then watches with
``resourceVersion=<list RV>&watch=true``.

``kubectl rollout undo deployment/X`` (all versions)::

    GET   .../deployments/X            (twice)
    GET   .../replicasets?labelSelector=<deployment selector, e.g. app%3DX>
    PATCH .../deployments/X  application/json-patch+json
          [{"op": "replace", "path": "/spec/template", "value": <RS template
            without pod-template-hash>},
           {"op": "replace", "path": "/metadata/annotations", "value": {...}}]

ReplicaSets belong to the Deployment through a controller ``ownerReference``
with its uid.  Older kubectl (seen with 1.27) sends ``"creationTimestamp": null``
inside the template; the simulator drops it so the template still equals the old
ReplicaSet's, which is then re-used with the next revision number.
``kubectl set image`` sends a strategic merge patch with
``$setElementOrder/containers``; ``kubectl annotate`` a JSON merge patch.

``kubectl rollout status statefulset/X`` and ``daemonset/X`` send exactly the
requests of ``deployment/X`` above (GET, then list + watch or one WatchList,
``fieldSelector=metadata.name%3DX``).  kubectl's messages (pkg/polymorphichelpers/
rollout_status.go): for a StatefulSet ``Waiting for statefulset spec update to be
observed...``, ``Waiting for N pods to be ready...`` and - because the API
defaults ``rollingUpdate.partition`` to 0 - ``Waiting for partitioned roll out
to finish: U out of R new pods have been updated...`` ending in ``partitioned
roll out complete: U new pods have been updated...`` even without a partition;
only a StatefulSet whose ``rollingUpdate`` is unset gets ``waiting for statefulset
rolling update to complete U pods at revision X...`` / ``statefulset rolling
update complete N pods at revision X...``.  For a DaemonSet ``Waiting for daemon
set "X" rollout to finish: U out of D new pods have been updated...``, ``... A of
D updated pods are available...``, ``daemon set "X" successfully rolled out``.
With OnDelete both fail at once (exit 1, nothing on stdout): ``error: rollout
status is only available for RollingUpdate strategy type``.

``kubectl rollout undo statefulset/X`` (and ``daemonset/X``; all versions)::

    GET   .../statefulsets/X            (twice)
    GET   .../controllerrevisions?labelSelector=<selector, e.g. app%3DX>
    PATCH .../statefulsets/X  application/strategic-merge-patch+json
          <the chosen revision's data, byte for byte>

and prints ``statefulset.apps/X rolled back``.  kubectl 1.37 sends the last three
with ``Accept: application/vnd.kubernetes.protobuf,application/json`` (JSON is
answered and accepted).  Before patching, kubectl compares its own JSON of the
current template with the revision's ``data`` byte for byte; if equal it sends
no PATCH and prints ``... skipped rollback (current template already matches
revision N)``.  kubectl up to 1.33 writes ``"creationTimestamp": null`` there,
1.34+ does not (as the simulator's revisions for a server below/from 1.34), so a
1.37 kubectl against the default 1.32 server patches (a no-op) and says
``rolled back``.  ``--to-revision`` of an unknown revision: ``error: unable to
find specified revision N in history``; with one revision: ``error: no last
revision to roll back to``.  ``kubectl rollout history`` lists the revisions'
``revision`` numbers with their ``kubernetes.io/change-cause`` annotations.

Over HTTPS with a token, as the authorizer sees them - (verb, resource, name),
discovery left out, the same for kubectl 1.33 (the dispatcher's, for a 1.33
server) and 1.37 unless said::

    get deployment X            get deployments.apps X
    patch deployment X / set image deployment/X
                                get deployments.apps X; patch deployments.apps X
    rollout status deployment/X (statefulset/X, daemonset/X alike)
        1.33:                   get X; list X; watch X  (list and watch pinned to X
                                by fieldSelector metadata.name=X)
        1.37:                   get X; watch X          (one WatchList request, no list)
    rollout undo deployment/X   get deployments.apps X (twice); list replicasets.apps;
                                patch deployments.apps X
    rollout undo statefulset/X (daemonset/X alike)
                                get statefulsets.apps X (twice); list
                                controllerrevisions.apps; patch statefulsets.apps X
    delete pod P                delete pods P; get pods P  (the simulator removes a pod
                                deleted through the API at once, so kubectl's wait is one
                                GET that finds it gone)
    get nodes                   list nodes (cluster scope)

So ``rollout status`` needs get+list+watch with kubectl up to 1.33 and get+watch
with 1.37.  With less it times out (``error: timed out waiting for the
condition``, exit 1) after klog lines such as ``"Failed to watch" err="failed to
list *unstructured.Unstructured: deployments.apps \"web\" is forbidden: ...
cannot list resource ..."``; 1.37 falls back to a list when its WatchList is
forbidden, so with get+list (no watch) it succeeds - with "Failed to watch" lines
on stderr - only if the rollout is already complete at that list.  A forbidden
write prints ``Error from server (Forbidden): <the message>``.  A CA that did not
sign the server certificate: ``Unable to connect to the server: tls: failed to
verify certificate: x509: certificate signed by unknown authority`` (after
memcache.go discovery errors).  An unknown or revoked token: ``error: You must be
logged in to the server (Unauthorized)`` when discovery is cached in ``$HOME``
(the 401's Status is decoded), but ``error: You must be logged in to the server
(the server has asked for the client to provide credentials)`` with a fresh
``$HOME``, whose discovery request fails first (client-go reads no Status from a
raw discovery answer).  The dispatcher sends the token with its ``GET /version``
too; when that gets 401 it runs its built-in kubectl 1.32.  Over HTTPS with an
empty user, kubectl asks for a user name on the terminal (``Please enter
Username:``).

Limitations: authentication by bearer token only (no client certificates, basic
auth, impersonation, TokenReview or SelfSubjectAccessReview, so no ``kubectl auth
can-i``), RBAC rules straight from the token (no Role/RoleBinding objects);
JSON only - protobuf request bodies (sent
by typed-client commands such as ``kubectl create deployment``) get a 415; no
OpenAPI, so ``kubectl create -f``/``apply -f`` need ``--validate=false`` (they
then work; the admin API is the usual way to create objects); no server-side
apply; no Table output (kubectl's human-readable ``get`` falls back to NAME/AGE
columns); no events, services or other kinds; label/field
selectors and strategic-merge keys cover the common cases only; watches replay
from a history of the last 20000 events (older ``resourceVersion`` -> 410).
StatefulSets have no volumes (``volumeClaimTemplates`` are stored, not acted
on), no ``maxUnavailable`` (the MaxUnavailableStatefulSet gate) and no
``ordinals.start``; only DaemonSet pods are placed by node selectors, affinities
and taints (ReplicaSet pods run on ``sim-node-1``, StatefulSet pods round-robin
over the nodes, whatever their constraints); ``spec.unschedulable`` (``kubectl
cordon``) is stored but no taint follows from it, and no node ever turns NotReady;
pods of all workloads report the same fixed IP scheme (hostIP follows the node).
"""
from __future__ import annotations

import argparse
import atexit
import base64
import collections
import copy
import datetime
import hashlib
import json
import os
import queue
import random
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------

DEFAULT_SERVER_VERSION = "1.32.4"
DEFAULT_NAMESPACES = ("default", "kube-system", "noetl")
TICK_SECONDS = 0.05
HISTORY_LIMIT = 20000
TERMINATION_GRACE_SECONDS = 0.2
POD_TEMPLATE_HASH = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
CHANGE_CAUSE = "kubernetes.io/change-cause"
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
# Deployment annotations the controller does not copy onto ReplicaSets.
ANNOTATIONS_TO_SKIP = frozenset([
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION, REVISION_HISTORY, DESIRED_REPLICAS, MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
])
# StatefulSet/DaemonSet labels and annotations (k8s.io/api/apps/v1).
CONTROLLER_REVISION_HASH = "controller-revision-hash"
STS_POD_NAME = "statefulset.kubernetes.io/pod-name"
POD_INDEX = "apps.kubernetes.io/pod-index"
DS_TEMPLATE_GENERATION = "pod-template-generation"
DS_TEMPLATE_GENERATION_ANNOTATION = "deprecated.daemonset.template.generation"
DEFAULT_NODES = 3
# Tolerations the DaemonSet controller adds to its pods (pkg/controller/daemon/util).
DAEMONSET_TOLERATIONS = (
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
)
MODES = ("ready", "not_ready", "hang", "image_pull_backoff", "crash_loop", "config_error",
         "replica_failure")
DEFAULT_BEHAVIOUR = {"mode": "ready", "delay": 0.3}
HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

def clone(obj):
    """Deep copy of JSON-like data."""
    return copy.deepcopy(obj)


def iso(ts=None):
    """RFC 3339 timestamp (seconds precision, UTC) for epoch seconds ``ts``."""
    if ts is None:
        ts = time.time()
    dt = datetime.datetime.fromtimestamp(int(ts), tz=datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _deleting(obj):
    """Whether a pod (or any object) is terminating."""
    return bool(obj["metadata"].get("deletionTimestamp"))


def _epoch(timestamp):
    """Epoch seconds of an RFC 3339 timestamp written by iso() (0 if unparsable)."""
    try:
        parsed = datetime.datetime.strptime(timestamp or "", "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return 0.0
    return parsed.replace(tzinfo=datetime.timezone.utc).timestamp()


def new_uid():
    raw = "%032x" % random.getrandbits(128)
    return "%s-%s-%s-%s-%s" % (raw[:8], raw[8:12], raw[12:16], raw[16:20], raw[20:])


def random_suffix(n=5):
    return "".join(random.choice(HASH_ALPHABET) for _ in range(n))


def safe_encode(number):
    """Render an integer with the vowel-free alphabet Kubernetes uses for hashes."""
    out = []
    while True:
        number, rem = divmod(number, len(HASH_ALPHABET))
        out.append(HASH_ALPHABET[rem])
        if number == 0:
            break
    return "".join(out)


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def parse_version(text):
    """'1.29' / 'v1.29.3' -> (major, minor, gitVersion)."""
    text = text.strip()
    if text.startswith("v"):
        text = text[1:]
    parts = text.split(".")
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
        raise ValueError("server version must look like 1.29 or 1.29.3, got %r" % text)
    if len(parts) == 2:
        parts.append("0")
    return parts[0], parts[1], "v" + ".".join(parts)


def image_repo(image):
    """The image reference without tag/digest ('reg:5000/a/b:1' -> 'reg:5000/a/b')."""
    if "@" in image:
        image = image.split("@", 1)[0]
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        image = image[:colon]
    return image


def default_pull_policy(image):
    if "@" in image:
        return "IfNotPresent"
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon <= slash or image[colon + 1:] == "latest":
        return "Always"
    return "IfNotPresent"


def get_path(obj, dotted):
    cur = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def parse_int_or_percent(value, total, round_up):
    if isinstance(value, int):
        return value
    text = str(value)
    if text.endswith("%"):
        pct = int(text[:-1])
        scaled = total * pct / 100.0
        if round_up:
            return int(-(-scaled // 1))
        return int(scaled // 1)
    return int(text)


# --------------------------------------------------------------------------
# Label and field selectors
# --------------------------------------------------------------------------

def _split_top_level(text):
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


_SET_RE = re.compile(r"^([^\s!=()]+)\s+(in|notin)\s*\(([^)]*)\)$")


def parse_label_selector(text):
    """Parse a label selector string into a list of (key, op, values) requirements."""
    reqs = []
    for part in _split_top_level(text or ""):
        m = _SET_RE.match(part)
        if m:
            values = {v.strip() for v in m.group(3).split(",") if v.strip()}
            reqs.append((m.group(1), m.group(2), values))
        elif part.startswith("!"):
            reqs.append((part[1:].strip(), "!exists", None))
        elif "!=" in part:
            key, value = part.split("!=", 1)
            reqs.append((key.strip(), "notin", {value.strip()}))
        elif "==" in part:
            key, value = part.split("==", 1)
            reqs.append((key.strip(), "in", {value.strip()}))
        elif "=" in part:
            key, value = part.split("=", 1)
            reqs.append((key.strip(), "in", {value.strip()}))
        else:
            if re.search(r"[\s()]", part):
                raise ValueError("unable to parse requirement: %r" % part)
            reqs.append((part, "exists", None))
    for key, _op, _vals in reqs:
        if not key:
            raise ValueError("invalid label selector %r" % text)
    return reqs


def selector_from_spec(selector):
    """metav1.LabelSelector (matchLabels/matchExpressions) -> requirements."""
    reqs = []
    selector = selector or {}
    for key, value in sorted((selector.get("matchLabels") or {}).items()):
        reqs.append((key, "in", {value}))
    for expr in selector.get("matchExpressions") or []:
        op = {"In": "in", "NotIn": "notin", "Exists": "exists",
              "DoesNotExist": "!exists"}.get(expr.get("operator"), "in")
        reqs.append((expr.get("key"), op, set(expr.get("values") or [])))
    return reqs


def labels_match(reqs, labels):
    labels = labels or {}
    for key, op, values in reqs:
        if op == "in" and labels.get(key) not in values:
            return False
        if op == "notin" and key in labels and labels[key] in values:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!exists" and key in labels:
            return False
    return True


def selector_to_string(selector):
    parts = []
    for key, op, values in selector_from_spec(selector):
        if op == "in" and len(values) == 1:
            parts.append("%s=%s" % (key, next(iter(values))))
        elif op in ("in", "notin"):
            parts.append("%s %s (%s)" % (key, op, ",".join(sorted(values))))
        elif op == "exists":
            parts.append(key)
        else:
            parts.append("!" + key)
    return ",".join(parts)


def parse_field_selector(text):
    reqs = []
    for part in _split_top_level(text or ""):
        if "!=" in part:
            key, value = part.split("!=", 1)
            reqs.append((key.strip(), False, value.strip()))
        elif "==" in part:
            key, value = part.split("==", 1)
            reqs.append((key.strip(), True, value.strip()))
        elif "=" in part:
            key, value = part.split("=", 1)
            reqs.append((key.strip(), True, value.strip()))
        else:
            raise ValueError("invalid field selector %r" % part)
    return reqs


def fields_match(reqs, obj):
    for path, equal, value in reqs:
        actual = get_path(obj, path)
        actual = "" if actual is None else str(actual)
        if (actual == value) != equal:
            return False
    return True


# --------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------

class PatchError(Exception):
    pass


# patchMergeKey of the list fields in the Kubernetes types we serve.
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "env": "name", "volumes": "name", "imagePullSecrets": "name",
    "resourceClaims": "name", "ports": "containerPort", "volumeMounts": "mountPath",
    "volumeDevices": "devicePath", "conditions": "type", "ownerReferences": "uid",
    "hostAliases": "ip", "topologySpreadConstraints": "topologyKey",
}
# Lists of primitives with patchStrategy=merge.
PRIMITIVE_MERGE_LISTS = frozenset(["finalizers"])


def _strip_directives(value):
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items()
                    if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value
                if not (isinstance(v, dict) and v.get("$patch") is not None and len(v) == 1)]
    return value


def strategic_merge_patch(original, patch):
    """Apply a strategic merge patch (the subset kubectl produces and people write).

    Maps merge recursively and ``null`` deletes a key; lists with a known merge
    key (containers, initContainers, env, volumes, ports, ...) merge item by
    item; other lists are replaced.  Supported directives: ``$patch:
    replace|delete`` (maps and list items), ``$setElementOrder/<list>``,
    ``$deleteFromPrimitiveList/<list>`` and ``$retainKeys``.
    Returns None when the whole map is deleted by ``$patch: delete``.
    """
    if not isinstance(patch, dict):
        raise PatchError("strategic merge patch must be a JSON object")
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip_directives(patch)
    if directive == "delete":
        return None
    if directive is not None:
        raise PatchError("unknown patch directive %r" % directive)
    result = clone(original) if isinstance(original, dict) else {}
    orders, deletions, retain = {}, {}, None
    for key, value in patch.items():
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value
        elif key.startswith("$deleteFromPrimitiveList/"):
            deletions[key.split("/", 1)[1]] = value
        elif key == "$retainKeys":
            retain = value
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            current = result.get(key)
            result[key] = _merge_list(key, current if isinstance(current, list) else [], value)
        else:
            result[key] = clone(value)
    for key, values in deletions.items():
        if isinstance(result.get(key), list):
            result[key] = [v for v in result[key] if v not in values]
    for key, order in orders.items():
        if isinstance(result.get(key), list):
            result[key] = _apply_order(key, result[key], order)
    if retain is not None:
        for key in list(result):
            if key not in retain:
                del result[key]
    return result


def _merge_list(field, original, patch):
    if any(isinstance(v, dict) and v.get("$patch") == "replace" for v in patch):
        return [_strip_directives(v) for v in patch
                if not (isinstance(v, dict) and v.get("$patch") == "replace")]
    key = MERGE_KEYS.get(field)
    if key and all(isinstance(v, dict) for v in patch):
        result = clone(original)
        for item in patch:
            ident = item.get(key)
            index = None
            for i, existing in enumerate(result):
                if isinstance(existing, dict) and existing.get(key) == ident:
                    index = i
                    break
            if item.get("$patch") == "delete":
                if index is not None:
                    del result[index]
                continue
            if ident is None:
                raise PatchError("map in list %r lacks merge key %r" % (field, key))
            if index is None:
                result.append(strategic_merge_patch({}, item))
            else:
                merged = strategic_merge_patch(result[index], item)
                if merged is None:
                    del result[index]
                else:
                    result[index] = merged
        return result
    if field in PRIMITIVE_MERGE_LISTS:
        result = list(original)
        for value in patch:
            if value not in result:
                result.append(value)
        return result
    return _strip_directives(clone(patch))


def _apply_order(field, items, order):
    key = MERGE_KEYS.get(field)

    def ident(v):
        return v.get(key) if (key and isinstance(v, dict)) else canonical(v)

    wanted = [ident(v) for v in order]
    ranked = [v for v in items if ident(v) in wanted]
    ranked.sort(key=lambda v: wanted.index(ident(v)))
    return ranked + [v for v in items if ident(v) not in wanted]


def json_merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return clone(patch)
    result = clone(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


def _pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError("invalid JSON pointer %r" % path)
    return [t.replace("~1", "/").replace("~0", "~") for t in path.split("/")[1:]]


def _index(container, token, allow_end=False):
    if allow_end and token == "-":
        return len(container)
    if not re.match(r"^(0|[1-9][0-9]*)$", token):
        raise PatchError("invalid array index %r" % token)
    index = int(token)
    limit = len(container) + (1 if allow_end else 0)
    if index >= limit:
        raise PatchError("array index %d out of bounds" % index)
    return index


def _resolve(doc, tokens):
    cur = doc
    for token in tokens:
        if isinstance(cur, dict):
            if token not in cur:
                raise PatchError("doc is missing path: /%s" % "/".join(tokens))
            cur = cur[token]
        elif isinstance(cur, list):
            cur = cur[_index(cur, token)]
        else:
            raise PatchError("doc is missing path: /%s" % "/".join(tokens))
    return cur


def _add(doc, tokens, value):
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, allow_end=True), value)
    else:
        raise PatchError("cannot add to a scalar")
    return doc


def _remove(doc, tokens):
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _resolve(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError("remove operation does not apply: doc is missing key: /%s"
                             % "/".join(tokens))
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last))
    raise PatchError("cannot remove from a scalar")


def json_patch(document, operations):
    """RFC 6902 JSON patch: add, remove, replace, move, copy, test."""
    if not isinstance(operations, list):
        raise PatchError("JSON patch must be a list of operations")
    doc = clone(document)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError("invalid JSON patch operation %r" % (op,))
        kind = op["op"]
        tokens = _pointer(op["path"])
        if kind == "add":
            doc = _add(doc, tokens, clone(op.get("value")))
        elif kind == "remove":
            _remove(doc, tokens)
        elif kind == "replace":
            if not tokens:
                doc = clone(op.get("value"))
                continue
            parent = _resolve(doc, tokens[:-1])
            last = tokens[-1]
            if isinstance(parent, dict):
                if last not in parent:
                    raise PatchError("replace operation does not apply: doc is missing key: %s"
                                     % op["path"])
                parent[last] = clone(op.get("value"))
            elif isinstance(parent, list):
                parent[_index(parent, last)] = clone(op.get("value"))
            else:
                raise PatchError("cannot replace inside a scalar")
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from", ""))
            if kind == "move":
                value = _remove(doc, source)
            else:
                value = clone(_resolve(doc, source))
            doc = _add(doc, tokens, value)
        elif kind == "test":
            if _resolve(doc, tokens) != op.get("value"):
                raise PatchError("testing value %s failed" % op["path"])
        else:
            raise PatchError("unexpected kind: %s" % kind)
    return doc


# --------------------------------------------------------------------------
# Resource types, errors, defaults, validation
# --------------------------------------------------------------------------

class ResourceType:
    def __init__(self, group, plural, kind, namespaced, short_names, categories=()):
        self.group = group
        self.version = "v1"
        self.plural = plural
        self.kind = kind
        self.namespaced = namespaced
        self.short_names = list(short_names)
        self.categories = list(categories)

    @property
    def api_version(self):
        return "%s/%s" % (self.group, self.version) if self.group else self.version

    @property
    def qualified(self):
        return "%s.%s" % (self.plural, self.group) if self.group else self.plural

    @property
    def qualified_kind(self):
        return "%s.%s" % (self.kind, self.group) if self.group else self.kind

    @property
    def has_generation(self):
        return self.plural in ("deployments", "replicasets", "statefulsets", "daemonsets")

    @property
    def has_scale(self):
        return self.plural in ("deployments", "replicasets", "statefulsets")

    @property
    def has_status(self):
        return self.plural != "controllerrevisions"

    def discovery(self):
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        entries = [{
            "name": self.plural, "singularName": self.kind.lower(),
            "namespaced": self.namespaced, "kind": self.kind, "verbs": verbs,
            "shortNames": self.short_names,
        }]
        if self.categories:
            entries[0]["categories"] = self.categories
        if self.has_status and self.plural != "namespaces":
            entries.append({"name": self.plural + "/status", "singularName": "",
                            "namespaced": self.namespaced, "kind": self.kind,
                            "verbs": ["get", "patch", "update"]})
        if self.has_scale:
            entries.append({"name": self.plural + "/scale", "singularName": "",
                            "namespaced": True, "group": "autoscaling", "version": "v1",
                            "kind": "Scale", "verbs": ["get", "patch", "update"]})
        return entries


NAMESPACES = ResourceType("", "namespaces", "Namespace", False, ["ns"])
NODES = ResourceType("", "nodes", "Node", False, ["no"])
PODS = ResourceType("", "pods", "Pod", True, ["po"], ["all"])
DEPLOYMENTS = ResourceType("apps", "deployments", "Deployment", True, ["deploy"], ["all"])
REPLICASETS = ResourceType("apps", "replicasets", "ReplicaSet", True, ["rs"], ["all"])
STATEFULSETS = ResourceType("apps", "statefulsets", "StatefulSet", True, ["sts"], ["all"])
DAEMONSETS = ResourceType("apps", "daemonsets", "DaemonSet", True, ["ds"], ["all"])
CONTROLLERREVISIONS = ResourceType("apps", "controllerrevisions", "ControllerRevision", True, [])
# Discovery order: apps/v1 alphabetical, as a real API server lists it (and so
# ``kubectl get all`` prints daemonsets, deployments, replicasets, statefulsets).
RESOURCE_TYPES = (NAMESPACES, NODES, PODS, CONTROLLERREVISIONS, DAEMONSETS, DEPLOYMENTS,
                  REPLICASETS, STATEFULSETS)
WORKLOADS = (DEPLOYMENTS, STATEFULSETS, DAEMONSETS)  # what pods' behaviours are keyed by
BY_GROUP_PLURAL = {(t.group, t.plural): t for t in RESOURCE_TYPES}


def resource_type_for(kind):
    """Find a type by kind, plural, singular or short name, case-insensitively."""
    wanted = kind.lower()
    for rtype in RESOURCE_TYPES:
        names = [rtype.kind.lower(), rtype.plural, rtype.qualified] + rtype.short_names
        if wanted in names:
            return rtype
    raise KeyError(kind)


class ApiError(Exception):
    """An error answered as a metav1.Status."""

    def __init__(self, code, reason, message, details=None):
        Exception.__init__(self, message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self):
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


def not_found(rtype, name):
    return ApiError(404, "NotFound", '%s "%s" not found' % (rtype.qualified, name),
                    {"name": name, "group": rtype.group, "kind": rtype.plural})


def invalid(rtype, name, causes):
    text = ", ".join("%s: %s" % (field, msg) for field, msg in causes)
    if len(causes) > 1:
        text = "[%s]" % text
    return ApiError(422, "Invalid", '%s "%s" is invalid: %s' % (rtype.qualified_kind, name, text),
                    {"name": name, "group": rtype.group, "kind": rtype.kind,
                     "causes": [{"reason": "FieldValueInvalid", "message": msg, "field": field}
                                for field, msg in causes]})


def apply_pod_spec_defaults(spec):
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for field in ("initContainers", "containers"):
        for container in spec.get(field) or []:
            if not isinstance(container, dict):
                continue
            container.setdefault("resources", {})
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            if isinstance(container.get("image"), str):
                container.setdefault("imagePullPolicy", default_pull_policy(container["image"]))
            for port in container.get("ports") or []:
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")


def apply_defaults(rtype, obj):
    meta = obj.setdefault("metadata", {})
    if rtype is NAMESPACES:
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        obj.setdefault("status", {"phase": "Active"})
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name")
        return obj
    if rtype is CONTROLLERREVISIONS:
        obj.setdefault("revision", 0)
        return obj
    if rtype is NODES:  # what a kubelet registers is made by make_node(); nothing to default
        obj.setdefault("spec", {})
        obj.setdefault("status", {})
        return obj
    spec = obj.setdefault("spec", {})
    if rtype is PODS:
        apply_pod_spec_defaults(spec)
        obj.setdefault("status", {"phase": "Pending", "qosClass": "BestEffort"})
        return obj
    if rtype is not DAEMONSETS:
        spec.setdefault("replicas", 1)
    template = spec.setdefault("template", {})
    template_meta = template.setdefault("metadata", {})
    if template_meta.get("creationTimestamp", "") is None:
        del template_meta["creationTimestamp"]  # older kubectl sends null; it means "unset"
    apply_pod_spec_defaults(template.setdefault("spec", {}))
    if rtype is DEPLOYMENTS:
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxSurge", "25%")
            rolling.setdefault("maxUnavailable", "25%")
        if not meta.get("labels") and template["metadata"].get("labels"):
            meta["labels"] = clone(template["metadata"]["labels"])
    elif rtype is STATEFULSETS:  # SetDefaults_StatefulSet
        spec.setdefault("podManagementPolicy", "OrderedReady")
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("persistentVolumeClaimRetentionPolicy",
                        {"whenDeleted": "Retain", "whenScaled": "Retain"})
        strategy = spec.setdefault("updateStrategy", {})
        if not strategy.get("type"):
            strategy["type"] = "RollingUpdate"
            if strategy.get("rollingUpdate") is None:
                strategy["rollingUpdate"] = {}
        # An explicit {"type": "RollingUpdate"} keeps rollingUpdate unset (kubectl's
        # rollout status then takes its "rolling update complete" branch).
        if strategy["type"] == "RollingUpdate" and isinstance(strategy.get("rollingUpdate"), dict):
            strategy["rollingUpdate"].setdefault("partition", 0)
    elif rtype is DAEMONSETS:  # SetDefaults_DaemonSet
        spec.setdefault("revisionHistoryLimit", 10)
        strategy = spec.setdefault("updateStrategy", {})
        if not strategy.get("type"):
            strategy["type"] = "RollingUpdate"
        if strategy["type"] == "RollingUpdate":
            if strategy.get("rollingUpdate") is None:
                strategy["rollingUpdate"] = {}
            strategy["rollingUpdate"].setdefault("maxUnavailable", 1)
            strategy["rollingUpdate"].setdefault("maxSurge", 0)
    obj.setdefault("status", {})
    return obj


def _validate_pod_spec(spec, prefix):
    causes = []
    if not isinstance(spec, dict):
        return [(prefix, "Required value")]
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        causes.append((prefix + ".containers", "Required value"))
    for field in ("initContainers", "containers"):
        seen = set()
        for i, container in enumerate(spec.get(field) or []):
            where = "%s.%s[%d]" % (prefix, field, i)
            if not isinstance(container, dict):
                causes.append((where, "Invalid value: must be an object"))
                continue
            name = container.get("name")
            if not name:
                causes.append((where + ".name", "Required value"))
            elif name in seen:
                causes.append((where + ".name", 'Duplicate value: "%s"' % name))
            seen.add(name)
            if not container.get("image"):
                causes.append((where + ".image", "Required value"))
    return causes


def _unsupported(field, value, supported):
    return (field, "Unsupported value: %s: supported values: %s"
            % (json.dumps(value), ", ".join('"%s"' % v for v in supported)))


# The StatefulSet spec fields an update may change (ValidateStatefulSetUpdate).
STATEFULSET_MUTABLE = ("replicas", "ordinals", "template", "updateStrategy",
                       "persistentVolumeClaimRetentionPolicy", "minReadySeconds")


def _validate_statefulset(spec, old):
    causes = []
    policy = spec.get("podManagementPolicy")
    if policy not in ("OrderedReady", "Parallel"):
        causes.append(_unsupported("spec.podManagementPolicy", policy, ("OrderedReady", "Parallel")))
    strategy = spec.get("updateStrategy") or {}
    kind, rolling = strategy.get("type"), strategy.get("rollingUpdate")
    if kind not in ("OnDelete", "RollingUpdate"):
        causes.append(_unsupported("spec.updateStrategy.type", kind, ("OnDelete", "RollingUpdate")))
    elif kind == "OnDelete" and rolling is not None:
        causes.append(("spec.updateStrategy.rollingUpdate", "Invalid value: %s: only allowed for "
                       "updateStrategy 'RollingUpdate'" % json.dumps(rolling, sort_keys=True)))
    elif isinstance(rolling, dict):
        partition = rolling.get("partition", 0)
        if not isinstance(partition, int) or partition < 0:
            causes.append(("spec.updateStrategy.rollingUpdate.partition",
                           "Invalid value: %r: must be greater than or equal to 0" % (partition,)))
    if old is not None:
        def frozen(s):
            return canonical({k: v for k, v in s.items() if k not in STATEFULSET_MUTABLE})
        if frozen(spec) != frozen(old.get("spec") or {}):
            causes.append(("spec", "Forbidden: updates to statefulset spec for fields other than "
                           "'replicas', 'ordinals', 'template', 'updateStrategy', "
                           "'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are "
                           "forbidden"))
    return causes


def _validate_daemonset(spec):
    causes = []
    strategy = spec.get("updateStrategy") or {}
    kind = strategy.get("type")
    if kind not in ("OnDelete", "RollingUpdate"):
        causes.append(_unsupported("spec.updateStrategy.type", kind, ("OnDelete", "RollingUpdate")))
    elif kind == "RollingUpdate":
        rolling = strategy.get("rollingUpdate") or {}
        try:
            surge = parse_int_or_percent(rolling.get("maxSurge", 0), 100, True)
            unavailable = parse_int_or_percent(rolling.get("maxUnavailable", 1), 100, True)
        except ValueError:
            surge = unavailable = 1
            causes.append(("spec.updateStrategy.rollingUpdate", "Invalid value: %s: must be an "
                           "integer or percentage (e.g '5%%')" % json.dumps(rolling)))
        if surge == 0 and unavailable == 0:
            causes.append(("spec.updateStrategy.rollingUpdate.maxUnavailable",
                           "Invalid value: %s: may not be 0 when `maxSurge` is 0"
                           % json.dumps(rolling.get("maxUnavailable"))))
    restart = ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy")
    if restart != "Always":
        causes.append(_unsupported("spec.template.spec.restartPolicy", restart, ("Always",)))
    return causes


def validate(rtype, obj, old=None):
    name = obj["metadata"].get("name", "")
    causes = []
    if not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", name or "") or len(name) > 253:
        causes.append(("metadata.name", 'Invalid value: "%s": a lowercase RFC 1123 subdomain '
                       "must consist of lower case alphanumeric characters, '-' or '.'" % name))
    if rtype is PODS:
        causes += _validate_pod_spec(obj.get("spec"), "spec")
    elif rtype is CONTROLLERREVISIONS:
        revision = obj.get("revision")
        if not isinstance(revision, int) or revision < 0:
            causes.append(("revision", "Invalid value: %r: must be greater than or equal to 0"
                           % (revision,)))
        if old is not None and canonical(obj.get("data")) != canonical(old.get("data")):
            causes.append(("data", "Invalid value: %s: field is immutable"
                           % json.dumps(obj.get("data"), sort_keys=True)))
    elif rtype in (DEPLOYMENTS, REPLICASETS, STATEFULSETS, DAEMONSETS):
        spec = obj.get("spec") or {}
        replicas = spec.get("replicas")
        if rtype is not DAEMONSETS and (not isinstance(replicas, int) or replicas < 0):
            causes.append(("spec.replicas", "Invalid value: %r: must be greater than or equal to 0"
                           % (replicas,)))
        if rtype is STATEFULSETS:
            causes += _validate_statefulset(spec, old)
        elif rtype is DAEMONSETS:
            causes += _validate_daemonset(spec)
        selector = spec.get("selector")
        if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
            causes.append(("spec.selector", "Required value"))
        else:
            labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
            if not labels_match(selector_from_spec(selector), labels):
                causes.append(("spec.template.metadata.labels",
                               "Invalid value: %s: `selector` does not match template `labels`"
                               % json.dumps(labels, sort_keys=True)))
            if old is not None and rtype in (DEPLOYMENTS, DAEMONSETS) and \
                    canonical(selector) != canonical(old["spec"].get("selector")):
                causes.append(("spec.selector", "Invalid value: %s: field is immutable"
                               % json.dumps(selector, sort_keys=True)))
        causes += _validate_pod_spec((spec.get("template") or {}).get("spec"),
                                     "spec.template.spec")
    if causes:
        raise invalid(rtype, name, causes)


# --------------------------------------------------------------------------
# Object store with watch support
# --------------------------------------------------------------------------

def daemonset_template_generation(ds):
    """The ``deprecated.daemonset.template.generation`` of a DaemonSet (1 if unset)."""
    value = (ds["metadata"].get("annotations") or {}).get(DS_TEMPLATE_GENERATION_ANNOTATION)
    try:
        return int(value)
    except (TypeError, ValueError):
        return 1


class Watcher:
    """A registered watch: events are queued here by the store."""

    def __init__(self, rtype, namespace):
        self.rtype = rtype
        self.namespace = namespace
        self.events = queue.Queue()

    def wants(self, rtype, obj):
        if rtype is not self.rtype:
            return False
        return self.namespace is None or obj["metadata"].get("namespace") == self.namespace


class Store:
    """All objects, a global resourceVersion counter, event history and watchers.

    Everything runs under ``self.lock`` (re-entrant).  Objects are kept with
    ``kind``/``apiVersion`` set; callers receive copies.
    """

    def __init__(self):
        self.lock = threading.RLock()
        self.rv = 0
        self.objects = {}  # (plural, namespace, name) -> object
        self.created_rv = {}  # (plural, namespace, name) -> resourceVersion of its creation
        self.history = collections.deque()  # (rv, type, rtype, obj, old)
        self.history_floor = 0
        self.watchers = set()
        self.changed = threading.Event()  # set on every write; wakes the controllers

    # -- reading ---------------------------------------------------------
    def get(self, rtype, namespace, name):
        with self.lock:
            obj = self.objects.get((rtype.plural, namespace or "", name))
            return clone(obj) if obj is not None else None

    def raw(self, rtype, namespace=None):
        """The stored objects themselves (no copies, unsorted): read-only use."""
        with self.lock:
            return [obj for key, obj in self.objects.items()
                    if key[0] == rtype.plural and (namespace is None or key[1] == namespace)]

    def list(self, rtype, namespace=None, label_reqs=None, field_reqs=None, created_by=None):
        """Copies of the matching objects; with ``created_by`` (a resourceVersion)
        only those that existed then."""
        with self.lock:
            out = []
            for key in sorted(self.objects):
                if key[0] != rtype.plural or (namespace is not None and key[1] != namespace):
                    continue
                if created_by is not None and self.created_rv.get(key, 0) > created_by:
                    continue
                obj = self.objects[key]
                if label_reqs and not labels_match(label_reqs, obj["metadata"].get("labels")):
                    continue
                if field_reqs and not fields_match(field_reqs, obj):
                    continue
                out.append(clone(obj))
            return out

    # -- writing ---------------------------------------------------------
    def _record(self, etype, rtype, obj, old):
        self.changed.set()
        self.history.append((self.rv, etype, rtype, obj, old))
        while len(self.history) > HISTORY_LIMIT:
            self.history_floor = self.history.popleft()[0]
        for watcher in list(self.watchers):
            if watcher.wants(rtype, obj) or (old is not None and watcher.wants(rtype, old)):
                watcher.events.put((self.rv, etype, obj, old))

    def create(self, rtype, obj, dry_run=False):
        with self.lock:
            obj = clone(obj)
            meta = obj["metadata"]
            key = (rtype.plural, meta.get("namespace", ""), meta["name"])
            if key in self.objects:
                raise ApiError(409, "AlreadyExists", '%s "%s" already exists'
                               % (rtype.qualified, meta["name"]),
                               {"name": meta["name"], "group": rtype.group, "kind": rtype.plural})
            obj["kind"], obj["apiVersion"] = rtype.kind, rtype.api_version
            meta["uid"] = new_uid()
            meta["creationTimestamp"] = iso()
            if rtype.has_generation:
                meta["generation"] = 1
            if rtype is DAEMONSETS:  # the API server tracks the template generation
                annotations = meta.get("annotations") or {}
                annotations[DS_TEMPLATE_GENERATION_ANNOTATION] = "1"
                meta["annotations"] = annotations
            for field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
                meta.pop(field, None)
            if dry_run:
                return clone(obj)
            self.rv += 1
            meta["resourceVersion"] = str(self.rv)
            self.objects[key] = obj
            self.created_rv[key] = self.rv
            self._record("ADDED", rtype, clone(obj), None)
            return clone(obj)

    def update(self, rtype, obj, dry_run=False):
        """Store ``obj`` over the existing object; a no-op update is not written."""
        with self.lock:
            obj = clone(obj)
            meta = obj["metadata"]
            key = (rtype.plural, meta.get("namespace", ""), meta["name"])
            old = self.objects.get(key)
            if old is None:
                raise not_found(rtype, meta["name"])
            obj["kind"], obj["apiVersion"] = rtype.kind, rtype.api_version
            for field in ("uid", "creationTimestamp", "resourceVersion"):
                meta[field] = old["metadata"].get(field)
            if rtype.has_generation:
                generation = old["metadata"].get("generation", 1)
                if canonical(obj.get("spec")) != canonical(old.get("spec")):
                    generation += 1
                meta["generation"] = generation
            if rtype is DAEMONSETS:
                template_generation = daemonset_template_generation(old)
                if canonical(obj.get("spec", {}).get("template")) != \
                        canonical(old.get("spec", {}).get("template")):
                    template_generation += 1
                annotations = meta.get("annotations") or {}
                annotations[DS_TEMPLATE_GENERATION_ANNOTATION] = str(template_generation)
                meta["annotations"] = annotations
            if canonical(obj) == canonical(old) or dry_run:
                return clone(obj)
            self.rv += 1
            meta["resourceVersion"] = str(self.rv)
            self.objects[key] = obj
            self._record("MODIFIED", rtype, clone(obj), clone(old))
            return clone(obj)

    def delete(self, rtype, namespace, name, dry_run=False):
        with self.lock:
            key = (rtype.plural, namespace or "", name)
            old = self.objects.get(key)
            if old is None:
                raise not_found(rtype, name)
            if dry_run:
                return clone(old)
            del self.objects[key]
            self.created_rv.pop(key, None)
            self.rv += 1
            gone = clone(old)
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self._record("DELETED", rtype, gone, None)
            return clone(gone)

    # -- watching --------------------------------------------------------
    def watch(self, rtype, namespace, since):
        """Register a watcher.  ``since``: None = current state as ADDED events,
        an int = replay history after that resourceVersion.  Returns
        (watcher, initial events, current resourceVersion)."""
        with self.lock:
            watcher = Watcher(rtype, namespace)
            initial = []
            if since is None:
                for obj in self.list(rtype, namespace):
                    initial.append((int(obj["metadata"]["resourceVersion"]), "ADDED", obj, None))
            else:
                if since < self.history_floor:
                    raise ApiError(410, "Expired", "too old resource version: %d (%d)"
                                   % (since, self.history_floor + 1))
                for rv, etype, ev_rtype, obj, old in self.history:
                    if rv > since and (watcher.wants(ev_rtype, obj) or
                                       (old is not None and watcher.wants(ev_rtype, old))):
                        initial.append((rv, etype, obj, old))
            self.watchers.add(watcher)
            return watcher, initial, self.rv

    def unwatch(self, watcher):
        with self.lock:
            self.watchers.discard(watcher)

    def close_watchers(self):
        with self.lock:
            for watcher in self.watchers:
                watcher.events.put(None)
            self.watchers.clear()


# --------------------------------------------------------------------------
# Behaviours
# --------------------------------------------------------------------------

def normalize_behaviour(behaviour):
    """Validate a behaviour; returns a new dict (or None)."""
    if behaviour is None:
        return None
    if isinstance(behaviour, str):
        behaviour = {"mode": behaviour}
    if not isinstance(behaviour, dict):
        raise ValueError("behaviour must be an object, got %r" % (behaviour,))
    out = dict(behaviour)
    out.setdefault("mode", "ready")
    if out["mode"] not in MODES:
        raise ValueError("unknown behaviour mode %r (known: %s)" % (out["mode"], ", ".join(MODES)))
    out["delay"] = float(out.get("delay", DEFAULT_BEHAVIOUR["delay"] if out["mode"] == "ready"
                                 else 0.1))
    if out.get("restart_interval") is not None:
        out["restart_interval"] = float(out["restart_interval"])
        if out["restart_interval"] <= 0:
            raise ValueError("restart_interval must be positive, got %r"
                             % (behaviour["restart_interval"],))
    return out


def _container_id(pod_uid, name, restarts):
    raw = "%s/%s/%d" % (pod_uid, name, restarts)
    return "containerd://" + hashlib.sha256(raw.encode()).hexdigest()


# --------------------------------------------------------------------------
# ControllerRevision history and pods of StatefulSets/DaemonSets (mixin of Cluster)
# --------------------------------------------------------------------------

def revision_data(template, null_timestamp=True):
    """The ``data`` of a ControllerRevision for a pod template, as the real
    controllers write it: a strategic merge patch ``{"spec": {"template": {...,
    "$patch": "replace"}}}`` with every key sorted (Go marshals a map) and, with
    ``null_timestamp``, the ``"creationTimestamp": null`` that apimachinery
    before 1.34 puts into the template's metadata.  ``kubectl rollout undo``
    sends it back verbatim as the patch, and compares it byte for byte with its
    own rendering of the current template to decide "skipped rollback"."""
    template = clone(template)
    if null_timestamp:
        template.setdefault("metadata", {}).setdefault("creationTimestamp", None)
    template["$patch"] = "replace"
    return json.loads(canonical({"spec": {"template": template}}))


def template_of_revision(revision):
    """The pod template a ControllerRevision's ``data`` restores (``revision``
    may also be the ``data`` itself)."""
    data = revision.get("data") if "data" in revision else revision
    data = data or {}
    template = clone((data.get("spec") or {}).get("template") or {})
    template.pop("$patch", None)
    meta = template.get("metadata")
    if isinstance(meta, dict) and "creationTimestamp" in meta and meta["creationTimestamp"] is None:
        del meta["creationTimestamp"]
    return template


def revision_number(revision):
    return revision.get("revision") or 0


class WorkloadHistory:
    """What the StatefulSet and DaemonSet controllers share: their
    ControllerRevisions (pkg/controller/history) and pod creation.  A mixin of
    Cluster: ``self`` is the Cluster."""

    def sync_history(self, owner, create=True):
        """Find (or, with ``create``, make) the ControllerRevision of ``owner``'s
        current template.  Returns (that revision or None, all of owner's
        revisions oldest first, collisionCount).

        As in the real controllers: the newest revision with an equal template
        is the update revision; if it is not the newest revision it is re-used
        with the next revision number (what ``rollout undo`` relies on);
        otherwise a revision ``<name>-<hash>`` is created with the template's
        labels plus ``controller-revision-hash``, the owner's annotations (so a
        ``kubernetes.io/change-cause`` shows in ``rollout history``) and a
        controller ownerReference."""
        meta, spec = owner["metadata"], owner["spec"]
        namespace = meta["namespace"]
        revisions = sorted(self.owned(CONTROLLERREVISIONS, owner, namespace),
                           key=lambda r: (revision_number(r), r["metadata"]["name"]))
        collision = (owner.get("status") or {}).get("collisionCount") or 0
        data = revision_data(spec.get("template") or {}, self.null_creation_timestamp)
        wanted = canonical(template_of_revision(data))
        equal = [r for r in revisions if canonical(template_of_revision(r)) == wanted]
        if not create:
            return (equal[-1] if equal else None), revisions, collision
        next_number = revision_number(revisions[-1]) + 1 if revisions else 1
        if equal:
            update = equal[-1]
            if update["metadata"]["name"] != revisions[-1]["metadata"]["name"]:
                renumbered = clone(update)
                renumbered["revision"] = next_number
                renumbered = self.store.update(CONTROLLERREVISIONS, renumbered)
                revisions = [r for r in revisions
                             if r["metadata"]["name"] != update["metadata"]["name"]] + [renumbered]
                update = renumbered
            return update, revisions, collision
        while True:
            revision_hash = self.template_hash(spec.get("template") or {}, collision)
            name = "%s-%s" % (meta["name"], revision_hash)
            if self.store.get(CONTROLLERREVISIONS, namespace, name) is None:
                break
            collision += 1
        labels = clone(((spec.get("template") or {}).get("metadata") or {}).get("labels") or {})
        labels[CONTROLLER_REVISION_HASH] = revision_hash
        revision = {
            "metadata": {
                "name": name, "namespace": namespace, "labels": labels,
                "annotations": clone(meta.get("annotations") or {}),
                "ownerReferences": [self.controller_ref(owner)],
            },
            "data": data, "revision": next_number,
        }
        if not revision["metadata"]["annotations"]:
            del revision["metadata"]["annotations"]
        created = self.store.create(CONTROLLERREVISIONS, apply_defaults(CONTROLLERREVISIONS,
                                                                        revision))
        return created, revisions + [created], collision

    def truncate_history(self, owner, revisions, live_names):
        """Delete the oldest revisions no pod uses beyond ``revisionHistoryLimit``."""
        limit = owner["spec"].get("revisionHistoryLimit", 10)
        history = [r for r in revisions if r["metadata"]["name"] not in live_names]
        for revision in history[:max(0, len(history) - limit)]:
            self.store.delete(CONTROLLERREVISIONS, revision["metadata"]["namespace"],
                              revision["metadata"]["name"])

    @staticmethod
    def controller_ref(owner):
        meta = owner["metadata"]
        return {"apiVersion": "apps/v1", "kind": owner["kind"], "name": meta["name"],
                "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}

    def pod_from_template(self, owner, template, name, labels, node):
        """A pod of ``owner`` (controller.GetPodFromTemplate), not yet stored."""
        meta = owner["metadata"]
        template_meta = template.get("metadata") or {}
        pod = {
            "metadata": {
                "name": name, "generateName": meta["name"] + "-",
                "namespace": meta["namespace"], "labels": labels,
                "ownerReferences": [self.controller_ref(owner)],
            },
            "spec": clone(template.get("spec") or {}),
        }
        if template_meta.get("annotations"):
            pod["metadata"]["annotations"] = clone(template_meta["annotations"])
        pod["spec"]["nodeName"] = node
        return apply_defaults(PODS, pod)

    def start_pod(self, pod, workload, now):
        """Store ``pod`` and start its kubelet clock with the behaviours of its
        containers (``workload`` = (kind, namespace, name) picks the default
        behaviour).  Returns the stored pod, or None if it could not be made."""
        try:
            pod = self.store.create(PODS, pod)
        except ApiError:  # e.g. a pod of that name that someone else made
            return None
        init, app = self.resolve_behaviours(pod["spec"], workload)
        if workload in self.instant:
            init = [{"mode": "ready", "delay": 0.0} for _ in init]
            app = [{"mode": "ready", "delay": 0.0} for _ in app]
        self.pod_runtime[pod["metadata"]["uid"]] = {"start": now, "init": init, "app": app,
                                                    "ready_at": None}
        self.sync_pod(pod, now)
        return pod

    def created_at(self, pod):
        """Creation time with sub-second precision (the kubelet clock's start)."""
        start = (self.pod_runtime.get(pod["metadata"]["uid"]) or {}).get("start")
        if start is None:
            start = _epoch(pod["metadata"].get("creationTimestamp"))
        return (start, pod["metadata"]["name"])

    def running_and_ready(self, pod):
        return (pod.get("status") or {}).get("phase") == "Running" and self._pod_ready(pod)

    def available(self, pod, min_ready_seconds, now):
        """Ready for at least ``min_ready_seconds`` (podutil.IsPodAvailable)."""
        if not self.running_and_ready(pod):
            return False
        if not min_ready_seconds:
            return True
        ready_at = (self.pod_runtime.get(pod["metadata"]["uid"]) or {}).get("ready_at")
        if ready_at is None:
            return False
        if now - ready_at >= min_ready_seconds:
            return True
        self.wake(ready_at + min_ready_seconds)
        return False

    def write_status(self, rtype, obj, status):
        """Store ``status`` (keeping ``conditions``) if it differs."""
        old = obj.get("status") or {}
        if old.get("conditions"):
            status["conditions"] = old["conditions"]
        if canonical(status) != canonical(old):
            current = self.store.get(rtype, obj["metadata"]["namespace"], obj["metadata"]["name"])
            if current is not None:
                current["status"] = status
                self.store.update(rtype, current)


# --------------------------------------------------------------------------
# StatefulSet controller (mixin of Cluster)
# --------------------------------------------------------------------------

_ORDINAL_NAME = re.compile(r"^(.*)-([0-9]+)$")


class StatefulSetController:
    """pkg/controller/statefulset, without volumes: pods ``<name>-<ordinal>``,
    OrderedReady or Parallel pod management, RollingUpdate (with partition) or
    OnDelete.  A mixin of Cluster: ``self`` is the Cluster."""

    @staticmethod
    def pod_ordinal(sts, pod):
        match = _ORDINAL_NAME.match(pod["metadata"]["name"])
        if not match or match.group(1) != sts["metadata"]["name"]:
            return -1
        return int(match.group(2))

    @staticmethod
    def statefulset_partition(sts):
        """Ordinals below it keep the current revision; None if rollingUpdate is unset."""
        strategy = sts["spec"].get("updateStrategy") or {}
        rolling = strategy.get("rollingUpdate")
        if strategy.get("type") != "RollingUpdate" or not isinstance(rolling, dict):
            return None
        return rolling.get("partition") or 0

    def sync_statefulset(self, sts, now, manage=True):
        """One sync; with ``manage=False`` only the status is brought up to date."""
        update, revisions, collision = self.sync_history(sts, create=manage)
        if update is None:
            return
        current_name = (sts.get("status") or {}).get("currentRevision")
        current = update
        for revision in revisions:
            if revision["metadata"]["name"] == current_name:
                current = revision
        if manage:
            self._manage_statefulset(sts, current, update, now)
        pods = [p for p in self.owned(PODS, sts, sts["metadata"]["namespace"])
                if self.pod_ordinal(sts, p) >= 0]
        self._statefulset_status(sts, pods, current, update, collision, now)
        if manage:
            live = {current["metadata"]["name"], update["metadata"]["name"]}
            live.update((p["metadata"].get("labels") or {}).get(CONTROLLER_REVISION_HASH)
                        for p in pods)
            self.truncate_history(sts, revisions, live)

    def _manage_statefulset(self, sts, current, update, now):
        """updateStatefulSet: create missing ordinals, delete condemned ones, then
        roll (highest ordinal first, one at a time, each waiting for health)."""
        spec = sts["spec"]
        count = spec.get("replicas", 1)
        monotonic = spec.get("podManagementPolicy") != "Parallel"
        rolling = (spec.get("updateStrategy") or {}).get("type") == "RollingUpdate"
        partition = self.statefulset_partition(sts)
        min_ready = spec.get("minReadySeconds", 0) or 0
        replicas, condemned = [None] * count, []
        for pod in self.owned(PODS, sts, sts["metadata"]["namespace"]):
            ordinal = self.pod_ordinal(sts, pod)
            if 0 <= ordinal < count:
                replicas[ordinal] = pod
            elif ordinal >= count:
                condemned.append(pod)
        condemned.sort(key=lambda p: self.pod_ordinal(sts, p), reverse=True)

        def healthy(pod):
            return self.running_and_ready(pod) and not _deleting(pod)

        # 1. Each ordinal in [0, replicas): create it, or (OrderedReady) wait for it.
        for ordinal in range(count):
            pod = replicas[ordinal]
            if pod is None:
                at_current = partition is not None and ordinal < partition
                self._create_statefulset_pod(sts, current if at_current else update, ordinal, now)
                if monotonic:
                    return
                continue
            if monotonic and (_deleting(pod) or not self.available(pod, min_ready, now)):
                return
        # 2. Scale down: condemned pods, highest ordinal first.
        first_unhealthy = None
        for pod in reversed(condemned):
            if not healthy(pod):
                first_unhealthy = pod
                break
        for pod in condemned:
            if _deleting(pod):
                if monotonic:
                    return
                continue
            if monotonic and pod is not first_unhealthy and \
                    not self.available(pod, min_ready, now):
                return
            self.terminate_pod(pod, now)
            if monotonic:
                return
        # 3. RollingUpdate: replace the highest ordinal >= partition not at the update revision.
        if not rolling:
            return  # OnDelete: a pod is replaced (at the update revision) when deleted
        for ordinal in range(count - 1, (partition or 0) - 1, -1):
            pod = replicas[ordinal]
            if pod is None:
                return  # created in this pass (Parallel)
            revision = (pod["metadata"].get("labels") or {}).get(CONTROLLER_REVISION_HASH)
            if revision != update["metadata"]["name"] and not _deleting(pod):
                self.terminate_pod(pod, now)
                return
            if not healthy(pod):
                return

    def _create_statefulset_pod(self, sts, revision, ordinal, now):
        meta = sts["metadata"]
        name = "%s-%d" % (meta["name"], ordinal)
        workload = ("StatefulSet", meta["namespace"], meta["name"])
        template = template_of_revision(revision)
        if self.creation_failure(template.get("spec") or {}, workload, name) is not None:
            return None
        labels = clone((template.get("metadata") or {}).get("labels") or {})
        labels.update({CONTROLLER_REVISION_HASH: revision["metadata"]["name"],
                       STS_POD_NAME: name, POD_INDEX: str(ordinal)})
        names = self.node_names()
        node = names[ordinal % len(names)] if names else "sim-node-1"
        pod = self.pod_from_template(sts, template, name, labels, node)
        pod["spec"]["hostname"] = name
        if sts["spec"].get("serviceName"):
            pod["spec"]["subdomain"] = sts["spec"]["serviceName"]
        return self.start_pod(pod, workload, now)

    def _statefulset_status(self, sts, pods, current, update, collision, now):
        """computeReplicaStatus + completeRollingUpdate."""
        meta, spec = sts["metadata"], sts["spec"]
        min_ready = spec.get("minReadySeconds", 0) or 0
        current_name, update_name = current["metadata"]["name"], update["metadata"]["name"]
        created = ready = available = at_current = at_update = 0
        for pod in pods:
            created += 1
            if self.running_and_ready(pod):
                ready += 1
                if self.available(pod, min_ready, now):
                    available += 1
            if not _deleting(pod):
                revision = (pod["metadata"].get("labels") or {}).get(CONTROLLER_REVISION_HASH)
                at_current += revision == current_name
                at_update += revision == update_name
        if (spec.get("updateStrategy") or {}).get("type") == "RollingUpdate" and \
                at_update == created and ready == created:
            at_current, current_name = at_update, update_name
        status = {"observedGeneration": meta.get("generation", 1), "replicas": created,
                  "availableReplicas": available, "currentRevision": current_name,
                  "updateRevision": update_name, "collisionCount": collision}
        for key, value in (("readyReplicas", ready), ("currentReplicas", at_current),
                           ("updatedReplicas", at_update)):
            if value:
                status[key] = value
        self.write_status(STATEFULSETS, sts, status)


# --------------------------------------------------------------------------
# Nodes: Node objects, node affinity, taints and tolerations
# --------------------------------------------------------------------------

NODE_SPEC_KEYS = frozenset(["name", "labels", "taints"])
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def natural_key(name):
    """Sort key putting ``sim-node-2`` before ``sim-node-10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def node_ip(name, index):
    """InternalIP of a node: ``10.0.0.(9 + n)`` for a name ending in a number n (what
    pods on ``sim-node-n`` have always reported as hostIP), else by position."""
    match = re.search(r"(\d+)$", name)
    if match:
        return "10.0.0.%d" % (9 + int(match.group(1)) % 240)
    return "10.0.1.%d" % (index % 250 + 1)


def normalize_node_specs(nodes):
    """A node count or a list of node specs (or names) -> a list of specs.

    A count n means ``sim-node-1`` ... ``sim-node-n``; a spec is ``{"name": ...,
    "labels": {...}, "taints": [{"key", "value", "effect"}]}``.  Raises ValueError."""
    if isinstance(nodes, int) and not isinstance(nodes, bool):
        if nodes < 0:
            raise ValueError("node count must be a non-negative integer, got %r" % (nodes,))
        return [{"name": "sim-node-%d" % i} for i in range(1, nodes + 1)]
    if not isinstance(nodes, list):
        raise ValueError("nodes must be a count or a list of node specs, got %r" % (nodes,))
    specs, seen = [], set()
    for item in nodes:
        spec = {"name": item} if isinstance(item, str) else item
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ValueError("a node spec needs a name: %r" % (item,))
        unknown = set(spec) - NODE_SPEC_KEYS
        if unknown:
            raise ValueError("unknown node spec keys: %s" % ", ".join(sorted(unknown)))
        if spec["name"] in seen:
            raise ValueError("duplicate node name %r" % spec["name"])
        seen.add(spec["name"])
        labels = spec.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in labels.items()):
            raise ValueError("node labels must map strings to strings: %r" % (labels,))
        taints = spec.get("taints") or []
        if not isinstance(taints, list):
            raise ValueError("node taints must be a list: %r" % (taints,))
        for taint in taints:
            if not isinstance(taint, dict) or not taint.get("key") or \
                    taint.get("effect") not in TAINT_EFFECTS or \
                    set(taint) - {"key", "value", "effect"}:
                raise ValueError("a taint is {key, value, effect} with effect one of %s: %r"
                                 % (", ".join(TAINT_EFFECTS), taint))
        specs.append({"name": spec["name"], "labels": dict(labels),
                      "taints": [dict(t) for t in taints]})
    return specs


def make_node(spec, index, kubelet_version, created):
    """The v1 Node a kubelet registers for ``spec`` (see normalize_node_specs): the
    labels the kubelet sets (``kubernetes.io/os``/``arch``/``hostname`` and their
    deprecated ``beta.`` twins, the spec's labels winning), ``nodeInfo`` agreeing with
    the os/arch labels, Ready and no pressure; ``created`` (RFC 3339) dates the
    conditions, so the same spec always gives the same object."""
    name = spec["name"]
    labels = {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
              "kubernetes.io/hostname": name}
    labels.update(spec.get("labels") or {})
    labels.setdefault("beta.kubernetes.io/os", labels["kubernetes.io/os"])
    labels.setdefault("beta.kubernetes.io/arch", labels["kubernetes.io/arch"])
    address = node_ip(name, index)
    digest = hashlib.sha256(name.encode()).hexdigest()  # stable ids: same spec, same object
    resources = {"cpu": "4", "ephemeral-storage": "102350Mi", "hugepages-2Mi": "0",
                 "memory": "16384Mi", "pods": "110"}

    def condition(ctype, status, reason, message):
        return {"type": ctype, "status": status, "lastHeartbeatTime": created,
                "lastTransitionTime": created, "reason": reason, "message": message}

    node = {
        "metadata": {
            "name": name, "labels": labels,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                            "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
        },
        "spec": {"podCIDR": "10.244.%d.0/24" % (index % 250),
                 "podCIDRs": ["10.244.%d.0/24" % (index % 250)]},
        "status": {
            "capacity": dict(resources), "allocatable": dict(resources),
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory",
                          "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure",
                          "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID",
                          "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": address},
                          {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": digest[:32], "systemUUID": "%s-%s-%s-%s-%s" % (
                    digest[32:40], digest[40:44], digest[44:48], digest[48:52], digest[52:64]),
                "bootID": digest[:8] + "-boot",
                "kernelVersion": "6.1.0-31-cloud-amd64",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://1.7.24",
                "kubeletVersion": kubelet_version, "kubeProxyVersion": kubelet_version,
                "operatingSystem": labels["kubernetes.io/os"],
                "architecture": labels["kubernetes.io/arch"]},
        },
    }
    if spec.get("taints"):
        node["spec"]["taints"] = clone(spec["taints"])
    return node


def toleration_tolerates(toleration, taint):
    """v1.Toleration.ToleratesTaint: an empty effect matches every effect, an empty
    key (with Exists) every key; operator Equal (or empty) compares the value."""
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("key") and toleration["key"] != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Equal":
        return (toleration.get("value") or "") == (taint.get("value") or "")
    return operator == "Exists"


def untolerated_taint(taints, tolerations, effects):
    """The first taint with one of ``effects`` no toleration tolerates, or None
    (v1helper.FindMatchingUntoleratedTaint)."""
    for taint in taints or []:
        if taint.get("effect") in effects and \
                not any(toleration_tolerates(t, taint) for t in tolerations or []):
            return taint
    return None


class _BadRequirement(Exception):
    """A node selector requirement the API would not parse: its term matches nothing."""


def _requirement_matches(req, values_by_key, fields):
    """One NodeSelectorRequirement against node labels (or, with ``fields``, against
    the node's fields, where only In/NotIn with one value parse)."""
    key, operator = req.get("key"), req.get("operator")
    values = req.get("values") or []
    if not key:
        raise _BadRequirement()
    if fields:
        if operator not in ("In", "NotIn") or len(values) != 1:
            raise _BadRequirement()
        equal = values_by_key.get(key, "") == values[0]
        return equal if operator == "In" else not equal
    present = key in values_by_key
    if operator in ("In", "NotIn"):
        if not values:
            raise _BadRequirement()
        inside = present and values_by_key[key] in values
        return inside if operator == "In" else not inside
    if operator in ("Exists", "DoesNotExist"):
        if values:
            raise _BadRequirement()
        return present if operator == "Exists" else not present
    if operator in ("Gt", "Lt"):
        try:
            if len(values) != 1:
                raise ValueError
            bound = int(values[0])
        except ValueError:
            raise _BadRequirement() from None
        try:
            actual = int(values_by_key[key]) if present else None
        except ValueError:
            return False
        if actual is None:
            return False
        return actual > bound if operator == "Gt" else actual < bound
    raise _BadRequirement()


def node_selector_term_matches(term, node):
    """A NodeSelectorTerm: its matchExpressions (labels) and matchFields
    (``metadata.name``) ANDed; an empty or unparsable term matches nothing."""
    expressions = term.get("matchExpressions") or []
    match_fields = term.get("matchFields") or []
    if not expressions and not match_fields:
        return False
    labels = node["metadata"].get("labels") or {}
    fields = {"metadata.name": node["metadata"]["name"]}
    try:
        results = [_requirement_matches(r, labels, False) for r in expressions] + \
                  [_requirement_matches(r, fields, True) for r in match_fields]
    except _BadRequirement:
        return False
    return all(results)


def node_affinity_matches(pod_spec, node):
    """nodeaffinity.GetRequiredNodeAffinity(pod).Match(node): ``nodeSelector`` (every
    label equal) and the required node affinity's terms (ORed)."""
    labels = node["metadata"].get("labels") or {}
    for key, value in (pod_spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution")
    if required is None:
        return True
    return any(node_selector_term_matches(term, node)
               for term in required.get("nodeSelectorTerms") or [])


def daemon_pod_tolerations(pod_spec):
    """The template's tolerations plus those the DaemonSet controller adds."""
    tolerations = list(pod_spec.get("tolerations") or [])
    for key, effect in DAEMONSET_TOLERATIONS:
        if not any(t.get("key") == key and t.get("effect") == effect for t in tolerations):
            tolerations.append({"key": key, "operator": "Exists", "effect": effect})
    return tolerations


def daemon_pod_placement(pod_spec, node):
    """(should run, should continue running) of a DaemonSet's pod on ``node``
    (daemon.NodeShouldRunDaemonPod): ``spec.nodeName``, node affinity, and the node's
    NoSchedule/NoExecute taints against the pod's tolerations; a pod already there may
    stay despite an untolerated NoSchedule taint, not a NoExecute one."""
    name = node["metadata"]["name"]
    if pod_spec.get("nodeName") not in (None, "", name):
        return False, False
    if not node_affinity_matches(pod_spec, node):
        return False, False
    taints = (node.get("spec") or {}).get("taints") or []
    tolerations = daemon_pod_tolerations(pod_spec)
    if untolerated_taint(taints, tolerations, ("NoSchedule", "NoExecute")) is not None:
        return False, untolerated_taint(taints, tolerations, ("NoExecute",)) is None
    return True, True


# --------------------------------------------------------------------------
# DaemonSet controller (mixin of Cluster)
# --------------------------------------------------------------------------

class DaemonSetController:
    """pkg/controller/daemon: one pod per Node the pod template fits (node selector,
    required node affinity, taints and tolerations; ``set_nodes``), RollingUpdate
    (maxUnavailable, maxSurge) or OnDelete.  A mixin of Cluster: ``self`` is the Cluster."""

    def node_objects(self):
        """The stored Nodes (read-only), in natural name order."""
        return sorted(self.store.raw(NODES), key=lambda n: natural_key(n["metadata"]["name"]))

    def node_names(self):
        return [node["metadata"]["name"] for node in self.node_objects()]

    def daemonset_nodes(self, ds):
        """(names of the nodes that should run a pod of ``ds``, set of the names where
        a pod already there may stay): daemon_pod_placement over every node."""
        spec = (ds["spec"].get("template") or {}).get("spec") or {}
        run, keep = [], set()
        for node in self.node_objects():
            should_run, should_continue = daemon_pod_placement(spec, node)
            if should_run:
                run.append(node["metadata"]["name"])
            if should_continue:
                keep.add(node["metadata"]["name"])
        return run, keep

    @staticmethod
    def daemonset_budget(ds, desired):
        """(maxSurge, maxUnavailable) scaled to the desired number of pods."""
        strategy = ds["spec"].get("updateStrategy") or {}
        if strategy.get("type") != "RollingUpdate":
            return 0, 1
        rolling = strategy.get("rollingUpdate") or {}
        surge = parse_int_or_percent(rolling.get("maxSurge", 0), desired, True)
        unavailable = parse_int_or_percent(rolling.get("maxUnavailable", 1), desired, True)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        return surge, unavailable

    @staticmethod
    def daemon_pod_updated(pod, revision_hash, generation):
        """util.IsPodUpdated: the revision hash or the template generation matches."""
        labels = pod["metadata"].get("labels") or {}
        return labels.get(CONTROLLER_REVISION_HASH) == revision_hash or \
            labels.get(DS_TEMPLATE_GENERATION) == generation

    def daemon_pods_by_node(self, ds):
        by_node = {}
        for pod in self.owned(PODS, ds, ds["metadata"]["namespace"]):
            by_node.setdefault(pod["spec"].get("nodeName"), []).append(pod)
        for pods in by_node.values():
            pods.sort(key=self.created_at)
        return by_node

    def sync_daemonset(self, ds, now, manage=True):
        """One sync; with ``manage=False`` only the status is brought up to date."""
        current, revisions, collision = self.sync_history(ds, create=manage)
        if current is None:
            return
        revision_hash = current["metadata"]["labels"].get(CONTROLLER_REVISION_HASH)
        generation = str(daemonset_template_generation(ds))
        nodes, keep = self.daemonset_nodes(ds)
        if manage:
            acted = self._manage_daemonset(ds, nodes, keep, revision_hash, now)
            # Like the controller's expectations: roll only once creations/deletions are seen.
            if not acted and (ds["spec"].get("updateStrategy") or {}).get("type") == \
                    "RollingUpdate":
                self._roll_daemonset(ds, nodes, keep, revision_hash, generation, now)
        by_node = self.daemon_pods_by_node(ds)
        self._daemonset_status(ds, nodes, by_node, revision_hash, generation, collision, now)
        if manage:
            hashes = {(p["metadata"].get("labels") or {}).get(CONTROLLER_REVISION_HASH)
                      for pods in by_node.values() for p in pods}
            live = {current["metadata"]["name"]}
            live.update(r["metadata"]["name"] for r in revisions
                        if (r["metadata"].get("labels") or {}).get(CONTROLLER_REVISION_HASH)
                        in hashes)
            self.truncate_history(ds, revisions, live)

    def _manage_daemonset(self, ds, nodes, keep, revision_hash, now):
        """manage/podsShouldBeOnNode: a pod on every node in ``nodes`` (those that
        should run one), extra pods deleted; pods on a node in ``keep`` stay (deduped),
        pods on any other node (gone, or no longer fitting) are deleted.
        Returns whether anything was created or deleted."""
        surge, _ = self.daemonset_budget(ds, len(nodes))
        min_ready = ds["spec"].get("minReadySeconds", 0) or 0
        by_node = self.daemon_pods_by_node(ds)
        acted = False
        staying = [n for n in sorted(keep, key=natural_key) if n not in nodes and by_node.get(n)]
        for node in nodes + staying:
            pods = by_node.get(node, [])
            running = [p for p in pods if not _deleting(p)]
            if not running:
                if node in staying:
                    continue  # may keep a pod there, must not start one
                if pods and not surge:
                    continue  # without surge, wait until the terminating pod is gone
                acted = self._create_daemon_pod(ds, node, revision_hash, now) is not None or acted
                continue
            excess = []
            if not surge:
                excess = running[1:]  # keep the oldest
            elif len(running) > 1:
                oldest_new = oldest_old = None
                for pod in running:
                    is_new = (pod["metadata"].get("labels") or {}).get(CONTROLLER_REVISION_HASH) \
                        == revision_hash
                    if is_new and oldest_new is None:
                        oldest_new = pod
                    elif not is_new and oldest_old is None:
                        oldest_old = pod
                    else:
                        excess.append(pod)
                if oldest_new is not None and oldest_old is not None and \
                        (not self._pod_ready(oldest_old) or
                         self.available(oldest_new, min_ready, now)):
                    excess.append(oldest_old)
            for pod in excess:
                self.terminate_pod(pod, now)
                acted = True
        for node, pods in by_node.items():
            if node not in nodes and node not in keep:  # gone or no longer fitting
                for pod in pods:
                    if not _deleting(pod):
                        self.terminate_pod(pod, now)
                        acted = True
        return acted

    def _roll_daemonset(self, ds, nodes, keep, revision_hash, generation, now):
        """rollingUpdate: without surge, delete old pods within maxUnavailable (the
        manage pass then creates new ones); with surge, start new pods next to old
        ones within maxSurge and delete an old pod once its replacement is available.
        The budgets scale with ``nodes`` (desiredNumberScheduled); the nodes of
        ``keep`` that have pods are rolled too, as the controller rolls every node
        with a daemon pod."""
        surge, max_unavailable = self.daemonset_budget(ds, len(nodes))
        min_ready = ds["spec"].get("minReadySeconds", 0) or 0
        by_node = self.daemon_pods_by_node(ds)
        nodes = nodes + [n for n in sorted(keep, key=natural_key)
                         if n not in nodes and by_node.get(n)]

        def split(pods):  # findUpdatedPodsOnNode -> (new, old, ok)
            new = old = None
            for pod in pods:
                if _deleting(pod):
                    continue
                if self.daemon_pod_updated(pod, revision_hash, generation):
                    if new is not None:
                        return None, None, False
                    new = pod
                else:
                    if old is not None:
                        return None, None, False
                    old = pod
            return new, old, True

        if not surge:
            unavailable, replace, candidates = 0, [], []
            for node in nodes:
                new, old, ok = split(by_node.get(node, []))
                if not ok or (new is None) == (old is None):
                    unavailable += 1
                elif new is not None:
                    unavailable += not self.available(new, min_ready, now)
                elif not self.available(old, min_ready, now):
                    replace.append(old)
                elif unavailable < max_unavailable:
                    candidates.append(old)
            room = max(0, min(max_unavailable - unavailable, len(candidates)))
            for pod in replace + candidates[:room]:
                self.terminate_pod(pod, now)
            return
        surged, retire, allowed, candidates = 0, [], [], []
        for node in nodes:
            new, old, ok = split(by_node.get(node, []))
            if not ok:
                surged += 1
            elif old is None:
                continue
            elif new is None:
                if not self.available(old, min_ready, now):
                    allowed.append(node)
                elif surged < surge:
                    candidates.append(node)
            elif not self.available(new, min_ready, now):
                surged += 1
            else:
                retire.append(old)
        room = max(0, min(surge - surged, len(candidates)))
        for pod in retire:
            self.terminate_pod(pod, now)
        for node in allowed + candidates[:room]:
            self._create_daemon_pod(ds, node, revision_hash, now)

    def _create_daemon_pod(self, ds, node, revision_hash, now):
        meta = ds["metadata"]
        workload = ("DaemonSet", meta["namespace"], meta["name"])
        template = ds["spec"].get("template") or {}
        while True:
            name = "%s-%s" % (meta["name"], random_suffix())
            if self.store.get(PODS, meta["namespace"], name) is None:
                break
        if self.creation_failure(template.get("spec") or {}, workload, name) is not None:
            return None
        labels = clone((template.get("metadata") or {}).get("labels") or {})
        labels[CONTROLLER_REVISION_HASH] = revision_hash
        labels[DS_TEMPLATE_GENERATION] = str(daemonset_template_generation(ds))
        pod = self.pod_from_template(ds, template, name, labels, node)
        spec = pod["spec"]
        affinity = spec.setdefault("affinity", {})
        affinity.setdefault("nodeAffinity", {})["requiredDuringSchedulingIgnoredDuringExecution"] = {
            "nodeSelectorTerms": [{"matchFields": [
                {"key": "metadata.name", "operator": "In", "values": [node]}]}]}
        spec["tolerations"] = daemon_pod_tolerations(spec)
        return self.start_pod(pod, workload, now)

    def _daemonset_status(self, ds, nodes, by_node, revision_hash, generation, collision, now):
        """updateDaemonSetStatus: per node that should run a pod, the oldest
        (non-terminating) pod counts; an existing node that should not run one but has
        one is misscheduled."""
        min_ready = ds["spec"].get("minReadySeconds", 0) or 0
        existing = set(self.node_names())
        scheduled = ready = available = updated = misscheduled = 0
        for node in nodes:
            pods = [p for p in by_node.get(node, []) if not _deleting(p)]
            if not pods:
                continue
            scheduled += 1
            pod = pods[0]
            if self._pod_ready(pod):
                ready += 1
                available += self.available(pod, min_ready, now)
            updated += self.daemon_pod_updated(pod, revision_hash, generation)
        for node, pods in by_node.items():
            if node in existing and node not in nodes and any(not _deleting(p) for p in pods):
                misscheduled += 1
        status = {"currentNumberScheduled": scheduled, "numberMisscheduled": misscheduled,
                  "desiredNumberScheduled": len(nodes), "numberReady": ready,
                  "observedGeneration": ds["metadata"].get("generation", 1)}
        for key, value in (("updatedNumberScheduled", updated), ("numberAvailable", available),
                           ("numberUnavailable", len(nodes) - available),
                           ("collisionCount", collision)):
            if value:
                status[key] = value
        self.write_status(DAEMONSETS, ds, status)


# --------------------------------------------------------------------------
# The Cluster: control loop, Deployment and ReplicaSet controllers, kubelet
# --------------------------------------------------------------------------

class Cluster(WorkloadHistory, StatefulSetController, DaemonSetController):
    """Controllers and kubelet on top of the Store, plus the test-controlled knobs."""

    def __init__(self, store):
        self.store = store
        self.image_behaviours = {}
        # (kind, namespace, name) of a Deployment/StatefulSet/DaemonSet -> behaviour
        self.workload_behaviours = {}
        self.digests = {}
        self.pod_runtime = {}  # pod uid -> {"start", "init", "app", "ready_at"}
        self.progress_at = {}  # deployment uid -> epoch seconds of last progress
        self.instant = set()  # (kind, namespace, name) of workloads converging instantly
        self.null_creation_timestamp = True  # as a server before 1.34 encodes templates
        self._wake_at = float("inf")  # earliest time-based change seen by reconcile()
        self._stop = threading.Event()
        self._thread = None

    # -- lifecycle -------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name="k8s-sim-controllers")
        self._thread.daemon = True
        self._thread.start()

    def stop(self):
        self._stop.set()
        self.store.changed.set()
        if self._thread is not None:
            self._thread.join(2)

    def wake(self, at):
        """Ask for a reconcile at time ``at`` (a timer: pod delays, deadlines...)."""
        self._wake_at = min(self._wake_at, at)

    def _run(self):
        """Reconcile at most every TICK_SECONDS, and only when something was
        written or a timer is due - an idle simulator uses no CPU."""
        while not self._stop.wait(TICK_SECONDS):
            try:
                with self.store.lock:
                    self.store.changed.clear()
                    self._wake_at = float("inf")
                    self.reconcile(time.time())
                    wake_at = self._wake_at
            except Exception as exc:  # keep the controllers alive; report the bug
                sys.stderr.write("k8s_sim: controller error: %r\n" % (exc,))
                continue
            timeout = wake_at - time.time()
            if not self.store.changed.is_set() and timeout > TICK_SECONDS:
                self.store.changed.wait(min(timeout, 60.0))

    def reset(self):
        self.image_behaviours.clear()
        self.workload_behaviours.clear()
        self.digests.clear()
        self.pod_runtime.clear()
        self.progress_at.clear()

    # -- helpers ---------------------------------------------------------
    def digest_for(self, image):
        if "@sha256:" in image:
            return image.split("@sha256:", 1)[1]
        digest = self.digests.get(image)
        if digest is None:
            digest = hashlib.sha256(image.encode()).hexdigest()
        if digest.startswith("sha256:"):
            digest = digest[len("sha256:"):]
        return digest

    def image_id(self, image):
        return "%s@sha256:%s" % (image_repo(image), self.digest_for(image))

    def owned(self, rtype, owner, namespace):
        uid = owner["metadata"]["uid"]
        return [o for o in self.store.raw(rtype, namespace)
                if any(ref.get("uid") == uid and ref.get("controller")
                       for ref in o["metadata"].get("ownerReferences") or [])]

    def owner_of(self, obj, kind):
        for ref in obj["metadata"].get("ownerReferences") or []:
            if ref.get("controller") and ref.get("kind") == kind:
                return ref
        return None

    def resolve_behaviours(self, pod_spec, workload):
        """Per-container behaviours (init containers, app containers); ``workload``
        is (kind, namespace, name) of the pod's Deployment/StatefulSet/DaemonSet."""
        fallback = self.workload_behaviours.get(workload) or DEFAULT_BEHAVIOUR

        def pick(container):
            return normalize_behaviour(self.image_behaviours.get(container.get("image"))
                                       or fallback)

        return ([pick(c) for c in pod_spec.get("initContainers") or []],
                [pick(c) for c in pod_spec.get("containers") or []])

    def workload_of_rs(self, rs):
        ref = self.owner_of(rs, "Deployment")
        return ("Deployment", rs["metadata"]["namespace"], ref["name"]) if ref else None

    def workload_of_pod(self, pod):
        """(kind, namespace, name) of the workload a pod belongs to, or None."""
        namespace = pod["metadata"].get("namespace")
        for ref in pod["metadata"].get("ownerReferences") or []:
            if not ref.get("controller"):
                continue
            if ref.get("kind") in ("StatefulSet", "DaemonSet"):
                return (ref["kind"], namespace, ref.get("name"))
            if ref.get("kind") == "ReplicaSet":
                rs = self.store.get(REPLICASETS, namespace, ref.get("name"))
                return self.workload_of_rs(rs) if rs else None
        return None

    # -- the control loop ------------------------------------------------
    def reconcile(self, now):
        """One pass of every controller.  Objects handed around are the stored
        ones (not copies): controllers clone before they change anything."""
        for deployment in self.store.raw(DEPLOYMENTS):
            self.sync_deployment(deployment, now)
        for rs in self.store.raw(REPLICASETS):
            self.sync_replicaset(rs, now)
        for sts in self.store.raw(STATEFULSETS):
            self.sync_statefulset(sts, now)
        for ds in self.store.raw(DAEMONSETS):
            self.sync_daemonset(ds, now)
        for pod in self.store.raw(PODS):
            self.sync_pod(pod, now)
        for rs in self.store.raw(REPLICASETS):
            self.update_replicaset_status(rs, now)
        for sts in self.store.raw(STATEFULSETS):  # status after the kubelet's changes
            self.sync_statefulset(sts, now, manage=False)
        for ds in self.store.raw(DAEMONSETS):
            self.sync_daemonset(ds, now, manage=False)
        self.collect_garbage()

    def converge(self, rtype, namespace, name, rounds=200):
        """Run the controllers until the workload's rollout is complete, with
        pods becoming ready at once (used by the admin API)."""
        key = (rtype.kind, namespace, name)
        self.instant.add(key)
        try:
            for _ in range(rounds):
                self.reconcile(time.time())
                obj = self.store.get(rtype, namespace, name)
                if obj is None or self.is_complete(obj):
                    break
            self.reconcile(time.time())
        finally:
            self.instant.discard(key)

    @staticmethod
    def is_complete(obj):
        """Whether a Deployment/StatefulSet/DaemonSet has rolled out its template."""
        spec, status = obj["spec"], obj.get("status") or {}
        if status.get("observedGeneration", 0) < obj["metadata"].get("generation", 1):
            return False
        if obj.get("kind") == "DaemonSet":
            desired = status.get("desiredNumberScheduled", 0)
            return (status.get("currentNumberScheduled", 0) == desired
                    and status.get("updatedNumberScheduled", 0) == desired
                    and status.get("numberAvailable", 0) == desired)
        replicas = spec.get("replicas", 1)
        if obj.get("kind") == "StatefulSet":
            return (status.get("replicas", 0) == replicas
                    and status.get("readyReplicas", 0) == replicas
                    and status.get("updatedReplicas", 0) == replicas
                    and status.get("availableReplicas", 0) == replicas)
        return (status.get("updatedReplicas", 0) == replicas
                and status.get("replicas", 0) == replicas
                and status.get("availableReplicas", 0) == replicas)

    # -- Deployment controller ------------------------------------------
    @staticmethod
    def template_hash(template, collision_count=0):
        template = clone(template)
        labels = (template.get("metadata") or {}).get("labels") or {}
        labels.pop(POD_TEMPLATE_HASH, None)
        digest = hashlib.sha256((canonical(template) + str(collision_count)).encode()).digest()
        return safe_encode(int.from_bytes(digest[:6], "big"))[:10]

    @staticmethod
    def equal_ignore_hash(a, b):
        a, b = clone(a), clone(b)
        for template in (a, b):
            template.setdefault("metadata", {})
            labels = template["metadata"].get("labels") or {}
            labels.pop(POD_TEMPLATE_HASH, None)
            template["metadata"]["labels"] = labels
        return canonical(a) == canonical(b)

    @staticmethod
    def revision_of(obj):
        try:
            return int((obj["metadata"].get("annotations") or {}).get(REVISION, "0"))
        except ValueError:
            return 0

    def max_surge_unavailable(self, deployment):
        spec = deployment["spec"]
        replicas = spec.get("replicas", 1)
        strategy = spec.get("strategy") or {}
        if strategy.get("type") == "Recreate":
            return 0, 0
        rolling = strategy.get("rollingUpdate") or {}
        surge = parse_int_or_percent(rolling.get("maxSurge", "25%"), replicas, True)
        unavailable = parse_int_or_percent(rolling.get("maxUnavailable", "25%"), replicas, False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        return surge, min(unavailable, replicas)

    def _set_rs_replicas(self, rs, replicas, deployment):
        if rs["spec"].get("replicas") == replicas:
            return rs
        surge, _ = self.max_surge_unavailable(deployment)
        rs = clone(rs)
        rs["spec"]["replicas"] = replicas
        annotations = rs["metadata"].setdefault("annotations", {})
        annotations[DESIRED_REPLICAS] = str(deployment["spec"].get("replicas", 1))
        annotations[MAX_REPLICAS] = str(deployment["spec"].get("replicas", 1) + surge)
        return self.store.update(REPLICASETS, rs)

    def _create_new_replicaset(self, deployment, revision, now):
        meta, spec = deployment["metadata"], deployment["spec"]
        template = clone(spec["template"])
        collision = 0
        while True:
            pod_hash = self.template_hash(spec["template"], collision)
            name = "%s-%s" % (meta["name"], pod_hash)
            if self.store.get(REPLICASETS, meta["namespace"], name) is None:
                break
            collision += 1
        template.setdefault("metadata", {}).setdefault("labels", {})[POD_TEMPLATE_HASH] = pod_hash
        selector = clone(spec["selector"])
        selector.setdefault("matchLabels", {})[POD_TEMPLATE_HASH] = pod_hash
        surge, _ = self.max_surge_unavailable(deployment)
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                           if k not in ANNOTATIONS_TO_SKIP}
        annotations[REVISION] = str(revision)
        annotations[DESIRED_REPLICAS] = str(spec.get("replicas", 1))
        annotations[MAX_REPLICAS] = str(spec.get("replicas", 1) + surge)
        rs = {
            "metadata": {
                "name": name, "namespace": meta["namespace"],
                "labels": clone(template["metadata"]["labels"]),
                "annotations": annotations,
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"],
                    "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": {"replicas": 0, "minReadySeconds": spec.get("minReadySeconds", 0),
                     "selector": selector, "template": template},
            "status": {"replicas": 0},
        }
        apply_defaults(REPLICASETS, rs)
        return self.store.create(REPLICASETS, rs)

    def _sync_new_rs_annotations(self, rs, deployment, revision):
        """Copy Deployment annotations onto the new RS and bump its revision."""
        annotations = dict(rs["metadata"].get("annotations") or {})
        for key, value in (deployment["metadata"].get("annotations") or {}).items():
            if key not in ANNOTATIONS_TO_SKIP:
                annotations[key] = value
        old_revision = self.revision_of(rs)
        if old_revision < revision:
            annotations[REVISION] = str(revision)
            if old_revision:
                history = [h for h in annotations.get(REVISION_HISTORY, "").split(",") if h]
                history.append(str(old_revision))
                annotations[REVISION_HISTORY] = ",".join(history)
        if annotations != (rs["metadata"].get("annotations") or {}):
            rs = clone(rs)
            rs["metadata"]["annotations"] = annotations
            rs = self.store.update(REPLICASETS, rs)
        return rs

    def sync_deployment(self, deployment, now):
        meta, spec = deployment["metadata"], deployment["spec"]
        namespace, uid = meta["namespace"], meta["uid"]
        old_status = deployment.get("status") or {}
        conditions = clone(old_status.get("conditions") or [])
        all_rs = self.owned(REPLICASETS, deployment, namespace)
        new_rs = None
        for rs in sorted(all_rs, key=self.revision_of, reverse=True):
            if self.equal_ignore_hash(rs["spec"]["template"], spec["template"]):
                new_rs = rs
                break
        old_rss = [rs for rs in all_rs
                   if new_rs is None or rs["metadata"]["uid"] != new_rs["metadata"]["uid"]]
        max_old_revision = max([self.revision_of(rs) for rs in old_rss] or [0])
        paused = bool(spec.get("paused"))
        progress_cond = self._condition(conditions, "Progressing")

        if paused:
            if progress_cond is None or progress_cond.get("reason") != "DeploymentPaused":
                self._set_condition(conditions, "Progressing", "Unknown", "DeploymentPaused",
                                    "Deployment is paused", now)
                self.progress_at[uid] = now
            self._scale_paused(deployment, new_rs, all_rs)
        else:
            if progress_cond is not None and progress_cond.get("reason") == "DeploymentPaused":
                self._set_condition(conditions, "Progressing", "Unknown", "DeploymentResumed",
                                    "Deployment is resumed", now)
                self.progress_at[uid] = now
            if new_rs is None:
                new_rs = self._create_new_replicaset(deployment, max_old_revision + 1, now)
                self._set_condition(conditions, "Progressing", "True", "NewReplicaSetCreated",
                                    'Created new replica set "%s"' % new_rs["metadata"]["name"],
                                    now)
                self.progress_at[uid] = now
            else:
                new_rs = self._sync_new_rs_annotations(new_rs, deployment, max_old_revision + 1)
                if self._condition(conditions, "Progressing") is None:
                    self._set_condition(conditions, "Progressing", "True", "FoundNewReplicaSet",
                                        'Found new replica set "%s"' % new_rs["metadata"]["name"],
                                        now)
                    self.progress_at[uid] = now
            if (spec.get("strategy") or {}).get("type") == "Recreate":
                new_rs, old_rss = self._rollout_recreate(deployment, new_rs, old_rss)
            else:
                new_rs, old_rss = self._rollout_rolling(deployment, new_rs, old_rss)
            self._cleanup_old(deployment, old_rss)

        # Revision annotation on the Deployment follows the new ReplicaSet.
        if new_rs is not None:
            revision = (new_rs["metadata"].get("annotations") or {}).get(REVISION)
            annotations = meta.get("annotations") or {}
            if revision and annotations.get(REVISION) != revision:
                deployment = clone(deployment)
                deployment["metadata"].setdefault("annotations", {})[REVISION] = revision
                deployment = self.store.update(DEPLOYMENTS, deployment)

        all_rs = self.owned(REPLICASETS, deployment, namespace)
        self._write_deployment_status(deployment, new_rs, all_rs, conditions, paused, now)

    def _scale_paused(self, deployment, new_rs, all_rs):
        desired = deployment["spec"].get("replicas", 1)
        current = new_rs
        if current is None and all_rs:
            current = max(all_rs, key=self.revision_of)
        if current is None:
            return
        total = sum(rs["spec"].get("replicas", 0) for rs in all_rs)
        if total != desired:
            target = max(0, current["spec"].get("replicas", 0) + desired - total)
            self._set_rs_replicas(current, target, deployment)

    def _rollout_rolling(self, deployment, new_rs, old_rss):
        desired = deployment["spec"].get("replicas", 1)
        surge, max_unavailable = self.max_surge_unavailable(deployment)
        all_rs = [new_rs] + old_rss
        # Scale up the new ReplicaSet within maxSurge.
        new_replicas = new_rs["spec"].get("replicas", 0)
        if new_replicas > desired:
            new_rs = self._set_rs_replicas(new_rs, desired, deployment)
        elif new_replicas < desired:
            current_total = sum(rs["spec"].get("replicas", 0) for rs in all_rs)
            room = desired + surge - current_total
            if room > 0:
                new_rs = self._set_rs_replicas(
                    new_rs, new_replicas + min(room, desired - new_replicas), deployment)
        # Scale down old ReplicaSets within maxUnavailable.
        old_total = sum(rs["spec"].get("replicas", 0) for rs in old_rss)
        if old_total > 0:
            all_pods = sum(rs["spec"].get("replicas", 0) for rs in [new_rs] + old_rss)
            min_available = desired - max_unavailable
            new_status = new_rs.get("status") or {}
            new_unavailable = (new_rs["spec"].get("replicas", 0)
                               - new_status.get("availableReplicas", 0))
            budget = all_pods - min_available - new_unavailable
            updated = []
            # First remove unhealthy old replicas, then healthy ones.
            for rs in sorted(old_rss, key=self.revision_of):
                replicas = rs["spec"].get("replicas", 0)
                unhealthy = replicas - (rs.get("status") or {}).get("availableReplicas", 0)
                cut = max(0, min(budget, unhealthy, replicas))
                if cut:
                    rs = self._set_rs_replicas(rs, replicas - cut, deployment)
                    budget -= cut
                updated.append(rs)
            old_rss = updated
            total_available = sum((rs.get("status") or {}).get("availableReplicas", 0)
                                  for rs in [new_rs] + old_rss)
            budget = total_available - min_available
            updated = []
            for rs in sorted(old_rss, key=self.revision_of):
                replicas = rs["spec"].get("replicas", 0)
                cut = max(0, min(budget, replicas))
                if cut:
                    rs = self._set_rs_replicas(rs, replicas - cut, deployment)
                    budget -= cut
                updated.append(rs)
            old_rss = updated
        return new_rs, old_rss

    def _rollout_recreate(self, deployment, new_rs, old_rss):
        updated = [self._set_rs_replicas(rs, 0, deployment) for rs in old_rss]
        old_pods = [p for rs in updated for p in self.owned(PODS, rs, rs["metadata"]["namespace"])]
        if not old_pods:
            desired = deployment["spec"].get("replicas", 1)
            new_rs = self._set_rs_replicas(new_rs, desired, deployment)
        return new_rs, updated

    def _cleanup_old(self, deployment, old_rss):
        limit = deployment["spec"].get("revisionHistoryLimit", 10)
        idle = [rs for rs in old_rss if rs["spec"].get("replicas", 0) == 0
                and (rs.get("status") or {}).get("replicas", 0) == 0]
        idle.sort(key=self.revision_of)
        for rs in idle[:max(0, len(idle) - limit)]:
            self.store.delete(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"])

    @staticmethod
    def _condition(conditions, ctype):
        for cond in conditions:
            if cond.get("type") == ctype:
                return cond
        return None

    @staticmethod
    def _set_condition(conditions, ctype, status, reason, message, now, keep_transition=False):
        """Like util.SetDeploymentCondition: a changed condition moves to the end."""
        current = Cluster._condition(conditions, ctype)
        if current is not None and current.get("status") == status and \
                current.get("reason") == reason and current.get("message") == message \
                and not keep_transition:
            return
        cond = {"type": ctype, "status": status, "lastUpdateTime": iso(now),
                "lastTransitionTime": iso(now), "reason": reason, "message": message}
        if current is not None and current.get("status") == status:
            cond["lastTransitionTime"] = current.get("lastTransitionTime", iso(now))
        conditions[:] = [c for c in conditions if c.get("type") != ctype] + [cond]

    def _write_deployment_status(self, deployment, new_rs, all_rs, conditions, paused, now):
        spec, meta = deployment["spec"], deployment["metadata"]
        uid = meta["uid"]
        desired = spec.get("replicas", 1)
        _, max_unavailable = self.max_surge_unavailable(deployment)
        old_status = deployment.get("status") or {}

        def total(rs_list, field):
            return sum((rs.get("status") or {}).get(field, 0) for rs in rs_list)

        replicas = total(all_rs, "replicas")
        updated = total([new_rs], "replicas") if new_rs is not None else 0
        ready = total(all_rs, "readyReplicas")
        available = total(all_rs, "availableReplicas")
        spec_total = sum(rs["spec"].get("replicas", 0) for rs in all_rs)
        unavailable = max(0, spec_total - available)
        status = {"observedGeneration": meta.get("generation", 1)}
        for key, value in (("replicas", replicas), ("updatedReplicas", updated),
                           ("readyReplicas", ready), ("availableReplicas", available),
                           ("unavailableReplicas", unavailable)):
            if value:
                status[key] = value
        if old_status.get("collisionCount"):
            status["collisionCount"] = old_status["collisionCount"]

        if available >= desired - max_unavailable:
            self._set_condition(conditions, "Available", "True", "MinimumReplicasAvailable",
                                "Deployment has minimum availability.", now)
        else:
            self._set_condition(conditions, "Available", "False", "MinimumReplicasUnavailable",
                                "Deployment does not have minimum availability.", now)

        if not paused and new_rs is not None and spec.get("progressDeadlineSeconds") is not None:
            rs_name = new_rs["metadata"]["name"]
            complete = (updated == desired and replicas == desired and available == desired)
            old_old = old_status.get("replicas", 0) - old_status.get("updatedReplicas", 0)
            progressing = (updated > old_status.get("updatedReplicas", 0)
                           or replicas - updated < old_old
                           or ready > old_status.get("readyReplicas", 0)
                           or available > old_status.get("availableReplicas", 0))
            cond = self._condition(conditions, "Progressing")
            if complete:
                self._set_condition(conditions, "Progressing", "True", "NewReplicaSetAvailable",
                                    'ReplicaSet "%s" has successfully progressed.' % rs_name, now)
            elif progressing:
                self._set_condition(conditions, "Progressing", "True", "ReplicaSetUpdated",
                                    'ReplicaSet "%s" is progressing.' % rs_name, now,
                                    keep_transition=True)
                self.progress_at[uid] = now
            elif cond is not None and cond.get("reason") not in ("NewReplicaSetAvailable",
                                                                 "ProgressDeadlineExceeded"):
                since = self.progress_at.get(uid, now)
                self.wake(since + spec["progressDeadlineSeconds"] + TICK_SECONDS)
                if now - since > spec["progressDeadlineSeconds"]:
                    self._set_condition(conditions, "Progressing", "False",
                                        "ProgressDeadlineExceeded",
                                        'ReplicaSet "%s" has timed out progressing.' % rs_name, now)

        failure = None
        for rs in ([new_rs] if new_rs is not None else []) + all_rs:
            failure = self._condition((rs.get("status") or {}).get("conditions") or [],
                                      "ReplicaFailure")
            if failure is not None:
                break
        if failure is not None:
            self._set_condition(conditions, "ReplicaFailure", "True", failure.get("reason"),
                                failure.get("message"), now)
        else:
            conditions[:] = [c for c in conditions if c.get("type") != "ReplicaFailure"]
        status["conditions"] = conditions

        if canonical(status) != canonical(old_status):
            current = self.store.get(DEPLOYMENTS, meta["namespace"], meta["name"])
            if current is not None:
                current["status"] = status
                self.store.update(DEPLOYMENTS, current)

    # -- ReplicaSet controller ------------------------------------------
    def creation_failure(self, pod_spec, workload, pod_name):
        """The FailedCreate message if a pod with ``pod_spec`` of ``workload``
        cannot be created (behaviour ``replica_failure``), else None."""
        if workload in self.instant:
            return None
        init, app = self.resolve_behaviours(pod_spec, workload)
        for behaviour in init + app:
            if behaviour["mode"] == "replica_failure":
                return behaviour.get("message") or (
                    'pods "%s" is forbidden: exceeded quota: compute-resources, requested: '
                    "limits.cpu=500m, used: limits.cpu=2, limited: limits.cpu=2" % pod_name)
        return None

    def sync_replicaset(self, rs, now):
        namespace = rs["metadata"]["namespace"]
        pods = [p for p in self.owned(PODS, rs, namespace)
                if not p["metadata"].get("deletionTimestamp")]
        want = rs["spec"].get("replicas", 0)
        failure = None
        if len(pods) < want:
            failure = self.creation_failure(rs["spec"]["template"]["spec"], self.workload_of_rs(rs),
                                            "%s-%s" % (rs["metadata"]["name"], random_suffix()))
            if failure is None:
                for _ in range(want - len(pods)):
                    self.create_pod(rs, now)
        elif len(pods) > want:
            def victim_rank(pod):
                ready = self._pod_ready(pod)
                return (ready, pod["metadata"].get("creationTimestamp", ""))
            for pod in sorted(pods, key=victim_rank)[:len(pods) - want]:
                self.terminate_pod(pod, now)
        conditions = [c for c in (rs.get("status") or {}).get("conditions") or []
                      if c.get("type") != "ReplicaFailure"]
        if failure is not None:
            previous = self._condition((rs.get("status") or {}).get("conditions") or [],
                                       "ReplicaFailure")
            if previous is not None:
                failure = previous.get("message")  # keep the first message stable
            conditions.append({"type": "ReplicaFailure", "status": "True",
                               "lastTransitionTime": iso(now), "reason": "FailedCreate",
                               "message": failure})
            if previous is not None:
                conditions[-1]["lastTransitionTime"] = previous.get("lastTransitionTime")
        current = self.store.get(REPLICASETS, namespace, rs["metadata"]["name"])
        if current is not None:
            status = current.setdefault("status", {})
            if conditions:
                status["conditions"] = conditions
            else:
                status.pop("conditions", None)
            self.store.update(REPLICASETS, current)

    def update_replicaset_status(self, rs, now):
        namespace = rs["metadata"]["namespace"]
        pods = [p for p in self.owned(PODS, rs, namespace)
                if not p["metadata"].get("deletionTimestamp")]
        min_ready = rs["spec"].get("minReadySeconds", 0) or 0
        ready = [p for p in pods if self._pod_ready(p)]
        available = []
        for pod in ready:
            ready_at = (self.pod_runtime.get(pod["metadata"]["uid"]) or {}).get("ready_at")
            if ready_at is not None and now - ready_at >= min_ready:
                available.append(pod)
            elif ready_at is not None:
                self.wake(ready_at + min_ready)
        old = rs.get("status") or {}
        status = {"replicas": len(pods),
                  "observedGeneration": rs["metadata"].get("generation", 1)}
        if pods:
            status["fullyLabeledReplicas"] = len(pods)
        if ready:
            status["readyReplicas"] = len(ready)
        if available:
            status["availableReplicas"] = len(available)
        if old.get("conditions"):
            status["conditions"] = old["conditions"]
        if canonical(status) != canonical(old):
            rs = clone(rs)
            rs["status"] = status
            self.store.update(REPLICASETS, rs)

    @staticmethod
    def _pod_ready(pod):
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Ready":
                return cond.get("status") == "True"
        return False

    def create_pod(self, rs, now):
        meta = rs["metadata"]
        template = rs["spec"]["template"]
        while True:
            name = "%s-%s" % (meta["name"], random_suffix())
            if self.store.get(PODS, meta["namespace"], name) is None:
                break
        labels = clone((template.get("metadata") or {}).get("labels") or {})
        pod = self.pod_from_template(rs, template, name, labels, "sim-node-1")
        return self.start_pod(pod, self.workload_of_rs(rs), now)

    def terminate_pod(self, pod, now):
        pod = clone(pod)
        pod["metadata"]["deletionTimestamp"] = iso(now + TERMINATION_GRACE_SECONDS)
        pod["metadata"]["deletionGracePeriodSeconds"] = 0
        runtime = self.pod_runtime.setdefault(pod["metadata"]["uid"], {})
        runtime["delete_at"] = now + TERMINATION_GRACE_SECONDS
        self.store.update(PODS, pod)

    OWNER_KINDS = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet")

    def collect_garbage(self):
        """Delete objects whose controlling owner is gone (background cascading)."""
        uids = set()
        for rtype in (DEPLOYMENTS, REPLICASETS, STATEFULSETS, DAEMONSETS):
            uids.update(o["metadata"]["uid"] for o in self.store.raw(rtype))
        for rtype in (REPLICASETS, CONTROLLERREVISIONS, PODS):
            for obj in self.store.raw(rtype):
                for ref in obj["metadata"].get("ownerReferences") or []:
                    if ref.get("controller") and ref.get("kind") in self.OWNER_KINDS and \
                            ref.get("uid") not in uids:
                        self.store.delete(rtype, obj["metadata"]["namespace"],
                                          obj["metadata"]["name"])
                        self.pod_runtime.pop(obj["metadata"]["uid"], None)
                        break

    # -- kubelet ---------------------------------------------------------
    def sync_pod(self, pod, now):
        uid = pod["metadata"]["uid"]
        runtime = self.pod_runtime.get(uid)
        if runtime is None:  # created through the API: resolve behaviours now
            init, app = self.resolve_behaviours(pod["spec"], self.workload_of_pod(pod))
            runtime = {"start": now, "init": init, "app": app, "ready_at": None}
            self.pod_runtime[uid] = runtime
        if "delete_at" in runtime:
            if now >= runtime["delete_at"]:
                self.store.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
                self.pod_runtime.pop(uid, None)
            else:
                self.wake(runtime["delete_at"])
            return
        if "init" not in runtime:
            return
        status, ready_at = self.pod_status(pod, runtime, now)
        runtime["ready_at"] = ready_at
        if canonical(status) != canonical(pod.get("status")):
            pod = clone(pod)
            pod["status"] = status
            self.store.update(PODS, pod)

    def _container(self, pod, container, behaviour, local_t, start, is_init):
        """(status dict, state) for one container; state is one of
        'waiting', 'running', 'ready', 'done'; plus the time it became ready/done."""
        name, image = container.get("name"), container.get("image", "")
        base = {"name": name, "image": image, "imageID": "", "ready": False,
                "restartCount": 0, "started": False, "lastState": {}}
        mode, delay = behaviour["mode"], behaviour["delay"]
        message = behaviour.get("message")
        if mode in ("hang", "replica_failure") or local_t < delay:
            if mode not in ("hang", "replica_failure"):
                self.wake(start + delay)
            base["state"] = {"waiting": {"reason": "ContainerCreating"}}
            return base, "waiting", None
        began = start + delay
        if mode == "ready":
            base.update(imageID=self.image_id(image), containerID=_container_id(
                pod["metadata"]["uid"], name, 0))
            if is_init:
                base.update(ready=True, started=False, state={"terminated": {
                    "exitCode": 0, "reason": "Completed", "startedAt": iso(began),
                    "finishedAt": iso(began), "containerID": base["containerID"]}})
                return base, "done", began
            base.update(ready=True, started=True, state={"running": {"startedAt": iso(began)}})
            return base, "ready", began
        if mode == "image_pull_backoff":
            if local_t < delay + 0.5:
                self.wake(start + delay + 0.5)
                base["state"] = {"waiting": {"reason": "ErrImagePull", "message": message or (
                    'failed to pull and unpack image "%s": failed to resolve reference "%s": '
                    "%s: not found" % (image, image, image))}}
            else:
                base["state"] = {"waiting": {
                    "reason": "ImagePullBackOff",
                    "message": message or 'Back-off pulling image "%s"' % image}}
            return base, "waiting", None
        if mode == "config_error":
            base["state"] = {"waiting": {"reason": "CreateContainerConfigError",
                                         "message": message or 'secret "app-secrets" not found'}}
            return base, "waiting", None
        if mode == "not_ready":
            return self._not_ready(pod, base, behaviour, local_t, began), "running", None
        # crash_loop
        interval = float(behaviour.get("interval", 1.0))
        restarts = int((local_t - delay) / interval)
        self.wake(began + (restarts + 1) * interval)
        base.update(imageID=self.image_id(image), restartCount=restarts,
                    containerID=_container_id(pod["metadata"]["uid"], name, restarts))
        if restarts == 0:
            base.update(started=True, state={"running": {"startedAt": iso(began)}})
            return base, "running", None
        last_start = began + (restarts - 1) * interval
        base["lastState"] = {"terminated": {
            "exitCode": int(behaviour.get("exit_code", 1)), "reason": "Error",
            "startedAt": iso(last_start), "finishedAt": iso(last_start + interval / 2),
            "containerID": _container_id(pod["metadata"]["uid"], name, restarts - 1)}}
        base["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": message or (
            "back-off 10s restarting failed container=%s pod=%s_%s(%s)" % (
                name, pod["metadata"]["name"], pod["metadata"]["namespace"],
                pod["metadata"]["uid"]))}}
        return base, "running", None

    def _not_ready(self, pod, base, behaviour, local_t, began):
        """A container that runs but whose readiness probe fails: ``started`` and
        running, never ``ready`` (the pod stays Running with Ready and
        ContainersReady False).  With ``restart_interval`` its liveness probe fails
        too: the kubelet kills and restarts it every that many seconds, so
        ``restartCount`` grows and ``lastState.terminated`` shows the killed run."""
        uid, name = pod["metadata"]["uid"], base["name"]
        interval = behaviour.get("restart_interval")
        restarts = int((local_t - behaviour["delay"]) / interval) if interval else 0
        current_start = began + restarts * interval if interval else began
        if interval:
            self.wake(current_start + interval)
        base.update(imageID=self.image_id(base["image"]), restartCount=restarts, started=True,
                    containerID=_container_id(uid, name, restarts),
                    state={"running": {"startedAt": iso(current_start)}})
        if restarts:
            base["lastState"] = {"terminated": {
                "exitCode": int(behaviour.get("exit_code", 1)), "reason": "Error",
                "startedAt": iso(current_start - interval), "finishedAt": iso(current_start),
                "containerID": _container_id(uid, name, restarts - 1)}}
        return base

    def host_ip(self, node_name):
        """The InternalIP of the pod's Node (10.0.0.10 when it does not exist)."""
        node = self.store.objects.get((NODES.plural, "", node_name))
        for address in ((node or {}).get("status") or {}).get("addresses") or []:
            if address.get("type") == "InternalIP":
                return address["address"]
        return node_ip(node_name, 1) if re.search(r"\d$", node_name) else "10.0.0.10"

    @staticmethod
    def _initializing(container):
        """Status of a container waiting for init containers to finish."""
        return {"name": container.get("name"), "image": container.get("image"), "imageID": "",
                "ready": False, "restartCount": 0, "started": False, "lastState": {},
                "state": {"waiting": {"reason": "PodInitializing"}}}

    def pod_status(self, pod, runtime, now):
        """Derive the pod status purely from the elapsed time and the behaviours."""
        start = runtime["start"]
        elapsed = now - start
        spec = pod["spec"]
        init_statuses, app_statuses = [], []
        offset, initialized = 0.0, True
        for container, behaviour in zip(spec.get("initContainers") or [], runtime["init"]):
            if not initialized:
                init_statuses.append(self._initializing(container))
                continue
            status, state, done_at = self._container(pod, container, behaviour,
                                                     elapsed - offset, start + offset, True)
            init_statuses.append(status)
            if state == "done":
                offset = done_at - start
            else:
                initialized = False
        states, ready_times = [], []
        for container, behaviour in zip(spec.get("containers") or [], runtime["app"]):
            if not initialized:
                app_statuses.append(self._initializing(container))
                states.append("waiting")
                continue
            status, state, ready_time = self._container(pod, container, behaviour,
                                                        elapsed - offset, start + offset, False)
            app_statuses.append(status)
            states.append(state)
            if ready_time is not None:
                ready_times.append(ready_time)
        all_ready = bool(states) and all(s == "ready" for s in states)
        ready_at = max(ready_times) if all_ready else None
        running = bool(states) and all(s in ("ready", "running") for s in states)
        phase = "Running" if running else "Pending"
        started = iso(start)
        not_ready = [s["name"] for s in app_statuses if not s["ready"]]
        pending_init = [s["name"] for s in init_statuses if not s["ready"]]

        def condition(ctype, ok, reason, message, at):
            cond = {"type": ctype, "status": "True" if ok else "False",
                    "lastProbeTime": None, "lastTransitionTime": iso(at)}
            if not ok:
                cond.update(reason=reason, message=message)
            return cond

        init_at = start + offset if initialized else start
        conditions = [
            condition("Initialized", initialized, "ContainersNotInitialized",
                      "containers with incomplete status: [%s]" % " ".join(pending_init), init_at),
            condition("Ready", all_ready, "ContainersNotReady",
                      "containers with unready status: [%s]" % " ".join(not_ready),
                      ready_at or start),
            condition("ContainersReady", all_ready, "ContainersNotReady",
                      "containers with unready status: [%s]" % " ".join(not_ready),
                      ready_at or start),
            condition("PodScheduled", True, "", "", start),
        ]
        host_ip = self.host_ip(spec.get("nodeName") or "sim-node-1")
        status = {"phase": phase, "conditions": conditions, "hostIP": host_ip,
                  "podIP": "10.244.0.%d" % (1 + int(pod["metadata"]["uid"][:2], 16) % 250),
                  "startTime": started, "qosClass": "BestEffort",
                  "containerStatuses": app_statuses}
        status["podIPs"] = [{"ip": status["podIP"]}]
        status["hostIPs"] = [{"ip": status["hostIP"]}]
        if init_statuses:
            status["initContainerStatuses"] = init_statuses
        return status, ready_at


# --------------------------------------------------------------------------
# The simulator state shared by the HTTP handlers
# --------------------------------------------------------------------------

class Simulator:
    def __init__(self, server_version=DEFAULT_SERVER_VERSION, verbose=False):
        parse_version(server_version)
        self.default_version = server_version
        self.store = Store()
        self.cluster = Cluster(self.store)
        self.max_page = None           # lists answer at most this many items (None: limit)
        self.set_server_version(server_version)
        self.verbose = verbose
        self.log_lock = threading.Lock()
        self.request_log = []
        self.faults = []
        self.fault_ids = 0
        self.tokens = {}  # bearer token -> {"user": ..., "rules": [...]}
        self.stopping = threading.Event()
        for name in DEFAULT_NAMESPACES:
            self.store.create(NAMESPACES, apply_defaults(NAMESPACES, {"metadata": {"name": name}}))
        self.set_nodes(DEFAULT_NODES)

    def version_info(self):
        major, minor, git = parse_version(self.server_version)
        return {"major": major, "minor": minor, "gitVersion": git,
                "gitCommit": hashlib.sha256(git.encode()).hexdigest()[:40],
                "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23.8",
                "compiler": "gc", "platform": "linux/amd64"}

    # -- admin operations -------------------------------------------------
    def set_server_version(self, version):
        """Report ``version``; from 1.34 on the controllers' ControllerRevisions no
        longer carry ``creationTimestamp: null`` (apimachinery omits it)."""
        minor = int(parse_version(version)[1])
        with self.store.lock:
            self.server_version = version
            self.cluster.null_creation_timestamp = minor < 34

    def reset(self):
        with self.store.lock:
            for rtype in (DEPLOYMENTS, REPLICASETS, STATEFULSETS, DAEMONSETS, CONTROLLERREVISIONS,
                          PODS):
                for obj in self.store.list(rtype):
                    meta = obj["metadata"]
                    self.store.delete(rtype, meta.get("namespace"), meta["name"])
            self.cluster.reset()
            self.set_server_version(self.default_version)
            self.set_nodes(DEFAULT_NODES)
        with self.log_lock:
            self.request_log[:] = []
            self.faults[:] = []
            self.tokens.clear()
        self.max_page = None

    WORKLOAD_KEYS = frozenset([
        "name", "namespace", "containers", "init_containers", "behaviour", "labels",
        "annotations", "template_annotations", "selector", "ready", "min_ready_seconds",
        "revision_history_limit", "node_selector", "tolerations", "affinity"])
    ADD_DEPLOYMENT_KEYS = WORKLOAD_KEYS | frozenset([
        "replicas", "paused", "progress_deadline_seconds", "strategy"])
    ADD_STATEFULSET_KEYS = WORKLOAD_KEYS | frozenset([
        "replicas", "update_strategy", "partition", "pod_management_policy", "service_name"])
    ADD_DAEMONSET_KEYS = WORKLOAD_KEYS | frozenset([
        "update_strategy", "max_unavailable", "max_surge"])

    def _workload(self, rtype, spec, keys):
        """The object the admin API's add_* keyword arguments describe: selector
        and pod labels ``selector`` (default ``app=<name>``), the object's own
        ``labels`` (default: the selector), ``annotations`` on the object and
        ``template_annotations`` on its pod template; ``node_selector``,
        ``tolerations`` and ``affinity`` go into the pod spec."""
        unknown = set(spec) - keys
        if unknown:
            raise ValueError("unknown add_%s arguments: %s"
                             % (rtype.kind.lower(), ", ".join(sorted(unknown))))
        name = spec["name"]
        namespace = spec.get("namespace") or "noetl"
        if self.store.get(NAMESPACES, "", namespace) is None:
            raise ApiError(404, "NotFound", 'namespaces "%s" not found' % namespace)
        containers = spec.get("containers") or [{"name": name, "image": "%s:1" % name}]
        selector = dict(spec.get("selector") or {"app": name})
        template_meta = {"labels": dict(selector)}
        if spec.get("template_annotations"):
            template_meta["annotations"] = dict(spec["template_annotations"])
        pod_spec = {"containers": clone(containers)}
        if spec.get("init_containers"):
            pod_spec["initContainers"] = clone(spec["init_containers"])
        for key, field in (("node_selector", "nodeSelector"), ("tolerations", "tolerations"),
                           ("affinity", "affinity")):
            if spec.get(key):
                pod_spec[field] = clone(spec[key])
        workload = {
            "metadata": {"name": name, "namespace": namespace,
                         "labels": dict(spec.get("labels") or selector),
                         "annotations": dict(spec.get("annotations") or {})},
            "spec": {"selector": {"matchLabels": selector},
                     "revisionHistoryLimit": spec.get("revision_history_limit", 10),
                     "template": {"metadata": template_meta, "spec": pod_spec}},
        }
        if spec.get("min_ready_seconds"):
            workload["spec"]["minReadySeconds"] = spec["min_ready_seconds"]
        return workload

    def _install_workload(self, rtype, workload, spec):
        """Validate and store a workload, roll out its first revision (instantly
        unless ``ready`` is false) and return it."""
        meta = workload["metadata"]
        apply_defaults(rtype, workload)
        validate(rtype, workload)
        with self.store.lock:
            behaviour = normalize_behaviour(spec.get("behaviour"))
            if behaviour is not None:
                self.cluster.workload_behaviours[(rtype.kind, meta["namespace"], meta["name"])] = \
                    behaviour
            self.store.create(rtype, workload)
            if spec.get("ready", True):
                self.cluster.converge(rtype, meta["namespace"], meta["name"])
            return self.store.get(rtype, meta["namespace"], meta["name"])

    def add_deployment(self, spec):
        """Create a Deployment from the admin API's keyword arguments; see
        ``SimClient.add_deployment``."""
        deployment = self._workload(DEPLOYMENTS, spec, self.ADD_DEPLOYMENT_KEYS)
        deployment["spec"]["replicas"] = spec.get("replicas", 1)
        deployment["spec"]["progressDeadlineSeconds"] = spec.get("progress_deadline_seconds", 600)
        if spec.get("strategy"):
            deployment["spec"]["strategy"] = clone(spec["strategy"])
        meta = deployment["metadata"]
        with self.store.lock:
            self._install_workload(DEPLOYMENTS, deployment, spec)
            if spec.get("paused"):
                current = self.store.get(DEPLOYMENTS, meta["namespace"], meta["name"])
                current["spec"]["paused"] = True
                self.store.update(DEPLOYMENTS, current)
                self.cluster.reconcile(time.time())
            return self.store.get(DEPLOYMENTS, meta["namespace"], meta["name"])

    def add_statefulset(self, spec):
        """Create a StatefulSet from the admin API's keyword arguments; see
        ``SimClient.add_statefulset``."""
        sts = self._workload(STATEFULSETS, spec, self.ADD_STATEFULSET_KEYS)
        sts["spec"]["replicas"] = spec.get("replicas", 1)
        sts["spec"]["serviceName"] = spec.get("service_name") or sts["metadata"]["name"]
        if spec.get("pod_management_policy"):
            sts["spec"]["podManagementPolicy"] = spec["pod_management_policy"]
        strategy = spec.get("update_strategy")
        strategy = {"type": strategy} if isinstance(strategy, str) else clone(strategy or {})
        if spec.get("partition") is not None:
            strategy.setdefault("type", "RollingUpdate")
            if not isinstance(strategy.get("rollingUpdate"), dict):
                strategy["rollingUpdate"] = {}
            strategy["rollingUpdate"]["partition"] = spec["partition"]
        if strategy:
            sts["spec"]["updateStrategy"] = strategy
        return self._install_workload(STATEFULSETS, sts, spec)

    def add_daemonset(self, spec):
        """Create a DaemonSet from the admin API's keyword arguments; see
        ``SimClient.add_daemonset``."""
        ds = self._workload(DAEMONSETS, spec, self.ADD_DAEMONSET_KEYS)
        strategy = spec.get("update_strategy")
        strategy = {"type": strategy} if isinstance(strategy, str) else clone(strategy or {})
        for key, field in (("max_unavailable", "maxUnavailable"), ("max_surge", "maxSurge")):
            if spec.get(key) is not None:
                strategy.setdefault("type", "RollingUpdate")
                if not isinstance(strategy.get("rollingUpdate"), dict):
                    strategy["rollingUpdate"] = {}
                strategy["rollingUpdate"][field] = spec[key]
        if strategy:
            ds["spec"]["updateStrategy"] = strategy
        return self._install_workload(DAEMONSETS, ds, spec)

    def delete_workload(self, rtype, namespace, name):
        """Delete a Deployment/StatefulSet/DaemonSet with its ReplicaSets,
        ControllerRevisions and pods, at once."""
        with self.store.lock:
            workload = self.store.get(rtype, namespace, name)
            if workload is None:
                raise not_found(rtype, name)
            owners = [workload] + self.cluster.owned(REPLICASETS, workload, namespace)
            for owner in owners:
                for pod in self.cluster.owned(PODS, owner, namespace):
                    self.store.delete(PODS, namespace, pod["metadata"]["name"])
                    self.cluster.pod_runtime.pop(pod["metadata"]["uid"], None)
            for owned_type in (REPLICASETS, CONTROLLERREVISIONS):
                for obj in self.cluster.owned(owned_type, workload, namespace):
                    self.store.delete(owned_type, namespace, obj["metadata"]["name"])
            self.store.delete(rtype, namespace, name)
            self.cluster.workload_behaviours.pop((rtype.kind, namespace, name), None)

    def delete_deployment(self, namespace, name):
        self.delete_workload(DEPLOYMENTS, namespace, name)

    def set_nodes(self, nodes):
        """Replace the Nodes: a count n gives ``sim-node-1`` ... ``sim-node-n``, a list
        of specs ``{"name", "labels", "taints"}`` (or names) those nodes (see
        make_node).  A node that stays keeps its uid and is only written when its
        labels or taints change; removed nodes are deleted (and their daemon pods
        with them).  Returns the node names."""
        specs = normalize_node_specs(nodes)
        with self.store.lock:
            kubelet = parse_version(self.server_version)[2]
            wanted = {}
            for index, spec in enumerate(specs, 1):
                node = make_node(spec, index, kubelet, iso())
                validate(NODES, node)
                wanted[spec["name"]] = (index, spec, node)
            for existing in self.store.list(NODES):
                if existing["metadata"]["name"] not in wanted:
                    self.store.delete(NODES, "", existing["metadata"]["name"])
            for name, (index, spec, node) in wanted.items():
                old = self.store.get(NODES, "", name)
                if old is None:
                    self.store.create(NODES, node)
                    continue
                node = make_node(spec, index, kubelet, old["metadata"]["creationTimestamp"])
                node["metadata"].update({k: old["metadata"][k] for k in
                                         ("uid", "resourceVersion", "creationTimestamp")})
                self.store.update(NODES, node)  # not written when nothing changed
            self.store.changed.set()  # wake the controllers
            return self.cluster.node_names()

    def add_fault(self, spec):
        fault = {
            "method": (spec.get("method") or "").upper() or None,
            "path_regex": spec.get("path_regex"),
            "status": spec.get("status", 403), "reason": spec.get("reason", "Forbidden"),
            "message": spec.get("message"), "count": spec.get("count"),
            "delay": spec.get("delay"), "raw_body": spec.get("raw_body"),
            "headers": spec.get("headers") or {},
        }
        if fault["path_regex"]:
            re.compile(fault["path_regex"])
        if not isinstance(fault["headers"], dict) or not all(
                isinstance(k, str) and re.match(r"^[!#-'*+.0-9A-Z^-z|~-]+$", k) and
                isinstance(v, (str, int)) and "\n" not in str(v) and "\r" not in str(v)
                for k, v in fault["headers"].items()):
            raise ValueError("fault headers must map header names to strings: %r"
                             % (fault["headers"],))
        fault["headers"] = {k: str(v) for k, v in fault["headers"].items()}
        with self.log_lock:
            self.fault_ids += 1
            fault["id"] = self.fault_ids
            self.faults.append(fault)
        return fault["id"]

    def take_fault(self, method, path, raw_query):
        full = path + ("?" + raw_query if raw_query else "")
        with self.log_lock:
            for fault in self.faults:
                if fault["method"] and fault["method"] != method:
                    continue
                if fault["path_regex"] and not (re.search(fault["path_regex"], path)
                                                or re.search(fault["path_regex"], full)):
                    continue
                if fault["count"] is not None:
                    if fault["count"] <= 0:
                        continue
                    fault["count"] -= 1
                return dict(fault)
        return None

    def set_token(self, token, user, rules):
        """Add or replace a bearer token for ``user`` allowed by ``rules`` (see
        normalize_rules); ``rules`` None revokes it."""
        if not isinstance(token, str) or not token or any(c.isspace() for c in token):
            raise ValueError("a token is a non-empty string without spaces, got %r" % (token,))
        if rules is None:
            self.revoke_token(token)
            return
        if not isinstance(user, str) or not user:
            raise ValueError("a token needs a user name, got %r" % (user,))
        rules = normalize_rules(rules)
        with self.log_lock:
            self.tokens[token] = {"user": user, "rules": rules}

    def revoke_token(self, token=None):
        """Forget ``token`` (every token when None)."""
        with self.log_lock:
            if token is None:
                self.tokens.clear()
            else:
                self.tokens.pop(token, None)

    def identity(self, token):
        """``{"user", "rules"}`` of a known token, else None."""
        with self.log_lock:
            found = self.tokens.get(token)
            return clone(found) if found is not None else None

    def log_request(self, entry):
        with self.log_lock:
            self.request_log.append(entry)

    def requests(self):
        with self.log_lock:
            return clone(self.request_log)


# --------------------------------------------------------------------------
# Request attributes: what the authorizer sees of a request
# --------------------------------------------------------------------------

_VERB_OF_METHOD = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update",
                   "PATCH": "patch", "DELETE": "delete"}
_WATCH_TRUE = ("1", "t", "T", "true", "TRUE", "True")  # Go's strconv.ParseBool
_NAMESPACE_SUBRESOURCES = ("status", "finalize")


def is_watch(query):
    """Whether a collection GET asks for a watch (``watch=true``/``1``/...)."""
    return (query.get("watch") or [""])[0] in _WATCH_TRUE


class RequestAttributes:
    """A request as the API server's authorizer sees it (k8s.io/apiserver's
    RequestInfo): a resource request has a verb (get/list/watch/create/update/
    patch/delete/deletecollection), an API group, a namespace ("" when
    cluster-scoped), a resource, a subresource and a name; anything else (``/version``,
    ``/api``, ``/apis/apps/v1``, ``/openapi/v2``) is a non-resource request whose verb
    is the lower-case HTTP method."""

    def __init__(self, path, verb):
        self.path = path
        self.verb = verb
        self.resource_request = False
        self.api_group = self.namespace = self.resource = self.subresource = self.name = ""

    @property
    def qualified(self):
        """``deployments.apps`` / ``nodes``: the GroupResource as Go prints it."""
        return "%s.%s" % (self.resource, self.api_group) if self.api_group else self.resource

    def as_dict(self):
        return {"resource_request": self.resource_request, "verb": self.verb,
                "api_group": self.api_group, "namespace": self.namespace,
                "resource": self.resource, "subresource": self.subresource,
                "name": self.name, "path": self.path}


def _field_selector_name(query):
    """The name a fieldSelector pins with ``metadata.name=X`` (RequiresExactMatch),
    if it is a valid path segment; else ""."""
    try:
        reqs = parse_field_selector((query.get("fieldSelector") or [""])[0])
    except ValueError:
        return ""
    for key, equal, value in reqs:
        if key == "metadata.name" and equal:
            if value in (".", "..") or "/" in value or "%" in value:
                return ""
            return value
    return ""


def request_attributes(method, path, query):
    """RequestInfoFactory.NewRequestInfo for ``path`` (no query string) and ``query``
    (dict of lists).  As on a real server, a list or watch whose fieldSelector pins
    ``metadata.name`` carries that name (so RBAC ``resourceNames`` match it), and a
    DELETE without a name is ``deletecollection``."""
    path = urllib.parse.unquote(path)  # Go splits the decoded URL.Path
    attrs = RequestAttributes(path, method.lower())
    parts = path.strip("/").split("/")
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return attrs
    prefix, parts = parts[0], parts[1:]
    if prefix == "apis":  # /apis/{group}/{version}/...; /api/{version}/... has no group
        if len(parts) < 3:
            return attrs
        attrs.api_group = parts[0]
        parts = parts[1:]
    attrs.resource_request = True
    parts = parts[1:]  # the version
    if parts[0] in ("watch", "proxy"):  # the deprecated /api/v1/watch/... forms
        if len(parts) < 2:
            attrs.resource_request = False
            return attrs
        attrs.verb = parts[0]
        parts = parts[1:]
        by_method = False
    else:
        attrs.verb = _VERB_OF_METHOD.get(method, "")
        by_method = True
    if parts[0] == "namespaces" and len(parts) > 1:
        attrs.namespace = parts[1]
        if len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
            parts = parts[2:]
    attrs.resource = parts[0]
    if len(parts) >= 2:
        attrs.name = parts[1]
    if len(parts) >= 3 and attrs.verb != "proxy":
        attrs.subresource = parts[2]
    if by_method and not attrs.name and attrs.verb == "get":
        attrs.verb = "watch" if is_watch(query) else "list"
        attrs.name = _field_selector_name(query)
    if by_method and not attrs.name and attrs.verb == "delete":
        attrs.verb = "deletecollection"
    return attrs


def forbidden_message(user, attrs):
    """The message of the API server's 403 (responsewriters.Forbidden wrapped by
    apierrors.NewForbidden), e.g. ``deployments.apps "a" is forbidden: User "u"
    cannot patch resource "deployments" in API group "apps" in the namespace "noetl"``."""
    if not attrs.resource_request:
        return 'forbidden: User "%s" cannot %s path "%s"' % (user, attrs.verb, attrs.path)
    resource = attrs.resource + ("/" + attrs.subresource if attrs.subresource else "")
    where = (' in the namespace "%s"' % attrs.namespace if attrs.namespace
             else " at the cluster scope")
    reason = 'User "%s" cannot %s resource "%s" in API group "%s"%s' % (
        user, attrs.verb, resource, attrs.api_group, where)
    if not attrs.qualified:
        return "forbidden: " + reason
    if attrs.name:
        return '%s "%s" is forbidden: %s' % (attrs.qualified, attrs.name, reason)
    return "%s is forbidden: %s" % (attrs.qualified, reason)


def resource_details(attrs):
    """``details`` of a Status about the request's object: group, kind (the
    resource, as the real errors put it) and the name when there is one."""
    if not attrs.resource_request:
        return None
    details = {"group": attrs.api_group, "kind": attrs.resource}
    if attrs.name:
        details["name"] = attrs.name
    return details


RULE_KEYS = frozenset(["namespace", "apiGroups", "resources", "verbs", "resourceNames"])


def normalize_rules(rules):
    """Validate a token's rules: each a PolicyRule (``apiGroups``, ``resources``,
    ``verbs``, optional ``resourceNames``; ``"*"`` wildcards as RBAC has them) plus
    ``namespace``: the namespace of the Role(Binding) it comes from, or None for a
    ClusterRole bound by a ClusterRoleBinding (every namespace and the cluster
    scope).  Returns new dicts; raises ValueError."""
    if not isinstance(rules, list):
        raise ValueError("rules must be a list, got %r" % (rules,))
    out = []
    for rule in rules:
        if not isinstance(rule, dict):
            raise ValueError("a rule must be an object, got %r" % (rule,))
        unknown = set(rule) - RULE_KEYS
        if unknown:
            raise ValueError("unknown rule keys: %s" % ", ".join(sorted(unknown)))
        clean = {"namespace": rule.get("namespace")}
        if clean["namespace"] is not None and not isinstance(clean["namespace"], str):
            raise ValueError("a rule's namespace is a string or null: %r" % (rule,))
        for key in ("apiGroups", "resources", "verbs", "resourceNames"):
            values = rule.get(key)
            if values is None and key == "resourceNames":
                values = []
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values) or \
                    (not values and key != "resourceNames"):
                raise ValueError("a rule's %s must be a %slist of strings: %r"
                                 % (key, "" if key == "resourceNames" else "non-empty ", rule))
            clean[key] = list(values)
        out.append(clean)
    return out


def rule_allows(rule, attrs):
    """rbac.RuleAllows for a resource request, plus where the rule applies: a
    namespaced rule only to requests in its namespace.  ``resources`` match
    ``<resource>`` or ``<resource>/<subresource>`` (or ``*``, or ``*/<subresource>``);
    ``resourceNames`` only requests that name an object."""
    if rule["namespace"] is not None and rule["namespace"] != attrs.namespace:
        return False
    if "*" not in rule["verbs"] and attrs.verb not in rule["verbs"]:
        return False
    if "*" not in rule["apiGroups"] and attrs.api_group not in rule["apiGroups"]:
        return False
    combined = attrs.resource + ("/" + attrs.subresource if attrs.subresource else "")
    if not any(r in ("*", combined) or
               (attrs.subresource and r == "*/" + attrs.subresource)
               for r in rule["resources"]):
        return False
    return not rule["resourceNames"] or attrs.name in rule["resourceNames"]


def authorized(rules, attrs):
    """Whether ``rules`` allow the request: non-resource URLs (discovery,
    ``/version``, ``/openapi``) are allowed to every authenticated user, as the
    ``system:discovery`` and ``system:public-info-viewer`` ClusterRoles do."""
    return not attrs.resource_request or any(rule_allows(rule, attrs) for rule in rules)


# --------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------

_RESOURCE_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/v1)"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$")
JSON_TYPES = ("application/json", "application/strategic-merge-patch+json",
              "application/merge-patch+json", "application/json-patch+json")
UNKNOWN_FORMAT = "the body of the request was in an unknown format"


class Route:
    def __init__(self, rtype, namespace, name, subresource):
        self.rtype = rtype
        self.namespace = namespace
        self.name = name
        self.subresource = subresource


def parse_route(path):
    """Map a resource URL to a Route, or None if it is not one."""
    if path.startswith("/api/v1/namespaces/") and path.count("/") == 4:
        return Route(NAMESPACES, None, path.rsplit("/", 1)[1], None)
    if path.startswith("/api/v1/namespaces/") and path.count("/") == 5 and \
            path.rsplit("/", 1)[1] in ("status", "finalize"):
        parts = path.split("/")
        return Route(NAMESPACES, None, parts[4], parts[5])
    m = _RESOURCE_PATH.match(path)
    if not m:
        return None
    rtype = BY_GROUP_PLURAL.get((m.group("group") or "", m.group("plural")))
    if rtype is None:
        return None
    if m.group("ns") and not rtype.namespaced:
        return None
    return Route(rtype, urllib.parse.unquote(m.group("ns")) if m.group("ns") else None,
                 urllib.parse.unquote(m.group("name")) if m.group("name") else None,
                 m.group("sub"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True     # headers and body go out at once: no 40 ms delayed-ACK stall
    server_version = "k8s-sim/1"
    sim = None  # set on the subclass made by make_server()

    # -- plumbing --------------------------------------------------------
    def setup(self):
        """On the HTTPS listener, the TLS handshake happens here, in this request's
        thread (a failed one ends the connection quietly: SimServer.handle_error)."""
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
            self.request.settimeout(None)
        BaseHTTPRequestHandler.setup(self)

    def log_message(self, fmt, *args):
        if self.sim.verbose:
            sys.stderr.write("k8s_sim: %s\n" % (fmt % args))

    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, code, body, content_type="application/json", headers=None):
        """Answer ``body`` (bytes, or JSON-encoded); ``headers`` are extra response
        headers (an injected fault's), overriding the usual ones of the same name."""
        data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        headers = dict(headers or {})
        overridden = {name.lower() for name in headers}
        if self._log_entry is not None:
            # before the answer leaves: a client that reads the log as soon as it has
            # its answer (kubectl has exited) must find the status there
            self._log_entry["status"] = code
            self._log_entry["bytes"] = 0 if self.command == "HEAD" else len(data)
        self.send_response(code)
        for name, value in (("Content-Type", content_type), ("Cache-Control", "no-cache, private")):
            if name.lower() not in overridden:
                self.send_header(name, value)
        for name, value in headers.items():
            if name.lower() != "content-length":
                self.send_header(name, str(value))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _dispatch(self):
        self._log_entry = None
        self._user = None
        url = urllib.parse.urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        raw = self._read_body()
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        body, body_error = self._decode_body(raw, content_type)
        try:
            scheme = self.server.scheme
            if scheme == "http" and (path == "/_sim" or path.startswith("/_sim/")):
                if body_error is not None:
                    raise body_error
                code, result = self._admin(path, query, body)
                self._send(code, result)
                return
            token = self._bearer_token()
            identity = self.sim.identity(token) if token is not None else None
            self._user = identity["user"] if identity is not None else None
            self._log_entry = {
                "method": self.command, "path": path, "query": query, "raw_query": url.query,
                "content_type": content_type or None, "accept": self.headers.get("Accept"),
                "body": body, "user_agent": self.headers.get("User-Agent"),
                "time": time.time(), "status": None, "bytes": 0, "user": self._user,
                "scheme": scheme}
            self.sim.log_request(self._log_entry)
            if identity is None and (token is not None or scheme == "https"):
                raise ApiError(401, "Unauthorized", "Unauthorized")
            if identity is not None:
                attrs = request_attributes(self.command, path, query)
                if not authorized(identity["rules"], attrs):
                    raise ApiError(403, "Forbidden", forbidden_message(self._user, attrs),
                                   resource_details(attrs))
            fault = self.sim.take_fault(self.command, path, url.query)
            if fault is not None and self._apply_fault(fault, path, query):
                return
            if body_error is not None:
                raise body_error
            self._api(path, query, body, content_type)
        except ApiError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True  # the client went away
        except Exception as exc:  # a simulator bug: answer 500 and say why
            import traceback
            traceback.print_exc()
            self._send_error(ApiError(500, "InternalError",
                                      "Internal error occurred: k8s_sim: %r" % (exc,)))

    def _bearer_token(self):
        """The token of ``Authorization: Bearer <token>``, or None (no header, another
        scheme, an empty token: the bearer authenticator has no opinion then)."""
        scheme, _, token = (self.headers.get("Authorization") or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        return token

    def _send_error(self, err):
        try:
            self._send(err.code, err.status())
        except OSError:
            self.close_connection = True  # the client went away

    @staticmethod
    def _decode_body(raw, content_type):
        """(parsed body, ApiError to answer if the body is unusable).  JSON bodies
        are parsed; anything else is kept as text (for the request log)."""
        if not raw:
            return None, None
        text = raw.decode("utf-8", "replace")
        if "protobuf" in content_type or "cbor" in content_type:
            return text, ApiError(415, "UnsupportedMediaType", "the body of the request was in "
                                  "an unknown format - k8s_sim only accepts JSON (got %s)"
                                  % content_type)
        if content_type in JSON_TYPES or content_type.endswith("+json") or not content_type:
            try:
                return json.loads(text), None
            except ValueError as exc:
                if content_type:
                    return text, ApiError(400, "BadRequest", "invalid JSON in request body: %s"
                                          % exc)
        return text, None

    def _apply_fault(self, fault, path, query):
        """Serve an injected fault; returns False when the request should proceed."""
        if fault.get("delay"):
            if self.sim.stopping.wait(float(fault["delay"])) or self._peer_closed():
                self.close_connection = True
                return True  # shutting down, or the client gave up waiting
        if fault.get("status") is None:
            return False
        code = int(fault["status"])
        headers = fault.get("headers") or {}
        if fault.get("raw_body") is not None:
            text = fault["raw_body"]
            ctype = "text/html" if text.lstrip().startswith("<") else "text/plain"
            self._send(code, text.encode(), ctype, headers)
            return True
        reason = fault.get("reason") or "Forbidden"
        attrs = request_attributes(self.command, path, query)
        message, details = self._fault_status(reason, code, attrs, headers)
        self._send(code, ApiError(code, reason, fault.get("message") or message,
                                  details).status(), headers=headers)
        return True

    def _fault_status(self, reason, code, attrs, headers):
        """(default message, details) of an injected fault's Status: what the real
        server says for that reason about this request."""
        details = resource_details(attrs)
        if reason == "Forbidden" and attrs.resource_request:
            return forbidden_message(self._user or "sim-user", attrs), details
        if reason == "Conflict" and attrs.resource_request:
            return ('Operation cannot be fulfilled on %s "%s": the object has been modified; '
                    "please apply your changes to the latest version and try again"
                    % (attrs.qualified, attrs.name)), details
        if reason == "TooManyRequests":
            retry = {k.lower(): v for k, v in headers.items()}.get("retry-after", "")
            details = {"retryAfterSeconds": int(retry)} if str(retry).isdigit() else None
            return "Too many requests, please try again later.", details
        if reason == "InternalError":
            return "Internal error occurred: injected fault", details
        return "injected fault (%s %d)" % (reason, code), details

    # -- admin API -------------------------------------------------------
    def _admin(self, path, query, body):
        sim, method = self.sim, self.command
        parts = path.split("/")[2:]
        body = body if isinstance(body, dict) else {}
        try:
            if parts == ["health"]:
                return 200, {"ok": True, "server_version": sim.server_version}
            if parts == ["reset"] and method == "POST":
                sim.reset()
                return 200, {"ok": True}
            adders = {"deployments": (DEPLOYMENTS, sim.add_deployment),
                      "statefulsets": (STATEFULSETS, sim.add_statefulset),
                      "daemonsets": (DAEMONSETS, sim.add_daemonset)}
            if len(parts) == 1 and parts[0] in adders and method == "POST":
                return 201, adders[parts[0]][1](body)
            if len(parts) == 3 and parts[0] in adders and method == "DELETE":
                sim.delete_workload(adders[parts[0]][0], parts[1], parts[2])
                return 200, {"ok": True}
            if parts == ["nodes"]:
                if method == "PUT":
                    nodes = body["nodes"] if "nodes" in body else body["count"]
                    return 200, {"ok": True, "nodes": sim.set_nodes(nodes)}
                return 200, {"nodes": sim.cluster.node_names()}
            if parts[:1] == ["behaviours"] and len(parts) == 3 and method == "PUT":
                behaviour = normalize_behaviour(body.get("behaviour"))
                rtype = resource_type_for(body.get("kind") or "Deployment")
                if rtype not in WORKLOADS:
                    raise ValueError("kind must be a Deployment, StatefulSet or DaemonSet")
                key = (rtype.kind, parts[1], parts[2])
                with sim.store.lock:
                    if behaviour is None:
                        sim.cluster.workload_behaviours.pop(key, None)
                    else:
                        sim.cluster.workload_behaviours[key] = behaviour
                return 200, {"ok": True}
            if parts == ["image-behaviours"] and method == "PUT":
                behaviour = normalize_behaviour(body.get("behaviour"))
                with sim.store.lock:
                    if behaviour is None:
                        sim.cluster.image_behaviours.pop(body["image"], None)
                    else:
                        sim.cluster.image_behaviours[body["image"]] = behaviour
                return 200, {"ok": True}
            if parts == ["digests"] and method == "PUT":
                with sim.store.lock:
                    sim.cluster.digests[body["image"]] = body["digest"]
                return 200, {"ok": True, "image_id": sim.cluster.image_id(body["image"])}
            if parts == ["server-version"] and method == "PUT":
                sim.set_server_version(body["version"])
                return 200, {"ok": True}
            if parts == ["max-page"] and method == "PUT":
                value = body.get("max_page")
                if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                          or value < 1):
                    raise ValueError("max_page is a positive integer or null, got %r"
                                     % (value,))
                sim.max_page = value
                return 200, {"ok": True}
            if parts == ["requests"]:
                if method == "DELETE":
                    with sim.log_lock:
                        sim.request_log[:] = []
                    return 200, {"ok": True}
                return 200, sim.requests()
            if parts == ["tokens"]:
                if method == "PUT":
                    sim.set_token(body["token"], body.get("user"), body["rules"])
                    return 200, {"ok": True}
                if method == "DELETE":
                    sim.revoke_token(body.get("token"))
                    return 200, {"ok": True}
                with sim.log_lock:
                    return 200, [dict(clone(v), token=k) for k, v in sorted(sim.tokens.items())]
            if parts == ["faults"]:
                if method == "DELETE":
                    with sim.log_lock:
                        sim.faults[:] = []
                    return 200, {"ok": True}
                if method == "POST":
                    return 201, {"id": sim.add_fault(body)}
                with sim.log_lock:
                    return 200, clone(sim.faults)
            if parts[:1] == ["objects"] and len(parts) in (2, 4):
                try:
                    rtype = resource_type_for(parts[1])
                except KeyError:
                    raise ApiError(400, "BadRequest", "unknown kind %r" % parts[1]) from None
                if len(parts) == 4:
                    namespace = "" if parts[2] == "-" or not rtype.namespaced else parts[2]
                    obj = sim.store.get(rtype, namespace, parts[3])
                    if obj is None:
                        raise not_found(rtype, parts[3])
                    return 200, obj
                namespace = (query.get("namespace") or [None])[0]
                labels = parse_label_selector((query.get("labelSelector") or [""])[0])
                return 200, sim.store.list(rtype, namespace, labels)
        except (KeyError, ValueError, TypeError) as exc:
            raise ApiError(400, "BadRequest", "bad admin request: %s" % (exc,)) from None
        raise ApiError(404, "NotFound", "no admin endpoint %s %s" % (method, path))

    # -- Kubernetes API --------------------------------------------------
    def _api(self, path, query, body, content_type):
        sim, method = self.sim, self.command
        if method == "GET":
            doc = self._discovery(path)
            if doc is not None:
                self._send(200, doc)
                return
        route = parse_route(path)
        if route is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {})
        dry_run = "All" in query.get("dryRun", [])
        rtype = route.rtype
        if route.subresource not in (None, "status", "scale") or \
                (route.subresource == "scale" and not rtype.has_scale) or \
                (route.subresource == "status" and not rtype.has_status):
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {})
        if route.namespace is None and rtype.namespaced and route.name is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace = route.namespace if rtype.namespaced else ""
        if route.subresource == "scale":
            self._send(200, self._scale(route, namespace, body, content_type, dry_run))
            return
        if method == "GET" and route.name is None:
            if is_watch(query):
                self._watch(rtype, route.namespace, query)
            else:
                self._send(200, self._list(rtype, route.namespace, query))
            return
        if method == "GET":
            obj = sim.store.get(rtype, namespace, route.name)
            if obj is None:
                raise not_found(rtype, route.name)
            self._send(200, obj)
            return
        if method == "POST" and route.name is None:
            self._send(201, self._create(rtype, namespace, body, dry_run))
            return
        if method == "DELETE" and route.name is not None:
            with sim.store.lock:
                obj = sim.store.delete(rtype, namespace, route.name, dry_run)
                if rtype in WORKLOADS and not dry_run:
                    sim.cluster.workload_behaviours.pop((rtype.kind, namespace, route.name), None)
            self._send(200, obj)
            return
        if method in ("PUT", "PATCH") and route.name is not None:
            self._send(200, self._update(route, namespace, body, content_type, dry_run))
            return
        raise ApiError(405, "MethodNotAllowed",
                       "the server does not allow this method on the requested resource")

    def _discovery(self, path):
        if path == "/version":
            return self.sim.version_info()
        if path == "/api":
            host = "127.0.0.1:%d" % self.server.server_address[1]
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                    "serverAddress": host}]}
        group = {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}
        if path == "/apis/apps":
            doc = dict(group)
            doc.update(kind="APIGroup", apiVersion="v1")
            return doc
        for group_version, prefix in (("v1", "/api/v1"), ("apps/v1", "/apis/apps/v1")):
            if path == prefix:
                resources = []
                for rtype in RESOURCE_TYPES:
                    if rtype.api_version == group_version:
                        resources.extend(rtype.discovery())
                return {"kind": "APIResourceList", "apiVersion": "v1",
                        "groupVersion": group_version, "resources": resources}
        return None

    @staticmethod
    def _selectors(query):
        try:
            labels = parse_label_selector((query.get("labelSelector") or [""])[0])
            fields = parse_field_selector((query.get("fieldSelector") or [""])[0])
        except ValueError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from None
        return labels, fields

    def _list(self, rtype, namespace, query):
        """A list in etcd's key order (``<namespace>/<name>``), paged by ``limit`` with
        a ``continue`` token shaped like the real one (base64 of ``{"v":
        "meta.k8s.io/v1", "rv": <the first page's resourceVersion>, "start": <next
        key>}``).  A continued page reports the first page's resourceVersion, starts
        after the last key sent and, as a read of that snapshot would, leaves out
        objects created since; objects changed or deleted since are read as they are
        now (there is no MVCC history)."""
        labels, fields = self._selectors(query)
        try:
            limit = int((query.get("limit") or ["0"])[0] or 0)
        except ValueError:
            raise ApiError(400, "BadRequest", "invalid limit %r" % query["limit"][0]) from None
        if self.sim.max_page:
            limit = min(limit, self.sim.max_page) if limit > 0 else self.sim.max_page
        token = (query.get("continue") or [""])[0]
        start, snapshot = "", None
        if token:
            try:
                state = json.loads(base64.b64decode(token.encode(), validate=True).decode())
                start, snapshot = state["start"], int(state["rv"])
                if state.get("v") != "meta.k8s.io/v1" or not isinstance(start, str):
                    raise ValueError(start)
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                raise ApiError(400, "BadRequest", "continue key is not valid: incorrect encoded "
                               "start resourceVersion (version meta.k8s.io/v1)") from None
        with self.sim.store.lock:
            items = self.sim.store.list(rtype, namespace, labels, fields, created_by=snapshot)
            rv = self.sim.store.rv if snapshot is None else snapshot

        def key(item):
            meta = item["metadata"]
            return "%s/%s" % (meta.get("namespace", ""), meta["name"]) if rtype.namespaced \
                else meta["name"]

        items = sorted((item for item in items if key(item) >= start), key=key)
        for item in items:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        meta = {"resourceVersion": str(rv)}
        if 0 < limit < len(items):
            following = key(items[limit - 1]) + "\x00"
            meta["continue"] = base64.b64encode(json.dumps(
                {"v": "meta.k8s.io/v1", "rv": rv, "start": following},
                separators=(",", ":")).encode()).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return {"kind": rtype.kind + "List", "apiVersion": rtype.api_version,
                "metadata": meta, "items": items}

    def _watch(self, rtype, namespace, query):
        labels, fields = self._selectors(query)
        store = self.sim.store
        send_initial = (query.get("sendInitialEvents") or [""])[0] == "true"
        rv_text = (query.get("resourceVersion") or [""])[0]
        since = None
        if not send_initial and rv_text not in ("", "0"):
            try:
                since = int(rv_text)
            except ValueError:
                raise ApiError(400, "BadRequest", "invalid resource version %r" % rv_text) from None
        timeout = (query.get("timeoutSeconds") or [""])[0]
        deadline = time.time() + (float(timeout) if timeout else 1800.0)
        watcher, initial, start_rv = store.watch(rtype, namespace, since)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-cache, private")
            self.end_headers()
            self._log_entry["status"] = 200

            def matches(obj):
                return obj is not None and labels_match(labels, obj["metadata"].get("labels")) \
                    and fields_match(fields, obj)

            def emit(etype, obj):
                obj = clone(obj)
                obj["kind"], obj["apiVersion"] = rtype.kind, rtype.api_version
                self._chunk(json.dumps({"type": etype, "object": obj},
                                       separators=(",", ":")).encode() + b"\n")

            def deliver(etype, obj, old):
                now_in, was_in = matches(obj), matches(old) if old is not None else None
                if etype == "MODIFIED" and was_in is not None:
                    if now_in and not was_in:
                        etype = "ADDED"
                    elif was_in and not now_in:
                        emit("DELETED", obj)
                        return
                if now_in:
                    emit(etype, obj)

            for _rv, etype, obj, old in initial:
                deliver(etype, obj, old)
            if send_initial:
                emit("BOOKMARK", {"metadata": {"resourceVersion": str(start_rv),
                                               "annotations": {INITIAL_EVENTS_END: "true"}}})
            while True:
                remaining = deadline - time.time()
                if remaining <= 0:
                    break
                try:
                    item = watcher.events.get(timeout=min(remaining, 1.0))
                except queue.Empty:
                    if self._peer_closed():
                        return
                    continue
                if item is None:  # server shutting down
                    break
                _rv, etype, obj, old = item
                deliver(etype, obj, old)
            self._chunk(b"")
        finally:
            store.unwatch(watcher)

    def _chunk(self, data):
        """Send one chunk of a watch; the log counts its data (not the framing)."""
        self._log_entry["bytes"] += len(data)
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _peer_closed(self):
        """Whether the client went away (used while a watch or a delay waits).  On
        TLS there is no MSG_PEEK: a non-blocking read sees the close_notify or EOF
        (a stray byte the client sent meanwhile would be lost; none does)."""
        conn = self.connection
        try:
            if isinstance(conn, ssl.SSLSocket):
                if conn.pending() or not select.select([conn], [], [], 0)[0]:
                    return False
                conn.settimeout(0.0)
                try:
                    return conn.recv(1) == b""
                except ssl.SSLWantReadError:
                    return False
                finally:
                    conn.settimeout(None)
            readable, _, _ = select.select([conn], [], [], 0)
            if readable:
                return conn.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True
        return False

    def _create(self, rtype, namespace, body, dry_run):
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", UNKNOWN_FORMAT)
        obj = clone(body)
        meta = obj.setdefault("metadata", {})
        if rtype.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise ApiError(400, "BadRequest", "the namespace of the provided object does "
                               "not match the namespace sent on the request")
            meta["namespace"] = namespace
            if self.sim.store.get(NAMESPACES, "", namespace) is None:
                raise ApiError(404, "NotFound", 'namespaces "%s" not found' % namespace,
                               {"name": namespace, "kind": "namespaces"})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + random_suffix()
        if not meta.get("name"):
            raise ApiError(422, "Invalid", "%s is invalid: metadata.name: Required value: name "
                           "or generateName is required" % rtype.kind)
        obj.pop("status", None)  # status is the controllers' business
        apply_defaults(rtype, obj)
        validate(rtype, obj)
        return self.sim.store.create(rtype, obj, dry_run)

    @staticmethod
    def _scale_of(obj):
        meta = obj["metadata"]
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid",
                                                        "resourceVersion", "creationTimestamp")
                                 if k in meta},
                "spec": {"replicas": obj["spec"].get("replicas", 1)},
                "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                           "selector": selector_to_string(obj["spec"].get("selector"))}}

    def _scale(self, route, namespace, body, content_type, dry_run):
        """The autoscaling/v1 Scale subresource (``kubectl scale``)."""
        rtype, store = route.rtype, self.sim.store
        with store.lock:
            obj = store.get(rtype, namespace, route.name)
            if obj is None:
                raise not_found(rtype, route.name)
            scale = self._scale_of(obj)
            if self.command == "GET":
                return scale
            if self.command not in ("PUT", "PATCH"):
                raise ApiError(405, "MethodNotAllowed",
                               "the server does not allow this method on the requested resource")
            new = body if self.command == "PUT" else self._patch(rtype, scale, body, content_type)
            if not isinstance(new, dict):
                raise ApiError(400, "BadRequest", UNKNOWN_FORMAT)
            wanted_rv = (new.get("metadata") or {}).get("resourceVersion")
            if wanted_rv and wanted_rv != obj["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", 'Operation cannot be fulfilled on %s "%s": the '
                               "object has been modified; please apply your changes to the "
                               "latest version and try again" % (rtype.qualified, route.name))
            replicas = (new.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                raise invalid(rtype, route.name, [("spec.replicas", "Invalid value: %r: must be "
                                                   "greater than or equal to 0" % (replicas,))])
            obj["spec"]["replicas"] = replicas
            return self._scale_of(store.update(rtype, obj, dry_run))

    def _update(self, route, namespace, body, content_type, dry_run):
        rtype, store = route.rtype, self.sim.store
        with store.lock:
            old = store.get(rtype, namespace, route.name)
            if old is None:
                raise not_found(rtype, route.name)
            if self.command == "PUT":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", UNKNOWN_FORMAT)
                new = clone(body)
            else:
                new = self._patch(rtype, old, body, content_type)
            meta = new.setdefault("metadata", {})
            if meta.get("name") != route.name:
                raise ApiError(400, "BadRequest", "the name of the object (%s) does not match "
                               "the name on the URL (%s)" % (meta.get("name"), route.name))
            if rtype.namespaced and meta.get("namespace") not in (None, "", namespace):
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not "
                               "match the namespace sent on the request")
            meta["namespace"] = namespace
            wanted_rv = meta.get("resourceVersion")
            if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", 'Operation cannot be fulfilled on %s "%s": the '
                               "object has been modified; please apply your changes to the "
                               "latest version and try again" % (rtype.qualified, route.name),
                               {"name": route.name, "group": rtype.group, "kind": rtype.plural})
            if route.subresource == "status":
                status = new.get("status")
                new = clone(old)
                new["status"] = status
            elif "status" in old:
                new["status"] = old["status"]  # the main resource ignores status changes
            apply_defaults(rtype, new)
            validate(rtype, new, old)
            return store.update(rtype, new, dry_run)

    @staticmethod
    def _patch(rtype, old, body, content_type):
        try:
            if content_type == "application/strategic-merge-patch+json":
                if not isinstance(body, dict):
                    raise PatchError("strategic merge patch must be a JSON object")
                result = strategic_merge_patch(old, body)
            elif content_type == "application/merge-patch+json":
                result = json_merge_patch(old, body)
            elif content_type == "application/json-patch+json":
                result = json_patch(old, body)
            else:
                raise ApiError(415, "UnsupportedMediaType",
                               '415: Unsupported Media Type: the body of the request was in an '
                               'unknown format - accepted media types include: '
                               'application/json-patch+json, application/merge-patch+json, '
                               'application/strategic-merge-patch+json')
        except PatchError as exc:
            raise ApiError(422, "Invalid", str(exc)) from None
        if not isinstance(result, dict):
            raise ApiError(422, "Invalid", "patch did not produce an object")
        return result


class SimServer(ThreadingHTTPServer):
    """The plain HTTP listener (``scheme`` tells the handlers which one they serve)."""

    daemon_threads = True
    scheme = "http"

    def handle_error(self, request, client_address):
        """A client that hangs up (or fails the TLS handshake) is no server error:
        only print the tracebacks of anything else."""
        if isinstance(sys.exc_info()[1], OSError):  # ssl.SSLError, resets, time-outs
            return
        ThreadingHTTPServer.handle_error(self, request, client_address)


class TLSSimServer(SimServer):
    """The HTTPS listener: it accepts in the serving thread and leaves the TLS
    handshake to the request's own thread (Handler.setup), so a slow or failing
    handshake blocks no one else."""

    scheme = "https"

    def __init__(self, address, handler, context):
        self.context = context
        SimServer.__init__(self, address, handler)

    def get_request(self):
        sock, address = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False), address


def make_server(sim, port=0, tls=None):
    """An HTTP server for ``sim`` on 127.0.0.1:``port``; with ``tls`` (the dict of
    ensure_tls_files) an HTTPS one with that server certificate."""
    handler = type("SimHandler", (Handler,), {"sim": sim})
    if tls is None:
        return SimServer(("127.0.0.1", port), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls["cert"], tls["key"])
    context.set_alpn_protocols(["http/1.1"])  # Go would speak HTTP/2 if offered
    return TLSSimServer(("127.0.0.1", port), handler, context)


# --------------------------------------------------------------------------
# TLS: a test CA and a server certificate (openssl CLI)
# --------------------------------------------------------------------------

# Our own config, so nothing in the machine's openssl.cnf (or $OPENSSL_CONF) matters.
_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = k8s-sim
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""
_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(directory, *args):
    config = os.path.join(directory, "openssl.cnf")
    if not os.path.exists(config):
        with open(config, "w") as handle:
            handle.write(_OPENSSL_CONFIG)
    env = dict(os.environ, OPENSSL_CONF=config)
    result = subprocess.run(["openssl"] + [a.replace("@CONFIG@", config) for a in args],
                            cwd=directory, env=env, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise RuntimeError("openssl %s failed: %s" % (args[0], result.stderr.strip()))


def _serial():
    return "0x%x" % random.getrandbits(63)


def make_ca(directory, name="k8s-sim test CA", basename="ca"):
    """Make a self-signed CA (EC P-256, ten years) in ``directory``: files
    ``<basename>.pem`` and ``<basename>-key.pem``.  Returns (cert path, key path)."""
    directory = os.path.abspath(str(directory))
    os.makedirs(directory, exist_ok=True)
    cert, key = basename + ".pem", basename + "-key.pem"
    _openssl(directory, "req", "-x509", "-config", "@CONFIG@", "-extensions", "ca_ext",
             *_EC_KEY, "-keyout", key, "-out", cert, "-days", "3650",
             "-set_serial", _serial(), "-subj", "/CN=" + name)
    return os.path.join(directory, cert), os.path.join(directory, key)


def make_server_cert(directory, ca_cert, ca_key, basename="server"):
    """Make a server certificate for ``127.0.0.1`` and ``localhost`` (subjectAltName
    IP and DNS: Go ignores the CN) signed by the CA.  Returns (cert path, key path)."""
    directory = os.path.abspath(str(directory))
    cert, key, csr = basename + ".pem", basename + "-key.pem", basename + ".csr"
    _openssl(directory, "req", "-new", "-config", "@CONFIG@", *_EC_KEY, "-keyout", key,
             "-out", csr, "-subj", "/CN=k8s-sim")
    _openssl(directory, "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
             "-set_serial", _serial(), "-days", "3650", "-extfile", "@CONFIG@",
             "-extensions", "server_ext", "-out", cert)
    os.remove(os.path.join(directory, csr))
    return os.path.join(directory, cert), os.path.join(directory, key)


def ensure_tls_files(directory):
    """The test CA and the server certificate in ``directory`` (``ca.pem``,
    ``server.pem``, ``server-key.pem``), made there first if one is missing (not
    safe for two processes making them in one directory at once).  Returns
    ``{"ca": ..., "cert": ..., "key": ...}``."""
    directory = os.path.abspath(str(directory))
    paths = {"ca": os.path.join(directory, "ca.pem"),
             "cert": os.path.join(directory, "server.pem"),
             "key": os.path.join(directory, "server-key.pem")}
    if not all(os.path.exists(p) for p in paths.values()):
        ca_cert, ca_key = make_ca(directory)
        make_server_cert(directory, ca_cert, ca_key)
    return paths


def make_unrelated_ca(directory, basename="other-ca"):
    """A second CA certificate that signed nothing the simulator serves: a
    kubeconfig trusting it must fail to verify the server ("a wrong CA").
    Returns the path of its certificate (``<basename>.pem`` in ``directory``)."""
    return make_ca(directory, name="k8s-sim unrelated CA", basename=basename)[0]


_shared_tls = {"lock": threading.Lock(), "dir": None}


def shared_tls_dir():
    """A directory with the test CA and server certificate, made once per process
    (openssl costs ~100 ms) and removed at exit: start_sim hands it to every
    simulator it starts, so they all trust the same ``ca.pem``."""
    with _shared_tls["lock"]:
        if _shared_tls["dir"] is None:
            directory = tempfile.mkdtemp(prefix="k8s-sim-tls-")
            try:
                ensure_tls_files(directory)
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise
            atexit.register(shutil.rmtree, directory, True)
            _shared_tls["dir"] = directory
        return _shared_tls["dir"]


# --------------------------------------------------------------------------
# Test-side helpers: client, process control, kubeconfig
# --------------------------------------------------------------------------

class SimError(Exception):
    def __init__(self, code, body):
        Exception.__init__(self, "k8s_sim admin call failed (%s): %s" % (code, body))
        self.code = code
        self.body = body


class SimClient:
    """Python client for the admin API (``/_sim/...``) of a running simulator.

    ``base_url`` is the plain HTTP endpoint (admin API and Kubernetes API);
    ``https_url`` the HTTPS one (Kubernetes API only, bearer tokens required) and
    ``ca_path`` the test CA's certificate that signed its server certificate (both
    None when the simulator serves no HTTPS)."""

    def __init__(self, base_url, timeout=10.0, https_url=None, ca_path=None):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.https_url = https_url.rstrip("/") if https_url else None
        self.ca_path = ca_path

    def _call(self, method, path, body=None, query=None):
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read().decode() or "null")
        except urllib.error.HTTPError as err:
            try:
                text = err.read().decode("utf-8", "replace")
            finally:
                err.close()
            try:
                payload = json.loads(text)
            except ValueError:
                payload = text
            raise SimError(err.code, payload) from None

    def health(self):
        return self._call("GET", "/_sim/health")

    def reset(self):
        self._call("POST", "/_sim/reset")

    def add_deployment(self, name, namespace="noetl", containers=None, init_containers=None,
                       replicas=1, behaviour=None, paused=False, progress_deadline_seconds=600,
                       labels=None, annotations=None, ready=True, strategy=None,
                       min_ready_seconds=0, revision_history_limit=10,
                       template_annotations=None, selector=None, node_selector=None,
                       tolerations=None, affinity=None):
        """Create a Deployment with selector and pod labels ``app=<name>``.

        ``containers``/``init_containers`` are lists of container specs
        (default: one container ``<name>`` running ``<name>:1``); ``labels``
        are the Deployment's own labels (default: the selector); ``selector``
        replaces ``{"app": name}`` as the selector's matchLabels and the pod
        labels; ``annotations`` go on the Deployment, ``template_annotations``
        on its pod template (e.g. ``kubectl.kubernetes.io/default-container``);
        ``strategy`` is a ``spec.strategy`` such as ``{"type": "Recreate"}``;
        ``node_selector``, ``tolerations`` and ``affinity`` go into the pod spec
        (only the DaemonSet controller places pods by them);
        ``behaviour`` is the default behaviour of its pods.  With ``ready=True``
        revision 1 is rolled out and available on return, whatever the
        behaviour; with ``ready=False`` that first rollout runs in the
        background per behaviour.  ``paused=True`` pauses it after revision 1.
        Returns the Deployment."""
        return self._call("POST", "/_sim/deployments", {
            "name": name, "namespace": namespace, "containers": containers,
            "init_containers": init_containers, "replicas": replicas, "behaviour": behaviour,
            "paused": paused, "progress_deadline_seconds": progress_deadline_seconds,
            "labels": labels, "annotations": annotations, "ready": ready, "strategy": strategy,
            "min_ready_seconds": min_ready_seconds,
            "revision_history_limit": revision_history_limit,
            "template_annotations": template_annotations, "selector": selector,
            "node_selector": node_selector, "tolerations": tolerations, "affinity": affinity})

    def add_statefulset(self, name, namespace="noetl", containers=None, init_containers=None,
                        replicas=1, update_strategy=None, partition=None,
                        pod_management_policy=None, behaviour=None, annotations=None,
                        template_annotations=None, labels=None, selector=None, ready=True,
                        min_ready_seconds=0, revision_history_limit=10, service_name=None,
                        node_selector=None, tolerations=None, affinity=None):
        """Create a StatefulSet (pods ``<name>-0`` ...); the common keywords are
        those of ``add_deployment``.

        ``update_strategy`` is ``"RollingUpdate"``/``"OnDelete"`` or a whole
        ``spec.updateStrategy``; left out, the API default applies
        (``{"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}``),
        while ``"RollingUpdate"`` alone leaves ``rollingUpdate`` unset, as a
        manifest saying just that would.  ``partition`` sets
        ``rollingUpdate.partition``; ``pod_management_policy`` is
        ``"OrderedReady"`` (default) or ``"Parallel"``; ``service_name``
        defaults to the name.  Returns the StatefulSet."""
        return self._call("POST", "/_sim/statefulsets", {
            "name": name, "namespace": namespace, "containers": containers,
            "init_containers": init_containers, "replicas": replicas,
            "update_strategy": update_strategy, "partition": partition,
            "pod_management_policy": pod_management_policy, "behaviour": behaviour,
            "annotations": annotations, "template_annotations": template_annotations,
            "labels": labels, "selector": selector, "ready": ready,
            "min_ready_seconds": min_ready_seconds,
            "revision_history_limit": revision_history_limit, "service_name": service_name,
            "node_selector": node_selector, "tolerations": tolerations, "affinity": affinity})

    def add_daemonset(self, name, namespace="noetl", containers=None, init_containers=None,
                      update_strategy=None, max_unavailable=None, max_surge=None,
                      behaviour=None, annotations=None, template_annotations=None, labels=None,
                      selector=None, ready=True, min_ready_seconds=0,
                      revision_history_limit=10, node_selector=None, tolerations=None,
                      affinity=None):
        """Create a DaemonSet: one pod per Node its pod template fits (``set_nodes``;
        ``node_selector``, required node ``affinity``, the nodes' taints against
        ``tolerations``); the common keywords are those of ``add_deployment``.

        ``update_strategy`` is ``"RollingUpdate"`` (default) / ``"OnDelete"`` or
        a whole ``spec.updateStrategy``; ``max_unavailable`` (default 1) and
        ``max_surge`` (default 0) are ints or percentages such as ``"50%"``.
        Returns the DaemonSet."""
        return self._call("POST", "/_sim/daemonsets", {
            "name": name, "namespace": namespace, "containers": containers,
            "init_containers": init_containers, "update_strategy": update_strategy,
            "max_unavailable": max_unavailable, "max_surge": max_surge, "behaviour": behaviour,
            "annotations": annotations, "template_annotations": template_annotations,
            "labels": labels, "selector": selector, "ready": ready,
            "min_ready_seconds": min_ready_seconds,
            "revision_history_limit": revision_history_limit,
            "node_selector": node_selector, "tolerations": tolerations, "affinity": affinity})

    def delete_deployment(self, name, namespace="noetl"):
        self._call("DELETE", "/_sim/deployments/%s/%s" % (namespace, name))

    def delete_statefulset(self, name, namespace="noetl"):
        self._call("DELETE", "/_sim/statefulsets/%s/%s" % (namespace, name))

    def delete_daemonset(self, name, namespace="noetl"):
        self._call("DELETE", "/_sim/daemonsets/%s/%s" % (namespace, name))

    def set_nodes(self, count):
        """Replace the Nodes (default: 3); returns their names.  ``count`` is a number n
        (nodes ``sim-node-1`` ... ``sim-node-n``) or a list of node specs ``{"name":
        ..., "labels": {...}, "taints": [{"key", "value", "effect"}]}`` (or plain
        names); every node also gets the kubelet's labels (``kubernetes.io/os``,
        ``arch``, ``hostname``, ...) unless its spec sets them."""
        if isinstance(count, int) and not isinstance(count, bool):
            return self._call("PUT", "/_sim/nodes", {"count": count})["nodes"]
        return self._call("PUT", "/_sim/nodes", {"nodes": count})["nodes"]

    def nodes(self):
        return self._call("GET", "/_sim/nodes")["nodes"]

    def set_behaviour(self, name, namespace, behaviour, kind="Deployment"):
        """Default behaviour of new pods of the Deployment (or ``kind``
        StatefulSet/DaemonSet) ``namespace/name`` (None clears)."""
        self._call("PUT", "/_sim/behaviours/%s/%s" % (namespace, name),
                   {"behaviour": behaviour, "kind": kind})

    def set_image_behaviour(self, image, behaviour):
        """Behaviour of every new container running ``image`` (None clears)."""
        self._call("PUT", "/_sim/image-behaviours", {"image": image, "behaviour": behaviour})

    def set_digest(self, image, digest):
        """Digest reported in ``imageID`` for ``image``; returns that imageID."""
        return self._call("PUT", "/_sim/digests", {"image": image, "digest": digest})["image_id"]

    def set_server_version(self, version):
        self._call("PUT", "/_sim/server-version", {"version": version})

    def set_max_page(self, max_page):
        """Answer every list with at most ``max_page`` items and a ``continue`` token
        (a server may send fewer than ``limit``); None: as many as ``limit`` asks."""
        self._call("PUT", "/_sim/max-page", {"max_page": max_page})

    def requests(self):
        return self._call("GET", "/_sim/requests")

    def clear_requests(self):
        self._call("DELETE", "/_sim/requests")

    def get(self, kind, name, namespace="noetl"):
        """The raw stored object, or None if it does not exist."""
        try:
            return self._call("GET", "/_sim/objects/%s/%s/%s" % (kind, namespace or "-", name))
        except SimError as err:
            if err.code == 404:
                return None
            raise

    def list(self, kind, namespace=None, label_selector=None):
        return self._call("GET", "/_sim/objects/%s" % kind,
                          query={"namespace": namespace, "labelSelector": label_selector})

    def inject_fault(self, method=None, path_regex=None, status=403, reason="Forbidden",
                     message=None, count=None, delay=None, raw_body=None, headers=None):
        """Make matching API requests fail (see the module docstring); returns its id.
        ``headers``: extra response headers, e.g. ``{"Retry-After": "1"}`` with
        ``status=429, reason="TooManyRequests"``."""
        return self._call("POST", "/_sim/faults", {
            "method": method, "path_regex": path_regex, "status": status, "reason": reason,
            "message": message, "count": count, "delay": delay, "raw_body": raw_body,
            "headers": headers})["id"]

    def clear_faults(self):
        self._call("DELETE", "/_sim/faults")

    def set_token(self, token, user, rules):
        """Accept ``Authorization: Bearer <token>`` as ``user`` (e.g.
        ``system:serviceaccount:noetl:bump-image``), allowed what ``rules`` allow:
        a list of ``{"namespace": "noetl" | None, "apiGroups": [...], "resources":
        [...], "verbs": [...], "resourceNames": [...]}`` (namespace None: cluster-wide,
        as a ClusterRoleBinding grants; ``"*"`` wildcards).  ``rules`` None revokes."""
        self._call("PUT", "/_sim/tokens", {"token": token, "user": user, "rules": rules})

    def revoke_token(self, token):
        self._call("DELETE", "/_sim/tokens", {"token": token})

    def tokens(self):
        return self._call("GET", "/_sim/tokens")

    def ssl_context(self, ca_path=None):
        """An SSLContext that trusts the simulator's test CA (or the CA ``ca_path``)."""
        return ssl.create_default_context(cafile=ca_path or self.ca_path)

    def api(self, method, path, token=None, body=None, content_type="application/json",
            https=None):
        """One Kubernetes API request (``path`` with its query string), over HTTPS
        when the simulator serves it (``https=False``: the plain port), with
        ``Authorization: Bearer <token>`` when ``token`` is given.  Returns (HTTP
        status, body parsed as JSON - or text when it is not JSON -, headers);
        error statuses are returned, not raised."""
        https = bool(self.https_url) if https is None else https
        url = (self.https_url if https else self.base_url) + path
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = "Bearer " + token
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        context = self.ssl_context() if https else None
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=context) as resp:
                status, raw, resp_headers = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as err:
            try:
                status, raw, resp_headers = err.code, err.read(), err.headers
            finally:
                err.close()
        text = raw.decode("utf-8", "replace")
        try:
            return status, json.loads(text), resp_headers
        except ValueError:
            return status, text, resp_headers

    def wait_for(self, predicate, timeout=10.0, interval=0.05, what="condition"):
        """Poll ``predicate(self)`` until it returns a truthy value; return it."""
        deadline = time.time() + timeout
        while True:
            value = predicate(self)
            if value:
                return value
            if time.time() > deadline:
                raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
            time.sleep(interval)


SCRIPT = os.path.abspath(__file__)


def parse_listening_line(text):
    """``listening http://H:P [https://H:Q ca=PATH]`` (the simulator's first stdout
    line; the short form when it serves no HTTPS) -> (base_url, https_url, ca_path)."""
    if not text.startswith("listening "):
        raise ValueError("unexpected first line from k8s_sim: %r" % text)
    rest, _, ca_path = text[len("listening "):].partition(" ca=")
    urls = rest.split()
    https_url = next((u for u in urls[1:] if u.startswith("https://")), None)
    return urls[0], https_url, (ca_path or None)


def start_sim(server_version=None, timeout=15.0, python=None, extra_args=(), https=True,
              tls_dir=None):
    """Spawn the simulator script; returns (Popen, SimClient) once it listens.

    With ``https`` (the default) it also serves HTTPS, with the certificates of
    ``tls_dir`` (made there if missing) or else of shared_tls_dir(), made once per
    test process; the client's ``https_url`` and ``ca_path`` say where.  Should
    openssl fail, the simulator serves plain HTTP only (``https_url`` None) and a
    warning goes to stderr."""
    cmd = [python or sys.executable, SCRIPT, "--port", "0"]
    if server_version:
        cmd += ["--server-version", server_version]
    if not https:
        cmd.append("--no-https")
    else:
        try:
            cmd += ["--tls-dir", str(tls_dir) if tls_dir else shared_tls_dir()]
        except (OSError, RuntimeError) as exc:
            sys.stderr.write("k8s_sim: no HTTPS (%s)\n" % (exc,))
            cmd.append("--no-https")
    cmd += list(extra_args)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    deadline = time.time() + timeout
    line = b""
    try:
        while not line.endswith(b"\n"):
            remaining = deadline - time.time()
            if remaining <= 0:
                raise RuntimeError("k8s_sim did not start within %.0fs" % timeout)
            readable, _, _ = select.select([proc.stdout], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(proc.stdout.fileno(), 1)
            if not chunk:
                raise RuntimeError("k8s_sim exited early with code %s" % proc.wait(5))
            line += chunk
        try:
            base_url, https_url, ca_path = parse_listening_line(line.decode().strip())
        except ValueError as exc:
            raise RuntimeError(str(exc)) from None
        return proc, SimClient(base_url, https_url=https_url, ca_path=ca_path)
    except BaseException:
        stop_sim(proc)
        raise


def stop_sim(proc, timeout=5.0):
    """Terminate the simulator process by pid; kill it if it does not exit in time."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
        except ProcessLookupError:
            pass
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


def write_kubeconfig(path, base_url, contexts=("sim",), current="sim", namespace=None,
                     ca_path=None, token=None):
    """Write a kubeconfig with one cluster and user and the given context names.

    ``base_url`` is the server (``sim.https_url`` for HTTPS); ``ca_path`` the CA
    certificate kubectl verifies it with (``certificate-authority``; e.g.
    ``sim.ca_path``); ``token`` the user's bearer token (else the user is empty)."""
    q = json.dumps
    lines = ["apiVersion: v1", "kind: Config", "preferences: {}", "clusters:",
             "- name: sim-cluster", "  cluster:", "    server: %s" % q(base_url)]
    if ca_path:
        lines.append("    certificate-authority: %s" % q(os.path.abspath(str(ca_path))))
    lines += ["users:", "- name: sim-user"]
    lines += ["  user:", "    token: %s" % q(token)] if token is not None else ["  user: {}"]
    lines.append("contexts:")
    for name in contexts:
        lines += ["- name: %s" % q(name), "  context:", "    cluster: sim-cluster",
                  "    user: sim-user"]
        if namespace:
            lines.append("    namespace: %s" % q(namespace))
    lines.append("current-context: %s" % q(current))
    with open(str(path), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return str(path)


# --------------------------------------------------------------------------
# Script entry point
# --------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description="Kubernetes API server simulator for tests")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0 = ephemeral)")
    parser.add_argument("--server-version", default=DEFAULT_SERVER_VERSION,
                        help="version reported by /version (selects the dispatcher's kubectl)")
    parser.add_argument("--port-file", help="also write the (HTTP) port number to this file")
    parser.add_argument("--https-port", type=int, default=0,
                        help="TCP port of the HTTPS listener (0 = ephemeral)")
    parser.add_argument("--tls-dir", help="directory with ca.pem, server.pem and "
                        "server-key.pem (made there if missing; default: a temporary "
                        "directory removed at exit)")
    parser.add_argument("--no-https", action="store_true", help="serve plain HTTP only")
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args(argv)
    try:
        parse_version(args.server_version)
    except ValueError as exc:
        parser.error(str(exc))

    sim = Simulator(args.server_version, verbose=args.verbose)
    server = make_server(sim, args.port)
    port = server.server_address[1]
    servers, listening = [server], "listening http://127.0.0.1:%d" % port
    cleanup = None
    if not args.no_https:
        directory = args.tls_dir
        try:
            if directory is None:
                directory = cleanup = tempfile.mkdtemp(prefix="k8s-sim-tls-")
            tls = ensure_tls_files(directory)
            https = make_server(sim, args.https_port, tls)
        except (OSError, RuntimeError, ssl.SSLError) as exc:
            sys.stderr.write("k8s_sim: serving plain HTTP only, no HTTPS: %s\n" % (exc,))
        else:
            servers.append(https)
            listening += " https://127.0.0.1:%d ca=%s" % (https.server_address[1], tls["ca"])
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sim.cluster.start()
    for each in servers:
        serving = threading.Thread(target=each.serve_forever, kwargs={"poll_interval": 0.2},
                                   name="k8s-sim-" + each.scheme)
        serving.daemon = True
        serving.start()
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as handle:
            handle.write("%d\n" % port)
        os.replace(tmp, args.port_file)
    sys.stdout.write(listening + "\n")
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    sim.stopping.set()
    sim.store.close_watchers()
    for each in servers:
        each.shutdown()
        each.server_close()
    sim.cluster.stop()
    if cleanup:
        shutil.rmtree(cleanup, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
