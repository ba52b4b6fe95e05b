# Helpers shared by the bench scripts; `source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"`.
# Root only (they install packages and build into /var/tmp).

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# install_missing PKG...: apt-get install the Debian packages that are not installed yet.
install_missing() {
  local p missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  log "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# pgherd_bin REPO [PATH]: PATH if given (it must be executable), else REPO's release
# binary, built first.
pgherd_bin() {
  local repo="$1" bin="${2:-}"
  if [ -z "$bin" ]; then
    bin="$repo/target/release/pgherd"
    log "building pgherd (release)"
    (cd "$repo" && CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}" cargo build --release -q -p pgherd-cli) >&2
  fi
  [ -x "$bin" ] || { echo "no pgherd binary at $bin" >&2; return 1; }
  echo "$bin"
}

# free_ports N: N distinct free loopback ports, space-separated.
free_ports() {
  /usr/bin/python3 -I - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# PgBouncer built from Debian's own source of the version trixie ships. Bookworm's
# package is 1.18, which has no prepared statements in transaction mode
# (max_prepared_statements came in 1.21), so it cannot run `pgbench -M prepared` through
# a transaction pool at all; a bookworm machine cannot install trixie's binary package
# (it needs glibc 2.38).
PGBOUNCER_SRC_VERSION=1.24.1
PGBOUNCER_SRC_URL="http://deb.debian.org/debian/pool/main/p/pgbouncer/pgbouncer_${PGBOUNCER_SRC_VERSION}.orig.tar.gz"
PGBOUNCER_SRC_SHA256=da72a3aba13072876d055a3e58dd4aba4a5de4ed6148e73033185245598fd3e0
PGBOUNCER_BUILD_DIR=/var/tmp/pgherd-bench-pgbouncer

# built_pgbouncer: print the path of PgBouncer $PGBOUNCER_SRC_VERSION, building it (once,
# cached under $PGBOUNCER_BUILD_DIR) with the configure defaults (-O2 -g) if needed.
built_pgbouncer() {
  local dir="$PGBOUNCER_BUILD_DIR/pgbouncer-$PGBOUNCER_SRC_VERSION"
  if [ ! -x "$dir/pgbouncer" ]; then
    install_missing curl gcc make pkg-config libevent-dev libssl-dev
    mkdir -p "$PGBOUNCER_BUILD_DIR"
    local tarball="$PGBOUNCER_BUILD_DIR/pgbouncer-$PGBOUNCER_SRC_VERSION.tar.gz"
    log "building PgBouncer $PGBOUNCER_SRC_VERSION from $PGBOUNCER_SRC_URL"
    curl -fsS -o "$tarball" "$PGBOUNCER_SRC_URL"
    echo "$PGBOUNCER_SRC_SHA256  $tarball" | sha256sum -c --quiet - \
      || { echo "checksum mismatch: $tarball" >&2; return 1; }
    rm -rf "$dir"
    tar -xzf "$tarball" -C "$PGBOUNCER_BUILD_DIR"
    (cd "$dir" && ./configure -q --without-cares --without-pam --without-systemd >/dev/null \
      && make -s -j"${CARGO_BUILD_JOBS:-2}" >/dev/null 2>&1) \
      || { echo "PgBouncer $PGBOUNCER_SRC_VERSION did not build in $dir" >&2; return 1; }
  fi
  chmod 755 "$PGBOUNCER_BUILD_DIR" "$dir" "$dir/pgbouncer"
  echo "$dir/pgbouncer"
}

# pick_pgbouncer CHOICE: print the PgBouncer binary for --pgbouncer CHOICE:
#   auto    Debian's if it is 1.21 or newer, else the one built from source
#   debian  Debian's package (installed if missing)
#   source  built from source ($PGBOUNCER_SRC_VERSION)
#   PATH    that binary
pick_pgbouncer() {
  case "$1" in
    debian)
      install_missing pgbouncer
      echo /usr/sbin/pgbouncer ;;
    source) built_pgbouncer ;;
    auto)
      install_missing pgbouncer
      if printf '1.21.0\n%s\n' "$(pgbouncer_version /usr/sbin/pgbouncer)" | sort -V -C; then
        echo /usr/sbin/pgbouncer
      else
        built_pgbouncer
      fi ;;
    *)
      [ -x "$1" ] || { echo "--pgbouncer: no executable at '$1'" >&2; return 1; }
      echo "$1" ;;
  esac
}

pgbouncer_version() { "$1" --version | awk 'NR==1{print $2}'; }
