#define _GNU_SOURCE
#include "ckvm.h"
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <pthread.h>
#include <stdlib.h>
#include <errno.h>

const unsigned long CKVM_GET_API_VERSION = KVM_GET_API_VERSION;
const unsigned long CKVM_CREATE_VM = KVM_CREATE_VM;
const unsigned long CKVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
const unsigned long CKVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
const unsigned long CKVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
const unsigned long CKVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;

const unsigned long CKVM_CREATE_VCPU = KVM_CREATE_VCPU;
const unsigned long CKVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
const unsigned long CKVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
const unsigned long CKVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
const unsigned long CKVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
const unsigned long CKVM_CREATE_PIT2 = KVM_CREATE_PIT2;
const unsigned long CKVM_IRQ_LINE = KVM_IRQ_LINE;
const unsigned long CKVM_IRQFD = KVM_IRQFD;
const unsigned long CKVM_IOEVENTFD = KVM_IOEVENTFD;
const unsigned long CKVM_SET_GSI_ROUTING = KVM_SET_GSI_ROUTING;
const unsigned long CKVM_ENABLE_CAP = KVM_ENABLE_CAP;
const unsigned long CKVM_SIGNAL_MSI = KVM_SIGNAL_MSI;

const unsigned long CKVM_RUN = KVM_RUN;
const unsigned long CKVM_GET_REGS = KVM_GET_REGS;
const unsigned long CKVM_SET_REGS = KVM_SET_REGS;
const unsigned long CKVM_GET_SREGS = KVM_GET_SREGS;
const unsigned long CKVM_SET_SREGS = KVM_SET_SREGS;
const unsigned long CKVM_SET_CPUID2 = KVM_SET_CPUID2;
const unsigned long CKVM_GET_CPUID2 = KVM_GET_CPUID2;
const unsigned long CKVM_SET_MSRS = KVM_SET_MSRS;
const unsigned long CKVM_GET_MSRS = KVM_GET_MSRS;
const unsigned long CKVM_SET_FPU = KVM_SET_FPU;
const unsigned long CKVM_GET_LAPIC = KVM_GET_LAPIC;
const unsigned long CKVM_SET_LAPIC = KVM_SET_LAPIC;
const unsigned long CKVM_GET_MP_STATE = KVM_GET_MP_STATE;
const unsigned long CKVM_SET_MP_STATE = KVM_SET_MP_STATE;
const unsigned long CKVM_TRANSLATE = KVM_TRANSLATE;

const unsigned long CKVM_GET_FPU = KVM_GET_FPU;
const unsigned long CKVM_GET_XSAVE = KVM_GET_XSAVE;
const unsigned long CKVM_SET_XSAVE = KVM_SET_XSAVE;
const unsigned long CKVM_GET_XCRS = KVM_GET_XCRS;
const unsigned long CKVM_SET_XCRS = KVM_SET_XCRS;
const unsigned long CKVM_GET_DEBUGREGS = KVM_GET_DEBUGREGS;
const unsigned long CKVM_SET_DEBUGREGS = KVM_SET_DEBUGREGS;
const unsigned long CKVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
const unsigned long CKVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
const unsigned long CKVM_GET_TSC_KHZ = KVM_GET_TSC_KHZ;
const unsigned long CKVM_SET_TSC_KHZ = KVM_SET_TSC_KHZ;
const unsigned long CKVM_KVMCLOCK_CTRL = KVM_KVMCLOCK_CTRL;
const unsigned long CKVM_GET_IRQCHIP = KVM_GET_IRQCHIP;
const unsigned long CKVM_SET_IRQCHIP = KVM_SET_IRQCHIP;
const unsigned long CKVM_GET_PIT2 = KVM_GET_PIT2;
const unsigned long CKVM_SET_PIT2 = KVM_SET_PIT2;
const unsigned long CKVM_GET_CLOCK = KVM_GET_CLOCK;
const unsigned long CKVM_SET_CLOCK = KVM_SET_CLOCK;
const unsigned long CKVM_GET_DIRTY_LOG = KVM_GET_DIRTY_LOG;

