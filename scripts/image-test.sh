#!/usr/bin/env bash
# The Docker image's runtime stage, tested without Docker (no container registry is reachable
# here; Debian's package mirrors are): the release binary runs in a minimal Debian bookworm root
# that holds what the image holds, as the image's user, the way the image's CMD runs it.
#
#   scripts/image-test.sh                    # builds target/release/gatehouse (cargo --release)
#   GATEHOUSE_BIN=path scripts/image-test.sh # tests that binary instead
#   KEEP=1 scripts/image-test.sh             # keep the work root (kept anyway on failure)
#
# Needs root (debootstrap, chroot, mount), curl, git and python3 on the host; installs
# debootstrap with apt-get when it is missing. Environment: DEBIAN_MIRROR (default
# http://deb.debian.org/debian), DEBIAN_SECURITY_MIRROR (default
# http://deb.debian.org/debian-security; empty: none), IMAGE_ROOT_CACHE (default
# target/image-root-cache).
#
# 1. `debootstrap --variant=minbase bookworm` lays out the base root: what debian:bookworm-slim
#    is made of. Cached under IMAGE_ROOT_CACHE, keyed by suite and mirror.
# 2. The runtime root: a copy of the base in which deploy/runtime-setup.sh installs exactly the
#    packages of deploy/runtime-packages.txt: the same script and the same file the Dockerfile's
#    runtime stage runs. Cached, keyed by a hash of the list, the script and the sources.
# 3. Negative: the binary in a copy of the bare base root does not start (libssl.so.3 is
#    missing): what the image did before it installed the list, and proof this test can fail.
# 4. Positive, in a copy of the runtime root: `runtime-setup.sh user` (the Dockerfile's user,
#    /repo, /data and /etc/gitconfig), the binary in /usr/local/bin, examples/policy-repo as a
#    git repository at /repo (owned by root, as a read-only mount is: safe.directory is needed),
#    /proc mounted (unmounted on exit by a trap). As uid:gid 10001:10001 with a clean
#    environment: every library resolves (ldd), `gatehouse --version`, `gatehouse check --repo
#    /repo`, then `gatehouse serve --repo /repo --data-dir /data --listen 127.0.0.1:PORT` in the
#    background: /readyz answers 200 naming the commit, /healthz 200, the admin listener's
#    address is in /data/admin.addr and answers /readyz; SIGTERM stops it with exit status 0.
#
# A PASS or FAIL line per step with the time it took, then "N passed, M failed"; exit 1 on any
# failure.
set -euo pipefail

case "${1:-}" in
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  '') ;;
  *) echo "usage: $0 [--help]" >&2; exit 2 ;;
esac

