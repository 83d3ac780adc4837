/*
 * cpuid - prints CPUID leaves 1 and 7.0 and checks feature bits against
 * the command line: absent=a,b,... must be clear, present=c,d,... must be
 * set.  The VMM uses it to prove its CPUID policy reaches the guest.
 */
#include "inmate.h"

const char inmate_name[] = "cpuid";

enum reg { EAX, EBX, ECX, EDX };
struct feature {
	const char *name;
	u8 leaf;	/* 1 or 7 (subleaf 0) */
	u8 reg;
	u8 bit;
};

static const struct feature features[] = {
	/* leaf 1 ECX */
	{ "sse3", 1, ECX, 0 },	{ "pclmulqdq", 1, ECX, 1 }, { "monitor", 1, ECX, 3 },
	{ "vmx", 1, ECX, 5 },	{ "ssse3", 1, ECX, 9 },	{ "fma", 1, ECX, 12 },
	{ "cx16", 1, ECX, 13 },	{ "pdcm", 1, ECX, 15 },	{ "pcid", 1, ECX, 17 },
	{ "sse4_1", 1, ECX, 19 }, { "sse4_2", 1, ECX, 20 }, { "x2apic", 1, ECX, 21 },
	{ "movbe", 1, ECX, 22 }, { "popcnt", 1, ECX, 23 }, { "tsc_deadline", 1, ECX, 24 },
	{ "aes", 1, ECX, 25 },	{ "xsave", 1, ECX, 26 }, { "osxsave", 1, ECX, 27 },
	{ "avx", 1, ECX, 28 },	{ "f16c", 1, ECX, 29 },	{ "rdrand", 1, ECX, 30 },
	{ "hypervisor", 1, ECX, 31 },
	/* leaf 1 EDX */
	{ "fpu", 1, EDX, 0 },	{ "tsc", 1, EDX, 4 },	{ "msr", 1, EDX, 5 },
	{ "pae", 1, EDX, 6 },	{ "cx8", 1, EDX, 8 },	{ "apic", 1, EDX, 9 },
	{ "mtrr", 1, EDX, 12 },	{ "pge", 1, EDX, 13 },	{ "cmov", 1, EDX, 15 },
	{ "pat", 1, EDX, 16 },	{ "clflush", 1, EDX, 19 }, { "mmx", 1, EDX, 23 },
	{ "fxsr", 1, EDX, 24 },	{ "sse", 1, EDX, 25 },	{ "sse2", 1, EDX, 26 },
	{ "ht", 1, EDX, 28 },
	/* leaf 7.0 EBX */
	{ "fsgsbase", 7, EBX, 0 }, { "tsc_adjust", 7, EBX, 1 }, { "bmi1", 7, EBX, 3 },
	{ "hle", 7, EBX, 4 },	{ "avx2", 7, EBX, 5 },	{ "smep", 7, EBX, 7 },
	{ "bmi2", 7, EBX, 8 },	{ "erms", 7, EBX, 9 },	{ "invpcid", 7, EBX, 10 },
	{ "rtm", 7, EBX, 11 },	{ "mpx", 7, EBX, 14 },	{ "avx512f", 7, EBX, 16 },
	{ "rdseed", 7, EBX, 18 }, { "adx", 7, EBX, 19 }, { "smap", 7, EBX, 20 },
	{ "clflushopt", 7, EBX, 23 }, { "clwb", 7, EBX, 24 },
	/* leaf 7.0 ECX */
	{ "umip", 7, ECX, 2 },	{ "pku", 7, ECX, 3 },	{ "ospke", 7, ECX, 4 },
	{ "waitpkg", 7, ECX, 5 }, { "la57", 7, ECX, 16 }, { "rdpid", 7, ECX, 22 },
};

static const char *const reg_names[] = { "eax", "ebx", "ecx", "edx" };
static u32 leaf1[4], leaf7[4];

static const struct feature *lookup(const char *name)
{
	for (unsigned int i = 0; i < ARRAY_SIZE(features); i++)
		if (!strcmp(features[i].name, name))
			return &features[i];
	return NULL;
}

static bool is_set(const struct feature *f)
{
	const u32 *regs = f->leaf == 1 ? leaf1 : leaf7;

	return regs[f->reg] & (1u << f->bit);
}

/* Checks every name in the comma list of key; returns the number of misses. */
static unsigned int check(const char *key, bool want_set)
{
	char list[256], *p = list;
	unsigned int bad = 0;

	if (!cmdline_get(key, list, sizeof(list)))
		return 0;
	while (*p) {
		char *name = p;
		const struct feature *f;

		while (*p && *p != ',')
			p++;
		if (*p)
			*p++ = '\0';
		if (!*name)
			continue;
		f = lookup(name);
		if (!f)
			inmate_fail(EXIT_FAIL, "unknown feature name '%s' in %s=", name, key);
		printk("cpuid: %-12s leaf %u %s bit %2u = %u (want %u)\n", f->name, f->leaf,
		       reg_names[f->reg], f->bit, is_set(f), want_set);
		if (is_set(f) != want_set)
			bad++;
	}
	return bad;
}

void inmate_main(void)
{
	u32 max, vendor[4] = { 0 };	/* ebx, edx, ecx + NUL */
	unsigned int bad;

	cpuid(0, 0, &max, &vendor[0], &vendor[2], &vendor[1]);
	cpuid(1, 0, &leaf1[EAX], &leaf1[EBX], &leaf1[ECX], &leaf1[EDX]);
	if (max >= 7)		/* else leaf 7 reads as all zero */
		cpuid(7, 0, &leaf7[EAX], &leaf7[EBX], &leaf7[ECX], &leaf7[EDX]);

	printk("CPUID 0 max=%#x vendor=%s\n", max, (const char *)vendor);
	printk("CPUID 1 ecx=%08x edx=%08x\n", leaf1[ECX], leaf1[EDX]);
	printk("CPUID 7.0 ebx=%08x ecx=%08x\n", leaf7[EBX], leaf7[ECX]);

	bad = check("absent", false) + check("present", true);
	if (bad)
		inmate_fail(EXIT_FAIL, "%u feature bit(s) not as required", bad);
}
