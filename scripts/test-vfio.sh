#!/usr/bin/env bash
# Runs rtvisor's VFIO layer against the real Linux vfio-pci driver: a QEMU q35 guest (TCG only,
# never /dev/kvm) with an emulated Intel IOMMU (intel-iommu, interrupt remapping) and QEMU's
# `edu` PCI device, booting the stock Debian 6.1 kernel with an initramfs that binds edu to
# vfio-pci and runs the test binary inside the guest.
#
#   scripts/test-vfio.sh [--binary PATH] [--timeout SECS] [--keep] [--verbose] [-- ARGS...]
#
# --binary PATH: the program to run in the guest as `PATH --device <BDF> ARGS...` (its shared
#     libraries, as `ldd` lists them, are copied with their paths). Default: build
#     rtvisor-vfio-check (swift build -c release, scratch path .build-vfio, static Swift
#     stdlib when possible) and run it with ARGS = --edu.
# --timeout SECS: bound on the QEMU run (default 600).
# --keep: keep the work directory (initramfs, guest log); its path is printed.
# --verbose: stream the guest console to stderr while it runs.
#
# The kernel is the Debian package linux-image-amd64 depends on, fetched with `apt-get download`
# and unpacked (never installed) into
#   ${RTVISOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rtvisor}/vfio-kernel/<package>_<version>/
# with vmlinuz, its config and the vfio-pci modules (dependency order from modinfo).
# The guest prints `VFIO-TEST-EXIT <status>` after the binary ran (or
# `VFIO-TEST-SETUP-FAILED <why>` if it could not get that far). Passes only on
# `VFIO-TEST-EXIT 0`; otherwise prints the guest log and exits 1 (2: setup on the host failed).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
binary=
timeout_s=600
keep=0
verbose=0
extra=()
extra_given=0
while [ $# -gt 0 ]; do
	case $1 in
	--binary) binary=$2; shift 2 ;;
	--binary=*) binary=${1#*=}; shift ;;
	--timeout) timeout_s=$2; shift 2 ;;
	--timeout=*) timeout_s=${1#*=}; shift ;;
	--keep) keep=1; shift ;;
	--verbose|-v) verbose=1; shift ;;
	--) shift; extra=("$@"); extra_given=1; break ;;
	-h|--help) sed -n '2,23p' "$0"; exit 0 ;;
	*) echo "test-vfio: unknown argument '$1' (see --help)" >&2; exit 2 ;;
	esac
done

