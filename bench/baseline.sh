#!/usr/bin/env bash
# The naive way, as the original playbook did it: the baseline for bench/run.py.
#
#   bench/baseline.sh IMAGE NAMESPACE TIMEOUT_SECONDS [DEPLOYMENT...]
#
# Environment:
#   KUBECTL          kubectl binary (default: kubectl); KUBECONFIG as usual
#   PROBE_BASE       registry base URL to probe (e.g. http://127.0.0.1:5000);
#                    empty = no probe (the baseline then skips it)
#   PROBE_ATTEMPTS   probe attempts (default 12); PROBE_SLEEP seconds between (default 10)
#
# 1. probe: every attempt is stateless, as a shell loop is: HEAD the manifest with curl;
#    on 401 parse the Bearer challenge, fetch a token from its realm, HEAD again with it
#    (3 requests per attempt); 200 ends the loop; attempts used up -> exit 3.
# 2. for each Deployment, one after the other:
#      kubectl get deployment X -o jsonpath=...   (first container's name and image)
#      kubectl set image deployment/X NAME=IMAGE  (only when the image differs)
#      kubectl rollout status deployment/X --timeout=TIMEOUTs
#    Only the first regular container is updated (init containers are not).
# Exit 0 when every rollout completed, 1 otherwise.
set -u

image=${1:?image}
namespace=${2:?namespace}
timeout=${3:?timeout seconds}
shift 3
kubectl=${KUBECTL:-kubectl}
accept="application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"
accept="$accept, application/vnd.docker.distribution.manifest.list.v2+json"
accept="$accept, application/vnd.docker.distribution.manifest.v2+json"

probe() {
    local rest=${image#*/}              # drop the registry host
    local repo=${rest%:*} tag=${rest##*:}
    local url="$PROBE_BASE/v2/$repo/manifests/$tag"
    local attempts=${PROBE_ATTEMPTS:-12} sleep=${PROBE_SLEEP:-10} i headers code
    local challenge realm service scope token
    for ((i = 1; i <= attempts; i++)); do
        headers=$(curl -s -I -m 15 -H "Accept: $accept" "$url")
        code=$(printf '%s\n' "$headers" | head -n 1 | awk '{print $2}')
        if [ "$code" = "401" ]; then
            challenge=$(printf '%s\n' "$headers" | tr -d '\r' | grep -i '^www-authenticate:')
            realm=$(printf '%s' "$challenge" | sed -n 's/.*realm="\([^"]*\)".*/\1/p')
            service=$(printf '%s' "$challenge" | sed -n 's/.*service="\([^"]*\)".*/\1/p')
            scope=$(printf '%s' "$challenge" | sed -n 's/.*scope="\([^"]*\)".*/\1/p')
            token=$(curl -s -m 15 -G "$realm" --data-urlencode "service=$service" \
                    --data-urlencode "scope=$scope" | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
            code=$(curl -s -I -m 15 -o /dev/null -w '%{http_code}' -H "Accept: $accept" \
                   -H "Authorization: Bearer $token" "$url")
        fi
        echo "baseline: probe attempt $i/$attempts: HTTP $code" >&2
        if [ "$code" = "200" ]; then
            return 0
        fi
        if [ "$i" -lt "$attempts" ]; then
            sleep "$sleep"
        fi
    done
    echo "baseline: $image is not available" >&2
    return 1
}

if [ -n "${PROBE_BASE:-}" ]; then
    probe || exit 3
fi

rc=0
for deployment in "$@"; do
    current=$("$kubectl" get deployment "$deployment" --namespace="$namespace" \
              -o jsonpath='{.spec.template.spec.containers[0].name} {.spec.template.spec.containers[0].image}') || { rc=1; continue; }
    container=${current%% *}
    previous=${current#* }
    if [ "$previous" != "$image" ]; then
        "$kubectl" set image "deployment/$deployment" --namespace="$namespace" \
            "$container=$image" >&2 || { rc=1; continue; }
    fi
    if "$kubectl" rollout status "deployment/$deployment" --namespace="$namespace" \
            --timeout="${timeout}s" >&2; then
        echo "$deployment changed-or-unchanged $previous -> $image"
    else
        echo "$deployment error $previous -> $image"
        rc=1
    fi
done
exit "$rc"
