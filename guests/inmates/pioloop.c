/*
 * pioloop - the per-exit benchmark: count=N (default 100000) byte writes
 * to the otherwise unused I/O port 0x404 (value: low byte of the index).
 * Every write is one I/O exit to the VMM; the TSC cycles are reported so
 * the guest-side cost per exit can be read off the console.
 */
#include "inmate.h"

const char inmate_name[] = "pioloop";

void inmate_main(void)
{
	u64 count = cmdline_get_u64("count", 100000);
	bool calibrated = timer_init();
	u64 t0, cycles;

	t0 = rdtsc();
	for (u64 i = 0; i < count; i++)
		outb(PIOLOOP_PORT, (u8)i);
	cycles = rdtsc() - t0;
	printk("pioloop: %lu writes to port %#x in %lu TSC cycles (%lu us%s)\n",
	       count, PIOLOOP_PORT, cycles, tsc_to_us(cycles),
	       calibrated ? "" : ", TSC rate assumed");
	if (count)
		printk("pioloop: %lu cycles, %lu ns per write\n", cycles / count,
		       cycles * 1000000 / tsc_khz / count);
}
