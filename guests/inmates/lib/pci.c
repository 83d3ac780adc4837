/*
 * pci.c - configuration mechanism #1 on bus 0, BARs and capabilities.
 *
 * rtvisor pre-assigns the BARs in the 32-bit MMIO hole, SeaBIOS does the
 * same under QEMU -M pc/q35.  Only a BAR that is still 0 (or that firmware
 * put above 4 GiB, where our identity map does not reach) is sized and
 * assigned here, from a window starting at 0xe0000000 (I/O: 0xc000).
 */
#include "pci.h"

#define CF8_ADDR	0xcf8
#define CF8_DATA	0xcfc

#define MEM_WINDOW_START 0xe0000000ULL
#define MEM_WINDOW_END	 0xfec00000ULL	/* IOAPIC above */
#define IO_WINDOW_START	 0xc000
#define IO_WINDOW_END	 0x10000

bool pci_force_assign;
static u64 mem_next = MEM_WINDOW_START;
static u32 io_next = IO_WINDOW_START;

static u32 cf8(const struct pci_dev *d, u8 off)
{
	return 0x80000000u | ((u32)d->bus << 16) | ((u32)d->slot << 11) | ((u32)d->fn << 8) |
	       (off & 0xfc);
}

u32 pci_read32(const struct pci_dev *d, u8 off)
{
	outl(CF8_ADDR, cf8(d, off));
	return inl(CF8_DATA);
}

u16 pci_read16(const struct pci_dev *d, u8 off)
{
	outl(CF8_ADDR, cf8(d, off));
	return inw(CF8_DATA + (off & 2));
}

u8 pci_read8(const struct pci_dev *d, u8 off)
{
	outl(CF8_ADDR, cf8(d, off));
	return inb(CF8_DATA + (off & 3));
}

void pci_write32(const struct pci_dev *d, u8 off, u32 v)
{
	outl(CF8_ADDR, cf8(d, off));
	outl(CF8_DATA, v);
}

void pci_write16(const struct pci_dev *d, u8 off, u16 v)
{
	outl(CF8_ADDR, cf8(d, off));
	outw(CF8_DATA + (off & 2), v);
}

void pci_write8(const struct pci_dev *d, u8 off, u8 v)
{
	outl(CF8_ADDR, cf8(d, off));
	outb(CF8_DATA + (off & 3), v);
}

/* Reads the BAR registers (no sizing yet: that needs decode off). */
static void pci_read_bars(struct pci_dev *d)
{
	u8 htype = pci_read8(d, PCI_HEADER_TYPE) & 0x7f;

	memset(d->bar, 0, sizeof(d->bar));
	if (htype != 0)
		return;		/* bridges: not ours */
	for (unsigned int i = 0; i < 6; i++) {
		u32 v = pci_read32(d, PCI_BAR0 + 4 * i);
		struct pci_bar *b = &d->bar[i];

		if (v & 1) {
			b->io = true;
			b->addr = v & ~3u;
		} else {
			b->addr = v & ~0xfu;
			if (((v >> 1) & 3) == 2 && i < 5) {
				b->is64 = true;
				b->addr |= (u64)pci_read32(d, PCI_BAR0 + 4 * (i + 1)) << 32;
			}
		}
		if (b->is64)
			i++;	/* the upper half is not a BAR of its own */
	}
}

bool pci_find(const u16 (*ids)[2], unsigned int index, struct pci_dev *out, bool verbose)
{
	unsigned int found = 0;

	for (u8 slot = 0; slot < 32; slot++) {
		struct pci_dev d = { .bus = 0, .slot = slot, .fn = 0 };
		u8 nfn = 1;

		if (pci_read16(&d, PCI_VENDOR_ID) == 0xffff)
			continue;
		if (pci_read8(&d, PCI_HEADER_TYPE) & 0x80)
			nfn = 8;
		for (u8 fn = 0; fn < nfn; fn++) {
			d.fn = fn;
			d.vendor = pci_read16(&d, PCI_VENDOR_ID);
			if (d.vendor == 0xffff)
				continue;
			d.device = pci_read16(&d, PCI_DEVICE_ID);
			d.revision = pci_read8(&d, PCI_REVISION);
			d.subsys = pci_read16(&d, PCI_SUBSYS_ID);
			if (verbose)
				printk("pci: 00:%02x.%u %04x:%04x rev %u class %06x\n", slot, fn,
				       d.vendor, d.device, d.revision, pci_read32(&d, 0x08) >> 8);
			for (unsigned int i = 0; ids[i][0]; i++) {
				if (ids[i][0] == d.vendor && ids[i][1] == d.device) {
					if (found++ == index) {
						pci_read_bars(&d);
						*out = d;
						return true;
					}
					break;
				}
			}
		}
	}
	return false;
}

