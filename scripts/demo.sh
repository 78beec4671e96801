#!/usr/bin/env bash
# The main job, from a fresh Debian machine: set up (as root), build kiln, make the offline
# debian:bookworm base with mmdebstrap, build examples/python-webapp with kiln as an
# unprivileged user, run it with -p 5000:5000 and ask it for its page.
#   sudo scripts/demo.sh        (or as root)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
user=${KILN_TEST_USER:-tester}
if [[ $(id -u) == 0 ]]; then
  scripts/setup.sh
  cargo build --release
  install -d -m 0755 /tmp/kiln-demo
  install -m 0755 target/release/kiln /tmp/kiln-demo/kiln
  cp -r examples/python-webapp /tmp/kiln-demo/ && chown -R "$user" /tmp/kiln-demo
  exec runuser -u "$user" -- env -C /tmp/kiln-demo HOME="$(getent passwd "$user" | cut -d: -f6)" \
    KILN=/tmp/kiln-demo/kiln bash "$repo/scripts/demo.sh"
fi
KILN=${KILN:-$repo/target/release/kiln}
[[ -x $KILN ]] || { cargo build --release; }
ctx=${DEMO_CONTEXT:-$repo/examples/python-webapp}
[[ -d /tmp/kiln-demo/python-webapp ]] && ctx=/tmp/kiln-demo/python-webapp
base=$("$repo/scripts/base-image.sh")
if ! "$KILN" inspect debian:bookworm >/dev/null 2>&1; then
  echo "== importing $base as debian:bookworm"
  "$KILN" import "$base" debian:bookworm
fi
echo "== kiln build -t python-webapp:v1 $ctx"
"$KILN" build -t python-webapp:v1 "$ctx"
if (exec 3<>/dev/tcp/127.0.0.1/5000) 2>/dev/null; then
  echo "port 5000 is already in use on this machine; stop what listens there and rerun (the image serves on 5000)" >&2
  exit 1
fi
echo "== kiln run -p 5000:5000 python-webapp:v1"
"$KILN" run --rm -p 5000:5000 python-webapp:v1 &
pid=$!
stop() { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }
for _ in $(seq 100); do
  if out=$(curl -fsS http://127.0.0.1:5000/ 2>/dev/null) && [[ $out == *"Docker Image Example"* ]]; then
    echo "== curl localhost:5000"
    echo "$out"
    stop
    exit 0
  fi
  kill -0 "$pid" 2>/dev/null || { echo "kiln run exited before answering on port 5000" >&2; exit 1; }
  sleep 0.3
done
stop
echo "the container did not answer on port 5000" >&2
exit 1
