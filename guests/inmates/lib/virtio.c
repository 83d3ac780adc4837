/*
 * virtio.c - modern virtio-pci transport (virtio 1.x, PCI capabilities) and
 * split virtqueues, polled.
 *
 * Nothing about the layout is assumed: the common/notify/ISR/device config
 * structures are found through the vendor capabilities, in whatever BAR and
 * at whatever offset the device puts them (MMIO or I/O BARs).  Ring memory
 * is ordinary write-back RAM (identity mapped); the device is coherent, so
 * on x86 compiler barriers order our stores, and one full fence (mb) sits
 * between publishing avail->idx and reading the device's notification
 * suppression fields.
 */
#include "virtio.h"

/* ---- DMA pool ---------------------------------------------------------- */

static u8 *pool_base, *pool_cur, *pool_end;

void dma_pool_init(void *base, size_t size)
{
	pool_base = pool_cur = base;
	pool_end = (u8 *)base + size;
}

void *dma_alloc(size_t size, size_t align)
{
	u64 p = ((u64)pool_cur + align - 1) & ~(u64)(align - 1);

	if (!pool_cur || p + size > (u64)pool_end)
		inmate_fail(EXIT_CONFIG, "dma pool exhausted (want %#lx bytes)", (u64)size);
	pool_cur = (u8 *)(p + size);
	memset((void *)p, 0, size);
	return (void *)p;
}

void *dma_mark(void)
{
	return pool_cur;
}

void dma_release(void *mark)
{
	if (!pool_base || (u8 *)mark < pool_base || (u8 *)mark > pool_cur)
		inmate_fail(EXIT_CONFIG, "dma_release(%#lx) outside the allocated pool", (u64)mark);
	pool_cur = mark;
}

/* ---- region access (MMIO or port I/O) ------------------------------------ */

static u8 vr_read8(const struct vregion *r, u32 off)
{
	return r->io ? inb(r->addr + off) : mmio_read8(r->addr + off);
}

static u16 vr_read16(const struct vregion *r, u32 off)
{
	return r->io ? inw(r->addr + off) : mmio_read16(r->addr + off);
}

static u32 vr_read32(const struct vregion *r, u32 off)
{
	return r->io ? inl(r->addr + off) : mmio_read32(r->addr + off);
}

static void vr_write8(const struct vregion *r, u32 off, u8 v)
{
	if (r->io)
		outb(r->addr + off, v);
	else
		mmio_write8(r->addr + off, v);
}

static void vr_write16(const struct vregion *r, u32 off, u16 v)
{
	if (r->io)
		outw(r->addr + off, v);
	else
		mmio_write16(r->addr + off, v);
}

static void vr_write32(const struct vregion *r, u32 off, u32 v)
{
	if (r->io)
		outl(r->addr + off, v);
	else
		mmio_write32(r->addr + off, v);
}

static void vr_write64(const struct vregion *r, u32 off, u64 v)
{
	vr_write32(r, off, (u32)v);
	vr_write32(r, off + 4, (u32)(v >> 32));
}

/* ---- status -------------------------------------------------------------- */

static u8 status_get(struct virtio_dev *d)
{
	return vr_read8(&d->common, VCC_STATUS);
}

static void status_set(struct virtio_dev *d, u8 s)
{
	vr_write8(&d->common, VCC_STATUS, s);
}

u8 virtio_get_status(struct virtio_dev *d)
{
	return status_get(d);
}

void virtio_set_status(struct virtio_dev *d, u8 s)
{
	status_set(d, s);
}

bool virtio_try_reset(struct virtio_dev *d, u64 timeout_us)
{
	u64 t0 = rdtsc(), limit = us_to_tsc(timeout_us);

	status_set(d, 0);
	while (status_get(d) != 0) {
		if (rdtsc() - t0 > limit)
			return false;
		cpu_relax();
	}
	return true;
}

