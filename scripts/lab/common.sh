# Shared helpers for the lab scripts (sourced, not run).
VFIO_LAB_CACHE=${VFIO_LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfio-ts/lab}
mkdir -p "$VFIO_LAB_CACHE"
VFIO_LAB_CACHE=$(cd "$VFIO_LAB_CACHE" && pwd -P)

lab_log() { echo "lab: $*" >&2; }
lab_die() { echo "lab: error: $*" >&2; exit 1; }
# A progress line that rewrites itself on a terminal and prints plainly elsewhere (CI logs).
lab_progress() { if [ -t 2 ]; then printf '\rlab: %s\033[K' "$*" >&2; else echo "lab: $*" >&2; fi; }
lab_progress_done() { [ -t 2 ] && printf '\n' >&2; return 0; }

# Runs a command as root (apt needs it), through sudo when the caller is not root.
lab_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Install Debian packages that are missing (the lab's only system dependencies).
lab_need_apt() {
  local need="" p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need="$need $p"
  done
  [ -z "$need" ] && return 0
  lab_log "installing apt packages:$need"
  lab_root apt-get update -qq >&2 || lab_die "apt-get update failed"
  lab_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >&2 \
    || lab_die "apt-get install$need failed"
}
