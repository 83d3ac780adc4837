#!/usr/bin/env bash
# Build the rtvisor Linux test guest: a minimal Linux 6.1 kernel (uncompressed
# PVH vmlinux + bzImage) and a busybox initramfs (plain newc cpio).
#
# Inputs (all in the repository):
#   guests/linux/rtvisor.config          config fragment merged onto tinyconfig
#   guests/linux/patches/*.patch         kernel patches (patch -p1)
#   guests/linux/init                    the initramfs /init
#   guests/linux/checks/*.sh             /checks/NAME.sh, run for rtvisor.check=NAME
# plus Debian's linux-source-6.1 and busybox-static packages, which the script
# installs with apt-get when they (or the build tools) are missing.
#
# Outputs are cached outside the clone, keyed by a sha256 over the package
# versions, the files above and this script:
#   ${RTVISOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rtvisor}/guest-linux/<key>/
#     vmlinux  bzImage  initramfs.cpio  manifest.txt  (+ config, System.map)
#   .../guest-linux/current -> <key>   (the last build or cache hit)
# A cached run prints the paths and exits at once.  The last stdout line is
# always the output directory; progress goes to stderr.  The kernel is also
# cached on its own (guest-linux/kernel/<kernel-key>/, keyed by the kernel
# inputs only), so changing /init or a check rebuilds only the initramfs.
#
# Usage: scripts/build-guest-kernel.sh [--print-dir] [--force] [-h]
#   --print-dir  print the directory that would be used, do not build;
#                exit 1 if it is not built yet
#   --force      rebuild even if the outputs exist
# Environment: RTVISOR_CACHE, XDG_CACHE_HOME, RTVISOR_JOBS (default: nproc).
# See docs/guest-linux.md.
set -euo pipefail

PROG=build-guest-kernel
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GUEST_REL=guests/linux
GUEST=$REPO/$GUEST_REL
SELF_REL=scripts/build-guest-kernel.sh
KERNEL_TARBALL=/usr/src/linux-source-6.1.tar.xz
BUSYBOX=/bin/busybox
CACHE_ROOT=${RTVISOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rtvisor}
BASE=$CACHE_ROOT/guest-linux
# linux-source-6.1 and busybox-static are inputs (their versions are part of
# the key); the rest are build tools.  lz4 compresses the bzImage, patch
# applies the kernel patches.
PACKAGES=(linux-source-6.1 busybox-static bc flex bison libelf-dev libssl-dev
	cpio xz-utils build-essential lz4 patch)
# The command line the guest is tested with (QEMU and the rtvisor VMM), and
# the faster one for the emulating KVM (docs/guest-linux.md): retain_initrd
# skips poisoning the freed initrd, hiding ERMS/FSRM turns byte-wise
# rep movsb/stosb into rep movsq/stosq.
TESTED_CMDLINE="console=ttyS0 panic=-1 noxsave clearcpuid=popcnt,cx16,rdrand,rdseed,smap mitigations=off nopti rodata=off emukvm.pvmsys emukvm.exit_port=0xf4"
FAST_KVM_CMDLINE="console=ttyS0 panic=-1 noxsave clearcpuid=popcnt,cx16,rdrand,rdseed,smap,erms,fsrm mitigations=off nopti rodata=off retain_initrd highres=off emukvm.pvmsys emukvm.exit_port=0xf4"

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

print_dir=0
force=0
while [ $# -gt 0 ]; do
	case $1 in
	--print-dir) print_dir=1 ;;
	--force) force=1 ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown argument: $1 (try --help)" ;;
	esac
	shift
done

# ---------------------------------------------------------------- packages --
missing_packages() {
	# One dpkg-query for all packages; absent ones produce no output line.
	local installed
	installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${PACKAGES[@]}" 2>/dev/null |
		awk '$2 == "install" && $3 == "ok" && $4 == "installed" { print $1 }') || true
	local p
	for p in "${PACKAGES[@]}"; do
		grep -qxF "$p" <<<"$installed" || printf '%s\n' "$p"
	done
}

ensure_packages() {
	local missing
	missing=$(missing_packages)
	[ -z "$missing" ] && return 0
	# shellcheck disable=SC2086
	log "installing missing packages: $(echo $missing)"
	local sudo=()
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null || die "not root and no sudo: install $(echo $missing)"
		sudo=(sudo)
	fi
	"${sudo[@]}" apt-get update >&2
	# shellcheck disable=SC2086
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y --no-install-recommends $missing >&2
	missing=$(missing_packages)
	[ -z "$missing" ] || die "still missing after apt-get install: $(echo $missing)"
}

