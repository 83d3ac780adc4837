# rtvisor.check=channel: a shared-memory channel (ivshmem, docs/channels.md)
# from Linux user space, the way existing guest code uses QEMU's ivshmem: bind
# uio_pci_generic to the 1af4:1110 function (which enables it), map BAR2
# through sysfs resource2 (/bin/bar), write a string at 0x100 and wait for the
# peer's "echo: STRING" at 0x200.
/bin/busybox mount -t sysfs sysfs /sys || return 2
dev=
set +f	# /init turns globbing off
for d in /sys/bus/pci/devices/*; do
	read vendor < "$d/vendor"; read device < "$d/device"
	[ "$vendor $device" = "0x1af4 0x1110" ] && dev=$d
done
set -f
[ -n "$dev" ] || { echo "channel: no 1af4:1110 function"; return 2; }
echo "1af4 1110" >/sys/bus/pci/drivers/uio_pci_generic/new_id || return 3
echo "channel: $(basename "$dev") bound to $(basename "$(readlink "$dev/driver")")"
echo "channel: IVPosition $(/bin/bar "$dev/resource0" reg 8)"
/bin/bar "$dev/resource2" write 0x100 "hello from linux" || return 4
if /bin/bar "$dev/resource2" wait 0x200 "echo: hello from linux" 120; then
	echo "channel: the peer answered: $(/bin/bar "$dev/resource2" read 0x200 64)"
else
	echo "channel: no answer from the peer"
	return 5
fi