const unsigned long CKVM_VFIO_GET_API_VERSION = VFIO_GET_API_VERSION;
const unsigned long CKVM_VFIO_CHECK_EXTENSION = VFIO_CHECK_EXTENSION;
const unsigned long CKVM_VFIO_SET_IOMMU = VFIO_SET_IOMMU;
const unsigned long CKVM_VFIO_GROUP_GET_STATUS = VFIO_GROUP_GET_STATUS;
const unsigned long CKVM_VFIO_GROUP_SET_CONTAINER = VFIO_GROUP_SET_CONTAINER;
const unsigned long CKVM_VFIO_GROUP_UNSET_CONTAINER = VFIO_GROUP_UNSET_CONTAINER;
const unsigned long CKVM_VFIO_GROUP_GET_DEVICE_FD = VFIO_GROUP_GET_DEVICE_FD;
const unsigned long CKVM_VFIO_DEVICE_GET_INFO = VFIO_DEVICE_GET_INFO;
const unsigned long CKVM_VFIO_DEVICE_GET_IRQ_INFO = VFIO_DEVICE_GET_IRQ_INFO;
const unsigned long CKVM_VFIO_DEVICE_RESET = VFIO_DEVICE_RESET;
const unsigned long CKVM_VFIO_IOMMU_MAP_DMA = VFIO_IOMMU_MAP_DMA;
const unsigned long CKVM_VFIO_IOMMU_UNMAP_DMA = VFIO_IOMMU_UNMAP_DMA;

int ckvm_vfio_region_info(int device_fd, uint32_t index, struct ckvm_vfio_region *out) {
    memset(out, 0, sizeof *out);
    struct vfio_region_info probe;
    memset(&probe, 0, sizeof probe);
    probe.argsz = sizeof probe;
    probe.index = index;
    if (ioctl(device_fd, VFIO_DEVICE_GET_REGION_INFO, &probe) < 0) return -1;
    out->flags = probe.flags;
    out->size = probe.size;
    out->offset = probe.offset;
    if (!(probe.flags & VFIO_REGION_INFO_FLAG_CAPS) || probe.argsz <= sizeof probe) return 0;
    // Second call with room for the capability chain.
    uint32_t argsz = probe.argsz;
    struct vfio_region_info *full = calloc(1, argsz);
    if (!full) { errno = ENOMEM; return -1; }
    full->argsz = argsz;
    full->index = index;
    if (ioctl(device_fd, VFIO_DEVICE_GET_REGION_INFO, full) < 0) { int e = errno; free(full); errno = e; return -1; }
    uint32_t next = full->cap_offset;
    int guard = 0;
    while (next != 0 && next + sizeof(struct vfio_info_cap_header) <= argsz && guard++ < 64) {
        struct vfio_info_cap_header *h = (struct vfio_info_cap_header *)((char *)full + next);
        if (h->id == VFIO_REGION_INFO_CAP_SPARSE_MMAP && next + sizeof(struct vfio_region_info_cap_sparse_mmap) <= argsz) {
            struct vfio_region_info_cap_sparse_mmap *sp = (struct vfio_region_info_cap_sparse_mmap *)h;
            out->has_sparse = 1;
            for (uint32_t i = 0; i < sp->nr_areas && out->nr_areas < CKVM_VFIO_MAX_SPARSE; i++) {
                if (next + sizeof *sp + (i + 1) * sizeof(sp->areas[0]) > argsz) break;
                out->area_offset[out->nr_areas] = sp->areas[i].offset;
                out->area_size[out->nr_areas] = sp->areas[i].size;
                out->nr_areas++;
            }
        }
        next = h->next;
    }
    free(full);
    return 0;
}

