#!/usr/bin/env bash
# Timer latency of a guest under host load, with and without an RT partition (issue 5).
#
#   scripts/rt-latency.sh [--samples N] [--period-us N] [--warmup N] [--outdir DIR]
#                         [--only partitioned|unpartitioned] [--no-stress] [--vmm PATH]
#   scripts/rt-latency.sh --linux
#
# Runs the bare-metal `latency` inmate (guests/inmates/latency.c: LAPIC timer in TSC-deadline
# mode, else one-shot; latency = TSC in the handler - programmed deadline) under rtvisor-vmm
# twice, under the same host load:
#   partitioned    the VM definition has a `realtime` block: its vCPU owns the highest online
#                  host CPU (the RT partition; CPU 1 of 2 here, CPU 0 is housekeeping), SCHED_FIFO
#                  priority 80, locked memory, HLT and PAUSE exits disabled;
#   unpartitioned  the same definition without the `realtime` block.
# Load (unless --no-stress): `stress-ng --cpu $(nproc) --vm 1 --vm-bytes 256M --io 1`, started
# unpinned 2 s before each VM and stopped when it ends: one CPU hog per host CPU, one worker
# dirtying 256 MiB (page faults, memory bandwidth, reclaim pressure) and one calling sync() (I/O
# and its interrupts). Keeping it off the RT CPU is the RT partition's job, not this script's.
#
# Output (OUTDIR, default build/rt-latency): CONFIG.json (the definition), CONFIG.lat (the
# guest's LAT_ lines), CONFIG.console, CONFIG.vmm.log, CONFIG.stress.log, CONFIG.threads (VMM threads and the
# stress-ng workers' CPUs, sampled mid-run), rt-latency.md (the table, also printed),
# rt-latency.json, CONFIG.dat and rt-latency.png (count per histogram bucket vs latency, both
# on log scales, both configurations overlaid).
# min/avg/max are exact; p99 and p99.99 are the upper bound of the histogram bucket that holds
# that rank (1 us buckets below 1 ms, coarser above), capped at max.
#
# Options:
#   --samples N     recorded samples per configuration (default 20000; at the default period
#                   that is >= 20 s of guest time per configuration; a full run took ~75 s here)
#   --period-us N   timer period in microseconds (default 1000)
#   --warmup N      samples discarded first (default 100)
#   --outdir DIR    output directory (default build/rt-latency)
#   --only CONFIG   run only partitioned or only unpartitioned
#   --no-stress     no host load
#   --stress-args "ARGS"  stress-ng arguments instead of the default load (e.g. without --io: on a
#                   host whose disk IRQ cannot leave the RT CPU, sync() I/O interrupts it)
#   --vmm PATH      use this rtvisor-vmm instead of building one (release build in .build-rtlat)
#   --linux         cyclictest in the minimal Linux guest instead of the inmate (the path for
#                   machines whose KVM runs guest code natively): the guest kernel with
#                   guests/linux/bench/cyclictest.sh and Debian's cyclictest added to its initramfs
#                   (scripts/bench/bench_linux_initramfs.py); --samples = cyclictest loops,
#                   --period-us = its interval. On an emulating KVM (kvm_pvm) this is only a
#                   functional run: every guest syscall is emulated, the numbers are not latency.
#
# Needs root (apt-get, /dev/kvm, SCHED_FIFO). Installs what is missing: stress-ng, gnuplot-nox.
# Exit status: 0 if every requested configuration ran and reported; 1 otherwise; 2 usage.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH=/opt/swift/usr/bin:$PATH

samples=20000
period_us=1000
warmup=100
outdir=$repo/build/rt-latency
only=
stress=1
vmm=
linux=0
custom_stress=()

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || { echo "rt-latency: $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
	case $1 in
	--samples) need_arg "$@"; samples=$2; shift 2 ;;
	--period-us) need_arg "$@"; period_us=$2; shift 2 ;;
	--warmup) need_arg "$@"; warmup=$2; shift 2 ;;
	--outdir) need_arg "$@"; outdir=$2; shift 2 ;;
	--only) need_arg "$@"; only=$2; shift 2 ;;
	--no-stress) stress=0; shift ;;
	--stress-args) need_arg "$@"; read -r -a custom_stress <<<"$2"; shift 2 ;;
	--vmm) need_arg "$@"; vmm=$2; shift 2 ;;
	--linux) linux=1; shift ;;
	-h|--help) usage; exit 0 ;;
	*) echo "rt-latency: unknown argument '$1' (see --help)" >&2; exit 2 ;;
	esac
done

