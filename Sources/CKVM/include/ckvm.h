// C shim for rtvisor: exposes <linux/kvm.h> to Swift together with the ioctl request numbers
// (function-like macros Swift cannot import) and non-variadic wrappers. Nothing here has policy.
#ifndef CKVM_H
#define CKVM_H

#include <stdint.h>
#include <stddef.h>
#include <linux/kvm.h>
#include <linux/vfio.h>

// ---- ioctl request numbers ----------------------------------------------------------------
extern const unsigned long CKVM_GET_API_VERSION;
extern const unsigned long CKVM_CREATE_VM;
extern const unsigned long CKVM_CHECK_EXTENSION;
extern const unsigned long CKVM_GET_VCPU_MMAP_SIZE;
extern const unsigned long CKVM_GET_SUPPORTED_CPUID;
extern const unsigned long CKVM_GET_MSR_INDEX_LIST;

extern const unsigned long CKVM_CREATE_VCPU;
extern const unsigned long CKVM_SET_USER_MEMORY_REGION;
extern const unsigned long CKVM_SET_TSS_ADDR;
extern const unsigned long CKVM_SET_IDENTITY_MAP_ADDR;
extern const unsigned long CKVM_CREATE_IRQCHIP;
extern const unsigned long CKVM_CREATE_PIT2;
extern const unsigned long CKVM_IRQ_LINE;
extern const unsigned long CKVM_IRQFD;
extern const unsigned long CKVM_IOEVENTFD;
extern const unsigned long CKVM_SET_GSI_ROUTING;
extern const unsigned long CKVM_ENABLE_CAP;
extern const unsigned long CKVM_SIGNAL_MSI;

extern const unsigned long CKVM_RUN;
extern const unsigned long CKVM_GET_REGS;
extern const unsigned long CKVM_SET_REGS;
extern const unsigned long CKVM_GET_SREGS;
extern const unsigned long CKVM_SET_SREGS;
extern const unsigned long CKVM_SET_CPUID2;
extern const unsigned long CKVM_GET_CPUID2;
extern const unsigned long CKVM_SET_MSRS;
extern const unsigned long CKVM_GET_MSRS;
extern const unsigned long CKVM_SET_FPU;
extern const unsigned long CKVM_GET_LAPIC;
extern const unsigned long CKVM_SET_LAPIC;
extern const unsigned long CKVM_GET_MP_STATE;
extern const unsigned long CKVM_SET_MP_STATE;
extern const unsigned long CKVM_TRANSLATE;

// Saving and restoring a VM (docs/snapshot.md has the order).
extern const unsigned long CKVM_GET_FPU;
extern const unsigned long CKVM_GET_XSAVE;
extern const unsigned long CKVM_SET_XSAVE;
extern const unsigned long CKVM_GET_XCRS;
extern const unsigned long CKVM_SET_XCRS;
extern const unsigned long CKVM_GET_DEBUGREGS;
extern const unsigned long CKVM_SET_DEBUGREGS;
extern const unsigned long CKVM_GET_VCPU_EVENTS;
extern const unsigned long CKVM_SET_VCPU_EVENTS;
extern const unsigned long CKVM_GET_TSC_KHZ;
extern const unsigned long CKVM_SET_TSC_KHZ;
extern const unsigned long CKVM_KVMCLOCK_CTRL;
extern const unsigned long CKVM_GET_IRQCHIP;
extern const unsigned long CKVM_SET_IRQCHIP;
extern const unsigned long CKVM_GET_PIT2;
extern const unsigned long CKVM_SET_PIT2;
extern const unsigned long CKVM_GET_CLOCK;
extern const unsigned long CKVM_SET_CLOCK;
// Live migration: the guest's writes per memory slot.
extern const unsigned long CKVM_GET_DIRTY_LOG;

// ---- fixed-size versions of flexible-array structs (same layout as the kernel's) -----------
#define CKVM_MAX_CPUID_ENTRIES 256
struct ckvm_cpuid2 {
    uint32_t nent;
    uint32_t padding;
    struct kvm_cpuid_entry2 entries[CKVM_MAX_CPUID_ENTRIES];
};

#define CKVM_MAX_MSR_ENTRIES 64
struct ckvm_msrs {
    uint32_t nmsrs;
    uint32_t pad;
    struct kvm_msr_entry entries[CKVM_MAX_MSR_ENTRIES];
};

#define CKVM_MAX_MSR_INDICES 1024
struct ckvm_msr_list {
    uint32_t nmsrs;
    uint32_t indices[CKVM_MAX_MSR_INDICES];
};

#define CKVM_MAX_IRQ_ROUTES 1024
struct ckvm_irq_routing {
    uint32_t nr;
    uint32_t flags;
    struct kvm_irq_routing_entry entries[CKVM_MAX_IRQ_ROUTES];
};

