/*
 * virtio.h - modern (virtio 1.x) virtio-pci transport and split virtqueues
 * for the virtio inmates.  Polling only: interrupts stay off (IF = 0); with
 * MSI-X on, the LAPIC IRR shows whether the device signalled.
 */
#ifndef VIRTIO_H
#define VIRTIO_H

#include "inmate.h"
#include "pci.h"

/* Exit codes of the virtio inmates (>= 5: 2-4 are the runtime's). */
#define EXIT_NODEV	5	/* no such PCI device */
#define EXIT_TRANSPORT	6	/* capability/BAR/status/queue setup problem */
#define EXIT_TIMEOUT	7	/* a queue did not complete in time */
#define EXIT_IOSTATUS	8	/* the device returned a bad status */
#define EXIT_MISMATCH	9	/* data read back / received is wrong */
#define EXIT_FEATURE	10	/* a required feature is missing */
#define EXIT_MSIX	11	/* MSI-X did not reach the LAPIC */
#define EXIT_LOSS	12	/* net: replies missing */
#define EXIT_CONFIG	13	/* bad cmdline value or device config */
#define EXIT_NORESET	14	/* blk hostile: a malformed chain did not put the device into NEEDS_RESET */
#define EXIT_BADRESET	15	/* blk hostile: NEEDS_RESET where none was due (other disk, well-formed chain) */

/* feature bits */
#define VIRTIO_F_INDIRECT_DESC	28
#define VIRTIO_F_EVENT_IDX	29
#define VIRTIO_F_VERSION_1	32
#define VIRTIO_F_ACCESS_PLATFORM 33
#define VIRTIO_F_RING_PACKED	34

/* device status */
#define VIRTIO_S_ACKNOWLEDGE	1
#define VIRTIO_S_DRIVER		2
#define VIRTIO_S_DRIVER_OK	4
#define VIRTIO_S_FEATURES_OK	8
#define VIRTIO_S_NEEDS_RESET	0x40
#define VIRTIO_S_FAILED		0x80

/* virtio-pci capability types */
#define VIRTIO_PCI_CAP_COMMON_CFG 1
#define VIRTIO_PCI_CAP_NOTIFY_CFG 2
#define VIRTIO_PCI_CAP_ISR_CFG	3
#define VIRTIO_PCI_CAP_DEVICE_CFG 4
#define VIRTIO_PCI_CAP_PCI_CFG	5

/* struct virtio_pci_common_cfg offsets */
#define VCC_DFSELECT	0x00
#define VCC_DF		0x04
#define VCC_GFSELECT	0x08
#define VCC_GF		0x0c
#define VCC_MSIX	0x10
#define VCC_NUMQ	0x12
#define VCC_STATUS	0x14
#define VCC_CFGGEN	0x15
#define VCC_Q_SELECT	0x16
#define VCC_Q_SIZE	0x18
#define VCC_Q_MSIX	0x1a
#define VCC_Q_ENABLE	0x1c
#define VCC_Q_NOFF	0x1e
#define VCC_Q_DESCLO	0x20
#define VCC_Q_DESCHI	0x24
#define VCC_Q_AVAILLO	0x28
#define VCC_Q_AVAILHI	0x2c
#define VCC_Q_USEDLO	0x30
#define VCC_Q_USEDHI	0x34
#define VCC_LEN		0x38

#define VIRTIO_MSI_NO_VECTOR	0xffff

/* split ring */
#define VRING_DESC_F_NEXT	1
#define VRING_DESC_F_WRITE	2
#define VRING_DESC_F_INDIRECT	4
#define VRING_USED_F_NO_NOTIFY	1
#define VRING_AVAIL_F_NO_INTERRUPT 1

struct vring_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};
struct vring_avail {
	u16 flags;
	u16 idx;
	u16 ring[];	/* + used_event after ring[size] */
};
struct vring_used_elem {
	u32 id;
	u32 len;
};
struct vring_used {
	u16 flags;
	u16 idx;
	struct vring_used_elem ring[];	/* + avail_event after ring[size] */
};

