#!/usr/bin/env bash
# Installs the deployment kit's Go tools (helm, kustomize) at pinned versions into a
# project-local bin directory, for `make tools` (and so `make test`).
#
#   deploy/tools/install.sh BIN_DIR CACHE_DIR MODULE@VERSION NAME [MODULE@VERSION NAME ...]
#
# Each tool is built once per version with `go install` from the Go module proxy into
# CACHE_DIR/NAME-VERSION/ (shared by every checkout on the machine, like the Kafka jars),
# then linked into BIN_DIR. Go itself comes from the machine; where it is missing it comes
# from Debian, and where that Go is too old to build the tools, the Go toolchain the tools
# need comes from the module proxy as the module golang.org/toolchain (the one way the go
# command itself fetches a newer Go).
set -euo pipefail

BIN_DIR=$1
CACHE_DIR=$2
shift 2

# The Go the pinned tools were built and tested with (helm v4 and kustomize v5 need >= 1.24).
GO_TOOLCHAIN_VERSION=1.26.8
GO_MIN_MINOR=${GO_MIN_MINOR:-24}  # overridable to exercise the fallback

find_go() {
  if command -v go >/dev/null 2>&1; then command -v go; return; fi
  if [ -x /usr/local/go/bin/go ]; then echo /usr/local/go/bin/go; return; fi
  if [ -x /usr/lib/go/bin/go ]; then echo /usr/lib/go/bin/go; return; fi
  echo "installing Go (Debian package golang-go)" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >&2
  command -v go
}

go_minor() {
  "$1" env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/'
}

# A Go new enough to build the tools: the machine's, or the toolchain module from the proxy.
recent_go() {
  local go
  go=$(find_go)
  if [ "$(go_minor "$go")" -ge "$GO_MIN_MINOR" ]; then echo "$go"; return; fi
  local module="golang.org/toolchain@v0.0.1-go${GO_TOOLCHAIN_VERSION}.linux-$(dpkg --print-architecture)"
  echo "Go $("$go" env GOVERSION) is too old for helm/kustomize; fetching $module" >&2
  local dir
  dir=$(cd "$(mktemp -d)" && GOFLAGS=-modcacherw GO111MODULE=on "$go" mod download -json "$module" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  chmod +x "$dir/bin/go" "$dir"/pkg/tool/*/* 2>/dev/null || true
  echo "$dir/bin/go"
}

mkdir -p "$BIN_DIR" "$CACHE_DIR"
GO=""
while [ $# -ge 2 ]; do
  spec=$1 name=$2
  shift 2
  version=${spec##*@}
  dest="$CACHE_DIR/$name-$version"
  if [ ! -x "$dest/$name" ]; then
    [ -n "$GO" ] || GO=$(recent_go)
    echo "building $name $version (go install $spec, once per machine)" >&2
    rm -rf "$dest.tmp"
    # GOTOOLCHAIN=local: build with this Go, never switch to another one silently.
    (cd "$(mktemp -d)" && GOTOOLCHAIN=local GOFLAGS=-buildvcs=false GOBIN="$dest.tmp" "$GO" install "$spec")
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
  fi
  ln -sfn "$dest/$name" "$BIN_DIR/$name"
done
