/*
 * pci.h - PCI configuration mechanism #1 (ports 0xcf8/0xcfc) on bus 0,
 * BAR discovery/assignment and capability walking, for the virtio inmates.
 */
#ifndef PCI_H
#define PCI_H

#include "inmate.h"

static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void mmio_write16(u64 addr, u16 v) { *(volatile u16 *)addr = v; }
static inline u16 mmio_read16(u64 addr) { return *(volatile u16 *)addr; }
static inline u8 mmio_read8(u64 addr) { return *(volatile u8 *)addr; }

#define PCI_VENDOR_ID		0x00
#define PCI_DEVICE_ID		0x02
#define PCI_COMMAND		0x04
#define PCI_STATUS		0x06
#define PCI_REVISION		0x08
#define PCI_HEADER_TYPE		0x0e
#define PCI_BAR0		0x10
#define PCI_SUBSYS_ID		0x2e
#define PCI_CAP_PTR		0x34

#define PCI_CMD_IO		0x0001
#define PCI_CMD_MEM		0x0002
#define PCI_CMD_MASTER		0x0004
#define PCI_CMD_INTX_DISABLE	0x0400
#define PCI_STATUS_CAPS		0x0010

#define PCI_CAP_MSIX		0x11
#define PCI_CAP_VENDOR		0x09

struct pci_bar {
	u64 addr;	/* 0 until pci_bar_map() */
	u64 size;
	bool io;	/* I/O space BAR */
	bool is64;	/* 64-bit memory BAR (occupies the next slot too) */
	bool valid;	/* implemented BAR */
	bool assigned;	/* we assigned it (it was 0 or above 4 GiB) */
};

struct pci_dev {
	u8 bus, slot, fn;
	u16 vendor, device, subsys;
	u8 revision;
	struct pci_bar bar[6];
};

u32 pci_read32(const struct pci_dev *d, u8 off);
u16 pci_read16(const struct pci_dev *d, u8 off);
u8 pci_read8(const struct pci_dev *d, u8 off);
void pci_write32(const struct pci_dev *d, u8 off, u32 v);
void pci_write16(const struct pci_dev *d, u8 off, u16 v);
void pci_write8(const struct pci_dev *d, u8 off, u8 v);

/* Scans bus 0 (all 32 slots, all functions of multifunction devices).
 * ids: pairs {vendor, device}, terminated by {0, 0}.  Returns the index-th
 * match (0 = first) or false.  Prints every function it sees if verbose. */
bool pci_find(const u16 (*ids)[2], unsigned int index, struct pci_dev *out, bool verbose);
/* Makes BAR n usable: keeps the firmware/VMM address if it has one below
 * 4 GiB, else sizes it and assigns it from our window (memory 0xe0000000
 * upward, I/O 0xc000 upward).  Returns the address or 0 if unimplemented. */
u64 pci_bar_map(struct pci_dev *d, unsigned int n);
/* Test hook (virtio inmates: pci.reassign=1): assign every BAR ourselves. */
extern bool pci_force_assign;
/* Sets Memory Space (+ I/O Space if io) and Bus Master in the command register. */
void pci_enable(struct pci_dev *d, bool io);
/* Offset of the first (or the one after 'after', 0 = start) capability with
 * this id, or 0.  Bounded walk (no endless loop on a cyclic list). */
u8 pci_find_cap(const struct pci_dev *d, u8 id, u8 after);

#endif