/* A region inside a BAR (MMIO or port I/O). */
struct vregion {
	u64 addr;
	u32 len;
	bool io;
	bool present;
};

#define VQ_MAX_SIZE	256
#define VQ_MAX_INDIRECT	32	/* descriptors per indirect table */
#define VIRTIO_MAX_QUEUES 4

struct virtio_dev;

struct virtqueue {
	struct virtio_dev *dev;
	u16 index, size, mask;
	u16 free_head, num_free;
	u16 avail_idx;		/* shadow of avail->idx (what we have published + pending) */
	u16 kicked_idx;		/* avail idx at the last notify decision */
	u16 last_used;		/* next used->ring slot we will consume */
	u16 msix_vector;
	bool no_intr;		/* vq_set_interrupts(vq, false) */
	struct vring_desc *desc;
	volatile struct vring_avail *avail;
	volatile struct vring_used *used;
	struct vring_desc *indirect;	/* size * VQ_MAX_INDIRECT, if negotiated */
	u64 cookie[VQ_MAX_SIZE];
	u16 chain_len[VQ_MAX_SIZE];	/* descriptors a head occupies in the ring */
	u64 notify_addr;
	bool notify_io;
	/* statistics */
	u64 submitted, completed, notifies, indirect_used, multi;
};

struct virtio_dev {
	struct pci_dev pci;
	const char *name;	/* for messages: "virtio-blk" */
	struct vregion common, notify, isr, device;
	u32 notify_mult;
	u64 dev_features, drv_features;
	u16 num_queues;
	struct virtqueue vq[VIRTIO_MAX_QUEUES];
	unsigned int nvqs;
	/* MSI-X */
	u8 msix_cap;
	u16 msix_table_size;
	u64 msix_table;
	bool msix_on;
	u8 msix_vector;		/* LAPIC vector the queues signal (0x40); config: msix_vector + msix_cfg_entry */
	u8 msix_cfg_entry;	/* MSI-X table entry config changes use (1, or 0 with a 1-entry table) */
	/* options from the cmdline */
	bool opt_indirect, opt_event_idx, opt_msix;
};

struct vbuf {
	u64 addr;
	u32 len;
	bool write;	/* device writes this buffer */
};

static inline bool virtio_has(const struct virtio_dev *d, unsigned int bit)
{
	return (d->drv_features >> bit) & 1;
}

/* DMA memory: bump allocator over a pool the inmate provides. */
void dma_pool_init(void *base, size_t size);
void *dma_alloc(size_t size, size_t align);	/* zeroed; fails the inmate if exhausted */
/* Everything allocated after dma_mark() is freed by dma_release(mark): for
 * rings of a device that was reset (re-initialisation in a loop). */
void *dma_mark(void);
void dma_release(void *mark);

/* Finds the device (first match of ids), maps the BARs its capabilities use,
 * parses the caps, resets it and negotiates features: want = the device
 * specific features the driver would like; VERSION_1 is required, and
 * INDIRECT_DESC / EVENT_IDX are added per cmdline (virtio.indirect=1,
 * virtio.event_idx=1).  Ends with FEATURES_OK set and checked. */
void virtio_init(struct virtio_dev *d, const char *name, const u16 (*ids)[2], u64 want);
/* The same for the index-th matching function on bus 0 (slot order).  want
 * may include VIRTIO_F_INDIRECT_DESC / VIRTIO_F_EVENT_IDX to ask for them
 * whatever the cmdline says (they are negotiated if offered).  The caller
 * may change d->msix_vector between this and virtio_setup_msix(). */
void virtio_init_nth(struct virtio_dev *d, const char *name, const u16 (*ids)[2], unsigned int index,
		     u64 want);
