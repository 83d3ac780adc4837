// Dirty logging on this host, both ways KVM offers it (issue 19, docs/migration.md "Pre-copy"):
// the bitmap (KVM_MEM_LOG_DIRTY_PAGES + KVM_GET_DIRTY_LOG) and the dirty ring
// (KVM_CAP_DIRTY_LOG_RING: per-vCPU rings of guest frame numbers, harvested by the VMM and
// re-armed with KVM_RESET_DIRTY_RINGS). A real-mode guest writes one byte to each of PAGES pages,
// round after round; after each round the pages each method reports are counted against the
// pages written, and the harvest is timed. Prints one line per method and round.
//   cc -O2 -o dirty-log-probe dirty-log-probe.c && ./dirty-log-probe [ROUNDS [RAM_MIB]]
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static size_t MEM = 2u << 20; // guest RAM: argv[2] MiB
#define PAGES 200
#define FIRST_PAGE 0x10 // the guest writes pages 0x10 .. 0x10 + PAGES - 1 (code: page 1)
#define RING_ENTRIES 4096
#define DIRTY_LOG_PAGE_OFFSET 64 // x86's KVM_DIRTY_LOG_PAGE_OFFSET

static void die(const char *what) { fprintf(stderr, "dirty-log-probe: %s: %s\n", what, strerror(errno)); exit(1); }

static double now_us(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

// mov ax,0x1000; mov cx,PAGES; l: mov es,ax; mov byte [es:0],1; add ax,0x100; dec cx; jnz l; hlt
static const uint8_t code[] = {0xB8, 0x00, 0x10, 0xB9, PAGES & 0xFF, PAGES >> 8, 0x8E, 0xC0, 0x26, 0xC6, 0x06, 0x00, 0x00, 0x01,
			       0x05, 0x00, 0x01, 0x49, 0x75, 0xF2, 0xF4};

struct vm { int fd, vcpu; uint8_t *mem; struct kvm_run *run; struct kvm_dirty_gfn *ring; uint32_t next; };

static struct vm create(int kvm, int ring) {
	struct vm v = {0};
	if ((v.fd = ioctl(kvm, KVM_CREATE_VM, 0)) < 0) die("KVM_CREATE_VM");
	if (ring) {
		struct kvm_enable_cap cap = {.cap = KVM_CAP_DIRTY_LOG_RING, .args = {RING_ENTRIES * sizeof(struct kvm_dirty_gfn)}};
		if (ioctl(v.fd, KVM_ENABLE_CAP, &cap) < 0) die("KVM_ENABLE_CAP(DIRTY_LOG_RING)");
	}
	v.mem = mmap(NULL, MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (v.mem == MAP_FAILED) die("mmap");
	memcpy(v.mem + 0x1000, code, sizeof code);
	struct kvm_userspace_memory_region r = {.slot = 0, .flags = KVM_MEM_LOG_DIRTY_PAGES, .guest_phys_addr = 0,
						.memory_size = MEM, .userspace_addr = (uint64_t)v.mem};
	if (ioctl(v.fd, KVM_SET_USER_MEMORY_REGION, &r) < 0) die("KVM_SET_USER_MEMORY_REGION");
	if ((v.vcpu = ioctl(v.fd, KVM_CREATE_VCPU, 0)) < 0) die("KVM_CREATE_VCPU");
	int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	v.run = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, v.vcpu, 0);
	if (v.run == MAP_FAILED) die("mmap kvm_run");
	if (ring) {
		v.ring = mmap(NULL, RING_ENTRIES * sizeof(struct kvm_dirty_gfn), PROT_READ | PROT_WRITE, MAP_SHARED, v.vcpu,
			      DIRTY_LOG_PAGE_OFFSET * getpagesize());
		if (v.ring == MAP_FAILED) die("mmap dirty ring");
	}
	return v;
}

static void run_round(struct vm *v) {
	struct kvm_sregs s;
	if (ioctl(v->vcpu, KVM_GET_SREGS, &s) < 0) die("KVM_GET_SREGS");
	s.cs.base = 0; s.cs.selector = 0;
	if (ioctl(v->vcpu, KVM_SET_SREGS, &s) < 0) die("KVM_SET_SREGS");
	struct kvm_regs r = {.rip = 0x1000, .rflags = 2};
	if (ioctl(v->vcpu, KVM_SET_REGS, &r) < 0) die("KVM_SET_REGS");
	for (;;) {
		if (ioctl(v->vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
		if (v->run->exit_reason == KVM_EXIT_HLT) return;
		fprintf(stderr, "dirty-log-probe: unexpected exit %u\n", v->run->exit_reason);
		exit(1);
	}
}

// Pages among the ones written that the method reports; `other` counts the rest it reports.
static int harvest(struct vm *v, int ring, int *other, double *us) {
	static uint64_t *bitmap;
	if (!bitmap && !(bitmap = calloc(MEM / 4096 / 64, 8))) die("calloc");
	int written = 0;
	*other = 0;
	double t0 = now_us();
	if (ring) {
		for (;;) {
			struct kvm_dirty_gfn *e = &v->ring[v->next % RING_ENTRIES];
			if (!(__atomic_load_n(&e->flags, __ATOMIC_ACQUIRE) & KVM_DIRTY_GFN_F_DIRTY)) break;
			if (e->offset >= FIRST_PAGE && e->offset < FIRST_PAGE + PAGES) written++; else (*other)++;
			__atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
			v->next++;
		}
		if (ioctl(v->fd, KVM_RESET_DIRTY_RINGS, 0) < 0) die("KVM_RESET_DIRTY_RINGS");
	} else {
		struct kvm_dirty_log log = {.slot = 0, .dirty_bitmap = bitmap};
		if (ioctl(v->fd, KVM_GET_DIRTY_LOG, &log) < 0) die("KVM_GET_DIRTY_LOG");
		for (unsigned p = 0; p < MEM / 4096; p++)
			if (bitmap[p / 64] >> (p % 64) & 1) { if (p >= FIRST_PAGE && p < FIRST_PAGE + PAGES) written++; else (*other)++; }
	}
	*us = now_us() - t0;
	return written;
}

int main(int argc, char **argv) {
	int rounds = argc > 1 ? atoi(argv[1]) : 3;
	if (argc > 2) MEM = (size_t)atoi(argv[2]) << 20;
	if (MEM < (2u << 20)) { fprintf(stderr, "dirty-log-probe: RAM_MIB must be at least 2\n"); return 2; }
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0) die("/dev/kvm");
	int ring_cap = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING);
	printf("KVM_CAP_DIRTY_LOG_RING: %d bytes at most; KVM_CAP_DIRTY_LOG_RING_ACQ_REL: %d\n", ring_cap,
	       ioctl(kvm, KVM_CHECK_EXTENSION, 214));
	for (int ring = 0; ring <= 1; ring++) {
		if (ring && ring_cap <= 0) { printf("ring: not offered by this host\n"); break; }
		struct vm v = create(kvm, ring);
		for (int i = 0; i < rounds; i++) {
			double t0 = now_us();
			run_round(&v);
			double guest = now_us() - t0, us;
			int other, got = harvest(&v, ring, &other, &us);
			printf("%zu MiB, %s round %d: guest wrote %d pages in %.0f us; reported %d of them (+%d others: code, stack); harvest %.1f us\n",
			       MEM >> 20, ring ? "ring  " : "bitmap", i, PAGES, guest, got, other, us);
		}
	}
	return 0;
}
