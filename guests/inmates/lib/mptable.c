/*
 * mptable.c - find the Intel MultiProcessor Specification 1.4 tables and
 * list the enabled processors.
 *
 * Search order as in the spec: first KiB of the EBDA (segment at 0x40e),
 * last KiB of base memory (0x9fc00), BIOS ROM 0xf0000-0xfffff; the floating
 * pointer is 16-byte aligned.  Both checksums are verified.
 */
#include "inmate.h"

struct mpf {			/* MP floating pointer structure, 16 bytes */
	char sig[4];		/* "_MP_" */
	u32 physptr;		/* configuration table, 0 = default config */
	u8 length;		/* in 16-byte units: 1 */
	u8 spec_rev;
	u8 checksum;
	u8 feature1;		/* default configuration type if physptr == 0 */
	u8 feature2;
	u8 feature_rsvd[3];
} __attribute__((packed));

struct mpc_table {		/* configuration table header, 44 bytes */
	char sig[4];		/* "PCMP" */
	u16 length;		/* base table incl. header */
	u8 spec_rev;
	u8 checksum;
	char oem[8];
	char product[12];
	u32 oemptr;
	u16 oemsize;
	u16 count;		/* number of entries */
	u32 lapic;
	u16 extlen;
	u8 extchecksum;
	u8 reserved;
} __attribute__((packed));

#define MP_PROCESSOR	0
#define CPU_ENABLED	0x01
#define CPU_BSP		0x02

static u8 checksum(const void *p, size_t len)
{
	const u8 *b = p;
	u8 sum = 0;

	while (len--)
		sum += *b++;
	return sum;
}

static const struct mpf *scan(u64 start, u64 len)
{
	for (u64 a = start; a + sizeof(struct mpf) <= start + len; a += 16) {
		const struct mpf *f = (const struct mpf *)a;

		if (!memcmp(f->sig, "_MP_", 4) && f->length == 1 &&
		    checksum(f, sizeof(*f)) == 0)
			return f;
	}
	return NULL;
}

const char *mptable_find(struct mp_info *info)
{
	u64 ebda = (u64)*(volatile u16 *)0x40e << 4;
	const struct mpf *f = NULL;
	const struct mpc_table *t;
	const u8 *e, *end;

	memset(info, 0, sizeof(*info));
	info->bsp_apic_id = 0xff;
	/* An EBDA pointer of 0 (no BIOS) would make us scan the real-mode IVT. */
	if (ebda >= 0x80000 && ebda < 0xa0000)
		f = scan(ebda, 1024);
	if (!f)
		f = scan(0x9fc00, 1024);
	if (!f)
		f = scan(0xf0000, 0x10000);
	if (!f)
		return "no MP floating pointer (_MP_) found";
	info->mpf_addr = (u64)f;
	if (!f->physptr)
		return "MP default configurations (no config table) are not supported";

	t = (const struct mpc_table *)(u64)f->physptr;
	info->table_addr = f->physptr;
	if (memcmp(t->sig, "PCMP", 4))
		return "MP config table has no PCMP signature";
	if (t->length < sizeof(*t) || checksum(t, t->length) != 0)
		return "MP config table checksum mismatch";
	info->lapic_addr = t->lapic;

	/*
	 * Walk by length, not by t->count: like Linux, since some firmware
	 * (qboot, QEMU microvm's BIOS) leaves count at 0.
	 */
	e = (const u8 *)(t + 1);
	end = (const u8 *)t + t->length;
	while (e < end) {
		if (*e == MP_PROCESSOR) {
			u8 apic_id = e[1], flags = e[3];

			if (e + 20 > end)
				return "MP processor entry runs past the table";
			if (flags & CPU_ENABLED) {
				if (info->nr_cpus == MAX_CPUS)
					return "more than MAX_CPUS processors in MP table";
				info->apic_ids[info->nr_cpus++] = apic_id;
				if (flags & CPU_BSP)
					info->bsp_apic_id = apic_id;
			}
			e += 20;
		} else if (*e <= 4) {
			e += 8;		/* bus, I/O APIC, I/O and local interrupt entries */
		} else {
			return "unknown MP config table entry type";
		}
	}
	return NULL;
}