static noreturn void virtio_fail(struct virtio_dev *d, u8 code, const char *what)
{
	/* Tell the device we gave up, then report. */
	if (d->common.present)
		status_set(d, status_get(d) | VIRTIO_S_FAILED);
	inmate_fail(code, "%s", what);
}

static void virtio_reset(struct virtio_dev *d)
{
	u64 t0 = rdtsc(), limit = us_to_tsc(1000000);

	status_set(d, 0);
	while (status_get(d) != 0) {
		if (rdtsc() - t0 > limit)
			inmate_fail(EXIT_TRANSPORT, "%s: device status stays %#x after reset (write 0)",
				    d->name, status_get(d));
		cpu_relax();
	}
}

/* ---- capabilities ---------------------------------------------------------- */

static const char *const cap_names[] = { "?", "common", "notify", "isr", "device", "pci" };

static void map_cap(struct virtio_dev *d, u8 pos, u8 type)
{
	struct pci_dev *p = &d->pci;
	u8 bar = pci_read8(p, pos + 4);
	u32 off = pci_read32(p, pos + 8), len = pci_read32(p, pos + 12);
	struct vregion *r;
	u64 base;

	switch (type) {
	case VIRTIO_PCI_CAP_COMMON_CFG: r = &d->common; break;
	case VIRTIO_PCI_CAP_NOTIFY_CFG: r = &d->notify; break;
	case VIRTIO_PCI_CAP_ISR_CFG: r = &d->isr; break;
	case VIRTIO_PCI_CAP_DEVICE_CFG: r = &d->device; break;
	default: return;	/* PCI_CFG access window, shared memory, vendor specific */
	}
	if (r->present)
		return;		/* the first one of each type wins (spec 4.1.4) */
	if (bar > 5) {
		printk("%s: ignoring %s capability at %#x with reserved BAR %u\n", d->name,
		       cap_names[type], pos, bar);
		return;
	}
	base = pci_bar_map(p, bar);
	if (!base)
		inmate_fail(EXIT_TRANSPORT, "%s: %s capability points into unimplemented BAR%u",
			    d->name, cap_names[type], bar);
	if (p->bar[bar].size && (u64)off + len > p->bar[bar].size)
		inmate_fail(EXIT_TRANSPORT, "%s: %s capability %#x+%#x exceeds BAR%u size %#lx",
			    d->name, cap_names[type], off, len, bar, p->bar[bar].size);
	r->addr = base + off;
	r->len = len;
	r->io = p->bar[bar].io;
	r->present = true;
	if (type == VIRTIO_PCI_CAP_NOTIFY_CFG)
		d->notify_mult = pci_read32(p, pos + 16);
	printk("%s: %-6s cfg: BAR%u%s + %#x, len %#x -> %#lx%s", d->name, cap_names[type], bar,
	       r->io ? " (io)" : "", off, len, r->addr,
	       type == VIRTIO_PCI_CAP_NOTIFY_CFG ? "" : "\n");
	if (type == VIRTIO_PCI_CAP_NOTIFY_CFG)
		printk(", notify_off_multiplier %u\n", d->notify_mult);
}

/* ---- init and feature negotiation ------------------------------------------- */

void virtio_print_features(struct virtio_dev *d)
{
	printk("%s: device features %#018lx, driver features %#018lx\n", d->name,
	       d->dev_features, d->drv_features);
}

void virtio_init(struct virtio_dev *d, const char *name, const u16 (*ids)[2], u64 want)
{
	virtio_init_nth(d, name, ids, 0, want);
}