say() { printf 'test-vfio: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }
t_start=$(date +%s)
elapsed() { echo $(($(date +%s) - t_start)); }

# Host tools. busybox-static is not installed (it replaces Debian's `busybox`, which the
# host's initramfs-tools may use): its package is unpacked into the cache like the kernel.
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v cpio >/dev/null || need+=(cpio)
command -v modinfo >/dev/null || [ -x /usr/sbin/modinfo ] || need+=(kmod)
command -v gzip >/dev/null || need+=(gzip)
command -v ldd >/dev/null || need+=(libc-bin)
if [ ${#need[@]} -gt 0 ]; then
	say "installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >&2 && apt-get install -y -q "${need[@]}" >&2 || die "apt-get install ${need[*]} failed"
fi
modinfo=$(command -v modinfo || echo /usr/sbin/modinfo)

cache=${RTVISOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rtvisor}/vfio-kernel
mkdir -p "$cache"

# apt-get download runs as the _apt user when it can: it downloads into a world-writable
# directory under /tmp (no "unsandboxed" warning), then the .deb moves to DIR.
apt_download() { # PACKAGE DIR
	local pkg=$1 dir=$2 dl
	mkdir -p "$dir"
	dl=$(mktemp -d /tmp/rtvisor-apt.XXXXXX) && chmod 777 "$dl" || return 1
	if ! (cd "$dl" && apt-get download "$pkg" >&2); then
		say "apt-get download $pkg failed; trying after apt-get update"
		apt-get update -q >&2 || true
		(cd "$dl" && apt-get download "$pkg" >&2) || { rm -rf "$dl"; return 1; }
	fi
	mv "$dl"/*.deb "$dir"/ && rm -rf "$dl"
}

candidate_version() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }'; }

# --- 1. the Debian kernel and its vfio-pci modules -------------------------------------------
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
if [ -z "$kpkg" ]; then
	apt-get update -q >&2 || true
	kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
fi
kdir=
if [ -n "$kpkg" ]; then
	kver=$(candidate_version "$kpkg")
	[ -n "$kver" ] && [ "$kver" != "(none)" ] && kdir=$cache/${kpkg}_$kver
fi
if [ -z "$kdir" ]; then
	# No package index: reuse the newest kernel already in the cache.
	kdir=$(ls -d "$cache"/linux-image-*/ 2>/dev/null | sort -V | tail -n 1)
	kdir=${kdir%/}
	[ -n "$kdir" ] && [ -e "$kdir/.complete" ] || die "cannot resolve linux-image-amd64's kernel package (apt-cache depends) and nothing is cached in $cache"
	say "apt cannot resolve the kernel package; reusing $kdir"
fi

# The modules vfio-pci needs on 6.1; their dependencies come from modinfo.
want_modules=(vfio vfio_iommu_type1 vfio-pci-core vfio-pci irqbypass)

if [ -e "$kdir/.complete" ]; then
	say "kernel: $(basename "$kdir") (cached in $kdir)"
else
	t0=$(date +%s)
	say "kernel: fetching $kpkg $kver with apt-get download (not installed)"
	rm -rf "$kdir"
	tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	apt_download "$kpkg" "$tmp/deb" || die "apt-get download $kpkg failed"
	dpkg-deb -x "$tmp"/deb/*.deb "$tmp/root" || die "dpkg-deb -x failed"
	rm -rf "$tmp/deb"
	mkdir -p "$tmp/out/modules"
	cp "$tmp"/root/boot/vmlinuz-* "$tmp/out/vmlinuz"
	cp "$tmp"/root/boot/config-* "$tmp/out/config"
	moddir=$(ls -d "$tmp"/root/lib/modules/*/ | head -n 1)
	basename "$moddir" > "$tmp/out/release"
	# name (with '-' and '_' equivalent) -> file
	find_module() {
		local n=${1//-/_} f b
		while IFS= read -r f; do
			b=$(basename "$f"); b=${b%%.ko*}
			[ "${b//-/_}" = "$n" ] && { echo "$f"; return 0; }
		done < <(find "$moddir" -name '*.ko*')
		return 1
	}
	# Decompressed copy (busybox insmod may not read .ko.xz/.ko.zst/.ko.gz).
	plain_module() { # FILE -> prints the decompressed file in out/modules
		local f=$1 b
		b=$(basename "$f"); b=${b%%.ko*}.ko
		case $f in
		*.ko) cp "$f" "$tmp/out/modules/$b" ;;
		*.ko.xz) xz -dc "$f" > "$tmp/out/modules/$b" ;;
		*.ko.zst) zstd -qdc "$f" > "$tmp/out/modules/$b" ;;
		*.ko.gz) gzip -dc "$f" > "$tmp/out/modules/$b" ;;
		*) die "unknown module format: $f" ;;
		esac
		echo "$tmp/out/modules/$b"
	}
	declare -A seen=()
	order=()
	visit() { # depth first: dependencies before the module
		local n=${1//-/_} f plain d
		[ -n "${seen[$n]:-}" ] && return 0
		seen[$n]=1
		f=$(find_module "$1") || die "module $1 is not in $kpkg (built in? check $tmp/out/config)"
		plain=$(plain_module "$f")
		for d in $("$modinfo" -F depends "$plain" | tr ',' ' '); do visit "$d"; done
		order+=("$(basename "$plain" .ko)")
	}
	for m in "${want_modules[@]}"; do visit "$m"; done
	printf '%s\n' "${order[@]}" > "$tmp/out/modules/order"
	rm -rf "$kdir" && mv "$tmp/out" "$kdir"
	touch "$kdir/.complete"
	rm -rf "$tmp"; trap - EXIT
	say "kernel: unpacked into $kdir in $(($(date +%s) - t0)) s"
fi
grep -q '^CONFIG_INTEL_IOMMU=y' "$kdir/config" || die "$(basename "$kdir"): CONFIG_INTEL_IOMMU is not built in (=y); intel_iommu=on cannot work"
grep -q '^CONFIG_IRQ_REMAP=y' "$kdir/config" || say "warning: CONFIG_IRQ_REMAP is not =y; vfio_iommu_type1 will refuse MSI without interrupt remapping"
say "kernel $(cat "$kdir/release"): CONFIG_INTEL_IOMMU=y; modules in order: $(tr '\n' ' ' < "$kdir/modules/order")"

# busybox-static, unpacked next to the kernels.
bb_pkg=busybox-static
bb_ver=$(candidate_version "$bb_pkg")
bb=
if [ -n "$bb_ver" ] && [ "$bb_ver" != "(none)" ]; then
	bbdir=$cache/${bb_pkg}_$bb_ver
	if [ ! -x "$bbdir/busybox" ]; then
		tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
		apt_download "$bb_pkg" "$tmp/deb" && dpkg-deb -x "$tmp"/deb/*.deb "$tmp/root" \
			&& mkdir -p "$bbdir" && cp "$tmp/root/bin/busybox" "$bbdir/busybox" || say "could not fetch $bb_pkg"
		rm -rf "$tmp"
	fi
	[ -x "$bbdir/busybox" ] && bb=$bbdir/busybox
fi
if [ -z "$bb" ]; then
	bb=$(ls -d "$cache"/busybox-static_*/busybox 2>/dev/null | sort -V | tail -n 1)
