#!/usr/bin/env bash
# Installs rtvisor as a systemd service, or removes it again (--uninstall).
#
#   scripts/install.sh                      build (release, static) and install under /usr/local
#   scripts/install.sh --binaries DIR       install prebuilt rtvisord, rtvisorctl, rtvisor-vmm (and
#                                           idle.elf, for the example) from DIR: no compiler needed
#   scripts/install.sh --prefix DIR         install under DIR instead of /usr/local
#   scripts/install.sh --destdir DIR        stage into DIR for packaging: files only (no group, no
#                                           /etc and /var directories, no systemctl)
#   scripts/install.sh --root DIR           install into another root file system (a container
#                                           image): files, group and directories, inside DIR
#   scripts/install.sh --drop-in NAME       also enable a drop-in of systemd/rtvisord.service.d/
#                                           (block-devices, vfio); may be repeated
#   scripts/install.sh --no-example         skip the example definition
#   scripts/install.sh --uninstall [--prefix/--destdir/--root as installed]
#                                           stop and disable the units (on this system), remove
#                                           every installed file; keep VM definitions you changed
#                                           or added, /var/lib/rtvisor (disk images) and the group
#
# What goes where (PREFIX = /usr/local unless --prefix):
#   PREFIX/bin/{rtvisord,rtvisorctl,rtvisor-vmm}
#   PREFIX/lib/systemd/system/{rtvisord,rtvisor-guests}.service (+ rtvisord.service.d/ with --drop-in)
#   PREFIX/lib/sysusers.d/rtvisor.conf    group rtvisor (API and console access)
#   PREFIX/lib/tmpfiles.d/rtvisor.conf    /etc/rtvisor/vms, /var/lib/rtvisor
#   PREFIX/share/rtvisor/                 the idle test inmate, the example, the drop-ins
#   PREFIX/share/{bash-completion,zsh,fish}/…  rtvisorctl completions
#   /etc/rtvisor/vms/example.json         the example definition (never overwritten)
# systemd finds units, sysusers.d and tmpfiles.d under /usr and /usr/local, not other prefixes.
# Then: systemctl daemon-reload && systemctl enable --now rtvisord
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=/usr/local
destdir=
root=
binaries=
example=1
uninstall=0
dropins=()
while [ $# -gt 0 ]; do
	case $1 in
	--prefix) prefix=$2; shift 2 ;;
	--destdir) destdir=$2; shift 2 ;;
	--root) root=$2; shift 2 ;;
	--binaries) binaries=$2; shift 2 ;;
	--drop-in) dropins+=("$2"); shift 2 ;;
	--no-example) example=0; shift ;;
	--uninstall) uninstall=1; shift ;;
	-h|--help) sed -n '2,29p' "$0"; exit 0 ;;
	*) echo "install.sh: unknown argument $1 (--help lists them)" >&2; exit 2 ;;
	esac