void virtio_init_nth(struct virtio_dev *d, const char *name, const u16 (*ids)[2], unsigned int index,
		     u64 want)
{
	u64 feat;
	u8 pos = 0;
	bool any_io;

	memset(d, 0, sizeof(*d));
	d->name = name;
	d->opt_indirect = cmdline_get_u64("virtio.indirect", 0) != 0;
	d->opt_event_idx = cmdline_get_u64("virtio.event_idx", 0) != 0;
	d->opt_msix = cmdline_get_u64("virtio.msix", 1) != 0;
	d->msix_vector = 0x40;
	pci_force_assign = cmdline_get_u64("pci.reassign", 0) != 0;

	if (!pci_find(ids, index, &d->pci, cmdline_get_u64("pci.verbose", 0) != 0)) {
		char want_ids[64];
		size_t n = 0;

		want_ids[0] = '\0';
		for (unsigned int i = 0; ids[i][0] && n < sizeof(want_ids) - 12; i++)
			n += snprintk(want_ids + n, sizeof(want_ids) - n, "%s%04x:%04x", i ? "," : "",
				      ids[i][0], ids[i][1]);
		if (index)
			inmate_fail(EXIT_NODEV, "no %s PCI device number %u on bus 0 (looked for %s; counting from 0)",
				    name, index, want_ids);
		inmate_fail(EXIT_NODEV, "no %s PCI device on bus 0 (looked for %s)", name, want_ids);
	}
	printk("%s: PCI 00:%02x.%u id %04x:%04x rev %u subsys %04x\n", name, d->pci.slot, d->pci.fn,
	       d->pci.vendor, d->pci.device, d->pci.revision, d->pci.subsys);
	if (d->pci.device < 0x1040)
		printk("%s: transitional device, driving it through its modern interface\n", name);

	/* Vendor capabilities describe where the virtio structures live. */
	while ((pos = pci_find_cap(&d->pci, PCI_CAP_VENDOR, pos)) != 0) {
		u8 clen = pci_read8(&d->pci, pos + 2), type = pci_read8(&d->pci, pos + 3);

		if (clen < 16) {
			printk("%s: short vendor capability at %#x (len %u), skipped\n", name, pos, clen);
			continue;
		}
		if (type == VIRTIO_PCI_CAP_NOTIFY_CFG && clen < 20)
			inmate_fail(EXIT_TRANSPORT, "%s: notify capability too short (%u)", name, clen);
		map_cap(d, pos, type);
	}
	if (!d->common.present)
		inmate_fail(EXIT_TRANSPORT, "%s: no VIRTIO_PCI_CAP_COMMON_CFG capability (legacy-only device?)", name);
	if (!d->notify.present)
		inmate_fail(EXIT_TRANSPORT, "%s: no VIRTIO_PCI_CAP_NOTIFY_CFG capability", name);
	if (d->common.len < VCC_LEN)
		inmate_fail(EXIT_TRANSPORT, "%s: common cfg only %#x bytes (< %#x)", name, d->common.len, VCC_LEN);
	if (!d->isr.present)
		printk("%s: warning: no ISR capability\n", name);
	any_io = d->common.io || d->notify.io || d->isr.io || d->device.io;
	pci_enable(&d->pci, any_io);

	/* 3.1.1: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK. */
	virtio_reset(d);
	status_set(d, VIRTIO_S_ACKNOWLEDGE);
	status_set(d, VIRTIO_S_ACKNOWLEDGE | VIRTIO_S_DRIVER);

	vr_write32(&d->common, VCC_DFSELECT, 0);
	feat = vr_read32(&d->common, VCC_DF);
	vr_write32(&d->common, VCC_DFSELECT, 1);
	feat |= (u64)vr_read32(&d->common, VCC_DF) << 32;
	d->dev_features = feat;

	if (!(feat & (1ULL << VIRTIO_F_VERSION_1))) {
		char msg[120];

		snprintk(msg, sizeof(msg), "%s: device does not offer VIRTIO_F_VERSION_1 (features %#lx)",
			 name, feat);
		virtio_fail(d, EXIT_FEATURE, msg);
	}
	want |= 1ULL << VIRTIO_F_VERSION_1;
	if (d->opt_indirect)
		want |= 1ULL << VIRTIO_F_INDIRECT_DESC;
	if (d->opt_event_idx)
		want |= 1ULL << VIRTIO_F_EVENT_IDX;
	d->drv_features = feat & want;

	vr_write32(&d->common, VCC_GFSELECT, 0);
	vr_write32(&d->common, VCC_GF, (u32)d->drv_features);
	vr_write32(&d->common, VCC_GFSELECT, 1);
	vr_write32(&d->common, VCC_GF, (u32)(d->drv_features >> 32));
	status_set(d, VIRTIO_S_ACKNOWLEDGE | VIRTIO_S_DRIVER | VIRTIO_S_FEATURES_OK);
	if (!(status_get(d) & VIRTIO_S_FEATURES_OK)) {
		char msg[120];

		snprintk(msg, sizeof(msg), "%s: device cleared FEATURES_OK (driver features %#lx)",
			 name, d->drv_features);
		virtio_fail(d, EXIT_FEATURE, msg);
	}
	d->num_queues = vr_read16(&d->common, VCC_NUMQ);
	virtio_print_features(d);
	printk("%s: %u queues, indirect %s, event_idx %s\n", name, d->num_queues,
	       virtio_has(d, VIRTIO_F_INDIRECT_DESC) ? "on" :
	       d->opt_indirect ? "not offered" : "off",
	       virtio_has(d, VIRTIO_F_EVENT_IDX) ? "on" : d->opt_event_idx ? "not offered" : "off");
	if (d->opt_indirect && !virtio_has(d, VIRTIO_F_INDIRECT_DESC))
		inmate_fail(EXIT_FEATURE, "%s: virtio.indirect=1 but the device does not offer INDIRECT_DESC", name);
	if (d->opt_event_idx && !virtio_has(d, VIRTIO_F_EVENT_IDX))
		inmate_fail(EXIT_FEATURE, "%s: virtio.event_idx=1 but the device does not offer EVENT_IDX", name);
}