/* device_status access, and a reset (write 0, wait up to timeout_us for 0):
 * false if the status never read 0. */
u8 virtio_get_status(struct virtio_dev *d);
void virtio_set_status(struct virtio_dev *d, u8 s);
bool virtio_try_reset(struct virtio_dev *d, u64 timeout_us);
/* MSI-X on: waits up to timeout_us for the config vector's LAPIC IRR bit.
 * Returns false at once if MSI-X is off. */
bool virtio_wait_config_irq(struct virtio_dev *d, u64 timeout_us);
/* Sets up queue idx (size min(device max, max_size), power of two). */
struct virtqueue *virtio_setup_queue(struct virtio_dev *d, u16 idx, u16 max_size);
/* MSI-X (virtio.msix=1, default): table entry 0 -> vector 0x40 for all
 * queues, entry 1 -> 0x41 for config changes; enable in the capability. */
void virtio_setup_msix(struct virtio_dev *d);
void virtio_driver_ok(struct virtio_dev *d);
/* If MSI-X is on: waits (bounded) for the queue vector's IRR bit and fails
 * the inmate if it never shows; prints "msix: vector 0x40 pending". */
void virtio_check_msix(struct virtio_dev *d);
/* Device config access (re-read while config_generation changes). */
u8 virtio_cfg8(struct virtio_dev *d, u32 off);
u16 virtio_cfg16(struct virtio_dev *d, u32 off);
u32 virtio_cfg32(struct virtio_dev *d, u32 off);
u64 virtio_cfg64(struct virtio_dev *d, u32 off);
void virtio_print_features(struct virtio_dev *d);

/* Queue operations.  vq_add returns false if the ring has no room. */
bool vq_add(struct virtqueue *vq, const struct vbuf *bufs, unsigned int n, u64 cookie);
void vq_kick(struct virtqueue *vq);	/* publish avail idx, notify unless suppressed */
void vq_notify(struct virtqueue *vq);	/* write the doorbell, unconditionally */
bool vq_get_used(struct virtqueue *vq, u64 *cookie, u32 *len);
/* Waits up to timeout_us for one completion; fails (EXIT_TIMEOUT) naming the queue. */
void vq_wait_used(struct virtqueue *vq, u64 *cookie, u32 *len, u64 timeout_us);
/* Ask the device not to signal completions (bench loops poll anyway):
 * VRING_AVAIL_F_NO_INTERRUPT, or with EVENT_IDX a used_event behind us. */
void vq_set_interrupts(struct virtqueue *vq, bool on);
/* add + kick + wait for that completion (the queue must be otherwise idle). */
u32 vq_run(struct virtqueue *vq, const struct vbuf *bufs, unsigned int n, u64 timeout_us);

/* Helpers shared by the inmates */
static inline u32 fnv1a(u32 h, const void *p, size_t n)
{
	const u8 *b = p;

	/* A word at a time: fewer instructions where ring 0 runs emulated. */
	for (; n >= 4; n -= 4, b += 4) {
		u32 w = *(const u32 *)b;

		h = (h ^ (w & 0xff)) * 0x01000193u;
		h = (h ^ ((w >> 8) & 0xff)) * 0x01000193u;
		h = (h ^ ((w >> 16) & 0xff)) * 0x01000193u;
		h = (h ^ (w >> 24)) * 0x01000193u;
	}
	for (; n; n--, b++)
		h = (h ^ *b) * 0x01000193u;
	return h;
}
#define FNV1A_INIT 0x811c9dc5u

/* TSC cycles in us microseconds (after timer_init(); else a 2 GHz guess). */
static inline u64 us_to_tsc(u64 us) { return us * tsc_khz / 1000; }

/* Full fence: orders our ring stores before the loads of used->flags / avail_event. */
static inline void mb(void) { __asm__ volatile("lock; orl $0, (%%rsp)" ::: "memory", "cc"); }

#endif