int ckvm_vfio_set_irqs(int device_fd, uint32_t index, uint32_t action, uint32_t start, uint32_t count, const int32_t *fds) {
    size_t argsz = sizeof(struct vfio_irq_set) + (fds ? count * sizeof(int32_t) : 0);
    struct vfio_irq_set *set = calloc(1, argsz);
    if (!set) { errno = ENOMEM; return -1; }
    set->argsz = (uint32_t)argsz;
    set->flags = action | (fds ? VFIO_IRQ_SET_DATA_EVENTFD : VFIO_IRQ_SET_DATA_NONE);
    set->index = index;
    set->start = start;
    set->count = count;
    if (fds) memcpy(set->data, fds, count * sizeof(int32_t));
    int r = ioctl(device_fd, VFIO_DEVICE_SET_IRQS, set);
    int e = errno;
    free(set);
    errno = e;
    return r;
}

int ckvm_ioctl_ptr(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }
int ckvm_ioctl_val(int fd, unsigned long request, unsigned long arg) { return ioctl(fd, request, arg); }

int ckvm_gettid(void) { return (int)syscall(SYS_gettid); }

int ckvm_pin_current_thread(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static void kick_handler(int signo) { (void)signo; }

int ckvm_install_kick_handler(int signo) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = kick_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; // no SA_RESTART: KVM_RUN must return EINTR
    return sigaction(signo, &sa, NULL);
}

int ckvm_block_signal(int signo, int block) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    return pthread_sigmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, NULL);
}

int ckvm_set_thread_name(const char *name) { return pthread_setname_np(pthread_self(), name); }

void ckvm_routing_set_irqchip(struct ckvm_irq_routing *r, uint32_t index, uint32_t gsi, uint32_t chip, uint32_t pin) {
    struct kvm_irq_routing_entry *e = &r->entries[index];
    memset(e, 0, sizeof *e);
    e->gsi = gsi;
    e->type = KVM_IRQ_ROUTING_IRQCHIP;
    e->u.irqchip.irqchip = chip;
    e->u.irqchip.pin = pin;
}

void ckvm_routing_set_msi(struct ckvm_irq_routing *r, uint32_t index, uint32_t gsi, uint64_t address, uint32_t data) {
    struct kvm_irq_routing_entry *e = &r->entries[index];
    memset(e, 0, sizeof *e);
    e->gsi = gsi;
    e->type = KVM_IRQ_ROUTING_MSI;
    e->u.msi.address_lo = (uint32_t)address;
    e->u.msi.address_hi = (uint32_t)(address >> 32);
    e->u.msi.data = data;
}

struct ckvm_memory_regions {
	pthread_t thread;
	int vm_fd;
	int count;
	int failed;
	int error;
	struct kvm_userspace_memory_region regions[];
};

static void *memory_regions_thread(void *arg)
{
	struct ckvm_memory_regions *p = arg;
	for (int i = 0; i < p->count; i++) {
		int r;
		do
			r = ioctl(p->vm_fd, KVM_SET_USER_MEMORY_REGION, &p->regions[i]);
		while (r < 0 && errno == EINTR);
		if (r < 0) {
			p->error = errno;
			p->failed = i;
			break;
		}
	}
	return NULL;
}

struct ckvm_memory_regions *ckvm_memory_regions_start(int vm_fd, const struct kvm_userspace_memory_region *regions, int count)
{
	struct ckvm_memory_regions *p = calloc(1, sizeof(*p) + (size_t)count * sizeof(regions[0]));
	if (!p)
		return NULL;
	p->vm_fd = vm_fd;
	p->count = count;
	p->failed = -1;
	memcpy(p->regions, regions, (size_t)count * sizeof(regions[0]));
	/* No signal reaches it: the VMM's SIGINT/SIGTERM thread and vCPU kicks stay elsewhere. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int r = pthread_create(&p->thread, NULL, memory_regions_thread, p);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r != 0) {
		free(p);
		errno = r;
		return NULL;
	}
	return p;
}

int ckvm_memory_regions_wait(struct ckvm_memory_regions *p, int *failed)
{
	pthread_join(p->thread, NULL);
	int error = p->error;
	*failed = p->failed;
	free(p);
	return error;
}
