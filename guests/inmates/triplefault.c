/*
 * triplefault - loads an empty IDT (limit 0) and executes ud2: the #UD
 * cannot be delivered (#GP), neither can that (#DF), so the CPU shuts down
 * (triple fault), which the VMM must see as a shutdown/reset.  No PASS line;
 * if we are still running afterwards: FAIL, code 2.
 */
#include "inmate.h"

const char inmate_name[] = "triplefault";

void inmate_main(void)
{
	static const struct {
		u16 pad[3];
		u16 limit;
		u64 base;
	} __attribute__((packed, aligned(8))) null_idt = { { 0, 0, 0 }, 0, 0 };

	printk("INMATE triplefault: loading an empty IDT and executing ud2\n");
	__asm__ volatile("lidt %0; ud2" :: "m"(null_idt.limit));
	inmate_fail(EXIT_FAIL, "still running after ud2 with an empty IDT");
}
