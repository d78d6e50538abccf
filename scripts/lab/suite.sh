#!/usr/bin/env bash
# The lab test suite (called by scripts/test.mjs): for each configuration, boot ONE guest with
# scripts/lab/run.sh and run tests/lab inside it on Deno and on Bun, writing JUnit files
# OUTDIR/<config>-deno.xml and OUTDIR/<config>-bun.xml.
#
# usage: scripts/lab/suite.sh OUTDIR          (OUTDIR must lie inside the repo: the guest writes there)
#   configurations (<kernel>-<iommu>, see run.sh --kernel and --iommu; all on QEMU 10), in this order:
#     stock-intel      Debian's stock 6.12 kernel, emulated VT-d: the legacy container API (LTS users)
#     custom7-intel    `kernel.sh 7.3`, VT-d: legacy and iommufd (vfio cdev), dma-buf export, SR-IOV
#     custom7-noiommu  the custom 7.3 kernel, no IOMMU: the noiommu group and the noiommu-vfioN cdev
#     custom-intel     `kernel.sh 6.12`, VT-d: legacy and iommufd on 6.12 (no SR-IOV, no dma-buf)
#     custom-noiommu   the custom 6.12 kernel, no IOMMU (noiommu group; 6.12 makes no noiommu cdev)
#   and, on request only (it would take the warm run past 35 minutes on 2 cores):
#     stock7-intel     Debian's own 7.x kernel (trixie-backports), VT-d: legacy only, with dma-buf
#   env: VFIO_LAB_CONFIGS="stock-intel ..."  run these instead (VFIO_LAB_CONFIGS=all: all six)
#        VFIO_LAB_TIMEOUT=900                 limit per guest, in seconds (boot and both runtimes)
#   The guests see VFIO_TS_LAB_CONFIG=<config> and every VFIO_TS_* variable set here.
#
# A runtime that fails or crashes does not stop the suite. When it leaves no JUnit file, or exits
# non-zero while its file reports no failure, a one-case failing JUnit file says so
# (<config>-<runtime>.xml or <config>-<runtime>-status.xml), so the count cannot come out clean.
# Exits non-zero only when a guest failed to boot or to report a status; <config>-boot.xml records it.
#
# Time, measured on 2 cores under TCG (QEMU 10.0.2), from a clean clone with a warm cache: a guest boots
# to the command in 2-3.5 s; the tests take the rest. Per configuration: stock-intel 462 s, custom7-intel
# 505 s, custom7-noiommu 236 s, custom-intel 377 s, custom-noiommu 184 s: about 29 minutes for the
# default five (stock7-intel adds 355 s). A first run adds the two custom kernel builds (7.3: 6.5 min,
# 6.12: about 7 min), the stock kernel download (~10 s; stock7: ~45 s) and installing QEMU 10 (~20 s).
# VFIO_LAB_CONFIGS="stock-intel custom7-intel custom7-noiommu" is the short matrix (~20 min).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"
repo=$(cd "$here/../.." && pwd -P)

CONFIGS=${VFIO_LAB_CONFIGS:-stock-intel custom7-intel custom7-noiommu custom-intel custom-noiommu}
[ "$CONFIGS" = all ] && CONFIGS="stock-intel custom7-intel custom7-noiommu stock7-intel custom-intel custom-noiommu"
# Boot takes seconds; the budget is for the tests. Three hung guests still fit CI's 90 minutes.
export VFIO_LAB_TIMEOUT=${VFIO_LAB_TIMEOUT:-900}

