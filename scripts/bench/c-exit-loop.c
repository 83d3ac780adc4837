/*
 * c-exit-loop: the smallest VMM that runs a PVH inmate, as a per-exit baseline for
 * scripts/bench-boot.sh. It does what rtvisor-vmm does on the hot path and nothing else:
 * one vCPU, in-kernel irqchip + PIT, PIO exits answered inline (COM1 LSR says "empty",
 * bytes to stdout), exit on a write to port 0xf4. Usage: c-exit-loop INMATE.elf "cmdline"
 */
#include <elf.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define RAM (64ul << 20)
#define START_INFO 0x6000
#define CMDLINE 0x20000
#define GDT 0x500

static void die(const char *what) { perror(what); exit(1); }

struct cpuid_table { struct kvm_cpuid2 h; struct kvm_cpuid_entry2 e[256]; };

int main(int argc, char **argv)
{
	if (argc < 2) { fprintf(stderr, "usage: %s INMATE.elf [cmdline]\n", argv[0]); return 2; }
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0) die("/dev/kvm");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0) die("KVM_CREATE_VM");
	ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000ul);
	uint64_t idmap = 0xfffbc000ul;
	ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &idmap);
	if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
	struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
	if (ioctl(vm, KVM_CREATE_PIT2, &pit) < 0) die("KVM_CREATE_PIT2");

	uint8_t *mem = mmap(NULL, RAM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	struct kvm_userspace_memory_region region = { .slot = 0, .guest_phys_addr = 0, .memory_size = RAM, .userspace_addr = (uint64_t)mem };
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");

	/* Load the ELF64 PT_LOAD segments and find the PVH entry note. */
	int fd = open(argv[1], O_RDONLY);
	if (fd < 0) die(argv[1]);
	struct stat st; fstat(fd, &st);
	uint8_t *img = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	Elf64_Ehdr *eh = (Elf64_Ehdr *)img;
	uint64_t entry = 0;
	for (int i = 0; i < eh->e_phnum; i++) {
		Elf64_Phdr *ph = (Elf64_Phdr *)(img + eh->e_phoff + i * eh->e_phentsize);
		if (ph->p_type == PT_LOAD) {
			memcpy(mem + ph->p_paddr, img + ph->p_offset, ph->p_filesz);
			memset(mem + ph->p_paddr + ph->p_filesz, 0, ph->p_memsz - ph->p_filesz);
		} else if (ph->p_type == PT_NOTE) {
			uint8_t *n = img + ph->p_offset, *end = n + ph->p_filesz;
			while (n + 12 <= end) {
				uint32_t namesz = ((uint32_t *)n)[0], descsz = ((uint32_t *)n)[1], type = ((uint32_t *)n)[2];
				uint8_t *name = n + 12, *desc = name + ((namesz + 3) & ~3u);
				if (type == 18 && !memcmp(name, "Xen", 3)) entry = *(uint32_t *)desc;
				n = desc + ((descsz + 3) & ~3u);
			}
		}
	}
	if (!entry) { fprintf(stderr, "no PVH entry\n"); return 1; }

	/* start_info (magic, version 1, cmdline) and a flat GDT. */
	const char *cmd = argc > 2 ? argv[2] : "";
	strcpy((char *)mem + CMDLINE, cmd);
	uint32_t *si = (uint32_t *)(mem + START_INFO);
	si[0] = 0x336ec578; si[1] = 1;
	*(uint64_t *)(mem + START_INFO + 24) = CMDLINE;
	uint64_t gdt[] = { 0, 0x00af9b000000ffff, 0x00cf9b000000ffff, 0x00cf93000000ffff, 0x00008b0000000067 };
	memcpy(mem + GDT, gdt, sizeof(gdt));

	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0) die("KVM_CREATE_VCPU");
	struct cpuid_table cpuid = { .h.nent = 256 };
	if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0) die("KVM_GET_SUPPORTED_CPUID");
	if (ioctl(vcpu, KVM_SET_CPUID2, &cpuid) < 0) die("KVM_SET_CPUID2");
	int runsz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	struct kvm_run *run = mmap(NULL, runsz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);

	struct kvm_sregs sregs;
	ioctl(vcpu, KVM_GET_SREGS, &sregs);
	struct kvm_segment code = { .base = 0, .limit = 0xffffffff, .selector = 0x10, .type = 11, .present = 1, .db = 1, .s = 1, .g = 1 };
	struct kvm_segment data = code; data.selector = 0x18; data.type = 3;
	struct kvm_segment tss = { .limit = 0x67, .selector = 0x20, .type = 11, .present = 1 };
	sregs.cs = code; sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data; sregs.tr = tss;
	sregs.gdt.base = GDT; sregs.gdt.limit = sizeof(gdt) - 1;
	sregs.cr0 = 0x11; sregs.cr3 = 0; sregs.cr4 = 0; sregs.efer = 0;
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
	struct kvm_regs regs = { .rip = entry, .rbx = START_INFO, .rflags = 2 };
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
		if (run->exit_reason == KVM_EXIT_IO) {
			uint8_t *d = (uint8_t *)run + run->io.data_offset;
			uint16_t port = run->io.port;
			if (run->io.direction == KVM_EXIT_IO_OUT) {
				if (port == 0x3f8) { if (write(1, d, 1) < 0) return 1; }
				else if (port == 0xf4) return d[0];
			} else {
				memset(d, port == 0x3fd ? 0x60 : 0xff, run->io.size);
			}
		} else if (run->exit_reason == KVM_EXIT_MMIO) {
			if (!run->mmio.is_write) memset(run->mmio.data, 0xff, run->mmio.len);
		} else {
			fprintf(stderr, "exit reason %u\n", run->exit_reason);
			return 1;
		}
	}
}
