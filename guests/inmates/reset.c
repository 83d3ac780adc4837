/*
 * reset - resets the machine through the i8042 keyboard controller
 * (command 0xfe: pulse the CPU reset line).  Success is the reset itself;
 * there is no PASS line.  If we are still running afterwards: FAIL, code 2.
 */
#include "inmate.h"

const char inmate_name[] = "reset";

void inmate_main(void)
{
	u64 t0;

	printk("INMATE reset: resetting through the i8042 (0xfe -> port 0x64)\n");
	/* Wait (bounded) for the input buffer to drain: status bit 1 clear. */
	for (int i = 0; i < 1000 && (inb(0x64) & 0x02); i++)
		cpu_relax();
	outb(0x64, 0xfe);
	/* Give an asynchronous reset a moment (~0.3-1 s of TSC) to happen. */
	t0 = rdtsc();
	while (rdtsc() - t0 < 1000000000ULL)
		cpu_relax();
	inmate_fail(EXIT_FAIL, "still running after the i8042 reset command");
}
