# Sourced by build.sh, build-node.sh and build-helm3.sh: a set of binaries built from Go modules and cached
# by version in $CACHE/bin/$KEY. A build goes into $BIN_DIR.partial and is moved into place with its stamp
# written last, so a killed build never looks complete. One build per lock file at a time; a build that
# waited for the lock finds the other's result and stops.
#
# The sourcing script sets NAME (its file name, for messages) and KEY, then defines is_complete.
# Environment: PODGRACE_CACHE (default $HOME/.cache/podgrace), PODGRACE_GOCACHE (default
# $PODGRACE_CACHE/go/build), GOPROXY.

CACHE="${PODGRACE_CACHE:-$HOME/.cache/podgrace}"
BIN_DIR="$CACHE/bin/$KEY"
STAMP="$BIN_DIR/.complete"
STAGE="$BIN_DIR.partial"
SRC="$CACHE/src"

die() { echo "$NAME: ERROR: $*" >&2; exit 1; }
CURRENT_STEP=setup
trap 'die "step [$CURRENT_STEP] failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

# exit_if_cached RESULT: print RESULT (the bin dir or the binary) and exit 0 when the build is complete
exit_if_cached() {
  if is_complete; then
    echo "$NAME: cached, nothing to build: $1"
    echo "$1"
    exit 0
  fi
}

# begin_build LOCK RESULT: wait for the lock $CACHE/LOCK, stop if another process built meanwhile, then
# set up the Go environment (local toolchain >= 1.26, the cache's module and build caches) and the stage
begin_build() {
  local lock="$CACHE/$1" go_minor
  command -v go >/dev/null || die "'go' is not on PATH (need Go >= 1.26)"
  command -v python3 >/dev/null || die "'python3' is needed to read go.mod JSON"
  command -v flock >/dev/null || die "'flock' (util-linux) is needed"
  mkdir -p "$CACHE"
  exec 9>"$lock"
  echo "$NAME: waiting for the build lock $lock ..."
  flock 9
  if is_complete; then
    echo "$NAME: built concurrently by another process: $2"
    echo "$2"
    exit 0
  fi
  export GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off
  export GOFLAGS="-buildvcs=false -modcacherw -trimpath"
  export GOMODCACHE="$CACHE/go/mod"
  export GOCACHE="${PODGRACE_GOCACHE:-$CACHE/go/build}"
  export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"
  go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
  [[ "$go_minor" =~ ^[0-9]+$ && "$go_minor" -ge 26 ]] || die "Go $(go env GOVERSION) is too old: need >= 1.26"
  rm -rf "$STAGE"
  mkdir -p "$STAGE" "$SRC"
  T_ALL=$SECONDS
  echo "$NAME: building into $BIN_DIR with $(go env GOVERSION), GOMODCACHE=$GOMODCACHE GOCACHE=$GOCACHE"
}

# finish_build RESULT: stamp the stage, move it into place, print RESULT
finish_build() {
  printf 'key=%s\nbuilt=%s\ngo=%s\nseconds=%s\n' "$KEY" "$(date -u +%FT%TZ)" "$(go env GOVERSION)" \
    "$((SECONDS - T_ALL))" >"$STAGE/.complete.tmp"
  rm -rf "$BIN_DIR"
  mv "$STAGE" "$BIN_DIR"
  mv "$BIN_DIR/.complete.tmp" "$STAMP"
  echo "$NAME: done in $((SECONDS - T_ALL))s: $1"
  echo "$1"
}

# step NAME CMD...: run and print the elapsed time (errexit + the ERR trap stop on failure)
step() {
  CURRENT_STEP=$1; shift
  local t0=$SECONDS
  echo "$NAME: >>> $CURRENT_STEP"
  "$@"
  echo "$NAME: <<< $CURRENT_STEP took $((SECONDS - t0))s"
  CURRENT_STEP=finish
}

# quiet LOG CMD...: keep the go tool's download chatter in a log; show its tail on failure
quiet() {
  local log=$1; shift
  if ! "$@" >"$log" 2>&1; then
    echo "$NAME: '$*' failed; last lines of $log:" >&2
    tail -n 60 "$log" >&2
    return 1
  fi
}

# new_module DIR [MODULE]: an empty scratch module to build a dependency's main packages from
new_module() {
  rm -rf "$1"
  mkdir -p "$1"
  printf 'module %s\n\ngo 1.26\n' "${2:-podgrace.local/clusterbuild}" >"$1/go.mod"
}

# kube_scratch_module DIR PKG...: a scratch module that requires k8s.io/kubernetes' PKGs at $KUBE_VERSION.
# k8s.io/kubernetes replaces its staging modules (k8s.io/api => ./staging/src/k8s.io/api, ...), and replace
# directives of a dependency are ignored: each of them is pinned to the published v0.X.Y.
kube_scratch_module() {
  local dir=$1 gomod staging args=() r
  shift
  gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d["Error"]) if d.get("Error") else print(d["GoMod"])')
  staging=$(go mod edit -json "$gomod" | python3 -c '
import json, sys
mod = json.load(sys.stdin)
ver = "v0." + sys.argv[1].lstrip("v").split(".", 1)[1]
required = {r["Path"] for r in mod.get("Require") or []}
for r in mod.get("Replace") or []:
    if r["New"]["Path"].startswith("./staging/") and r["Old"]["Path"] in required:
        print(r["Old"]["Path"] + "=" + r["Old"]["Path"] + "@" + ver)
' "$KUBE_VERSION")
  [[ -n "$staging" ]] || die "found no staging replace directives in $gomod"
  echo "$NAME: pinning $(wc -l <<<"$staging") k8s.io staging modules to v0.${KUBE_VERSION#v1.}"
  for r in $staging; do args+=("-replace=$r"); done
  (cd "$dir" && go mod edit "${args[@]}")
  (cd "$dir" && quiet "$dir/go-get.log" go get "${@/%/@$KUBE_VERSION}")
}

# kube_ldflags: the version stamps a Kubernetes release build sets (what `--version` prints)
kube_ldflags() {
  local minor=${KUBE_VERSION#v1.} x ld="-s -w"
  minor=${minor%%.*}
  for x in client-go/pkg/version component-base/version; do
    ld+=" -X k8s.io/$x.gitVersion=$KUBE_VERSION -X k8s.io/$x.gitMajor=1 -X k8s.io/$x.gitMinor=$minor"
    ld+=" -X k8s.io/$x.gitTreeState=clean -X k8s.io/$x.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ld"
}
