/*
 * flood - a hostile console (issue 16): flood.lines=N short lines (default
 * 5000) as fast as the serial port takes them, then flood.long=M bytes
 * (default 20000) without a newline, then a clean exit. The VMM must journal
 * only what the VM's rate limit allows, count the rest, and hold at most one
 * bounded piece of the endless line.
 */
#include "inmate.h"

const char inmate_name[] = "flood";

void inmate_main(void)
{
	u64 lines = cmdline_get_u64("flood.lines", 5000);
	u64 len = cmdline_get_u64("flood.long", 20000);

	for (u64 i = 0; i < lines; i++)
		printk("f%lu\n", i);
	for (u64 i = 0; i < len; i++)
		console_putc('x');
	printk("\nFLOOD_DONE\n");
}
