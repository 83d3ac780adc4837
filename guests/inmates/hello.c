/*
 * hello - the smallest inmate: proves the PVH entry, long mode, the console
 * and the exit port work, and echoes what the VMM passed in start_info.
 */
#include "inmate.h"

const char inmate_name[] = "hello";

static const char *mem_type(u32 type)
{
	switch (type) {
	case 1: return "ram";
	case 2: return "reserved";
	case 3: return "acpi";
	case 4: return "nvs";
	case 5: return "unusable";
	default: return "?";
	}
}

void inmate_main(void)
{
	printk("Hello from inmate\n");
	if (!start_info)
		inmate_fail(EXIT_BADBOOT, "no hvm_start_info (ebx=%#x)", boot_ebx);
	printk("cmdline: \"%s\"\n", cmdline());
	printk("start_info at %#x: version %u, flags %#x, %u modules, rsdp %#lx\n",
	       boot_ebx, start_info->version, start_info->flags, start_info->nr_modules,
	       start_info->rsdp_paddr);
	if (start_info->version >= 1 && start_info->memmap_paddr &&
	    start_info->memmap_paddr < (1ULL << 32)) {
		const struct hvm_memmap_entry *m = (const void *)start_info->memmap_paddr;

		for (u32 i = 0; i < start_info->memmap_entries && i < 32; i++)
			if (m[i].size)	/* qboot counts one empty entry too */
				printk("memmap %#011lx-%#011lx %s\n", m[i].addr,
			       m[i].addr + m[i].size - 1, mem_type(m[i].type));
	}
}