u64 pci_bar_map(struct pci_dev *d, unsigned int n)
{
	struct pci_bar *b;
	u8 reg = PCI_BAR0 + 4 * n;
	u16 cmd;
	u32 lo, hi = 0xffffffff, orig_lo, orig_hi = 0;
	u64 mask, size;

	if (n > 5)
		return 0;
	b = &d->bar[n];
	if (b->valid)
		return b->addr;

	/* Size it with decoding off, then restore (or assign). */
	cmd = pci_read16(d, PCI_COMMAND);
	pci_write16(d, PCI_COMMAND, cmd & ~(PCI_CMD_IO | PCI_CMD_MEM));
	orig_lo = pci_read32(d, reg);
	pci_write32(d, reg, 0xffffffff);
	lo = pci_read32(d, reg);
	if (b->is64) {
		orig_hi = pci_read32(d, reg + 4);
		pci_write32(d, reg + 4, 0xffffffff);
		hi = pci_read32(d, reg + 4);
	}
	pci_write32(d, reg, orig_lo);
	if (b->is64)
		pci_write32(d, reg + 4, orig_hi);

	if (b->io) {
		mask = (lo & ~3u) | 0xffff0000u;
		size = (u32)~mask + 1;
	} else {
		mask = ((u64)hi << 32) | (lo & ~0xfu);
		if (!b->is64)
			mask |= 0xffffffff00000000ULL;
		size = ~mask + 1;
	}
	if (b->io ? !(lo & ~3u) : b->is64 ? !(lo & ~0xfu) && !hi : !(lo & ~0xfu)) {	/* unimplemented */
		pci_write16(d, PCI_COMMAND, cmd);
		return 0;
	}
	b->size = size;

	if (b->addr == 0 || (!b->io && b->addr + size > (1ULL << 32)) || pci_force_assign) {
		u64 base;

		if (b->io) {
			base = (io_next + size - 1) & ~(size - 1);
			if (base + size > IO_WINDOW_END)
				inmate_fail(EXIT_FAIL, "pci 00:%02x.%u: no room for I/O BAR%u (%#lx bytes)",
					    d->slot, d->fn, n, size);
			io_next = base + size;
			pci_write32(d, reg, (u32)base);
		} else {
			base = (mem_next + size - 1) & ~(size - 1);
			if (base + size > MEM_WINDOW_END)
				inmate_fail(EXIT_FAIL, "pci 00:%02x.%u: no room for BAR%u (%#lx bytes)",
					    d->slot, d->fn, n, size);
			mem_next = base + size;
			pci_write32(d, reg, (u32)base);
			if (b->is64)
				pci_write32(d, reg + 4, 0);
		}
		printk("pci: 00:%02x.%u BAR%u was %#lx, assigned %#lx (%s, %#lx bytes)\n", d->slot, d->fn,
		       n, b->addr, base, b->io ? "io" : b->is64 ? "mem64" : "mem32", size);
		b->addr = base;
		b->assigned = true;
	}
	pci_write16(d, PCI_COMMAND, cmd);
	b->valid = true;
	return b->addr;
}

void pci_enable(struct pci_dev *d, bool io)
{
	u16 cmd = pci_read16(d, PCI_COMMAND);

	cmd |= PCI_CMD_MEM | PCI_CMD_MASTER;
	if (io)
		cmd |= PCI_CMD_IO;
	pci_write16(d, PCI_COMMAND, cmd);
}

u8 pci_find_cap(const struct pci_dev *d, u8 id, u8 after)
{
	u8 pos;

	if (!(pci_read16(d, PCI_STATUS) & PCI_STATUS_CAPS))
		return 0;
	pos = after ? pci_read8(d, after + 1) : pci_read8(d, PCI_CAP_PTR);
	for (int n = 0; n < 48 && pos >= 0x40; n++) {
		pos &= 0xfc;
		if (pci_read8(d, pos) == id)
			return pos;
		pos = pci_read8(d, pos + 1);
	}
	return 0;
}