// Fill one routing entry (the union inside kvm_irq_routing_entry is awkward from Swift).
void ckvm_routing_set_irqchip(struct ckvm_irq_routing *r, uint32_t index, uint32_t gsi, uint32_t chip, uint32_t pin);
void ckvm_routing_set_msi(struct ckvm_irq_routing *r, uint32_t index, uint32_t gsi, uint64_t address, uint32_t data);


// ---- VFIO (<linux/vfio.h>) ----------------------------------------------------------------
extern const unsigned long CKVM_VFIO_GET_API_VERSION;
extern const unsigned long CKVM_VFIO_CHECK_EXTENSION;
extern const unsigned long CKVM_VFIO_SET_IOMMU;
extern const unsigned long CKVM_VFIO_GROUP_GET_STATUS;
extern const unsigned long CKVM_VFIO_GROUP_SET_CONTAINER;
extern const unsigned long CKVM_VFIO_GROUP_UNSET_CONTAINER;
extern const unsigned long CKVM_VFIO_GROUP_GET_DEVICE_FD;
extern const unsigned long CKVM_VFIO_DEVICE_GET_INFO;
extern const unsigned long CKVM_VFIO_DEVICE_GET_IRQ_INFO;
extern const unsigned long CKVM_VFIO_DEVICE_RESET;
extern const unsigned long CKVM_VFIO_IOMMU_MAP_DMA;
extern const unsigned long CKVM_VFIO_IOMMU_UNMAP_DMA;

// One region's info with the sparse-mmap capability flattened (the kernel returns it as a
// variable-length capability chain, which Swift cannot walk without pointer arithmetic).
#define CKVM_VFIO_MAX_SPARSE 16
struct ckvm_vfio_region {
    uint32_t flags;
    uint32_t nr_areas;     // sparse mmap areas; 0 with has_sparse = 0 means "all of it if MMAP"
    uint32_t has_sparse;
    uint32_t pad;
    uint64_t size;
    uint64_t offset;
    uint64_t area_offset[CKVM_VFIO_MAX_SPARSE];
    uint64_t area_size[CKVM_VFIO_MAX_SPARSE];
};
// VFIO_DEVICE_GET_REGION_INFO (twice when the region has capabilities). 0 or -1 with errno.
int ckvm_vfio_region_info(int device_fd, uint32_t index, struct ckvm_vfio_region *out);
// VFIO_DEVICE_SET_IRQS with DATA_EVENTFD (fds[i] = -1 detaches vector start+i) or, when fds is
// NULL, DATA_NONE. `action` is one of VFIO_IRQ_SET_ACTION_*.
int ckvm_vfio_set_irqs(int device_fd, uint32_t index, uint32_t action, uint32_t start, uint32_t count, const int32_t *fds);

// ---- wrappers -------------------------------------------------------------------------------
// Each returns the ioctl's result; on -1 errno is left for the caller.
int ckvm_ioctl_ptr(int fd, unsigned long request, void *arg);
int ckvm_ioctl_val(int fd, unsigned long request, unsigned long arg);

// kvm_run field access that Swift cannot reach through anonymous unions conveniently.
static inline uint8_t *ckvm_run_mmio_data(struct kvm_run *run) {
    return run->mmio.data;
}

// Thread helpers (need _GNU_SOURCE, which must not leak into Swift's view of Glibc).
int ckvm_gettid(void);
int ckvm_pin_current_thread(int cpu);
// Installs an empty handler for `signo` without SA_RESTART, so a signal sent to a vCPU thread
// makes KVM_RUN return EINTR (how one vCPU's poweroff stops the others).
int ckvm_install_kick_handler(int signo);
int ckvm_block_signal(int signo, int block);
int ckvm_set_thread_name(const char *name);

// KVM_SET_USER_MEMORY_REGION for `count` regions on a thread of its own: the first memory slot
// of a VM costs the kernel an SRCU grace period (5–9 ms on a nested host, whatever the size),
// which the VMM overlaps with building devices, loading the guest and creating vCPUs. A plain
// pthread (no Swift runtime, no seccomp start hook); it only issues those ioctls. Returns a
// handle, or NULL with errno; ckvm_memory_regions_wait joins it and returns 0 or the errno of
// the first failed region, with its index in *failed.
struct ckvm_memory_regions;
struct ckvm_memory_regions *ckvm_memory_regions_start(int vm_fd, const struct kvm_userspace_memory_region *regions, int count);
int ckvm_memory_regions_wait(struct ckvm_memory_regions *pending, int *failed);

// Device register access through an mmap'd BAR: volatile, so every load and store happens
// (a plain Swift load/store may be folded by the optimiser).
static inline uint32_t ckvm_mmio_read32(void *base, long off) { return *(volatile uint32_t *)((char *)base + off); }
static inline uint64_t ckvm_mmio_read64(void *base, long off) { return *(volatile uint64_t *)((char *)base + off); }
static inline void ckvm_mmio_write32(void *base, long off, uint32_t v) { *(volatile uint32_t *)((char *)base + off) = v; }
static inline void ckvm_mmio_write64(void *base, long off, uint64_t v) { *(volatile uint64_t *)((char *)base + off) = v; }

#endif