xml_escape() { sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g'; }

# A JUnit file with one failing case, for failures no runtime could report itself.
junit_failure() { # FILE SUITE CASE MESSAGE
  local suite name msg
  suite=$(printf %s "$2" | xml_escape); name=$(printf %s "$3" | xml_escape); msg=$(printf %s "$4" | xml_escape)
  cat > "$1" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="lab" tests="1" failures="1">
  <testsuite name="$suite" tests="1" failures="1">
    <testcase name="$name" classname="$suite"><failure message="$msg">$msg</failure></testcase>
  </testsuite>
</testsuites>
EOF
}

# The command each guest runs: both runtimes, each status saved for the host to check.
guest_cmd() { # CONFIG
  local cfg=$1 files
  files=$(cd "$repo" && find tests/lab -name '*.test.ts' | sort | sed 's|^|./|' | tr '\n' ' ')
  cat <<EOF
out=$(printf %q "$OUT")
deno test -A --no-check --reporter=dot --junit-path="\$out/$cfg-deno.xml" tests/lab/
echo \$? > "\$out/.status-$cfg-deno"
bun test --reporter=junit --reporter-outfile="\$out/$cfg-bun.xml" $files
echo \$? > "\$out/.status-$cfg-bun"
exit 0
EOF
}

# After a guest ran: make sure each runtime's outcome shows up as JUnit.
check_runtime() { # CONFIG RUNTIME
  local cfg=$1 rt=$2 xml="$OUT/$1-$2.xml" sf="$OUT/.status-$1-$2" status
  status=$(cat "$sf" 2>/dev/null || echo "unknown"); rm -f "$sf"
  if [ ! -s "$xml" ]; then
    lab_log "$cfg: $rt wrote no JUnit file (exit status $status)"
    junit_failure "$xml" "lab $cfg $rt" "$rt test" \
      "$rt test wrote no JUnit report (exit status $status; console log: $VFIO_LAB_CACHE/logs/$cfg.log)"
  elif [ "$status" != 0 ] && ! grep -q '<failure' "$xml"; then
    lab_log "$cfg: $rt exited with status $status but reported no failing test"
    junit_failure "$OUT/$cfg-$rt-status.xml" "lab $cfg $rt" "$rt test exit status" \
      "$rt test exited with status $status without a failing test case (console log: $VFIO_LAB_CACHE/logs/$cfg.log)"
  else
    lab_log "$cfg: $rt exited with status $status"
  fi
}

run_config() { # CONFIG
  local cfg=$1 kernel iommu rc=0 start=$SECONDS
  case $cfg in
    stock-intel | stock7-intel | custom-intel | custom7-intel) kernel=${cfg%-intel} iommu=intel ;;
    custom-noiommu | custom7-noiommu) kernel=${cfg%-noiommu} iommu=none ;;
    *) lab_die "unknown lab configuration $cfg (stock-intel, stock7-intel, custom7-intel, custom7-noiommu, custom-intel, custom-noiommu)" ;;
  esac
  rm -f "$OUT/$cfg"-*.xml "$OUT/.status-$cfg"-*
  lab_log "== $cfg"
  VFIO_TS_LAB_CONFIG=$cfg "$here/run.sh" --kernel "$kernel" --iommu "$iommu" --name "$cfg" -- "$(guest_cmd "$cfg")" || rc=$?
  if [ "$rc" != 0 ]; then
    lab_log "$cfg: FAILED: the guest did not boot or report (status $rc; console log: $VFIO_LAB_CACHE/logs/$cfg.log)"
    junit_failure "$OUT/$cfg-boot.xml" "lab $cfg" "the guest boots and reports a status" \
      "the lab guest failed with status $rc (124: timeout; console log: $VFIO_LAB_CACHE/logs/$cfg.log)"
    rm -f "$OUT/.status-$cfg"-*
    return 1
  fi
  check_runtime "$cfg" deno
  check_runtime "$cfg" bun
  lab_log "$cfg: done in $((SECONDS - start))s"
}

main() {
  [ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
  mkdir -p "$1"
  OUT=$(cd "$1" && pwd -P)
  case $OUT/ in "$repo"/*) ;; *) lab_die "OUTDIR must be inside the repo ($repo), which the guest shares read-write: $OUT" ;; esac
  local cfg failed="" start=$SECONDS
  for cfg in $CONFIGS; do run_config "$cfg" || failed+=" $cfg"; done
  lab_log "suite finished in $((SECONDS - start))s"
  [ -z "$failed" ] || lab_die "guests failed:$failed"
}

main "$@"