for v in samples period_us warmup; do
	case ${!v} in ''|*[!0-9]*) echo "rt-latency: --${v//_/-} must be a decimal number, got '${!v}'" >&2; exit 2 ;; esac
done
[ "$samples" -ge 1 ] || { echo "rt-latency: --samples must be at least 1" >&2; exit 2; }
[ "$period_us" -ge 10 ] && [ "$period_us" -le 1000000 ] || { echo "rt-latency: --period-us must be 10..1000000" >&2; exit 2; }
case $only in
'') configs=(partitioned unpartitioned) ;;
partitioned|unpartitioned) configs=("$only") ;;
*) echo "rt-latency: --only must be partitioned or unpartitioned, got '$only'" >&2; exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then
	echo "rt-latency: needs root (apt-get, /dev/kvm, SCHED_FIFO)" >&2
	exit 1
fi
if ! [ -r /dev/kvm ] || ! [ -w /dev/kvm ]; then
	echo "rt-latency: /dev/kvm is not usable" >&2
	exit 1
fi

# ---- packages: only what is missing ------------------------------------------------------
missing=()
pkgs=(gnuplot-nox python3)
[ "$stress" = 1 ] && pkgs+=(stress-ng)
for p in "${pkgs[@]}"; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "rt-latency: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2
	apt-get install -y -qq "${missing[@]}" >&2
fi

# ---- build ---------------------------------------------------------------------------------
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
if [ -z "$vmm" ]; then
	echo "rt-latency: building rtvisor-vmm (release, .build-rtlat)" >&2
	t0=$(date +%s)
	# Its own scratch path: the developers' .build stays untouched.
	set +e
	swift build -c release --product rtvisor-vmm --scratch-path "$repo/.build-rtlat" \
		--package-path "$repo" 2>&1 | grep -v '^\[' >&2
	st=${PIPESTATUS[0]}
	set -e
	[ "$st" = 0 ] || { echo "rt-latency: the rtvisor-vmm build failed (swift build status $st)" >&2; exit 1; }
	vmm=$(swift build -c release --scratch-path "$repo/.build-rtlat" --package-path "$repo" --show-bin-path)/rtvisor-vmm
	echo "rt-latency: build took $(( $(date +%s) - t0 )) s" >&2
fi
[ -x "$vmm" ] || { echo "rt-latency: $vmm is not an executable" >&2; exit 1; }
if [ "$linux" = 1 ]; then
	dpkg -s rt-tests >/dev/null 2>&1 || { apt-get update -q; DEBIAN_FRONTEND=noninteractive apt-get install -y -q rt-tests cpio; }
	guest=$("$repo/scripts/build-guest-kernel.sh" | tail -n 1)
	ct_dir=$(python3 "$repo/scripts/bench/bench_linux_initramfs.py" --guest "$guest" --check "$repo/guests/linux/bench/cyclictest.sh" \
		--check-name cyclictest --binary /usr/bin/cyclictest | tail -n 1)
	[ -f "$ct_dir/initramfs.cpio" ] || { echo "rt-latency: the cyclictest initramfs was not built" >&2; exit 1; }
	if [ -d /sys/module/kvm_pvm ]; then
		echo "rt-latency: note: this KVM (kvm_pvm) emulates guest kernel code and every guest syscall: the --linux" \
			"run checks that the path works; its numbers measure the emulator, not timer latency" >&2
	fi
else
	inmates=$("$repo/scripts/build-inmates.sh" "$outdir/inmates" | tail -n 1)
	elf=$inmates/latency.elf
	[ -f "$elf" ] || { echo "rt-latency: $elf was not built" >&2; exit 1; }
fi

