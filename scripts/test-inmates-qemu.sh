#!/usr/bin/env bash
# Runs every test inmate under QEMU, against QEMU's own devices, to check the
# inmates independently of the rtvisor VMM.
#
#   scripts/test-inmates-qemu.sh [--accel tcg|kvm] [--keep] [INMATE_DIR]
#
# --accel tcg (default): pure emulation, works anywhere.
# --accel kvm: this machine's /dev/kvm through QEMU, to find instructions the
#   (nested, instruction-emulating) KVM cannot handle.  Slow for -M pc: the
#   BIOS runs emulated.
# INMATE_DIR: prebuilt ELFs; default: build them with scripts/build-inmates.sh.
# --keep: keep the per-case console/QEMU logs (their directory is printed).
#
# Machines: microvm (acpi=off; its qboot BIOS writes an MP table at 0x9fc00
# and boots PVH ELFs fast) for everything but "reset", which needs the i8042
# of -M pc.  -no-reboot turns any guest reset into a QEMU exit with status 0;
# isa-debug-exit turns "out 0xf4, v" into exit status (v << 1) | 1.
# Ends with "N passed, N failed"; exit status 0 only if every case behaved.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
accel=tcg
keep=0
dir=
while [ $# -gt 0 ]; do
	case $1 in
	--accel) accel=$2; shift 2 ;;
	--accel=*) accel=${1#*=}; shift ;;
	--keep) keep=1; shift ;;
	-h|--help) sed -n '2,18p' "$0"; exit 0 ;;
	*) dir=$1; shift ;;
	esac
done
case $accel in tcg|kvm) ;; *) echo "unknown accel '$accel'" >&2; exit 2 ;; esac

if ! command -v qemu-system-x86_64 >/dev/null; then
	echo "test-inmates: installing qemu-system-x86" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2 && apt-get install -y -qq qemu-system-x86 >&2 || exit 2
fi
if [ "$accel" = kvm ] && ! [ -r /dev/kvm -a -w /dev/kvm ]; then
	echo "test-inmates: /dev/kvm not usable, cannot run --accel kvm" >&2
	exit 2
fi
if [ -z "$dir" ]; then
	dir=$("$repo/scripts/build-inmates.sh" | tail -n 1) || { echo "build failed" >&2; exit 2; }
fi

logdir=$(mktemp -d /tmp/inmates-qemu.XXXXXX)
[ "$keep" = 1 ] || trap 'rm -rf "$logdir"' EXIT

if [ "$accel" = kvm ]; then
	# The features this machine's KVM cannot emulate in guest ring 0.
	cpu=host,-xsave,-cx16,-popcnt,-smap
	# Only cx16 really disappears from the guest's CPUID under this machine's
	# KVM (kvm-pvm); xsave, popcnt and smap stay visible whatever QEMU asks.
	cpuid_absent=cx16
	pc_timeout=90
else
	cpu=qemu64,-cx16
	cpuid_absent=cx16,xsave,osxsave,popcnt,smap,avx,rdrand,rdseed,fsgsbase,invpcid
	pc_timeout=30
fi
micro=microvm,acpi=off

passed=0
failed=0