/* ---- MSI-X ------------------------------------------------------------------ */

#define LAPIC_IRR	0x200

static bool irr_pending(u8 vec)
{
	return lapic_read(LAPIC_IRR + (vec / 32) * 0x10) & (1u << (vec % 32));
}

void virtio_setup_msix(struct virtio_dev *d)
{
	struct pci_dev *p = &d->pci;
	u16 mc, cfgvec;
	u32 tbl;
	u64 bar;

	if (!d->opt_msix) {
		printk("%s: MSI-X off (virtio.msix=0)\n", d->name);
		return;
	}
	d->msix_cap = pci_find_cap(p, PCI_CAP_MSIX, 0);
	if (!d->msix_cap)
		inmate_fail(EXIT_MSIX, "%s: no MSI-X capability (virtio.msix=0 skips the check)", d->name);
	mc = pci_read16(p, d->msix_cap + 2);
	tbl = pci_read32(p, d->msix_cap + 4);
	d->msix_table_size = (mc & 0x7ff) + 1;
	bar = pci_bar_map(p, tbl & 7);
	if (!bar)
		inmate_fail(EXIT_MSIX, "%s: MSI-X table in unimplemented BAR%u", d->name, tbl & 7);
	if (p->bar[tbl & 7].io)
		inmate_fail(EXIT_MSIX, "%s: MSI-X table in an I/O BAR", d->name);
	d->msix_table = bar + (tbl & ~7u);
	pci_enable(p, d->common.io || d->notify.io);

	lapic_enable();
	if (irr_pending(d->msix_vector) || irr_pending(d->msix_vector + 1))
		printk("%s: warning: LAPIC vector %#x/%#x already pending before any request\n",
		       d->name, d->msix_vector, d->msix_vector + 1);

	/* Enable with the function masked, program the entries, then unmask. */
	pci_write16(p, d->msix_cap + 2, mc | 0x8000 | 0x4000);
	for (unsigned int i = 0; i < 2 && i < d->msix_table_size; i++) {
		u64 e = d->msix_table + 16 * i;

		mmio_write32(e + 0, 0xfee00000u | (lapic_id() << 12));	/* fixed, physical dest */
		mmio_write32(e + 4, 0);
		mmio_write32(e + 8, d->msix_vector + i);		/* edge, fixed */
		mmio_write32(e + 12, 0);				/* unmasked */
	}
	pci_write16(p, d->msix_cap + 2, (mc | 0x8000) & ~0x4000);
	d->msix_on = true;

	cfgvec = d->msix_table_size >= 2 ? 1 : 0;
	d->msix_cfg_entry = cfgvec;
	vr_write16(&d->common, VCC_MSIX, cfgvec);
	if (vr_read16(&d->common, VCC_MSIX) != cfgvec)
		inmate_fail(EXIT_MSIX, "%s: config_msix_vector %u not accepted (reads %#x)", d->name,
			    cfgvec, vr_read16(&d->common, VCC_MSIX));
	printk("%s: MSI-X: %u entries, table BAR%u+%#x; queues -> entry 0 (vector %#x), config -> entry %u (vector %#x)\n",
	       d->name, d->msix_table_size, tbl & 7, tbl & ~7u, d->msix_vector, cfgvec,
	       d->msix_vector + cfgvec);
}