# ---- the machine ---------------------------------------------------------------------------
# Highest online CPU: /sys/devices/system/cpu/online is a list like "0-1" or "0,2-5".
online=$(cat /sys/devices/system/cpu/online)
last_cpu=${online##*[,-]}
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
kvm_kind="kvm"
[ -d /sys/module/kvm_pvm ] && kvm_kind="kvm_pvm (nested; guest ring 0 emulated)"
what="latency inmate"
[ "$linux" = 1 ] && what="cyclictest in the minimal Linux guest"
load_desc="none"
stress_args=(--cpu "$(nproc)" --vm 1 --vm-bytes 256M --io 1)
[ ${#custom_stress[@]} -gt 0 ] && stress_args=("${custom_stress[@]}")
[ "$stress" = 1 ] && load_desc="stress-ng ${stress_args[*]} (unpinned)"

# ---- one configuration -----------------------------------------------------------------------
write_definition() { # CONFIG FILE
	local rt=
	if [ "$1" = partitioned ]; then
		rt=$(printf ',\n  "realtime": {"cpus": [%s], "priority": 80, "lock_memory": true, "exits": ["hlt", "pause"]}' "$last_cpu")
	fi
	if [ "$linux" = 1 ]; then
		local extra=
		[ -d /sys/module/kvm_pvm ] && extra=" emukvm.pvmsys"
		cat >"$2" <<-EOF
		{
		  "name": "rt-latency-$1",
		  "vcpus": 1,
		  "memory_mib": 128,
		  "kernel": "$guest/vmlinux",
		  "initrd": "$ct_dir/initramfs.cpio",
		  "cmdline": "console=ttyS0 panic=-1 mitigations=off nopti rodata=off emukvm.exit_port=0xf4$extra rtvisor.check=cyclictest rtvisor.ct_loops=$samples rtvisor.ct_interval=$period_us"$rt
		}
		EOF
		return
	fi
	cat >"$2" <<-EOF
	{
	  "name": "rt-latency-$1",
	  "vcpus": 1,
	  "memory_mib": 32,
	  "kernel": "$elf",
	  "cmdline": "latency.period_us=$period_us latency.samples=$samples latency.warmup=$warmup"$rt
	}
	EOF
}

stress_pid=
stop_stress() {
	[ -n "$stress_pid" ] || return 0
	kill -TERM "$stress_pid" 2>/dev/null || true
	wait "$stress_pid" 2>/dev/null || true
	stress_pid=
}
trap stop_stress EXIT

# Snapshot of where things run: the VMM's threads (CPU, policy, RT priority) and the stress-ng
# workers' last CPU and allowed CPUs.
snapshot_threads() { # VMM_PID FILE
	{
		echo "# $(date -u +%H:%M:%S) rtvisor-vmm pid $1 threads (psr = CPU last run on)"
		ps -L -o tid,psr,cls,rtprio,pcpu,comm -p "$1" 2>&1 || true
		grep -E '^Cpus_allowed_list' "/proc/$1/status" 2>/dev/null || true
		if [ -n "$stress_pid" ]; then
			echo "# stress-ng workers"
			for p in $(pgrep -f '^stress-ng' || true); do
				printf '%s %s psr=%s %s\n' "$p" "$(cat "/proc/$p/comm" 2>/dev/null)" \
					"$(ps -o psr= -p "$p" 2>/dev/null | tr -d ' ')" \
					"$(grep -E '^Cpus_allowed_list' "/proc/$p/status" 2>/dev/null | tr -s '\t' ' ')"
			done
		fi
	} >"$2"
}

failed=0
reports=()
ran=()
# Guest time is samples x period, plus missed periods; allow 4x that and a minute for boot,
# calibration and printing.
run_timeout=$(( 60 + samples * period_us * 4 / 1000000 ))
# A Linux guest boots first (minutes on an emulating KVM, where each wake-up is slow too).
[ "$linux" = 1 ] && run_timeout=$(( 900 + samples * period_us * 20 / 1000000 ))

run_config() { # CONFIG
	local cfg=$1 def=$outdir/$1.json console=$outdir/$1.console log=$outdir/$1.vmm.log
	local status t0 secs tpid vpid
	write_definition "$cfg" "$def"
	if ! "$vmm" --check --config "$def" >"$log" 2>&1; then
		echo "rt-latency: $cfg: rtvisor-vmm rejects the definition:" >&2
		sed 's/^/    /' "$log" >&2
		[ "$cfg" = partitioned ] && echo "rt-latency: (this rtvisor-vmm has no realtime support yet?)" >&2
		return 1
	fi
	if [ "$stress" = 1 ]; then
		stress-ng "${stress_args[@]}" --timeout "$(( run_timeout + 60 ))s" --quiet >"$outdir/$cfg.stress.log" 2>&1 &
		stress_pid=$!
		sleep 2
	fi
	echo "rt-latency: $cfg: $samples samples every $period_us us, load: $load_desc" >&2
	t0=$(date +%s%N)
	timeout "$run_timeout" "$vmm" --config "$def" --no-console-input </dev/null >"$console" 2>>"$log" &
	tpid=$!
	# Mid-run snapshot, once the guest is measuring (LAT_START printed).
	(
		for _ in $(seq 1 100); do
			grep -q '^LAT_START' "$console" 2>/dev/null && break
			sleep 0.2
		done
		sleep 1
		vpid=$(pgrep -P "$tpid" | head -n 1)
		[ -n "$vpid" ] && snapshot_threads "$vpid" "$outdir/$cfg.threads"
	) &
	local snap=$!
	status=0
	wait "$tpid" || status=$?
	secs=$(( ($(date +%s%N) - t0) / 1000000 ))
	wait "$snap" 2>/dev/null || true
	stop_stress
	grep -a '^LAT_' "$console" >"$outdir/$cfg.lat" || true
	echo "rt-latency: $cfg: rtvisor-vmm exit status $status after $(( secs / 1000 )).$(( secs % 1000 / 100 )) s" >&2
	if [ "$status" != 0 ] || ! grep -q '^LAT_SUMMARY ' "$outdir/$cfg.lat" || ! grep -qa '^INMATE latency PASS' "$console"; then
		[ "$status" = 124 ] && echo "rt-latency: $cfg: timed out after ${run_timeout}s" >&2
		echo "rt-latency: $cfg: no complete result; last console lines:" >&2
		tail -n 5 "$console" | sed 's/^/    | /' >&2
		tail -n 5 "$log" | sed 's/^/    ! /' >&2
		return 1
	fi
	reports+=(--run "$cfg=$outdir/$cfg.lat")
	ran+=("$cfg")
	return 0
}

echo "rt-latency: $(uname -r), $cpu_model, $(nproc) CPUs (RT CPU $last_cpu), $kvm_kind" >&2
rt_runtime=$(cat /proc/sys/kernel/sched_rt_runtime_us 2>/dev/null || echo '?')
if [[ " ${configs[*]} " == *" partitioned "* ]] && [ "$rt_runtime" != -1 ]; then
	# docs/realtime.md: with HLT exits disabled the vCPU thread never sleeps, and RT throttling
	# stops it for (1 s - sched_rt_runtime_us) of every second. Left as the host has it.
	echo "rt-latency: note: kernel.sched_rt_runtime_us=$rt_runtime and the partitioned VM disables HLT exits:" \
		"RT throttling may stall its vCPU for $(( (1000000 - rt_runtime) / 1000 )) ms each second (docs/realtime.md)" >&2
fi
for cfg in "${configs[@]}"; do
	run_config "$cfg" || failed=1
done

if [ ${#reports[@]} -eq 0 ]; then
	echo "rt-latency: no configuration produced a result" >&2
	exit 1
fi
python3 "$repo/scripts/bench/rt_latency_report.py" "${reports[@]}" \
	--md "$outdir/rt-latency.md" --json "$outdir/rt-latency.json" --plot-dir "$outdir" \
	--meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')" --meta "machine=$(uname -r)" \
	--meta "cpu=$cpu_model" --meta "nproc=$(nproc)" --meta "kvm=$kvm_kind" \
	--meta "rt_cpu=$last_cpu (partitioned only)" --meta "sched_rt_runtime_us=$rt_runtime" --meta "load=$load_desc" \
	--meta "guest=$what" --meta "samples=$samples (+$warmup warm-up)" --meta "period_us=$period_us" || failed=1

# ---- plot ----------------------------------------------------------------------------------
plots=()
for cfg in "${ran[@]}"; do
	[ -s "$outdir/$cfg.dat" ] && plots+=("$cfg")
done
if [ ${#plots[@]} -gt 0 ]; then
	plot_cmd=
	for cfg in "${plots[@]}"; do
		color=$([ "$cfg" = partitioned ] && echo '#1f77b4' || echo '#d62728')
		# One box per bucket: [lower, upper] x [0.8, count]; bucket 0 starts at 0 (log x: 0.1).
		plot_cmd+="${plot_cmd:+, }'$outdir/$cfg.dat' using (((\$1 > 0.1 ? \$1 : 0.1) + \$2) / 2):3:(\$1 > 0.1 ? \$1 : 0.1):2:(0.8):3 with boxxyerror fs transparent solid 0.45 noborder lc rgb '$color' title '$cfg'"
	done
	gnuplot <<-EOF || { echo "rt-latency: gnuplot failed" >&2; failed=1; }
	set terminal pngcairo noenhanced size 1100,650 font ',11'
	set output '$outdir/rt-latency.png'
	set title "rtvisor timer latency, $what, $samples samples / ${period_us} us period, load: ${load_desc//\'/}\n$(uname -r), $cpu_model, $(nproc) CPUs"
	set logscale x
	set logscale y
	set xlabel 'latency (us): TSC in the timer handler - deadline'
	set ylabel 'samples per bucket (1 us wide < 1 ms, 10 us < 10 ms, 100 us < 100 ms)'
	set yrange [0.8:*]
	set grid
	set key top right
	plot $plot_cmd
	EOF
	[ -f "$outdir/rt-latency.png" ] && echo "rt-latency: plot in $outdir/rt-latency.png" >&2
fi
echo "rt-latency: results in $outdir" >&2
exit $failed
