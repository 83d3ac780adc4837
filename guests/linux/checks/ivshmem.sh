# rtvisor.check=ivshmem: Linux user space on a shared-memory channel (docs/channels.md) whose
# other peer is the ivshmem inmate as ponger. Finds 1af4:1110 in sysfs, enables it (memory
# decoding), writes a message into BAR2 through /dev/mem (busybox devmem) in the ivshmem inmate's
# layout (msg_seq at +32, the text at +48), rings peer 1's vector 0 through the Doorbell register
# (BAR0 + 12) and prints what the ponger echoed (+304) as 64-bit words. This kernel has no UIO (tinyconfig fragment), so /dev/mem
# stands in for uio_pci_generic's resource2 mapping: the same BAR, the same bytes. Builtins except
# mount and seven devmem (/dev/mem is a node of the initramfs): ~40 s on the emulating KVM.
# ivshmem.stay=1: block afterwards (under rtvisord the test reads the console before the guest
# powers off).
/bin/busybox mount -t sysfs sysfs /sys || return 1
dev=
set +f	# /init turns globbing off
for d in /sys/bus/pci/devices/*; do
	read vendor < "$d/vendor"; read device < "$d/device"
	[ "$vendor $device" = "0x1af4 0x1110" ] && dev=$d
done
set -f
[ -n "$dev" ] || { echo "ivshmem: no 1af4:1110 device"; return 2; }
read revision < "$dev/revision"
{ read bar0 rest; read bar1 rest; read bar2 rest; } < "$dev/resource"
echo 1 > "$dev/enable" || return 3
echo "ivshmem: $dev revision $revision, BAR0 $bar0, BAR2 $bar2"
# /dev/mem's read() and write() stop at the end of RAM; devmem mmaps, which reaches a BAR. The
# message "hello from linux" as two little-endian 64-bit words (the channel's memory is fresh:
# zero after them), then msg_seq = 1, then the doorbell.
/bin/busybox devmem $((bar2 + 48)) 64 0x7266206F6C6C6568 || return 4
/bin/busybox devmem $((bar2 + 56)) 64 0x78756E696C206D6F || return 4
/bin/busybox devmem $((bar2 + 32)) 64 1 || return 4
/bin/busybox devmem $((bar0 + 12)) 32 0x10000 || return 5
echo "ivshmem: the peer wrote (64-bit words at BAR2 + 304):"
/bin/busybox devmem $((bar2 + 304)) 64
/bin/busybox devmem $((bar2 + 312)) 64
/bin/busybox devmem $((bar2 + 320)) 64
case " $RTVISOR_CMDLINE " in *" ivshmem.stay=1 "*) echo "ivshmem: staying up"; while :; do /bin/busybox sleep 3600; done ;; esac