bool virtio_wait_config_irq(struct virtio_dev *d, u64 timeout_us)
{
	u64 t0 = rdtsc(), limit = us_to_tsc(timeout_us);
	u8 vec = d->msix_vector + d->msix_cfg_entry;

	if (!d->msix_on)
		return false;
	while (!irr_pending(vec)) {
		if (rdtsc() - t0 > limit)
			return false;
		cpu_relax();
	}
	return true;
}

void virtio_check_msix(struct virtio_dev *d)
{
	u64 t0, limit;

	if (!d->msix_on)
		return;
	t0 = rdtsc();
	limit = us_to_tsc(1000000);
	/* The device may signal just after it published the used entry. */
	while (!irr_pending(d->msix_vector)) {
		if (rdtsc() - t0 > limit) {
			u32 pba_reg = pci_read32(&d->pci, d->msix_cap + 8);
			u64 pba = d->pci.bar[pba_reg & 7].addr + (pba_reg & ~7u);

			inmate_fail(EXIT_MSIX, "msix: vector %#x not pending in the LAPIC IRR 1 s after a completed request (PBA word %#x, entry 0 ctrl %#x)",
				    d->msix_vector, mmio_read32(pba), mmio_read32(d->msix_table + 12));
		}
		cpu_relax();
	}
	printk("msix: vector %#x pending\n", d->msix_vector);
}

/* ---- device config --------------------------------------------------------- */

#define CFG_READ(bits, expr)							\
	do {									\
		for (int tries = 0;; tries++) {					\
			u8 g0 = vr_read8(&d->common, VCC_CFGGEN);		\
			u##bits v = (expr);					\
			if (vr_read8(&d->common, VCC_CFGGEN) == g0 || tries > 100) \
				return v;					\
		}								\
	} while (0)

static void cfg_check(struct virtio_dev *d, u32 off, u32 size)
{
	if (!d->device.present || off + size > d->device.len)
		inmate_fail(EXIT_TRANSPORT, "%s: device config read at %#x+%u outside the region (len %#x)",
			    d->name, off, size, d->device.len);
}

u8 virtio_cfg8(struct virtio_dev *d, u32 off)
{
	cfg_check(d, off, 1);
	CFG_READ(8, vr_read8(&d->device, off));
}

u16 virtio_cfg16(struct virtio_dev *d, u32 off)
{
	cfg_check(d, off, 2);
	CFG_READ(16, vr_read16(&d->device, off));
}

u32 virtio_cfg32(struct virtio_dev *d, u32 off)
{
	cfg_check(d, off, 4);
	CFG_READ(32, vr_read32(&d->device, off));
}

u64 virtio_cfg64(struct virtio_dev *d, u32 off)
{
	cfg_check(d, off, 8);
	CFG_READ(64, vr_read32(&d->device, off) | (u64)vr_read32(&d->device, off + 4) << 32);
}

/* ---- queues ------------------------------------------------------------------ */

