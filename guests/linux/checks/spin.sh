# rtvisor.check=spin: how much CPU guest user space gets.
# A pure shell loop (no syscalls, no processes) runs at native speed in
# user mode; whatever the guest kernel does meanwhile (timer ticks, which are
# emulated on the development machines' KVM) makes it take longer than on
# the host (`busybox sh -c` with the same loop).  Compare the elapsed time
# with the host's (~2 s per million iterations here).
spin_n=${RTVISOR_SPIN:-1000000}
read -r spin_t0 spin_idle < /proc/uptime
spin_i=0
while [ $spin_i -lt $spin_n ]; do spin_i=$((spin_i + 1)); done
read -r spin_t1 spin_idle < /proc/uptime
echo "spin: $spin_n iterations, uptime $spin_t0 -> $spin_t1"