# run CASE INMATE MACHINE SMP EXPECT APPEND WANT [EXTRA-QEMU-ARGS...]
# EXPECT: pass | fail | reset | triple; WANT: extended regex the console
# output must also match (or "").
run() {
	local case=$1 inmate=$2 machine=$3 smp=$4 expect=$5 append=$6 want=$7
	shift 7
	local elf=$dir/$inmate.elf out=$logdir/$case.out log=$logdir/$case.qemu.log
	local timeout=20 status t0 ms why=
	[ "${machine%%,*}" = pc ] && timeout=$pc_timeout

	t0=$(date +%s%N)
	timeout "$timeout" qemu-system-x86_64 -accel "$accel" -M "$machine" -cpu "$cpu" \
		-smp "$smp" -m 64 -nodefaults -display none -serial stdio -no-reboot \
		-kernel "$elf" -append "$append" \
		-device isa-debug-exit,iobase=0xf4,iosize=1 \
		-d cpu_reset -D "$log" "$@" </dev/null >"$out" 2>&1
	status=$?
	ms=$(( ($(date +%s%N) - t0) / 1000000 ))

	local passline=0 failline=0 triple=0
	# Not anchored: under -M pc the BIOS leaves its last line unterminated.
	grep -q "INMATE $inmate PASS" "$out" && passline=1
	grep -q "INMATE $inmate FAIL" "$out" && failline=1
	grep -q "Triple fault" "$log" 2>/dev/null && triple=1

	case $expect in
	pass)
		[ $status = 1 ] || why="QEMU exit status $status, want 1 (exit port 0)"
		[ $passline = 1 ] || why="${why:+$why; }no PASS line"
		;;
	fail)
		[ $status = 5 ] || why="QEMU exit status $status, want 5 (exit port 2)"
		[ $failline = 1 ] || why="${why:+$why; }no FAIL line"
		;;
	reset|triple)
		[ $status = 0 ] || why="QEMU exit status $status, want 0 (guest reset with -no-reboot)"
		grep -q "INMATE $inmate: " "$out" || why="${why:+$why; }no start line"
		[ $failline = 0 ] && [ $passline = 0 ] || why="${why:+$why; }unexpected PASS/FAIL line"
		# TCG logs "Triple fault" with -d cpu_reset; KVM's shutdown exit does not.
		if [ "$accel" = tcg ]; then
			if [ $expect = triple ] && [ $triple = 0 ]; then
				why="${why:+$why; }no triple fault logged"
			elif [ $expect = reset ] && [ $triple = 1 ]; then
				why="${why:+$why; }reset came from a triple fault"
			fi
		fi
		;;
	esac
	if [ -n "$want" ] && ! grep -Eq "$want" "$out"; then
		why="${why:+$why; }no line matching /$want/"
	fi
	if [ "$status" = 124 ]; then
		why="timed out after ${timeout}s"
	fi

	if [ -z "$why" ]; then
		passed=$((passed + 1))
		printf 'ok    %-14s %6d ms  (%s)\n' "$case" "$ms" "$expect"
	else
		failed=$((failed + 1))
		printf 'FAIL  %-14s %6d ms  %s\n' "$case" "$ms" "$why"
		sed 's/^/      | /' "$out" | tail -n 15
	fi
	# Numbers worth seeing in the summary.
	grep -E '^(smp: [0-9]+ of|pioloop: [0-9]+ cycles|CPUID [17]|LAT_SUMMARY)' "$out" | sed 's/^/      /'
}

echo "inmates from $dir, QEMU accel=$accel cpu=$cpu"
run hello       hello       $micro 1 pass   "hello foo=bar" '^cmdline: "hello foo=bar"$'
run smp         smp         $micro 2 pass   "expect_cpus=2" '^AP 1 up$'
run smp-4       smp         $micro 4 pass   "expect_cpus=4" '^smp: 3 of 3 APs up'
run smp-pc      smp         pc     2,sockets=2,cores=1,threads=1 pass "expect_cpus=2" '^AP 1 up$'
run smp-wrong   smp         $micro 2 fail   "expect_cpus=3" 'expected 3 CPUs, MP table lists 2'
run pioloop     pioloop     $micro 1 pass   "count=100000" '^pioloop: 100000 writes to port 0x404'
run cpuid       cpuid       $micro 1 pass   "absent=$cpuid_absent" '^CPUID 7\.0 ebx='
run cpuid-neg   cpuid       $micro 1 fail   "present=cx16" 'cx16 .* = 0 \(want 1\)'
run reset       reset       pc     1 reset  "" ''
run triplefault triplefault $micro 1 triple "" ''
# Timer latency: TSC-deadline mode where CPUID offers it (KVM; TCG does not), else one-shot.
run latency     latency     $micro 1 pass   "latency.samples=200 latency.warmup=10" '^LAT_SUMMARY n=200 min_ns=[0-9-]+ avg_ns=[0-9-]+ max_ns=[0-9]+ period_us=1000 mode='
run latency-oneshot latency $micro 1 pass   "latency.samples=200 latency.period_us=500 latency.mode=oneshot latency.idle=poll" '^LAT_SUMMARY n=200 .* mode=oneshot .* idle=poll'
run latency-badperiod latency $micro 1 fail "latency.period_us=5" 'latency\.period_us=5: must be'
if [ "$accel" = tcg ]; then
	# TCG implements popcnt and cmpxchg16b (given a CPU model that has them): the inmate passes,
	# which shows it is a fair probe of the emulating KVM's gaps.
	run badinsn-popcnt badinsn $micro 1 pass "insn=popcnt" '^badinsn: popcnt ran$' -cpu max
	run badinsn-cx16   badinsn $micro 1 pass "insn=cmpxchg16b" '^badinsn: cmpxchg16b ran$' -cpu max
fi

[ "$keep" = 1 ] && echo "logs in $logdir"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
