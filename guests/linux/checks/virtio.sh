# rtvisor.check=virtio: Linux's own virtio-pci drivers on the VMM's PCI devices.
# Expects a disk (vda) whose first bytes the host set to "RTVISOR-HOST-DISK" and
# a NIC. Prints them, writes a marker to sector 8 with fsync (a FLUSH request
# after the write), and lists the interrupts, where MSI-X vectors show up as
# PCI-MSI lines named virtioN-*. About five processes: ~25 s on the emulating KVM.
/bin/busybox mount -t devtmpfs devtmpfs /dev || return 2
echo "disk says: $(head -c 17 /dev/vda)"
echo RTVISOR-GUEST-WROTE-THIS | /bin/busybox dd of=/dev/vda bs=512 seek=8 conv=sync,fsync 2>/dev/null || return 3
head -c 4000 /proc/interrupts
head -c 2000 /proc/net/dev