struct virtqueue *virtio_setup_queue(struct virtio_dev *d, u16 idx, u16 max_size)
{
	struct virtqueue *vq;
	u16 devmax, size, noff;

	if (d->nvqs >= VIRTIO_MAX_QUEUES || idx >= VIRTIO_MAX_QUEUES)
		inmate_fail(EXIT_CONFIG, "%s: too many queues", d->name);
	if (idx >= d->num_queues)
		inmate_fail(EXIT_TRANSPORT, "%s: queue %u does not exist (num_queues %u)", d->name, idx,
			    d->num_queues);
	vq = &d->vq[idx];
	memset(vq, 0, sizeof(*vq));
	vq->dev = d;
	vq->index = idx;

	vr_write16(&d->common, VCC_Q_SELECT, idx);
	devmax = vr_read16(&d->common, VCC_Q_SIZE);
	if (devmax == 0)
		inmate_fail(EXIT_TRANSPORT, "%s: queue %u has size 0 (not available)", d->name, idx);
	if (vr_read16(&d->common, VCC_Q_ENABLE))
		inmate_fail(EXIT_TRANSPORT, "%s: queue %u already enabled after reset", d->name, idx);
	if (max_size > VQ_MAX_SIZE)
		max_size = VQ_MAX_SIZE;
	size = devmax < max_size ? devmax : max_size;
	while (size & (size - 1))	/* largest power of two not above it */
		size &= size - 1;
	vq->size = size;
	vq->mask = size - 1;
	vr_write16(&d->common, VCC_Q_SIZE, size);

	vq->desc = dma_alloc(16 * size, 4096);
	vq->avail = dma_alloc(6 + 2 * size, 4096);
	vq->used = dma_alloc(6 + 8 * size, 4096);
	if (virtio_has(d, VIRTIO_F_INDIRECT_DESC))
		vq->indirect = dma_alloc((size_t)16 * VQ_MAX_INDIRECT * size, 16);
	for (u16 i = 0; i < size; i++)
		vq->desc[i].next = (i + 1) & vq->mask;
	vq->free_head = 0;
	vq->num_free = size;

	vr_write64(&d->common, VCC_Q_DESCLO, (u64)vq->desc);
	vr_write64(&d->common, VCC_Q_AVAILLO, (u64)vq->avail);
	vr_write64(&d->common, VCC_Q_USEDLO, (u64)vq->used);

	noff = vr_read16(&d->common, VCC_Q_NOFF);
	if ((u64)noff * d->notify_mult + 2 > d->notify.len)
		inmate_fail(EXIT_TRANSPORT, "%s: queue %u notify offset %u * %u outside the notify region (len %#x)",
			    d->name, idx, noff, d->notify_mult, d->notify.len);
	vq->notify_addr = d->notify.addr + (u64)noff * d->notify_mult;
	vq->notify_io = d->notify.io;

	vq->msix_vector = VIRTIO_MSI_NO_VECTOR;
	if (d->msix_on) {
		vr_write16(&d->common, VCC_Q_MSIX, 0);
		vq->msix_vector = vr_read16(&d->common, VCC_Q_MSIX);
		if (vq->msix_vector != 0)
			inmate_fail(EXIT_MSIX, "%s: queue %u: queue_msix_vector 0 not accepted (reads %#x)",
				    d->name, idx, vq->msix_vector);
	}
	vr_write16(&d->common, VCC_Q_ENABLE, 1);
	if (vr_read16(&d->common, VCC_Q_ENABLE) != 1)
		inmate_fail(EXIT_TRANSPORT, "%s: queue %u: queue_enable does not read back 1", d->name, idx);
	d->nvqs++;
	printk("%s: queue %u: size %u (device max %u), desc %#lx avail %#lx used %#lx, notify %#lx%s\n",
	       d->name, idx, size, devmax, (u64)vq->desc, (u64)vq->avail, (u64)vq->used,
	       vq->notify_addr, vq->notify_io ? " (io)" : "");
	return vq;
}