fi
if [ -z "$bb" ] && command -v busybox >/dev/null && file -L "$(command -v busybox)" 2>/dev/null | grep -q 'statically linked'; then
	bb=$(command -v busybox)
fi
[ -n "$bb" ] || die "no static busybox (apt-get download busybox-static failed)"

# --- the test binary ------------------------------------------------------------------------
if [ -z "$binary" ]; then
	command -v swift >/dev/null || die "swift is not on PATH (needed to build rtvisor-vfio-check)"
	[ $extra_given = 1 ] || extra=(--edu)
	t0=$(date +%s)
	scratch=$repo/.build-vfio
	build=(swift build -c release --product rtvisor-vfio-check --scratch-path "$scratch")
	say "building rtvisor-vfio-check: ${build[*]} --static-swift-stdlib"
	if (cd "$repo" && "${build[@]}" --static-swift-stdlib 2>&1 | grep -v '^\[' >&2; exit "${PIPESTATUS[0]}"); then
		binary=$(cd "$repo" && "${build[@]}" --static-swift-stdlib --show-bin-path)/rtvisor-vfio-check
	else
		say "the --static-swift-stdlib build failed; building with the shared Swift libraries (copied from ldd)"
		(cd "$repo" && "${build[@]}" 2>&1 | grep -v '^\[' >&2; exit "${PIPESTATUS[0]}") \
			|| die "swift build --product rtvisor-vfio-check failed"
		binary=$(cd "$repo" && "${build[@]}" --show-bin-path)/rtvisor-vfio-check
	fi
	say "built $binary in $(($(date +%s) - t0)) s"
fi
[ -x "$binary" ] || die "test binary $binary is not an executable file"
binary=$(readlink -f "$binary")

# --- 2. the initramfs -----------------------------------------------------------------------
work=$(mktemp -d /tmp/rtvisor-vfio.XXXXXX)
cleanup() { if [ $keep = 1 ]; then say "kept $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT
root=$work/root
mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,modules,test}
cp "$bb" "$root/bin/busybox"
cp "$kdir"/modules/*.ko "$kdir/modules/order" "$root/modules/"
bname=$(basename "$binary")
cp "$binary" "$root/test/$bname"
libs=0
if ldd_out=$(ldd "$binary" 2>&1); then
	while read -r lib; do
		[ -n "$lib" ] || continue
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
		libs=$((libs + 1))
	done < <(printf '%s\n' "$ldd_out" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
	printf '%s\n' "$ldd_out" | grep -q 'not found' && die "ldd $binary: a library is not found:
$ldd_out"
fi
say "initramfs: busybox, $(wc -l < "$kdir/modules/order") modules, $bname ($(du -h "$binary" | cut -f1)) and $libs shared libraries"

args_q=
for a in "${extra[@]}"; do args_q+=" '${a//\'/\'\\\'\'}'"; done
cat > "$root/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin HOME=/ TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
setup_failed() { echo "VFIO-TEST-SETUP-FAILED \$*"; dmesg | tail -n 40; poweroff -f; sleep 5; }
echo "VFIO-GUEST: kernel \$(uname -r), cmdline: \$(cat /proc/cmdline)"
dmesg | grep -iE 'DMAR|IOMMU|remapping' | head -n 20
for m in \$(cat /modules/order); do
	insmod /modules/\$m.ko || setup_failed "insmod \$m"
done
echo "VFIO-GUEST: modules loaded: \$(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
bdf=
for d in /sys/bus/pci/devices/*; do
	[ "\$(cat \$d/vendor)" = 0x1234 ] && [ "\$(cat \$d/device)" = 0x11e8 ] && bdf=\${d##*/}
