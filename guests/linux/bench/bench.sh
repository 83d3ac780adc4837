# rtvisor.check=bench: fio on /dev/vda and iperf3 against the host, for scripts/bench-io-linux.sh.
# Not in the default initramfs: scripts/bench/bench_linux_initramfs.py adds it (with fio, iperf3
# and their libraries) to the benchmark variant. Sourced by /init (PID 1): `return`, never `exit`.
# Parameters (kernel command line, all optional):
#   rtvisor.bench_secs=S        seconds per fio job and per iperf3 direction (default 10)
#   rtvisor.bench_host=A        the host's iperf3 server (default 10.77.0.1)
#   rtvisor.bench_ip=A/N        eth0's address (default 10.77.0.2/24)
#   rtvisor.bench_what=W        all (default), fio or net
#   rtvisor.bench_ioengine=E    fio engine (default psync; the kernel has no AIO/io_uring)
# Output: the raw JSON of fio (--output-format=json) and of each iperf3 client (-J) between
#   BENCH_JSON_BEGIN NAME  and  BENCH_JSON_END NAME status=N
# lines; the host parses it (scripts/bench/bench_io_linux.py). Processes: mount, ip ×2, fio,
# iperf3 ×2 (each costs seconds on the emulating development KVM, so nothing else is forked).
bench_secs=10
bench_host=10.77.0.1
bench_ip=10.77.0.2/24
bench_what=all
bench_ioengine=psync
for bench_w in $RTVISOR_CMDLINE; do
	case $bench_w in
	rtvisor.bench_secs=*) bench_secs=${bench_w#*=} ;;
	rtvisor.bench_host=*) bench_host=${bench_w#*=} ;;
	rtvisor.bench_ip=*) bench_ip=${bench_w#*=} ;;
	rtvisor.bench_what=*) bench_what=${bench_w#*=} ;;
	rtvisor.bench_ioengine=*) bench_ioengine=${bench_w#*=} ;;
	esac
done
/bin/busybox mount -t devtmpfs devtmpfs /dev || return 2
# Kernel messages (e.g. "random: crng init done") would land in the middle of the JSON on the
# console: only emergencies from now on (the host also drops such lines). A builtin, no process.
echo 1 >/proc/sys/kernel/printk || :
bench_status=0
if [ "$bench_what" != net ]; then
	# One fio process, three jobs one after the other (stonewall): 1 MiB sequential writes (first,
	# so the reads read written blocks), 1 MiB sequential reads, 4 KiB random reads; O_DIRECT,
	# queue depth 1. --thread: jobs are threads (no fork). The kernel has no SYSVIPC and no
	# TIMERFD, which fio needs for its job table and its helper thread: LD_PRELOAD of a shim
	# that emulates both (scripts/bench/bench_linux_initramfs.py). No fadvise (no
	# ADVISE_SYSCALLS) and no disk utilisation (sysfs is not mounted).
	echo "BENCH_JSON_BEGIN fio"
	LD_PRELOAD=/lib/rtvisor-shim.so /usr/bin/fio --output-format=json --thread --disk_util=0 \
		--filename=/dev/vda --direct=1 --ioengine="$bench_ioengine" --iodepth=1 --fadvise_hint=0 \
		--time_based --runtime="$bench_secs" --stonewall --clat_percentiles=0 \
		--name=seqwrite1m --rw=write --bs=1M \
		--name=seqread1m --rw=read --bs=1M \
		--name=randread4k --rw=randread --bs=4k
	bench_s=$?
	echo "BENCH_JSON_END fio status=$bench_s"
	[ $bench_s = 0 ] || bench_status=3
fi
if [ "$bench_what" != fio ]; then
	if ip addr add "$bench_ip" dev eth0 && ip link set eth0 up; then
		# Guest → host (the host's iperf3 server receives), then host → guest (-R).
		for bench_dir in tx rx; do
			bench_r=
			[ $bench_dir = rx ] && bench_r=-R
			echo "BENCH_JSON_BEGIN iperf_$bench_dir"
			/usr/bin/iperf3 -c "$bench_host" -t "$bench_secs" -i 0 -J $bench_r --connect-timeout 30000
			bench_s=$?
			echo "BENCH_JSON_END iperf_$bench_dir status=$bench_s"
			[ $bench_s = 0 ] || bench_status=5
		done
	else
		bench_status=4
	fi
fi
return $bench_status