void virtio_driver_ok(struct virtio_dev *d)
{
	u8 s;

	status_set(d, VIRTIO_S_ACKNOWLEDGE | VIRTIO_S_DRIVER | VIRTIO_S_FEATURES_OK | VIRTIO_S_DRIVER_OK);
	s = status_get(d);
	if ((s & (VIRTIO_S_NEEDS_RESET | VIRTIO_S_FAILED)) || !(s & VIRTIO_S_DRIVER_OK))
		inmate_fail(EXIT_TRANSPORT, "%s: device status %#x after DRIVER_OK", d->name, s);
	printk("%s: DRIVER_OK (status %#x)\n", d->name, s);
}

static inline bool vring_need_event(u16 event, u16 new_idx, u16 old)
{
	return (u16)(new_idx - event - 1) < (u16)(new_idx - old);
}

static inline volatile u16 *used_event(struct virtqueue *vq)
{
	return &vq->avail->ring[vq->size];
}

static inline volatile u16 *avail_event(struct virtqueue *vq)
{
	return (volatile u16 *)&vq->used->ring[vq->size];
}

bool vq_add(struct virtqueue *vq, const struct vbuf *bufs, unsigned int n, u64 cookie)
{
	bool indirect = false;
	u16 head, idx, last = 0;

	if (n == 0)
		return false;
	/* Indirect for every other multi-buffer request (the first one included),
	 * or when the chain would not fit in the ring. */
	if (vq->indirect && n > 1 && n <= VQ_MAX_INDIRECT && (!(vq->multi & 1) || n > vq->num_free))
		indirect = true;
	if (vq->num_free < (indirect ? 1 : n))
		return false;

	head = vq->free_head;
	if (indirect) {
		struct vring_desc *t = vq->indirect + (size_t)head * VQ_MAX_INDIRECT;

		for (unsigned int i = 0; i < n; i++) {
			t[i].addr = bufs[i].addr;
			t[i].len = bufs[i].len;
			t[i].flags = (bufs[i].write ? VRING_DESC_F_WRITE : 0) |
				     (i + 1 < n ? VRING_DESC_F_NEXT : 0);
			t[i].next = i + 1 < n ? i + 1 : 0;
		}
		vq->desc[head].addr = (u64)t;
		vq->desc[head].len = n * sizeof(*t);
		vq->desc[head].flags = VRING_DESC_F_INDIRECT;
		vq->free_head = vq->desc[head].next;
		vq->num_free--;
		vq->chain_len[head] = 1;
		vq->indirect_used++;
	} else {
		idx = head;
		for (unsigned int i = 0; i < n; i++) {
			vq->desc[idx].addr = bufs[i].addr;
			vq->desc[idx].len = bufs[i].len;
			vq->desc[idx].flags = (bufs[i].write ? VRING_DESC_F_WRITE : 0) |
					      (i + 1 < n ? VRING_DESC_F_NEXT : 0);
			last = idx;
			idx = vq->desc[idx].next;	/* free list link == chain link */
		}
		(void)last;
		vq->free_head = idx;
		vq->num_free -= n;
		vq->chain_len[head] = n;
	}
	if (n > 1)
		vq->multi++;
	vq->cookie[head] = cookie;
	vq->avail->ring[vq->avail_idx & vq->mask] = head;
	vq->avail_idx++;
	vq->submitted++;
	return true;
}

void vq_kick(struct virtqueue *vq)
{
	u16 old = vq->kicked_idx, new_idx = vq->avail_idx;
	bool notify;

	if (old == new_idx)
		return;
	barrier();			/* descriptors and ring entries before idx (x86: TSO) */
	vq->avail->idx = new_idx;
	mb();				/* idx store before the suppression loads below */
	if (virtio_has(vq->dev, VIRTIO_F_EVENT_IDX))
		notify = vring_need_event(*avail_event(vq), new_idx, old);
	else
		notify = !(vq->used->flags & VRING_USED_F_NO_NOTIFY);
	vq->kicked_idx = new_idx;
	if (notify) {
		vq->notifies++;
		if (vq->notify_io)
			outw(vq->notify_addr, vq->index);
		else
			mmio_write16(vq->notify_addr, vq->index);
	}
}

