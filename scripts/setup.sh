#!/usr/bin/env bash
# One-time machine setup for kiln's tests and demo (Debian 12 / Ubuntu, as root):
# Debian packages (passt: kiln run's network), an unprivileged test user with /etc/subuid and /etc/subgid ranges,
# /dev/fuse open to users as distributions ship it. Idempotent.
#   scripts/setup.sh            (KILN_TEST_USER overrides the user name, default: tester)
set -euo pipefail
[[ $(id -u) == 0 ]] || { echo "scripts/setup.sh must run as root (it installs packages and creates a user)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
user=${KILN_TEST_USER:-tester}
need=(uidmap docker-registry busybox-static mmdebstrap fuse3 fuse-overlayfs skopeo umoci buildah
      libseccomp-dev pkg-config gcc g++ curl python3 python3-venv ca-certificates openssl git xz-utils bzip2 zstd
      time util-linux libcap2-bin passt)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian registry package starts a system service on :5000, where the demo's web app
# listens; tests start their own registries on free ports, so the service is not needed.
if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
# The supply-chain tests (tests/attest.rs) check kiln's SBOMs with real validators from PyPI
# (spdx-tools' pyspdxtools, cyclonedx-python-lib's JSON validator) and its cosign-format keys
# and signatures against an independent implementation (PyNaCl + pyca/cryptography), all in
# one venv. pip uses the host's CA bundle where the system has one.
venv=/opt/kiln-validators
if ! "$venv/bin/python" -c 'import spdx_tools, cyclonedx.validation.json, nacl.secret, cryptography' 2>/dev/null; then
  /usr/bin/python3 -m venv "$venv"
  cert=(); [[ -r /etc/ssl/certs/ca-certificates.crt ]] && cert=(--cert /etc/ssl/certs/ca-certificates.crt)
  "$venv/bin/pip" install -q "${cert[@]}" spdx-tools 'cyclonedx-python-lib[json-validation]' pynacl cryptography
fi
# tests/attest.rs checks kiln's cosign-format signatures with containers/image, the implementation
# skopeo and podman use. Debian 12's skopeo 1.9.3 is built with sigstore disabled; Debian 13's
# skopeo 1.18 has it, but needs glibc 2.38. So skopeo and the libraries it links are unpacked from
# trixie into /opt/kiln-skopeo (nothing is installed into the system) and run through trixie's own
# dynamic loader by a wrapper, /opt/kiln-skopeo/skopeo.
sk=/opt/kiln-skopeo
if ! "$sk/skopeo" copy --help 2>/dev/null | grep -q -- --sign-by-sigstore-private-key; then
  t=$(mktemp -d)
  mkdir -p "$t/lists/partial" "$t/cache/archives/partial"
  echo "deb http://deb.debian.org/debian trixie main" >"$t/sources.list"
  apt_t=(-o Dir::Etc::SourceList="$t/sources.list" -o Dir::Etc::SourceParts=/dev/null
         -o Dir::State::Lists="$t/lists" -o Dir::Cache="$t/cache" -o APT::Sandbox::User=root)
  apt-get -qq "${apt_t[@]}" update
  (cd "$t" && apt-get -qq "${apt_t[@]}" download skopeo libc6 libgpgme11t64 libassuan9 libgpg-error0 libsqlite3-0)
  rm -rf "$sk" && mkdir -p "$sk/root"
  for d in "$t"/*.deb; do dpkg-deb -x "$d" "$sk/root"; done
  lib=$sk/root/usr/lib/x86_64-linux-gnu
  printf '#!/bin/sh\nexec %s/ld-linux-x86-64.so.2 --library-path %s %s/root/usr/bin/skopeo "$@"\n' "$lib" "$lib" "$sk" >"$sk/skopeo"
  chmod -R a+rX "$sk" && chmod 755 "$sk/skopeo"
  rm -rf "$t"
  "$sk/skopeo" copy --help | grep -q -- --sign-by-sigstore-private-key \
    || { echo "setup: $sk/skopeo has no sigstore support" >&2; exit 1; }
fi
id "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
uid=$(id -u "$user")
grep -q "^$user:" /etc/subuid || echo "$user:$((100000 + (uid % 1000) * 65536)):65536" >> /etc/subuid
grep -q "^$user:" /etc/subgid || echo "$user:$((100000 + (uid % 1000) * 65536)):65536" >> /etc/subgid
[[ -e /dev/fuse ]] && chmod 666 /dev/fuse
# kiln run connects each container's network namespace with pasta (package passt), which opens
# a tap device: /dev/net/tun must be open to users, as distributions ship it.
[[ -e /dev/net/tun ]] && chmod 666 /dev/net/tun
# The integration tests, the demo and the lockdown matrix run kiln, scripts and the examples
# from this checkout as the test user: make the checkout (and the path to it) readable.
repo=$(cd "$(dirname "$0")/.." && pwd)
d=$repo
while [[ $d != / ]]; do chmod o+x "$d"; d=$(dirname "$d"); done
chmod -R o+rX "$repo"

echo "setup done: user $user ($(grep "^$user:" /etc/subuid)), packages installed"