pkg_version() { dpkg-query -W -f='${Version}' "$1"; }

# --------------------------------------------------------------------- key --
input_files() {
	# Paths relative to the repository, in a fixed order.
	(
		cd "$REPO"
		printf '%s\n' "$GUEST_REL/rtvisor.config"
		ls -1 "$GUEST_REL"/patches/*.patch 2>/dev/null | LC_ALL=C sort
		printf '%s\n' "$GUEST_REL/init"
		printf '%s\n' "$GUEST_REL/inittab"
		ls -1 "$GUEST_REL"/checks/*.sh 2>/dev/null | LC_ALL=C sort
		ls -1 "$GUEST_REL"/tools/*.c 2>/dev/null | LC_ALL=C sort
		printf '%s\n' "$SELF_REL"
	)
}

key_material() {
	echo "rtvisor guest-linux"
	echo "linux-source-6.1 $(pkg_version linux-source-6.1)"
	echo "busybox-static $(pkg_version busybox-static)"
	(cd "$REPO" && input_files | xargs -d '\n' sha256sum)
}

# The kernel's own cache key: the kernel inputs and the code that builds it
# (the function bodies, so editing comments or the initramfs part of this
# script does not recompile the kernel).
kernel_key_material() {
	echo "rtvisor guest-linux kernel"
	echo "linux-source-6.1 $(pkg_version linux-source-6.1) $KERNEL_TARBALL"
	(cd "$REPO" && input_files | grep -E "^$GUEST_REL/(rtvisor.config|patches/)" | xargs -d '\n' sha256sum)
	printf '%s\n' "${MAKE_VARS[@]}" "${KFILES[@]}"
	declare -f build_kernel verify_config
}

outputs_complete() {
	local d=$1 f
	for f in vmlinux bzImage initramfs.cpio manifest.txt; do
		[ -s "$d/$f" ] || return 1
	done
}

set_current() {
	local tmp_link="$BASE/.current.$$"
	ln -sfn "$KEY" "$tmp_link"
	mv -Tf "$tmp_link" "$BASE/current"
}

print_result() {
	local d=$BASE/$KEY
	echo "vmlinux=$d/vmlinux"
	echo "bzImage=$d/bzImage"
	echo "initramfs=$d/initramfs.cpio"
	echo "manifest=$d/manifest.txt"
	echo "$d"
}

for f in rtvisor.config init inittab; do
	[ -f "$GUEST/$f" ] || die "missing $GUEST_REL/$f"
done

if [ "$print_dir" = 1 ]; then
	[ -z "$(missing_packages | grep -xE 'linux-source-6.1|busybox-static' || true)" ] ||
		die "linux-source-6.1/busybox-static not installed: nothing is built"
	KEY=$(key_material | sha256sum | cut -c1-64)
	echo "$BASE/$KEY"
	outputs_complete "$BASE/$KEY" || exit 1
	exit 0
fi

ensure_packages
KEY=$(key_material | sha256sum | cut -c1-64)
OUT=$BASE/$KEY

if [ "$force" = 0 ] && outputs_complete "$OUT"; then
	set_current
	print_result
	exit 0
fi

# ------------------------------------------------------------------- build --
mkdir -p "$BASE"
# One build at a time (another one may be building the same key right now).
exec 9>"$BASE/.lock"
if ! flock -n 9; then
	log "another build holds $BASE/.lock; waiting"
	flock 9
fi
if [ "$force" = 0 ] && outputs_complete "$OUT"; then
	set_current
	print_result
	exit 0
fi
# Leftovers of interrupted builds (never taken as done: they are not <key>/).
rm -rf "$BASE"/.tmp-*

START=$SECONDS
TMP=$(mktemp -d "$BASE/.tmp-$KEY.XXXXXX")
LOG=$TMP/build.log
cleanup() {
	local rc=$?
	if [ $rc -ne 0 ] && [ -f "$LOG" ]; then
		cp -f "$LOG" "$BASE/last-failed-build.log" 2>/dev/null || true
		log "build FAILED (exit $rc); last lines of the log:"
		tail -n 25 "$LOG" >&2 || true
		log "full log: $BASE/last-failed-build.log"
	fi
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

run() { # run CMD... with output to the build log
	printf '+ %s\n' "$*" >>"$LOG"
	"$@" >>"$LOG" 2>&1
}

SRC=$TMP/src
STAGE=$TMP/out
JOBS=${RTVISOR_JOBS:-$(nproc)}
MAKE_VARS=(ARCH=x86_64 KBUILD_BUILD_USER=rtvisor KBUILD_BUILD_HOST=rtvisor)
MAKE=(make -C "$SRC" "${MAKE_VARS[@]}")
KFILES=(vmlinux bzImage config System.map kernelrelease gen_init_cpio)
mkdir -p "$STAGE"
log "building guest $KEY in $TMP (log: $LOG)"

kernel_complete() {
	local f
	for f in "${KFILES[@]}"; do
		[ -s "$KDIR/$f" ] || return 1
	done
}

# Every line of the fragment must be in .config as written; for
# "# CONFIG_X is not set" an absent CONFIG_X is fine too.
verify_config() {
	local frag=$1 config=$2 bad=0 line opt actual
	while IFS= read -r line; do
		case $line in
		CONFIG_*=*)
			opt=${line%%=*}
			if ! grep -qxF -- "$line" "$config"; then
				actual=$(grep -E "^$opt=|^# $opt is not set" "$config" || echo "(absent)")
				log "config mismatch: wanted '$line', got '$actual'"
				bad=1
			fi
			;;
		"# CONFIG_"*" is not set")
			opt=${line#\# }
			opt=${opt%% *}
			if actual=$(grep -E "^$opt=" "$config"); then
				log "config mismatch: wanted '$line', got '$actual'"
				bad=1
			fi
			;;
		esac
	done <"$frag"
	return $bad
}

build_kernel() {
	local kstage=$TMP/kernel p
	mkdir -p "$SRC" "$kstage"
	log "extracting $KERNEL_TARBALL"
	run tar -xJf "$KERNEL_TARBALL" -C "$SRC" --strip-components=1

	for p in $(cd "$REPO" && ls -1 "$GUEST_REL"/patches/*.patch 2>/dev/null | LC_ALL=C sort); do
		log "applying $p"
		run patch -d "$SRC" -p1 --forward --batch -i "$REPO/$p" || die "patch $p does not apply"
	done

	log "configuring: tinyconfig + $GUEST_REL/rtvisor.config"
	run "${MAKE[@]}" tinyconfig
	(cd "$SRC" && run scripts/kconfig/merge_config.sh -m .config "$GUEST/rtvisor.config")
	run "${MAKE[@]}" olddefconfig
	verify_config "$GUEST/rtvisor.config" "$SRC/.config" ||
		die "the kernel config does not match $GUEST_REL/rtvisor.config (a dependency or select overrides it)"
	log "config verified: all $(grep -cE '^CONFIG_|^# CONFIG_' "$GUEST/rtvisor.config") fragment lines as requested"

	log "compiling vmlinux and bzImage (make -j$JOBS; 10+ min on 2 busy cores)"
	local kstart=$SECONDS
	run "${MAKE[@]}" -j"$JOBS" vmlinux bzImage
	"${MAKE[@]}" -s kernelrelease >"$kstage/kernelrelease"
	echo "$((SECONDS - kstart))" >"$kstage/compile_seconds"

	# vmlinux must be a 64-bit ELF with the PVH entry note (Xen ELF note
	# type 0x12, XEN_ELFNOTE_PHYS32_ENTRY).
	readelf -h "$SRC/vmlinux" | grep -q 'Class:.*ELF64' || die "vmlinux is not ELF64"
	readelf -n "$SRC/vmlinux" | grep -E '^\s*Xen\s' | grep -qE '0x00000012|PHYS32_ENTRY' ||
		die "vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"

	cp "$SRC/vmlinux" "$SRC/arch/x86/boot/bzImage" "$SRC/System.map" "$kstage/"
	cp "$SRC/.config" "$kstage/config"
	run cc -O2 -o "$kstage/gen_init_cpio" "$SRC/usr/gen_init_cpio.c"
	mkdir -p "$BASE/kernel"
	rm -rf "$KDIR"
	mv -T "$kstage" "$KDIR"
	rm -rf "$SRC"
}

KKEY=$(kernel_key_material | sha256sum | cut -c1-64)
KDIR=$BASE/kernel/$KKEY
if kernel_complete; then
	log "reusing kernel $KDIR"
else
	build_kernel
fi
KREL=$(cat "$KDIR/kernelrelease")
for f in vmlinux bzImage config System.map; do
	cp "$KDIR/$f" "$STAGE/$f"
done

# --------------------------------------------------------------- initramfs --
log "building initramfs.cpio (busybox $(pkg_version busybox-static))"
readelf -l "$BUSYBOX" | grep -q INTERP && die "$BUSYBOX is not statically linked"
LIST=$TMP/initramfs.list
mkdir -p "$TMP/tools"
for t in "$GUEST"/tools/*.c; do
	[ -e "$t" ] || continue
	run cc -static -Os -s -Wall -o "$TMP/tools/$(basename "$t" .c)" "$t"
done
{
	echo "# generated by $SELF_REL"
	echo "dir /dev 0755 0 0"
	echo "nod /dev/console 0600 0 0 c 5 1"
	echo "nod /dev/null 0666 0 0 c 1 3"
	echo "nod /dev/mem 0600 0 0 c 1 1"
	echo "nod /dev/ttyS0 0600 0 0 c 4 64"
	echo "dir /proc 0555 0 0"
	echo "dir /sys 0555 0 0"
	echo "dir /tmp 1777 0 0"
	echo "dir /root 0700 0 0"
	echo "dir /mnt 0755 0 0"
	echo "dir /checks 0755 0 0"
	echo "dir /bin 0755 0 0"
	# busybox and /bin/sh only, no per-applet symlinks: every initramfs
	# entry costs boot time on the emulating KVM (the ~270 symlinks cost
	# tens of seconds there), and none is needed.  ash
	# (FEATURE_SH_STANDALONE) finds applets by name itself and re-executes
	# /proc/self/exe for them; /init calls /bin/busybox APPLET explicitly
	# until /proc is mounted.
	echo "file /bin/busybox $BUSYBOX 0755 0 0"
	echo "slink /bin/sh /bin/busybox 0777 0 0"
	echo "file /init $GUEST/init 0755 0 0"
	echo "dir /etc 0755 0 0"
	echo "file /etc/inittab $GUEST/inittab 0644 0 0"
	# Small static C tools the checks need (what busybox cannot do: map a BAR).
	for t in "$GUEST"/tools/*.c; do
		[ -e "$t" ] || continue
		echo "file /bin/$(basename "$t" .c) $TMP/tools/$(basename "$t" .c) 0755 0 0"
	done
	for c in "$GUEST"/checks/*.sh; do
		[ -e "$c" ] || continue
		echo "file /checks/$(basename "$c") $c 0755 0 0"
	done
} >"$LIST"
cp "$LIST" "$STAGE/initramfs.list"
"$KDIR/gen_init_cpio" -t "${SOURCE_DATE_EPOCH:-0}" "$LIST" >"$STAGE/initramfs.cpio" 2>>"$LOG" ||
	die "gen_init_cpio failed"

# ---------------------------------------------------------------- manifest --
BUILD_SECONDS=$((SECONDS - START))
{
	echo "# rtvisor guest-linux build (scripts/build-guest-kernel.sh)"
	echo "key: $KEY"
	echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n) ($(uname -srm))"
	echo "build_seconds: $BUILD_SECONDS (make -j$JOBS)"
	echo "kernel_release: $KREL"
	echo "linux-source-6.1: $(pkg_version linux-source-6.1)"
	echo "busybox-static: $(pkg_version busybox-static)"
	echo "compiler: $(cc --version | head -n1)"
	echo "kernel_dir: $KDIR (compiled in $(cat "$KDIR/compile_seconds" 2>/dev/null || echo '?')s)"
	echo "cmdline: $TESTED_CMDLINE"
	echo "cmdline_fast_kvm: $FAST_KVM_CMDLINE"
	echo "qemu_tcg_example: qemu-system-x86_64 -M microvm,acpi=off -accel tcg -m 128 -nographic -no-reboot -kernel vmlinux -initrd initramfs.cpio -device isa-debug-exit,iobase=0xf4,iosize=1 -append \"$TESTED_CMDLINE rtvisor.check=uname\""
	echo "inputs:"
	(cd "$REPO" && input_files | xargs -d '\n' sha256sum | sed 's/^/  /')
	echo "outputs:"
	(cd "$STAGE" && for f in vmlinux bzImage initramfs.cpio config System.map initramfs.list; do
		printf '  %s  %10d  %s\n' "$(sha256sum "$f" | cut -d' ' -f1)" "$(stat -c %s "$f")" "$f"
	done)
} >"$STAGE/manifest.txt"

# ----------------------------------------------------------------- publish --
rm -rf "$OUT"
mv -T "$STAGE" "$OUT"
set_current
log "done in ${BUILD_SECONDS}s: $OUT"
print_result