void vq_notify(struct virtqueue *vq)
{
	mb();
	vq->notifies++;
	if (vq->notify_io)
		outw(vq->notify_addr, vq->index);
	else
		mmio_write16(vq->notify_addr, vq->index);
}

bool vq_get_used(struct virtqueue *vq, u64 *cookie, u32 *len)
{
	u16 used_idx = vq->used->idx, id, n, idx;
	volatile struct vring_used_elem *e;

	if (used_idx == vq->last_used)
		return false;
	if ((u16)(used_idx - vq->last_used) > vq->size)
		inmate_fail(EXIT_TRANSPORT, "%s: queue %u: used idx %u jumped past last seen %u (size %u)",
			    vq->dev->name, vq->index, used_idx, vq->last_used, vq->size);
	barrier();			/* ring entry after idx (x86 keeps load order) */
	e = &vq->used->ring[vq->last_used & vq->mask];
	id = e->id;
	if (id >= vq->size || !vq->chain_len[id])
		inmate_fail(EXIT_TRANSPORT, "%s: queue %u: used entry with bad id %u", vq->dev->name,
			    vq->index, id);
	if (cookie)
		*cookie = vq->cookie[id];
	if (len)
		*len = e->len;
	/* Return the chain to the free list. */
	n = vq->chain_len[id];
	idx = id;
	for (u16 i = 1; i < n; i++)
		idx = vq->desc[idx].next;
	vq->desc[idx].next = vq->free_head;
	vq->free_head = id;
	vq->num_free += n;
	vq->chain_len[id] = 0;
	vq->last_used++;
	vq->completed++;
	if (virtio_has(vq->dev, VIRTIO_F_EVENT_IDX))	/* interrupt on the next completion, or never */
		*used_event(vq) = vq->no_intr ? (u16)(vq->last_used - 1) : vq->last_used;
	return true;
}

void vq_set_interrupts(struct virtqueue *vq, bool on)
{
	vq->no_intr = !on;
	if (virtio_has(vq->dev, VIRTIO_F_EVENT_IDX))
		*used_event(vq) = on ? vq->last_used : (u16)(vq->last_used - 1);
	else
		vq->avail->flags = on ? 0 : VRING_AVAIL_F_NO_INTERRUPT;
	mb();
}

void vq_wait_used(struct virtqueue *vq, u64 *cookie, u32 *len, u64 timeout_us)
{
	u64 t0 = rdtsc(), limit = us_to_tsc(timeout_us);

	while (!vq_get_used(vq, cookie, len)) {
		if (rdtsc() - t0 > limit) {
			struct virtio_dev *d = vq->dev;

			inmate_fail(EXIT_TIMEOUT, "%s: queue %u timed out after %lu ms (avail idx %u, used idx %u, last seen %u, device status %#x)",
				    d->name, vq->index, timeout_us / 1000, vq->avail_idx, vq->used->idx,
				    vq->last_used, status_get(d));
		}
		cpu_relax();
	}
}

u32 vq_run(struct virtqueue *vq, const struct vbuf *bufs, unsigned int n, u64 timeout_us)
{
	u64 cookie;
	u32 len;

	if (!vq_add(vq, bufs, n, 0x5a5a))
		inmate_fail(EXIT_CONFIG, "%s: queue %u: no room for %u descriptors", vq->dev->name,
			    vq->index, n);
	vq_kick(vq);
	vq_wait_used(vq, &cookie, &len, timeout_us);
	if (cookie != 0x5a5a)
		inmate_fail(EXIT_TRANSPORT, "%s: queue %u: completion for an unexpected buffer",
			    vq->dev->name, vq->index);
	return len;
}
