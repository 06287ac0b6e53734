#!/bin/sh
# The runtime image's set-up, in one place: the Dockerfile's runtime stage RUNs it, and
# scripts/image-test.sh runs the very same file inside a debootstrapped bookworm root, so the
# image and its test cannot drift apart.
#
#   sh runtime-setup.sh packages FILE   install exactly FILE's Debian packages (one a line,
#                                       '#' starts a comment), then drop apt's caches and lists
#   sh runtime-setup.sh user            the non-root user gatehouse (uid and gid 10001, home
#                                       /data), the /repo and /data mount points, /etc/gitconfig
#
# POSIX sh only: it runs on debian:bookworm-slim / a minbase root (dash, no bash needed).
set -eu

case "${1:-}" in
packages)
  list=${2:?usage: runtime-setup.sh packages FILE}
  # The names: comments and blank lines removed; whitespace-separated names are fine too.
  names=$(sed -e 's/#.*//' "$list" | tr -s ' \t\r' '[\n*]' | sed -e '/^$/d')
  if [ -z "$names" ]; then
    echo "runtime-setup.sh: $list names no package" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  # xargs reads the list: nothing but the file decides what is installed.
  printf '%s\n' "$names" | xargs apt-get install -y --no-install-recommends
  apt-get clean
  rm -rf /var/lib/apt/lists/*
  ;;
user)
  # An explicit gid: `useradd --system --user-group` alone would pick a system gid (< 1000).
  groupadd --system --gid 10001 gatehouse
  useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
    --shell /usr/sbin/nologin gatehouse
  mkdir -p /repo /data
  chown 10001:10001 /data
  # /repo is mounted read-only and owned by someone else: tell libgit2 it is trusted.
  printf '[safe]\n\tdirectory = *\n' >/etc/gitconfig
  ;;
*)
  echo "usage: runtime-setup.sh packages FILE | user" >&2
  exit 2
  ;;
esac
