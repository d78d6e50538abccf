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

# The system's main Debian entry, as "URI KEYRING" (KEYRING may be empty): the one whose suites include
# the release's own codename, from deb822 sources or the one-line sources.list.
lab_debian_main_entry() {
  local f codename
  codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v cn="$codename" '
      function flush() { if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " cn " ") && uri != "") { print uri, key; found = 1; exit } }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); types = suites = uri = key = ""; next }
      { k = tolower($1); sub(/:$/, "", k); $1 = ""; sub(/^ +/, "") }
      k == "types" { types = $0 } k == "suites" { suites = $0 } k == "uris" { split($0, u, " "); uri = u[1] }
      k == "signed-by" { key = $0 }
      END { if (!found) flush() }' "$f" | head -1 | grep . && return 0
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v cn="$codename" '$1 == "deb" {
        key = ""; i = 2
        if ($2 ~ /^\[/) { for (; i <= NF; i++) { if ($i ~ /signed-by=/) { key = $i; sub(/.*signed-by=/, "", key); sub(/\]$/, "", key) } if ($i ~ /\]$/) break } i++ }
        if ($(i + 1) == cn) { print $i, key; exit }
      }' "$f" | head -1 | grep . && return 0
  done
  return 1
}

# The InRelease file of SUITE's apt lists (fails when apt has none).
lab_apt_lists() { # SUITE
  local f
  for f in /var/lib/apt/lists/*_dists_"$1"_InRelease; do [ -f "$f" ] && { echo "$f"; return 0; }; done
  return 1
}

# Adds (once) an apt sources entry of its own for another suite of the same Debian archive, e.g.
# bookworm-backports or trixie-backports: /etc/apt/sources.list.d/vfio-ts-SUITE.sources, with the URI and
# keyring of the system's main entry. Backports suites are NotAutomatic, so adding one upgrades nothing
# by itself. Runs apt-get update when the entry is new or the suite's lists are missing.
lab_apt_suite() { # SUITE
  local suite=$1 file=/etc/apt/sources.list.d/vfio-ts-$1.sources pin=/etc/apt/preferences.d/vfio-ts-$1
  local entry uri key want codename update=0
  entry=$(lab_debian_main_entry) || lab_die "cannot find the system's main Debian entry in the apt sources (to add $suite)"
  read -r uri key <<<"$entry"
  want=$(printf '# Added by vfio-ts scripts/lab (the QEMU lab); remove to drop the suite.\n'
    printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\n' "$uri" "$suite"
    [ -z "$key" ] || printf 'Signed-By: %s\n' "$key")
  if [ "$(cat "$file" 2>/dev/null)" != "$want" ]; then
    lab_log "adding the apt suite $suite ($uri) in $file"
    printf '%s\n' "$want" | lab_root tee "$file.tmp" >/dev/null && lab_root mv "$file.tmp" "$file" \
      || lab_die "cannot write $file"
    update=1
  fi
  # A suite of another release (trixie-backports on Debian 12) gets priority 1, so that no upgrade ever
  # pulls from it (QEMU 11, built for trixie's libraries, would otherwise follow QEMU 10 from
  # bookworm-backports). The lab only downloads from such a suite: kernel sources and images.
  codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
  if [ "${suite%%-*}" != "$codename" ] && [ ! -f "$pin" ]; then
    printf '# Added by vfio-ts scripts/lab: never upgrade from %s by itself.\nPackage: *\nPin: release n=%s\nPin-Priority: 1\n' \
      "$suite" "$suite" | lab_root tee "$pin" >/dev/null || lab_die "cannot write $pin"
  fi
  [ "$update" = 1 ] || lab_apt_lists "$suite" >/dev/null || apt-cache policy 2>/dev/null | grep -q " $suite/main " || update=1
  [ "$update" = 1 ] || return 0
  lab_root apt-get update -qq >&2 || lab_die "apt-get update failed (after adding $suite)"
  apt-cache policy 2>/dev/null | grep -q " $suite/main " || lab_die "apt sees no $suite after adding $file"
}

# Installs packages from another suite (lab_apt_suite), whole: `apt-get install -t SUITE
# --no-install-recommends`, so their dependencies come from SUITE where they must and nothing else
# (mesa, systemd) is upgraded. Only packages not installed at SUITE's candidate version are installed.
lab_need_apt_from() { # SUITE PKG...
  local suite=$1 need="" p have cand; shift
  lab_apt_suite "$suite"
  for p in "$@"; do
    have=$(dpkg-query -W -f='${Status} ${Version}' "$p" 2>/dev/null | awk '/ok installed/{print $4}')
    cand=$(apt-cache policy -t "$suite" "$p" 2>/dev/null | awk '$1=="Candidate:"{print $2}')
    [ -n "$cand" ] && [ "$cand" != "(none)" ] || lab_die "apt offers no $p in $suite"
    [ "$have" = "$cand" ] || need="$need $p"
  done
  [ -z "$need" ] && return 0
  lab_log "installing from $suite:$need"
  lab_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t "$suite" --no-install-recommends $need >&2 \
    || lab_die "apt-get install -t $suite$need failed"
}

# Downloads PKG's candidate .deb into DIR with `apt-get download` (nothing is installed).
lab_apt_download() { # PKG DIR
  local sandbox=()
  # As root, apt would try to drop to its _apt user, which cannot write into a private cache dir.
  [ "$(id -u)" = 0 ] && sandbox=(-o APT::Sandbox::User=root)
  (cd "$2" && apt-get download -q "${sandbox[@]}" "$1" >&2) \
    || { lab_root apt-get update -qq >&2 && (cd "$2" && apt-get download -q "${sandbox[@]}" "$1" >&2); } \
    || lab_die "apt-get download $1 failed"
}

# The source tarball of the kernel line LINE (6.12 or 7.3), printed on stdout:
# - 6.12: Debian 12's linux-source-6.12, installed (/usr/src/linux-source-6.12.tar.xz);
# - 7.3: linux-source-7.3 from trixie-backports, downloaded and unpacked into the cache, not installed
#   (installing it with -t would also upgrade the host's linux-libc-dev to 7.3).
lab_kernel_source() { # LINE
  local line=$1 pkg=linux-source-$1 ver dir tmp src lists
  case $line in
    6.12)
      lab_need_apt "$pkg" xz-utils
      src=$(ls /usr/src/$pkg.tar.* 2>/dev/null | head -1)
      [ -n "$src" ] || lab_die "$pkg installed no tarball under /usr/src"
      echo "$src"; return 0 ;;
    7.3) lab_apt_suite trixie-backports ;;
    *) lab_die "unknown kernel line $line (6.12 or 7.3)" ;;
  esac
  # Asking apt costs seconds: the tarball fetched last is current until apt's lists change.
  src=$(ls -t "$VFIO_LAB_CACHE/src/$pkg"_*/"$pkg".tar.* 2>/dev/null | head -1)
  lists=$(lab_apt_lists trixie-backports) || lists=""
  if [ -n "$src" ] && [ -n "$lists" ] && [ "$(dirname "$src")" -nt "$lists" ]; then echo "$src"; return 0; fi
  ver=$(apt-cache policy "$pkg" 2>/dev/null | awk '$1=="Candidate:"{print $2}')
  if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
    # Offline, or the suite is gone: a tarball fetched earlier is still good.
    src=$(ls "$VFIO_LAB_CACHE/src/$pkg"_*/"$pkg".tar.* 2>/dev/null | sort -V | tail -1)
    [ -n "$src" ] || lab_die "apt offers no $pkg (it comes from Debian trixie-backports)"
    echo "$src"; return 0
  fi
  dir=$VFIO_LAB_CACHE/src/${pkg}_${ver//[:~+]/_}
  src=$(ls "$dir/$pkg".tar.* 2>/dev/null | head -1)
  [ -n "$src" ] && { touch "$dir"; echo "$src"; return 0; }
  mkdir -p "$VFIO_LAB_CACHE/src"
  ( # serialized: kernel.sh and headers.sh (deno and bun test runs) may want it at once
    flock 8
    src=$(ls "$dir/$pkg".tar.* 2>/dev/null | head -1)
    [ -n "$src" ] && { echo "$src"; exit 0; }
    tmp=$dir.tmp; rm -rf "$tmp"; mkdir -p "$tmp"
    lab_log "downloading $pkg $ver (about 170 MB, once)"
    lab_apt_download "$pkg" "$tmp"
    dpkg-deb --fsys-tarfile "$tmp"/*.deb | tar x -C "$tmp" --wildcards "./usr/src/$pkg.tar.*" \
      || lab_die "cannot unpack $pkg"
    mv "$tmp"/usr/src/"$pkg".tar.* "$tmp"/ && rm -rf "$tmp"/usr "$tmp"/*.deb
    for old in "$VFIO_LAB_CACHE/src/$pkg"_*; do [ "$old" != "$tmp" ] && rm -rf "$old"; done
    mv "$tmp" "$dir"
    ls "$dir/$pkg".tar.* | head -1
  ) 8>"$VFIO_LAB_CACHE/src/.lock-$pkg"
}
