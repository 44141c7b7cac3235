#!/usr/bin/env bash
# Installs what Lakebed needs on Debian when it is missing: PostgreSQL server (computes),
# fuse3 (pagefs), PgBouncer (benchmarks), Python moto[server] (KMS API in tests), fincore
# (tests), and a C compiler and make for the C parts of the build (aws-lc, jemalloc).
# Safe to run again: it installs only what is absent. Needs root (or sudo) for apt-get.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql postgresql-contrib)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
command -v pgbouncer >/dev/null 2>&1 && [ -x "$(command -v pgbouncer)" ] || missing+=(pgbouncer)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-pip)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
# fincore (tests: what the kernel's page cache holds of a file after a prewarm).
command -v fincore >/dev/null 2>&1 || missing+=(util-linux-extra)
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v make >/dev/null 2>&1 || missing+=(make)

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # Don't let package scripts start system-wide services (a cluster on 5432, pgbouncer on 6432):
  # Lakebed runs its own computes.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    created_policy=1
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$created_policy" = 1 ]; then $SUDO rm -f "$policy"; fi
fi

if ! command -v moto_server >/dev/null 2>&1; then
  echo "install-deps: installing Python moto[server]" >&2
  python3 -m pip install --quiet 'moto[server]' 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages 'moto[server]'
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found; Lakebed builds with the Rust toolchain named in rust-toolchain.toml (1.95.0)" >&2
  exit 1
fi