done
[ -n "\$bdf" ] || setup_failed "no edu device (1234:11e8) in /sys/bus/pci/devices"
dev=/sys/bus/pci/devices/\$bdf
[ -e \$dev/iommu_group ] || setup_failed "\$bdf has no IOMMU group (is the IOMMU on?)"
group=\$(basename \$(readlink \$dev/iommu_group))
echo "VFIO-GUEST: edu at \$bdf, IOMMU group \$group: \$(ls /sys/kernel/iommu_groups/\$group/devices | tr '\n' ' ')"
echo vfio-pci > \$dev/driver_override
[ -e \$dev/driver ] && echo \$bdf > \$dev/driver/unbind
echo \$bdf > /sys/bus/pci/drivers_probe
drv=\$(basename "\$(readlink \$dev/driver 2>/dev/null)")
[ "\$drv" = vfio-pci ] || setup_failed "\$bdf is bound to '\$drv', not vfio-pci"
echo "VFIO-GUEST: \$bdf bound to vfio-pci; /dev/vfio:"
ls -l /dev/vfio
dmesg -n 4
echo "VFIO-TEST-BEGIN /test/$bname --device \$bdf$args_q"
/test/$bname --device \$bdf$args_q
status=\$?
echo "VFIO-TEST-EXIT \$status"
echo "VFIO-GUEST: kernel messages about vfio, DMAR and \$bdf:"
dmesg | grep -iE "vfio|dmar|fault|\$bdf" | tail -n 30
poweroff -f
EOF
chmod 755 "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initramfs.gz"
say "initramfs: $(du -h "$work/initramfs.gz" | cut -f1) compressed, $(($(date +%s) - t_start)) s so far"

# --- 3. the guest ---------------------------------------------------------------------------
# q35 with an emulated VT-d: interrupt remapping (vfio_iommu_type1 refuses MSI without it),
# caching-mode (required for guest-visible mappings of assigned devices); edu gets its own
# IOMMU group on the root bus. TCG only: -accel tcg, no /dev/kvm.
log=$work/guest.log
qemu=(qemu-system-x86_64 -M q35,kernel-irqchip=split -accel tcg -cpu max -m 1024 -smp 1
	-device intel-iommu,intremap=on,caching-mode=on -device edu
	-nographic -no-reboot -kernel "$kdir/vmlinuz" -initrd "$work/initramfs.gz"
	-append "console=ttyS0 intel_iommu=on panic=-1 rdinit=/init")
say "booting (TCG, timeout ${timeout_s} s): ${qemu[*]}"
t0=$(date +%s)
set +e
if [ $verbose = 1 ]; then
	timeout -k 10 "$timeout_s" nice -n 10 "${qemu[@]}" < /dev/null 2>&1 | tee "$log" >&2
	qstatus=${PIPESTATUS[0]}
else
	timeout -k 10 "$timeout_s" nice -n 10 "${qemu[@]}" < /dev/null > "$log" 2>&1
	qstatus=$?
fi
set -e
tr -d '\r' < "$log" > "$log.txt"
boot_s=$(($(date +%s) - t0))
[ $qstatus = 124 ] && say "QEMU timed out after ${timeout_s} s"

marker=$(grep -aE '^VFIO-TEST-(EXIT|SETUP-FAILED)' "$log.txt" | tail -n 1 || true)
if [ "$marker" = "VFIO-TEST-EXIT 0" ]; then
	# The binding and the test binary's own output.
	[ $verbose = 1 ] || sed -n '/^VFIO-GUEST: edu at/,/^VFIO-TEST-EXIT/p' "$log.txt" >&2
	say "PASS: $marker (guest ${boot_s} s, total $(elapsed) s)"
	exit 0
fi
if [ $verbose = 0 ]; then
	say "guest log ($log):"
	cat "$log.txt" >&2
fi
# QEMU's own errors (edu's hw_error() aborts QEMU, e.g. on a DMA range it rejects).
grep -a '^qemu' "$log.txt" | sed 's/^/test-vfio: QEMU said: /' >&2 || true
say "FAIL: ${marker:-no VFIO-TEST marker} (QEMU status $qstatus, guest ${boot_s} s, total $(elapsed) s)"
exit 1
