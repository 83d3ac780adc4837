/*
 * badinsn - executes one instruction chosen by insn=NAME at ring 0, to test how the VMM reports
 * a guest the host cannot run. On a KVM that emulates guest ring-0 code (the development
 * machines' nested kvm_pvm) `popcnt` and `cmpxchg16b` are missing from the emulator: KVM
 * stops the VM with an emulation failure, which rtvisor must report with the instruction bytes
 * and the CPU feature whose hiding avoids it. On hardware-virtualised KVM they simply run and
 * the inmate passes.
 *   insn=popcnt (default) | cmpxchg16b
 */
#include "inmate.h"

const char inmate_name[] = "badinsn";

static u64 target[2] __attribute__((aligned(16)));

void inmate_main(void)
{
	char insn[32] = "popcnt";
	u64 in = 0xF0F0, out = 0;

	cmdline_get("insn", insn, sizeof(insn));
	if (!strcmp(insn, "popcnt")) {
		printk("badinsn: executing popcnt\n");
		/* f3 48 0f b8 c7: popcnt %rdi, %rax, spelled out so no -march is needed */
		asm volatile(".byte 0xf3, 0x48, 0x0f, 0xb8, 0xc7" : "=a"(out) : "D"(in));
		if (out != 8)
			inmate_fail(EXIT_FAIL, "popcnt gave %lu", out);
	} else if (!strcmp(insn, "cmpxchg16b")) {
		u64 lo = 0, hi = 0;
		printk("badinsn: executing lock cmpxchg16b\n");
		asm volatile("lock cmpxchg16b %0" : "+m"(target[0]), "+a"(lo), "+d"(hi) : "b"(1ul), "c"(2ul) : "memory");
		if (target[0] != 1)
			inmate_fail(EXIT_FAIL, "cmpxchg16b did not store");
	} else {
		inmate_fail(EXIT_FAIL, "unknown insn=%s", insn);
	}
	printk("badinsn: %s ran\n", insn);
}
