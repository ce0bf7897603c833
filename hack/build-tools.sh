#!/usr/bin/env bash
# Builds the local cluster's binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kube-proxy, kubectl, kwok, helm; and Debian's prometheus) from the pinned
# wrapper modules in hack/tools/ into a cache outside the repo, keyed by the wrapper's go.mod and
# go.sum, and links them at bin/; installs Debian's nftables when it is missing.
# A second run, or a fresh clone on the same machine, reuses the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cache=${DISTML_CACHE:-$HOME/.cache/distml}
export GOFLAGS=-mod=mod CGO_ENABLED=0
export GOMODCACHE=${GOMODCACHE:-$(go env GOMODCACHE)} GOCACHE=${GOCACHE:-$(go env GOCACHE)}
mkdir -p bin

kube_version=$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' hack/tools/kube/go.mod)
kube_ldflags=""
if [[ $kube_version =~ ^v([0-9]+)\.([0-9]+)\. ]]; then
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=${BASH_REMATCH[1]}"
    kube_ldflags+=" -X $pkg.gitMinor=${BASH_REMATCH[2]} -X $pkg.gitTreeState=clean"
    kube_ldflags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
fi

# helm as helm's own release builds it: its version, and the Kubernetes version it assumes
# without a cluster (`helm template` with no --kube-version), from the client-go it is built with.
helm_version=$(awk '$1=="helm.sh/helm/v3" && $2 ~ /^v/ {print $2; exit}' hack/tools/helm/go.mod)
client_go=$(awk '$1=="k8s.io/client-go" && $2 ~ /^v/ {print $2; exit}' hack/tools/helm/go.mod)
helm_ldflags="-X helm.sh/helm/v3/internal/version.version=$helm_version"
if [[ $client_go =~ ^v([0-9]+)\.([0-9]+)\. ]]; then
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    helm_ldflags+=" -X $pkg.k8sVersionMajor=$((BASH_REMATCH[1] + 1))"
    helm_ldflags+=" -X $pkg.k8sVersionMinor=${BASH_REMATCH[2]}"
  done
fi

# build WRAPPER LDFLAGS PKG... : builds every PKG of the wrapper module into one cache folder,
# keyed by the wrapper's go.mod and go.sum (and $KEY_EXTRA, for flags not derived from them).
build() {
  local wrapper=$1 ldflags=$2; shift 2
  local key dir
  key=$({
    cat "hack/tools/$wrapper/go.mod" "hack/tools/$wrapper/go.sum"
    if [[ -n ${KEY_EXTRA:-} ]]; then echo "$KEY_EXTRA"; fi
  } | sha256sum | cut -c1-16)
  dir="$cache/tools/$wrapper-$key"
  if [[ ! -f $dir/.complete ]]; then
    echo "building $wrapper ($*) into $dir — the first build takes a while" >&2
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    (cd "hack/tools/$wrapper" && go build -trimpath -tags selinux,notest \
        -ldflags "-s -w $ldflags" -o "$dir.tmp/" "$@")
    # etcd's main package is the module root, so go names its binary "server".
    [[ -e $dir.tmp/server ]] && mv "$dir.tmp/server" "$dir.tmp/etcd"
    touch "$dir.tmp/.complete"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  for f in "$dir"/*; do ln -sfn "$f" "bin/$(basename "$f")"; done
}

build etcd "" go.etcd.io/etcd/server/v3
build kwok "" sigs.k8s.io/kwok/cmd/kwok
KEY_EXTRA=$helm_ldflags build helm "$helm_ldflags" helm.sh/helm/v3/cmd/helm
build kube "$kube_ldflags" k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubectl
# kube-proxy gives process nodes (and this machine, through a router namespace) Services the
# way a cluster does; its own cache folder, so the binaries above are not built again.
KEY_EXTRA=kube-proxy build kube "$kube_ldflags" k8s.io/kubernetes/cmd/kube-proxy
# kube-proxy programs Services with Debian's nft (nftables mode); installed when missing and
# this is root (process nodes need root anyway).
if ! command -v nft >/dev/null && [[ $(id -u) == 0 ]]; then
  echo "installing Debian's nftables (for kube-proxy)" >&2
  apt-get install -y -q nftables >/dev/null 2>&1 || {
    apt-get update -q >/dev/null 2>&1 && apt-get install -y -q nftables >/dev/null
  }
fi
# Prometheus is Debian's own server (the version pinned here), unpacked from its .deb into the
# cache: no root, no service, nothing installed system-wide.
prometheus_deb=2.42.0+ds-5+deb12u1
pdir="$cache/tools/prometheus-$prometheus_deb"
if [[ ! -f $pdir/.complete ]]; then
  echo "fetching Debian's prometheus $prometheus_deb into $pdir" >&2
  rm -rf "$pdir.tmp" && mkdir -p "$pdir.tmp/deb"
  (cd "$pdir.tmp/deb" && apt-get download -q "prometheus=$prometheus_deb" 2>/dev/null)
  dpkg-deb -x "$pdir.tmp"/deb/prometheus_*.deb "$pdir.tmp/root"
  mv "$pdir.tmp/root/usr/bin/prometheus" "$pdir.tmp/root/usr/bin/promtool" "$pdir.tmp/"
  rm -rf "$pdir.tmp/deb" "$pdir.tmp/root"
  touch "$pdir.tmp/.complete"
  rm -rf "$pdir" && mv "$pdir.tmp" "$pdir"
fi
for f in prometheus promtool; do ln -sfn "$pdir/$f" "bin/$f"; done
echo "cluster tools ready in $root/bin" >&2