done
log() { printf '== %s\n' "$*" >&2; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

[ -z "$destdir" ] || [ -z "$root" ] || die "--destdir and --root exclude each other"
case $prefix in /*) ;; *) die "--prefix must be an absolute path" ;; esac
prefix=${prefix%/}
for d in "${dropins[@]}"; do
	[ -f "$repo/systemd/rtvisord.service.d/$d.conf" ] || die "no drop-in $d (there are: $(cd "$repo/systemd/rtvisord.service.d" && ls | sed 's/\.conf$//' | tr '\n' ' '))"
done
# Every path below is $top + an absolute path; $top is empty for this system.
top=${destdir:-$root}
if [ -n "$top" ]; then mkdir -p "$top"; top=$(cd "$top" && pwd); fi
live=0
[ -z "$top" ] && [ -d /run/systemd/system ] && live=1

bin=$prefix/bin
units=$prefix/lib/systemd/system
share=$prefix/share/rtvisor
completions=("bash:$prefix/share/bash-completion/completions/rtvisorctl"
	"zsh:$prefix/share/zsh/site-functions/_rtvisorctl"
	"fish:$prefix/share/fish/vendor_completions.d/rtvisorctl.fish")
example_definition=/etc/rtvisor/vms/example.json
all_dropins=$(cd "$repo/systemd/rtvisord.service.d" && ls)

# The files install puts in place (absolute, without $top), for --uninstall.
installed_files() {
	for p in rtvisord rtvisorctl rtvisor-vmm; do echo "$bin/$p"; done
	echo "$units/rtvisord.service"
	echo "$units/rtvisor-guests.service"
	for d in $all_dropins; do echo "$units/rtvisord.service.d/$d"; echo "$share/systemd/rtvisord.service.d/$d"; done
	echo "$prefix/lib/sysusers.d/rtvisor.conf"
	echo "$prefix/lib/tmpfiles.d/rtvisor.conf"
	echo "$share/inmates/idle.elf"
	echo "$share/examples/example.json"
	for c in "${completions[@]}"; do echo "${c#*:}"; done
}
# Directories of rtvisor's own, removed when empty (deepest first).
own_directories() {
	echo "$units/rtvisord.service.d"
	echo "$share/systemd/rtvisord.service.d"
	echo "$share/systemd"
	echo "$share/inmates"
	echo "$share/examples"
	echo "$share"
	echo /etc/rtvisor/vms
	echo /etc/rtvisor
	echo /var/lib/rtvisor
}

if [ $uninstall = 1 ]; then
	log "uninstalling from ${top:-/} (prefix $prefix)"
	if [ $live = 1 ]; then
		# rtvisor-guests first (ordering): its stop shuts the guests down while rtvisord runs.
		systemctl disable --now rtvisor-guests.service rtvisord.service 2>/dev/null || true
	elif [ -n "$root" ] && command -v systemctl >/dev/null; then
		systemctl --root="$top" disable rtvisor-guests.service rtvisord.service 2>/dev/null || true
	fi
	# A definition still identical to the shipped example goes; a changed one stays.
	if [ -f "$top$example_definition" ]; then
		if cmp -s "$top$example_definition" "$top$share/examples/example.json"; then
			rm -f "$top$example_definition"
		else
			log "kept $example_definition (changed since it was installed)"
		fi
	fi
	while read -r f; do rm -f "$top$f"; done < <(installed_files)
	while read -r d; do rmdir "$top$d" 2>/dev/null || true; done < <(own_directories)
	for d in /etc/rtvisor/vms /var/lib/rtvisor; do
		if [ -d "$top$d" ]; then log "kept $d (not empty)"; fi
	done
	# A staging tree is ours alone: prune the directories the installation made.
	if [ -n "$destdir" ]; then find "$top" -mindepth 1 -depth -type d -empty -delete; fi
	if [ -f "$top/etc/systemd/system/rtvisord.service" ]; then
		log "note: $top/etc/systemd/system/rtvisord.service (an older install.sh's, or your own) is still there"
	fi
	if [ $live = 1 ]; then systemctl daemon-reload; fi
	log "done; the group rtvisor stays (files may belong to it): groupdel rtvisor removes it"
	exit 0
fi

if [ -z "$binaries" ]; then
	export PATH=/opt/swift/usr/bin:$PATH
	log "building static release executables (.build-static)"
	for p in rtvisord rtvisorctl rtvisor-vmm; do
		swift build -c release --product "$p" --scratch-path "$repo/.build-static" -Xswiftc -static-executable 2>&1 | grep -v '^\[' >&2
	done
	binaries=$repo/.build-static/release
	idle=$("$repo/scripts/build-inmates.sh" | tail -n 1)/idle.elf
else
	idle=$binaries/idle.elf
fi
for p in rtvisord rtvisorctl rtvisor-vmm; do
	[ -x "$binaries/$p" ] || die "$binaries/$p is missing or not executable"
done
if [ $example = 1 ] && [ ! -f "$idle" ]; then
	log "no $idle: the example (it runs the idle inmate) is not installed"
	example=0
fi

log "installing into ${top:-/} (prefix $prefix)"
install -d "$top$bin" "$top$units" "$top$prefix/lib/sysusers.d" "$top$prefix/lib/tmpfiles.d" \
	"$top$share/systemd/rtvisord.service.d"
for p in rtvisord rtvisorctl rtvisor-vmm; do install -m 0755 "$binaries/$p" "$top$bin/$p"; done
for u in rtvisord.service rtvisor-guests.service; do
	sed "s|/usr/local/bin/|$bin/|g" "$repo/systemd/$u" >"$top$units/$u"
	chmod 0644 "$top$units/$u"
done
for d in $all_dropins; do install -m 0644 "$repo/systemd/rtvisord.service.d/$d" "$top$share/systemd/rtvisord.service.d/$d"; done
if [ ${#dropins[@]} -gt 0 ]; then
	install -d "$top$units/rtvisord.service.d"
	for d in "${dropins[@]}"; do install -m 0644 "$repo/systemd/rtvisord.service.d/$d.conf" "$top$units/rtvisord.service.d/$d.conf"; done
fi
install -m 0644 "$repo/systemd/rtvisor.sysusers" "$top$prefix/lib/sysusers.d/rtvisor.conf"
install -m 0644 "$repo/systemd/rtvisor.tmpfiles" "$top$prefix/lib/tmpfiles.d/rtvisor.conf"
for c in "${completions[@]}"; do
	install -d "$top$(dirname "${c#*:}")"
	"$binaries/rtvisorctl" --generate-completion-script "${c%%:*}" >"$top${c#*:}"
	chmod 0644 "$top${c#*:}"
done
if [ $example = 1 ]; then
	install -d "$top$share/inmates" "$top$share/examples"
	install -m 0644 "$idle" "$top$share/inmates/idle.elf"
	sed "s|/usr/local/share/|$prefix/share/|g" "$repo/examples/daemon/example.json" >"$top$share/examples/example.json"
	chmod 0644 "$top$share/examples/example.json"
	if [ ! -e "$top$example_definition" ]; then
		install -d "$top$(dirname "$example_definition")"
		install -m 0644 "$top$share/examples/example.json" "$top$example_definition"
	fi
fi

case $prefix in
/usr|/usr/local) ;;
*) log "note: systemd does not look in $units: systemctl link $units/rtvisord.service $units/rtvisor-guests.service" ;;
esac
if [ -f "$top/etc/systemd/system/rtvisord.service" ]; then
	log "note: $top/etc/systemd/system/rtvisord.service overrides $units/rtvisord.service (an older install.sh put it there): remove it unless you mean it"
fi
if [ -z "$destdir" ]; then
	# The group and the directories, from the same files systemd applies at boot.
	command -v systemd-sysusers >/dev/null && command -v systemd-tmpfiles >/dev/null \
		|| die "systemd-sysusers/systemd-tmpfiles not found (rtvisor runs under systemd)"
	systemd-sysusers ${root:+--root="$top"} - <"$repo/systemd/rtvisor.sysusers"
	systemd-tmpfiles --create ${root:+--root="$top"} - <"$repo/systemd/rtvisor.tmpfiles"
	if [ $live = 1 ]; then systemctl daemon-reload; fi
fi
log "done: systemctl enable --now rtvisord; rtvisorctl list; journalctl -u rtvisord"