# A relative GATEHOUSE_BIN is relative to where the script was started.
case "${GATEHOUSE_BIN:-}" in '' | /*) ;; *) GATEHOUSE_BIN=$PWD/$GATEHOUSE_BIN ;; esac
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET" in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
PACKAGES=$ROOT/deploy/runtime-packages.txt
SETUP=$ROOT/deploy/runtime-setup.sh
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR-http://deb.debian.org/debian-security}
CACHE=${IMAGE_ROOT_CACHE:-$TARGET/image-root-cache}
case "$CACHE" in /*) ;; *) CACHE=$ROOT/$CACHE ;; esac
WORK=$TARGET/image-test
UIDGID=10001:10001
# What a container of the image sees: HOME from the user's passwd entry, Docker's default PATH.
CLEAN_ENV=(env -i HOME=/data PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)

[ "$(id -u)" = 0 ] || { echo "image-test: needs root (debootstrap, chroot, mount)" >&2; exit 2; }
for tool in curl git python3 sha256sum; do
  command -v "$tool" >/dev/null || { echo "image-test: needs $tool on the host" >&2; exit 2; }
done

PASSED=0 FAILED=0
T_ALL=${EPOCHREALTIME/[.,]/}
t0=$T_ALL
start() { t0=${EPOCHREALTIME/[.,]/}; }
took() { local us=$((${EPOCHREALTIME/[.,]/} - t0)); printf '%d.%ds' $((us / 1000000)) $((us / 100000 % 10)); }
pass() { PASSED=$((PASSED + 1)); echo "PASS $1 ($(took))"; }
# fail NAME [DETAIL]: the detail (a log tail, an output) is printed indented.
fail() {
  FAILED=$((FAILED + 1)); echo "FAIL $1 ($(took))"
  [ -z "${2:-}" ] || printf '%s\n' "$2" | tail -n 25 | sed 's/^/    /'
}
summary() { echo "$PASSED passed, $FAILED failed (image test, $(t0=$T_ALL; took) in all)"; }
# fatal NAME [DETAIL]: a failed step the rest cannot go without.
fatal() { fail "$@"; summary; exit 1; }

# --- mounts and clean-up ------------------------------------------------------------------------

# Unmounts everything mounted at or below $1, deepest first (lazily if busy).
unmount_under() {
  local m
  awk -v p="$1" '$2 == p || index($2, p "/") == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done
}
# Removes a root directory: its mounts first, and never across a file system boundary.
remove_root() { [ ! -e "$1" ] || { unmount_under "$1"; rm -rf --one-file-system "$1"; }; }

SERVE_PID=
BUILDING=
OK_TO_CLEAN=
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  local rc=$?
  if [ -n "$SERVE_PID" ] && kill -0 "$SERVE_PID" 2>/dev/null; then
    kill -KILL "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || true
  fi
  unmount_under "$WORK"
  [ -z "$BUILDING" ] || remove_root "$BUILDING"
  if [ -n "$OK_TO_CLEAN" ] && [ -z "${KEEP:-}" ]; then
    remove_root "$WORK"
  elif [ -d "$WORK" ]; then
    echo "image-test: work directory kept: $WORK"
  fi
  exit "$rc"
}

mkdir -p "$CACHE"
# One run at a time: a second one waits (the work root and the cache are shared).
exec 9>"$CACHE/.lock"
flock 9
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
remove_root "$WORK"
mkdir -p "$WORK"

# in_root DIR CMD...: CMD inside DIR as the image's user, with the image's environment.
in_root() { local dir=$1; shift; chroot --userspec="$UIDGID" "$dir" "${CLEAN_ENV[@]}" "$@"; }
# copy_root FROM TO: a full copy of a root (reflinks where the file system has them).
copy_root() { cp -a --reflink=auto "$1" "$2"; }
# work_root FROM TO: a private, writable view of a cached root that leaves the cache as it is:
# an overlay mount (FROM read-only below, TO.upper holding the changes), or a copy where the
# kernel has no overlayfs. Sets HOW.
work_root() {
  mkdir -p "$2" "$2.upper" "$2.ovlwork"
  if mount -t overlay overlay -o "lowerdir=$1,upperdir=$2.upper,workdir=$2.ovlwork" "$2" 2>/dev/null; then
    HOW="overlay of the cached root"
  else
    rmdir "$2"; copy_root "$1" "$2"; HOW="copy of the cached root"
  fi
}

# --- 1. the binary -------------------------------------------------------------------------------

start
if [ -n "${GATEHOUSE_BIN:-}" ]; then
  BIN=$GATEHOUSE_BIN
  [ -x "$BIN" ] || fatal "binary: GATEHOUSE_BIN=$BIN is not an executable file"
  pass "binary: $BIN (GATEHOUSE_BIN)"
else
  cargo build --release --locked --bin gatehouse >"$WORK/cargo.log" 2>&1 ||
    fatal "binary: cargo build --release --locked --bin gatehouse" "$(cat "$WORK/cargo.log")"
  BIN=$TARGET/release/gatehouse
  pass "binary: cargo build --release --locked --bin gatehouse"
fi
echo "     needs: $(ldd "$BIN" | awk '{ print $1 }' | tr '\n' ' ')"

# --- 2. debootstrap -------------------------------------------------------------------------------

start
if ! command -v debootstrap >/dev/null; then
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; }; } \
    >"$WORK/apt-debootstrap.log" 2>&1 || fatal "debootstrap: apt-get install" "$(cat "$WORK/apt-debootstrap.log")"
  pass "debootstrap: installed with apt-get"
else
  pass "debootstrap: $(command -v debootstrap) (already installed)"
fi

# --- 3. the base root: debootstrap --variant=minbase ----------------------------------------------

start
BASE_KEY=$(printf '%s\n' minbase "$SUITE" "$MIRROR" | sha256sum | cut -c1-16)
BASE=$CACHE/minbase-$SUITE-$BASE_KEY
if [ -d "$BASE" ]; then
  pass "base root: $SUITE minbase from the cache ($BASE)"
else
  BUILDING=$BASE.tmp
  remove_root "$BUILDING"
  debootstrap --variant=minbase "$SUITE" "$BUILDING" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    fatal "base root: debootstrap --variant=minbase $SUITE $MIRROR" "$(tail -n 25 "$WORK/debootstrap.log"; tail -n 15 "$BUILDING/debootstrap/debootstrap.log" 2>/dev/null)"
  unmount_under "$BUILDING"
  mv "$BUILDING" "$BASE"
  BUILDING=
  pass "base root: debootstrap --variant=minbase $SUITE $MIRROR ($(du -sh --one-file-system "$BASE" | cut -f1))"
fi

# --- 4. the runtime root: the base plus deploy/runtime-packages.txt -------------------------------

# Sources as in debian:bookworm-slim (the suite, its updates and security), from the mirrors above.
sources() {
  printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$MIRROR" "$SUITE" "$SUITE"
  [ -z "$SECURITY_MIRROR" ] ||
    printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$SECURITY_MIRROR" "$SUITE"
}

start
RUNTIME_KEY=$( { echo "$BASE_KEY"; sources; cat "$PACKAGES" "$SETUP"; } | sha256sum | cut -c1-16)
RUNTIME=$CACHE/runtime-$SUITE-$RUNTIME_KEY
if [ -d "$RUNTIME" ]; then
  touch "$RUNTIME"
  pass "runtime root: deploy/runtime-packages.txt installed, from the cache ($RUNTIME)"
else
  BUILDING=$RUNTIME.tmp
  remove_root "$BUILDING"
  copy_root "$BASE" "$BUILDING"
  rm -f "$BUILDING/etc/apt/sources.list"
  sources >"$BUILDING/etc/apt/sources.list.d/debian.sources"
  cp /etc/resolv.conf "$BUILDING/etc/resolv.conf" 2>/dev/null || true
  # What the Dockerfile does: COPY the list and the script in, RUN the script, remove them.
  mkdir -p "$BUILDING/tmp/gatehouse-setup"
  cp "$PACKAGES" "$SETUP" "$BUILDING/tmp/gatehouse-setup/"
  mount -t proc proc "$BUILDING/proc"
  if ! chroot "$BUILDING" "${CLEAN_ENV[@]}" sh /tmp/gatehouse-setup/runtime-setup.sh packages \
    /tmp/gatehouse-setup/runtime-packages.txt >"$WORK/apt-runtime.log" 2>&1; then
    fatal "runtime root: runtime-setup.sh packages deploy/runtime-packages.txt" "$(cat "$WORK/apt-runtime.log")"
  fi
  unmount_under "$BUILDING"
  rm -rf "$BUILDING/tmp/gatehouse-setup"
  mv "$BUILDING" "$RUNTIME"
  BUILDING=
  # Keep the three runtime roots used last (a changed list gets a new one).
  # shellcheck disable=SC2010 # names made above: runtime-SUITE-HEX[.tmp]
  ls -1dt "$CACHE"/runtime-"$SUITE"-* 2>/dev/null | grep -v '\.tmp$' | tail -n +4 |
    while read -r old; do remove_root "$old"; done
  pass "runtime root: runtime-setup.sh packages deploy/runtime-packages.txt"
fi
# shellcheck disable=SC2016 # dpkg-query's ${field} formats
added=$(comm -13 <(chroot "$BASE" dpkg-query -W -f '${Package}\n' | sort) \
  <(chroot "$RUNTIME" dpkg-query -W -f '${Package}\n' | sort))
if [ -n "$added" ]; then
  # shellcheck disable=SC2086,SC2016 # one argument a package; dpkg-query's ${field} formats
  echo "     installed beyond minbase: $(chroot "$RUNTIME" dpkg-query -W -f '${Package}=${Version} ' $added)($(
    chroot "$RUNTIME" dpkg-query -W -f '${Installed-Size}\n' $added | awk '{ k += $1 } END { printf "%.1f MiB", k / 1024 }'))"
else
  echo "     installed beyond minbase: nothing"
fi

# --- 5. negative: the bare base root lacks libssl.so.3 -------------------------------------------

start
BARE=$WORK/bare
work_root "$BASE" "$BARE"
cp "$BIN" "$BARE/usr/local/bin/gatehouse"
set +e
out=$(in_root "$BARE" gatehouse --version 2>&1)
rc=$?
set -e
if [ "$rc" -ne 0 ] && grep -q 'error while loading shared libraries: libssl\.so\.3' <<<"$out"; then
  pass "without the runtime packages the binary does not start: $out"
else
  fail "without the runtime packages the binary should fail on libssl.so.3 (exit $rc)" "$out"
fi
remove_root "$BARE"
remove_root "$BARE.upper"
remove_root "$BARE.ovlwork"

# --- 6. positive: the runtime root, set up as the Dockerfile does ---------------------------------

start
IMG=$WORK/root
work_root "$RUNTIME" "$IMG"
mkdir -p "$IMG/tmp/gatehouse-setup"
cp "$SETUP" "$IMG/tmp/gatehouse-setup/"
if ! out=$(chroot "$IMG" "${CLEAN_ENV[@]}" sh /tmp/gatehouse-setup/runtime-setup.sh user 2>&1); then
  fatal "image root: runtime-setup.sh user" "$out"
fi
rm -rf "$IMG/tmp/gatehouse-setup"
install -m 0755 "$BIN" "$IMG/usr/local/bin/gatehouse"
# /repo: examples/policy-repo as a git repository of its own (as scripts/interop.sh makes its
# repository), owned by root like a read-only mount of someone else's checkout.
rm -rf "$IMG/repo"
cp -R "$ROOT/examples/policy-repo" "$IMG/repo"
(cd "$IMG/repo" && git init -q && git config user.name image-test && git config user.email image-test@example.invalid \
  && git config commit.gpgsign false && git add -A && git commit -q -m "example policy repository") ||
  fatal "image root: git init/commit of examples/policy-repo at /repo"
COMMIT=$(git -C "$IMG/repo" rev-parse HEAD)
mount -t proc proc "$IMG/proc"
pass "image root ($HOW): runtime-setup.sh user, /usr/local/bin/gatehouse, /repo at ${COMMIT:0:12}, /proc"

start
user=$(chroot "$IMG" getent passwd gatehouse || true)
owner=$(stat -c %u:%g "$IMG/data")
if [ "$user" = "gatehouse:x:10001:10001::/data:/usr/sbin/nologin" ] && [ "$owner" = "$UIDGID" ] &&
  grep -q 'directory = \*' "$IMG/etc/gitconfig"; then
  pass "user gatehouse is $UIDGID with home /data, /data is its own, /etc/gitconfig trusts /repo"
else
  fail "user and directories as the Dockerfile makes them" "passwd: $user; /data owned by $owner; gitconfig: $(cat "$IMG/etc/gitconfig" 2>&1)"
fi

start
out=$(chroot "$IMG" ldd /usr/local/bin/gatehouse 2>&1) || true
if grep -q 'not found' <<<"$out" || ! grep -q 'libssl\.so\.3 => /' <<<"$out"; then
  fail "every shared library resolves in the image (ldd)" "$out"
else
  pass "every shared library resolves in the image (ldd): $(awk '$3 ~ /^\// { print $1 }' <<<"$out" | tr '\n' ' ')"
fi

start
bundle=$IMG/etc/ssl/certs/ca-certificates.crt
certs=$(grep -c 'BEGIN CERTIFICATE' "$bundle" 2>/dev/null || true)
if [ "${certs:-0}" -gt 100 ]; then
  pass "CA bundle for https remotes: /etc/ssl/certs/ca-certificates.crt ($certs certificates)"
else
  fail "CA bundle for https remotes: /etc/ssl/certs/ca-certificates.crt (${certs:-no} certificates)"
fi

start
if out=$(in_root "$IMG" gatehouse --version 2>&1) && grep -q '^gatehouse ' <<<"$out"; then
  pass "gatehouse --version as $UIDGID: $out"
else
  fail "gatehouse --version as $UIDGID" "$out"
fi

start
if out=$(in_root "$IMG" gatehouse check --repo /repo 2>&1); then
  pass "gatehouse check --repo /repo as $UIDGID: $(tail -n 1 <<<"$out")"
else
  fail "gatehouse check --repo /repo as $UIDGID" "$out"
fi

# --- 7. the daemon, as the image's CMD runs it ------------------------------------------------------

start
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
# chroot and env exec: $! is the daemon itself.
chroot --userspec="$UIDGID" "$IMG" "${CLEAN_ENV[@]}" RUST_LOG=info \
  gatehouse serve --repo /repo --data-dir /data --listen "127.0.0.1:$PORT" >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
ready=
for _ in $(seq 1 300); do
  if code=$(curl -s -o "$WORK/readyz.body" -w '%{http_code}' "http://127.0.0.1:$PORT/readyz" 2>/dev/null) && [ "$code" = 200 ]; then
    ready=1; break
  fi
  kill -0 "$SERVE_PID" 2>/dev/null || break
  sleep 0.1
done
if [ -n "$ready" ] && grep -q "${COMMIT:0:12}" "$WORK/readyz.body"; then
  pass "gatehouse serve --repo /repo --data-dir /data --listen 127.0.0.1:$PORT: GET /readyz 200 naming ${COMMIT:0:12}"
else
  fatal "gatehouse serve: GET /readyz 200 within 30 s (last status ${code:-none}, daemon $(kill -0 "$SERVE_PID" 2>/dev/null && echo running || echo exited))" \
    "$(cat "$WORK/readyz.body" 2>/dev/null; cat "$WORK/serve.log")"
fi

start
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$SERVE_PID/status" 2>/dev/null || true)
healthz=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/healthz" || true)
admin=$(cat "$IMG/data/admin.addr" 2>/dev/null || true)
admin_readyz=$( [ -z "$admin" ] || curl -s -o /dev/null -w '%{http_code}' "http://$admin/readyz" || true)
if [ "$uid" = 10001 ] && [ "$healthz" = 200 ] && [ "$admin_readyz" = 200 ]; then
  pass "the daemon runs as uid $uid; /healthz 200; admin listener $admin (from /data/admin.addr): /readyz 200"
else
  fail "the daemon as uid 10001, /healthz, the admin listener" "uid ${uid:-?}; /healthz ${healthz:-?}; admin.addr '${admin}'; admin /readyz ${admin_readyz:-?}"
fi

start
kill -TERM "$SERVE_PID"
stopped=
for _ in $(seq 1 150); do
  kill -0 "$SERVE_PID" 2>/dev/null || { stopped=1; break; }
  sleep 0.1
done
if [ -z "$stopped" ]; then
  fail "SIGTERM: the daemon is still running after 15 s" "$(tail -n 20 "$WORK/serve.log")"
else
  set +e; wait "$SERVE_PID"; rc=$?; set -e
  SERVE_PID=
  if [ "$rc" = 0 ] && grep -q 'state database closed' "$WORK/serve.log"; then
    pass "SIGTERM: the daemon exited 0 after closing its state database"
  else
    fail "SIGTERM: the daemon should exit 0 after closing its state database (exit $rc)" "$(tail -n 20 "$WORK/serve.log")"
  fi
fi

summary
if [ "$FAILED" -eq 0 ]; then OK_TO_CLEAN=1; exit 0; fi
exit 1
