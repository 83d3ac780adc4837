# rtvisor.check=cyclictest: cyclictest (Debian rt-tests) in the guest, for
# scripts/rt-latency.sh --linux (the real-hardware variant of the latency inmate).
# Not in the default initramfs: scripts/bench/bench_linux_initramfs.py adds it with cyclictest and
# its libraries. Sourced by /init (PID 1): `return`, never `exit`.
# Parameters (kernel command line, all optional):
#   rtvisor.ct_loops=N        measured wake-ups (default 10000)
#   rtvisor.ct_interval=US    timer interval in µs (default 1000)
#   rtvisor.ct_prio=P         SCHED_FIFO priority of the measuring thread (default 80)
# Output: the latency inmate's protocol (docs/inmates.md), so the host side is the same:
#   LAT_START ..., LAT_BUCKET lo_ns hi_ns count (1 µs buckets; one overflow bucket up to max),
#   LAT_SUMMARY n= min_ns= avg_ns= max_ns= period_us= mode=cyclictest, INMATE latency PASS|FAIL.
ct_loops=10000
ct_interval=1000
ct_prio=80
for ct_w in $RTVISOR_CMDLINE; do
	case $ct_w in
	rtvisor.ct_loops=*) ct_loops=${ct_w#*=} ;;
	rtvisor.ct_interval=*) ct_interval=${ct_w#*=} ;;
	rtvisor.ct_prio=*) ct_prio=${ct_w#*=} ;;
	esac
done
# /dev/cpu_dma_latency (cyclictest holds it at 0 to keep the CPU out of deep C-states).
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "LAT_START mode=cyclictest period_us=$ct_interval samples=$ct_loops prio=$ct_prio"
# One thread on CPU 0 (the guest's first vCPU), memory locked, clock_nanosleep, 10 ms histogram.
/usr/bin/cyclictest --quiet --mlockall --threads=1 --affinity=0 --priority="$ct_prio" \
	--interval="$ct_interval" --loops="$ct_loops" --histogram=10000 >/tmp/ct.out 2>/tmp/ct.err
ct_status=$?
if [ "$ct_status" != 0 ]; then
	echo "cyclictest failed ($ct_status):"
	/bin/busybox cat /tmp/ct.err
	echo "INMATE latency FAIL"
	return "$ct_status"
fi
# "%06d %06lu" histogram lines (µs, count), then "# Total:", "# Min Latencies:", … (µs).
/bin/busybox awk -v period="$ct_interval" '
	/^[0-9]+[ \t]+[0-9]+/ { us = $1 + 0; c = $2 + 0; if (c > 0) { b[us] = c; n += c } next }
	/^# Total:/ { total = $3 + 0 }
	/^# Min Latencies:/ { min = $4 + 0 }
	/^# Avg Latencies:/ { avg = $4 + 0 }
	/^# Max Latencies:/ { max = $4 + 0 }
	/^# Histogram Overflows:/ { over = $4 + 0 }
	END {
		for (us in b) printf "LAT_BUCKET %d %d %d\n", us * 1000, (us + 1) * 1000, b[us]
		if (over > 0) printf "LAT_BUCKET %d %d %d\n", 10000000, max * 1000, over
		printf "LAT_SUMMARY n=%d min_ns=%d avg_ns=%d max_ns=%d period_us=%d mode=cyclictest total=%d\n", n + over, min * 1000, avg * 1000, max * 1000, period, total
	}' /tmp/ct.out
echo "INMATE latency PASS"
return 0
