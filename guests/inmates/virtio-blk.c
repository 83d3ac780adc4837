/*
 * virtio-blk - drives a modern virtio-pci block device (1af4:1042, or the
 * transitional 1af4:1001 through its modern interface) with one polled
 * split virtqueue.  Modes (blk.mode=):
 *
 *   write (default)  config + GET_ID, write blk.sectors at blk.start with the
 *                    pattern in 1-, 8- and multi-buffer requests, FLUSH,
 *                    read back and compare
 *   verify           read back and compare only (second boot over the image)
 *   readonly         expects VIRTIO_BLK_F_RO: a read works, a write fails
 *   zeroes           WRITE_ZEROES (read back zeros) and DISCARD, if offered
 *   bench            4 KiB random reads, 1 MiB sequential reads and writes
 *   durable          sector by sector from blk.start: write it, FLUSH, print
 *                    "ACK <sector>" (the host kills the VMM at a random moment
 *                    and checks every acknowledged sector, scripts/durability.sh);
 *                    blk.flush=0 leaves FLUSH unnegotiated (the device is then
 *                    write-through and each write is acknowledged on its own)
 *   steady           one sector written and read back every blk.gap_us
 *                    (default 10000) for blk.secs seconds (default 10), from
 *                    blk.start over blk.sectors: I/O that goes on while the
 *                    host reads rtvisor's statistics
 *   hostile          two disks: malformed chains on disk 0 (NEEDS_RESET, reset,
 *                    re-init, I/O again), bad requests (error statuses), disk 1
 *                    keeps working throughout
 *
 * Pattern: 32-bit LE word k (0..127) of absolute 512-byte sector s is
 * fmix32(seed ^ (s * 0x9E3779B1) ^ (k * 0x85EBCA77)), all mod 2^32.
 * See docs/inmates.md for every key and output line.
 */
#include "virtio.h"

const char inmate_name[] = "virtio-blk";

#define VIRTIO_BLK_F_SIZE_MAX	1
#define VIRTIO_BLK_F_SEG_MAX	2
#define VIRTIO_BLK_F_RO		5
#define VIRTIO_BLK_F_BLK_SIZE	6
#define VIRTIO_BLK_F_FLUSH	9
#define VIRTIO_BLK_F_DISCARD	13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

#define VIRTIO_BLK_T_IN		0
#define VIRTIO_BLK_T_OUT	1
#define VIRTIO_BLK_T_FLUSH	4
#define VIRTIO_BLK_T_GET_ID	8
#define VIRTIO_BLK_T_DISCARD	11
#define VIRTIO_BLK_T_WRITE_ZEROES 13

#define VIRTIO_BLK_S_OK		0
#define VIRTIO_BLK_S_IOERR	1
#define VIRTIO_BLK_S_UNSUPP	2

/* struct virtio_blk_config offsets */
#define CFG_CAPACITY		0
#define CFG_SIZE_MAX		8
#define CFG_SEG_MAX		12
#define CFG_BLK_SIZE		20
#define CFG_MAX_DISCARD_SECTORS	36
#define CFG_MAX_DISCARD_SEG	40
#define CFG_DISCARD_ALIGN	44
#define CFG_MAX_WZ_SECTORS	48
#define CFG_MAX_WZ_SEG		52

#define SECTOR		512
#define MAX_SEGS	32		/* data buffers per request (<= VQ_MAX_INDIRECT - 2 with header/status) */
#define BIG_BUF		(1u << 20)	/* 1 MiB: bench requests */
#define SEG_STRIDE	(64u << 10)	/* multi-buffer requests: one buffer per 64 KiB slot */

struct blk_hdr {
	u32 type;
	u32 reserved;
	u64 sector;
};

struct blk_range {		/* discard / write zeroes segment */
	u64 sector;
	u32 num_sectors;
	u32 flags;		/* bit 0: unmap (write zeroes only) */
};

static u8 pool[3u << 20] __attribute__((aligned(4096)));

/* One disk; hostile mode drives two.  dev/vq/capacity/size_max/seg_max are
 * the selected one's (select_disk()). */
struct disk {
	struct virtio_dev dev;
	struct virtqueue *vq;
	u64 capacity;
	u32 size_max, seg_max;
	unsigned int inits;		/* initialisations so far */
	void *ring_mark;		/* dma_mark() before re-initialisations' rings */
};

static struct disk disks[2];
static struct virtio_dev *dev = &disks[0].dev;
static struct virtqueue *vq;
static struct blk_hdr *hdr;
static volatile u8 *status;
static struct blk_range *range;
static u8 *buf;			/* BIG_BUF + slack for scattered segments */
static u8 *idbuf;
static u64 capacity, timeout_us;
static u32 seed, size_max, seg_max;
static bool first_done;

static u32 fmix32(u32 x)
{
	x ^= x >> 16;
	x *= 0x85ebca6bu;
	x ^= x >> 13;
	x *= 0xc2b2ae35u;
	x ^= x >> 16;
	return x;
}

static inline u32 pattern(u64 s, u32 k)
{
	return fmix32(seed ^ ((u32)s * 0x9E3779B1u) ^ (k * 0x85EBCA77u));
}

static void fill_sector(u8 *p, u64 s)
{
	u32 *w = (u32 *)p;

	for (u32 k = 0; k < SECTOR / 4; k++)
		w[k] = pattern(s, k);
}

/* One request: header, data buffers, status.  Returns the device's status. */
static u8 blk_request(u32 type, u64 sector, const struct vbuf *data, unsigned int n)
{
	struct vbuf b[MAX_SEGS + 2];
	static bool len_warned;
	u32 len, want_len;

	if (n > MAX_SEGS)
		inmate_fail(EXIT_CONFIG, "request with %u data buffers (max %u)", n, MAX_SEGS);
	hdr->type = type;
	hdr->reserved = 0;
	hdr->sector = sector;
	*status = 0xff;
	b[0] = (struct vbuf){ (u64)hdr, sizeof(*hdr), false };
	for (unsigned int i = 0; i < n; i++)
		b[i + 1] = data[i];
	b[n + 1] = (struct vbuf){ (u64)status, 1, true };
	len = vq_run(vq, b, n + 2, timeout_us);
	/* used.len = bytes the device wrote: data + status for reads and GET_ID,
	 * the status alone otherwise.  Drivers must not rely on it (Linux does
	 * not), so a difference is only reported, once. */
	want_len = 1;
	for (unsigned int i = 0; i < n; i++)
		if (data[i].write)
			want_len += data[i].len;
	if (len != want_len && !len_warned && *status == VIRTIO_BLK_S_OK) {
		len_warned = true;
		printk("virtio-blk: warning: request type %u: used len %u, want %u (data written + status byte)\n",
		       type, len, want_len);
	}
	if (!first_done) {
		first_done = true;
		virtio_check_msix(dev);
	}
	if (*status == 0xff)
		inmate_fail(EXIT_IOSTATUS, "request type %u sector %lu: device did not write the status byte",
			    type, sector);
	return *status;
}

static void expect_ok(u8 st, const char *what, u64 sector, u32 count)
{
	if (st != VIRTIO_BLK_S_OK)
		inmate_fail(EXIT_IOSTATUS, "%s of %u sectors at %lu: status %u (%s)", what, count, sector, st,
			    st == VIRTIO_BLK_S_IOERR ? "IOERR" : st == VIRTIO_BLK_S_UNSUPP ? "UNSUPP" : "?");
}

/*
 * Split count sectors into nsegs buffers (each a 64 KiB slot of buf, so
 * they are not contiguous in memory), honouring seg_max and size_max.
 * Returns the number of buffers written to segs.
 */
static unsigned int make_segs(struct vbuf *segs, u32 count, unsigned int nsegs, bool write)
{
	u32 per_seg_max = SEG_STRIDE / SECTOR, total = count;
	unsigned int n = 0;

	if (size_max && size_max / SECTOR < per_seg_max)
		per_seg_max = size_max / SECTOR ? size_max / SECTOR : 1;
	if (nsegs > count)
		nsegs = count;
	if (nsegs < 1)
		nsegs = 1;
	while (count) {
		/* equal pieces, the remainder in the last: 13 in 3 -> 4, 4, 5 */
		u32 this = n + 1 < nsegs ? total / nsegs : count;

		if (this == 0)
			this = 1;
		if (this > count)
			this = count;
		if (this > per_seg_max)
			this = per_seg_max;
		if (n >= MAX_SEGS || (seg_max && n >= seg_max) || (u64)(n + 1) * SEG_STRIDE > BIG_BUF)
			inmate_fail(EXIT_CONFIG, "request of %u sectors too large for seg_max %u / size_max %u",
				    total, seg_max, size_max);
		segs[n] = (struct vbuf){ (u64)(buf + (u64)n * SEG_STRIDE), this * SECTOR, write };
		n++;
		count -= this;
	}
	return n;
}

/* Write count sectors at s with the pattern; updates the FNV checksum. */
static void write_chunk(u64 s, u32 count, unsigned int nsegs, u32 *fnv)
{
	struct vbuf segs[MAX_SEGS];
	unsigned int n = make_segs(segs, count, nsegs, false);
	u64 sec = s;

	for (unsigned int i = 0; i < n; i++)
		for (u32 off = 0; off < segs[i].len; off += SECTOR, sec++) {
			fill_sector((u8 *)segs[i].addr + off, sec);
			if (fnv)
				*fnv = fnv1a(*fnv, (u8 *)segs[i].addr + off, SECTOR);
		}
	expect_ok(blk_request(VIRTIO_BLK_T_OUT, s, segs, n), "write", s, count);
}

/* Read count sectors at s and compare with the pattern (or zeros). */
static void read_chunk(u64 s, u32 count, unsigned int nsegs, bool zeros, u32 *fnv)
{
	struct vbuf segs[MAX_SEGS];
	unsigned int n = make_segs(segs, count, nsegs, true);
	u64 sec = s;

	for (unsigned int i = 0; i < n; i++)
		memset((void *)segs[i].addr, 0xa5, segs[i].len);	/* no stale matches */
	expect_ok(blk_request(VIRTIO_BLK_T_IN, s, segs, n), "read", s, count);
	for (unsigned int i = 0; i < n; i++)
		for (u32 off = 0; off < segs[i].len; off += SECTOR, sec++) {
			const u32 *w = (const u32 *)(segs[i].addr + off);

			for (u32 k = 0; k < SECTOR / 4; k++) {
				u32 want = zeros ? 0 : pattern(sec, k);

				if (w[k] != want)
					inmate_fail(EXIT_MISMATCH, "sector %lu word %u: read %#010x, want %#010x (request of %u sectors at %lu, buffer %u of %u)",
						    sec, k, w[k], want, count, s, i, n);
			}
			if (fnv)
				*fnv = fnv1a(*fnv, w, SECTOR);
		}
}

/* Request shapes {sectors, buffers}: cycles through them over the range. */
static const u32 write_shapes[][2] = { { 1, 1 }, { 8, 1 }, { 13, 3 }, { 4, 2 }, { 32, 4 } };
static const u32 read_shapes[][2] = { { 5, 1 }, { 1, 1 }, { 24, 3 }, { 8, 2 }, { 64, 1 } };

/* Writes (write) or reads back and compares (zeros: expect zeros) a range;
 * returns the FNV-1a of the data unless nofnv (saves time where the code
 * runs emulated: the per-word compare already proves the data). */
static u32 walk(u64 start, u64 sectors, bool write, bool zeros, bool nofnv)
{
	const u32 (*shapes)[2] = write ? write_shapes : read_shapes;
	unsigned int nshapes = write ? ARRAY_SIZE(write_shapes) : ARRAY_SIZE(read_shapes);
	u32 fnv = FNV1A_INIT, reqs = 0;
	u64 s = start, end = start + sectors, t0 = rdtsc();

	for (unsigned int i = 0; s < end; i++) {
		u32 count = shapes[i % nshapes][0], nsegs = shapes[i % nshapes][1];

		if (count > end - s)
			count = end - s;
		if (write)
			write_chunk(s, count, nsegs, nofnv ? NULL : &fnv);
		else
			read_chunk(s, count, nsegs, zeros, nofnv ? NULL : &fnv);
		s += count;
		reqs++;
	}
	printk("virtio-blk: %s %lu sectors at %lu in %u requests, %lu us\n", write ? "wrote" : "read back",
	       sectors, start, reqs, tsc_to_us(rdtsc() - t0));
	return fnv;
}

static void get_id(void)
{
	struct vbuf b = { (u64)idbuf, 20, true };
	char serial[21], want[32];
	u8 st;

	memset(idbuf, 0, 20);
	st = blk_request(VIRTIO_BLK_T_GET_ID, 0, &b, 1);
	if (st == VIRTIO_BLK_S_UNSUPP) {
		printk("virtio-blk: GET_ID unsupported\n");
		if (cmdline_get("blk.serial", want, sizeof(want)))
			inmate_fail(EXIT_MISMATCH, "blk.serial=%s given but GET_ID is unsupported", want);
		return;
	}
	expect_ok(st, "GET_ID", 0, 0);
	memcpy(serial, idbuf, 20);
	serial[20] = '\0';	/* 20 bytes, NUL-terminated only if shorter */
	printk("virtio-blk: serial \"%s\"\n", serial);
	if (cmdline_get("blk.serial", want, sizeof(want)) && strcmp(want, serial))
		inmate_fail(EXIT_MISMATCH, "serial \"%s\", want \"%s\"", serial, want);
}

static void flush(void)
{
	if (!virtio_has(dev, VIRTIO_BLK_F_FLUSH)) {
		printk("virtio-blk: FLUSH not offered, skipped\n");
		return;
	}
	expect_ok(blk_request(VIRTIO_BLK_T_FLUSH, 0, NULL, 0), "flush", 0, 0);
	printk("virtio-blk: flush ok\n");
}

static void check_range(u64 start, u64 sectors)
{
	if (sectors == 0 || start + sectors > capacity || start + sectors < start)
		inmate_fail(EXIT_CONFIG, "range %lu+%lu sectors outside the disk (capacity %lu)", start,
			    sectors, capacity);
}

/* ---- modes -------------------------------------------------------------- */

static void mode_steady(u64 start, u64 sectors)
{
	u64 secs = cmdline_get_u64("blk.secs", 10), gap = cmdline_get_u64("blk.gap_us", 10000);
	u64 t0 = rdtsc(), dur = us_to_tsc(secs * 1000000), rounds = 0;

	check_range(start, sectors);
	while (rdtsc() - t0 < dur) {
		u64 s = start + rounds % sectors;

		write_chunk(s, 1, 1, NULL);
		read_chunk(s, 1, 1, false, NULL);
		rounds++;
		udelay(gap);
	}
	printk("INMATE virtio-blk OK: steady: %lu sectors written and read back in %lu s\n", rounds, secs);
}

static void mode_readonly(u64 start)
{
	struct vbuf b = { (u64)buf, SECTOR, true };
	u8 st;

	if (!virtio_has(dev, VIRTIO_BLK_F_RO))
		inmate_fail(EXIT_FEATURE, "blk.mode=readonly but the device does not offer VIRTIO_BLK_F_RO");
	expect_ok(blk_request(VIRTIO_BLK_T_IN, start, &b, 1), "read", start, 1);
	b.write = false;
	st = blk_request(VIRTIO_BLK_T_OUT, start, &b, 1);
	if (st != VIRTIO_BLK_S_IOERR && st != VIRTIO_BLK_S_UNSUPP)
		inmate_fail(EXIT_IOSTATUS, "write to a read-only disk completed with status %u, want IOERR (1) or UNSUPP (2)", st);
	printk("INMATE virtio-blk OK: read-only: read ok, write rejected with status %u (%s)\n", st,
	       st == VIRTIO_BLK_S_IOERR ? "IOERR" : "UNSUPP");
}

static void range_request(u32 type, u64 s, u64 n, u32 max_per_seg, u32 flags, const char *what)
{
	while (n) {
		u32 this = n > max_per_seg ? max_per_seg : (u32)n;
		struct vbuf b = { (u64)range, sizeof(*range), false };

		range->sector = s;
		range->num_sectors = this;
		range->flags = flags;
		expect_ok(blk_request(type, 0, &b, 1), what, s, this);
		s += this;
		n -= this;
	}
}

static void mode_zeroes(u64 start, u64 sectors)
{
	bool wz = virtio_has(dev, VIRTIO_BLK_F_WRITE_ZEROES), dc = virtio_has(dev, VIRTIO_BLK_F_DISCARD);
	char tested[96] = "";

	check_range(start, sectors);
	if (wz) {
		u32 max = virtio_cfg32(dev, CFG_MAX_WZ_SECTORS);

		printk("virtio-blk: write zeroes: max %u sectors, max %u segments\n", max,
		       virtio_cfg32(dev, CFG_MAX_WZ_SEG));
		if (!max)
			inmate_fail(EXIT_CONFIG, "WRITE_ZEROES offered with max_write_zeroes_sectors 0");
		walk(start, sectors, true, false, true);	/* something nonzero to overwrite */
		range_request(VIRTIO_BLK_T_WRITE_ZEROES, start, sectors, max, 0, "write zeroes");
		walk(start, sectors, false, true, true);
		snprintk(tested, sizeof(tested), "write_zeroes %lu sectors", sectors);
	}
	if (dc) {
		u32 max = virtio_cfg32(dev, CFG_MAX_DISCARD_SECTORS);
		u32 align = virtio_cfg32(dev, CFG_DISCARD_ALIGN);
		u64 s = start, n = sectors;
		size_t len = strlen(tested);

		printk("virtio-blk: discard: max %u sectors, max %u segments, alignment %u\n", max,
		       virtio_cfg32(dev, CFG_MAX_DISCARD_SEG), align);
		if (!max)
			inmate_fail(EXIT_CONFIG, "DISCARD offered with max_discard_sectors 0");
		if (align > 1) {		/* shrink to aligned boundaries */
			u64 a = (s + align - 1) / align * align, e = (s + n) / align * align;

			s = a;
			n = e > a ? e - a : 0;
		}
		if (n) {
			range_request(VIRTIO_BLK_T_DISCARD, s, n, max, 0, "discard");
			snprintk(tested + len, sizeof(tested) - len, "%sdiscard %lu sectors", len ? ", " : "", n);
		} else {
			snprintk(tested + len, sizeof(tested) - len, "%sdiscard skipped (range < alignment %u)",
				 len ? ", " : "", align);
		}
	}
	printk("INMATE virtio-blk OK: zeroes: %s%s%s\n", tested[0] ? tested : "neither tested",
	       wz ? "" : " (WRITE_ZEROES not offered)", dc ? "" : " (DISCARD not offered)");
}

static u64 rand_state = 0x853c49e6748fea9bULL;

static u32 lcg(void)
{
	rand_state = rand_state * 6364136223846793005ULL + 1442695040888963407ULL;
	return (u32)(rand_state >> 33);
}

static void mode_bench(u64 start)
{
	u64 secs = cmdline_get_u64("bench.secs", 2), dur = us_to_tsc(secs * 1000000);
	u64 bigsec = BIG_BUF / SECTOR, area, t0, t, ops;
	struct vbuf segs[MAX_SEGS];
	unsigned int nbig;
	u32 iops, rd, wr;

	if (capacity < start + 8)
		inmate_fail(EXIT_CONFIG, "disk too small for bench (capacity %lu)", capacity);
	area = capacity - start;
	if (area < bigsec)
		bigsec = area;
	if (!secs)
		secs = 1;
	dur = us_to_tsc(secs * 1000000);
	/* A polling driver: no completion interrupts unless bench.intr=1. */
	vq_set_interrupts(vq, cmdline_get_u64("bench.intr", 0) != 0);

	/* 4 KiB random reads, one outstanding. */
	ops = 0;
	t0 = rdtsc();
	do {
		u64 s = start + ((u64)lcg() % (area / 8)) * 8;
		struct vbuf b = { (u64)buf, 4096, true };

		expect_ok(blk_request(VIRTIO_BLK_T_IN, s, &b, 1), "bench read", s, 8);
		ops++;
	} while ((t = rdtsc() - t0) < dur);
	iops = ops * 1000000 / tsc_to_us(t);
	printk("bench: randread4k %lu requests in %lu ms\n", ops, tsc_to_us(t) / 1000);

	/* 1 MiB sequential reads, several buffers each (64 KiB slots). */
	nbig = make_segs(segs, bigsec, 16, true);
	ops = 0;
	t0 = rdtsc();
	do {
		u64 s = start + (ops * bigsec) % (area - area % bigsec);

		expect_ok(blk_request(VIRTIO_BLK_T_IN, s, segs, nbig), "bench read", s, bigsec);
		ops++;
	} while ((t = rdtsc() - t0) < dur);
	rd = ops * bigsec * SECTOR / tsc_to_us(t);	/* bytes/us = MB/s */
	printk("bench: seqread %lu x %lu KiB (%u buffers) in %lu ms\n", ops, bigsec / 2, nbig,
	       tsc_to_us(t) / 1000);

	nbig = make_segs(segs, bigsec, 16, false);
	ops = 0;
	t0 = rdtsc();
	do {
		u64 s = start + (ops * bigsec) % (area - area % bigsec);

		expect_ok(blk_request(VIRTIO_BLK_T_OUT, s, segs, nbig), "bench write", s, bigsec);
		ops++;
	} while ((t = rdtsc() - t0) < dur);
	wr = ops * bigsec * SECTOR / tsc_to_us(t);
	printk("bench: seqwrite %lu x %lu KiB (%u buffers) in %lu ms\n", ops, bigsec / 2, nbig,
	       tsc_to_us(t) / 1000);
	flush();
	printk("BENCH blk randread4k_iops=%u seqread_mbps=%u seqwrite_mbps=%u\n", iops, rd, wr);
	printk("virtio-blk: queue notifies %lu for %lu requests\n", vq->notifies, vq->submitted);
}

static const u16 blk_ids[][2] = { { 0x1af4, 0x1042 }, { 0x1af4, 0x1001 }, { 0, 0 } };

static void select_disk(struct disk *dk)
{
	dev = &dk->dev;
	vq = dk->vq;
	capacity = dk->capacity;
	size_max = dk->size_max;
	seg_max = dk->seg_max;
}

/*
 * Finds the index-th virtio-blk function (slot order), initialises it with
 * one queue of at most qmax entries and selects it.  vector: its MSI-X queue
 * vector (config: vector + 1).  A re-initialisation (dk->inits > 0) puts its
 * rings where the previous re-initialisation had them.
 */
static void disk_init(struct disk *dk, unsigned int index, u64 want, u8 vector, u16 qmax)
{
	struct virtio_dev *d = &dk->dev;

	virtio_init_nth(d, "virtio-blk", blk_ids, index, want);
	d->msix_vector = vector;
	virtio_setup_msix(d);
	if (dk->inits) {
		if (!dk->ring_mark)
			dk->ring_mark = dma_mark();
		else
			dma_release(dk->ring_mark);
	}
	dk->vq = virtio_setup_queue(d, 0, qmax);
	virtio_driver_ok(d);
	dk->inits++;

	dk->capacity = virtio_cfg64(d, CFG_CAPACITY);
	dk->size_max = virtio_has(d, VIRTIO_BLK_F_SIZE_MAX) ? virtio_cfg32(d, CFG_SIZE_MAX) : 0;
	dk->seg_max = virtio_has(d, VIRTIO_BLK_F_SEG_MAX) ? virtio_cfg32(d, CFG_SEG_MAX) : 0;
	select_disk(dk);
	printk("virtio-blk: capacity %lu sectors (%lu KiB), blk_size %u%s, size_max %u, seg_max %u, features:%s%s%s%s%s\n",
	       capacity, capacity / 2,
	       virtio_has(dev, VIRTIO_BLK_F_BLK_SIZE) ? virtio_cfg32(dev, CFG_BLK_SIZE) : 512,
	       virtio_has(dev, VIRTIO_BLK_F_BLK_SIZE) ? "" : " (not offered)", size_max, seg_max,
	       virtio_has(dev, VIRTIO_BLK_F_RO) ? " ro" : "",
	       virtio_has(dev, VIRTIO_BLK_F_FLUSH) ? " flush" : "",
	       virtio_has(dev, VIRTIO_BLK_F_DISCARD) ? " discard" : "",
	       virtio_has(dev, VIRTIO_BLK_F_WRITE_ZEROES) ? " write_zeroes" : "",
	       virtio_has(dev, VIRTIO_F_INDIRECT_DESC) ? " indirect" : "");
	if (virtio_has(dev, VIRTIO_BLK_F_BLK_SIZE) && virtio_cfg32(dev, CFG_BLK_SIZE) != SECTOR)
		printk("virtio-blk: warning: blk_size is not 512; 1-sector requests may be refused\n");
	if (seg_max && seg_max < 4)
		inmate_fail(EXIT_CONFIG, "seg_max %u < 4: too small for the multi-buffer requests", seg_max);
}

/* ---- hostile mode ------------------------------------------------------------
 *
 * Disk 0 gets malformed chains (it must go to DEVICE_NEEDS_RESET), then a
 * reset and a re-initialisation; disk 1 must keep working throughout.  The
 * badreq group sends well-formed chains with bad requests, which must get
 * error statuses without a reset.  See docs/inmates.md.
 */

enum { H_LOOP, H_SELFLOOP, H_OOB, H_INDIRECT_SELF, H_NEXT_OOB, H_HUGE, H_AVAIL_JUMP, H_BADREQ, H_N };

static const char *const hostile_names[H_N] = {
	"loop", "selfloop", "oob", "indirect-self", "next-oob", "huge", "avail-jump", "badreq",
};

#define HOSTILE_QSIZE	64		/* disk 0's queue: smaller than the devices' maximum on purpose */
#define HOSTILE_OOB_ADDR 0x7ff000000000ULL
#define HOSTILE_VEC0	0x50		/* disk 0's MSI-X vectors: 0x50 + 2 * initialisation (+1 config) */

static u64 hostile_want, hostile_us, hostile_start;
static bool hostile_strict;
static struct vring_desc *itab;		/* indirect-self's table */

static void disk0_init(bool indirect)
{
	struct disk *d0 = &disks[0];
	u8 vec = HOSTILE_VEC0 + 2 * (d0->inits % 40);

	disk_init(d0, 0, hostile_want | (indirect ? 1ULL << VIRTIO_F_INDIRECT_DESC : 0), vec, HOSTILE_QSIZE);
	if (indirect && !virtio_has(dev, VIRTIO_F_INDIRECT_DESC))
		inmate_fail(EXIT_FEATURE, "hostile: disk 0 does not offer VIRTIO_F_INDIRECT_DESC (needed by indirect-self)");
}

/* The other disk: not in NEEDS_RESET/FAILED, and a write + read-back works. */
static void disk1_check(u64 s, u32 count, const char *when)
{
	struct disk *d1 = &disks[1];
	u8 st = virtio_get_status(&d1->dev);

	if (st & (VIRTIO_S_NEEDS_RESET | VIRTIO_S_FAILED))
		inmate_fail(EXIT_BADRESET, "hostile: disk 1 status %#x %s (disk 0's trouble must not reach it)", st, when);
	select_disk(d1);
	write_chunk(s, count, 1, NULL);
	read_chunk(s, count, 1, false, NULL);
	select_disk(&disks[0]);
	printk("hostile: disk 1 wrote and read back %u sectors at %lu %s\n", count, s, when);
}

/* A normal write + read-back of 8 sectors (2 buffers) on the selected disk. */
static void rw_check(u64 s)
{
	write_chunk(s, 8, 2, NULL);
	read_chunk(s, 8, 2, false, NULL);
}

static const char *st_name(u8 st)
{
	return st == VIRTIO_BLK_S_OK ? "OK" : st == VIRTIO_BLK_S_IOERR ? "IOERR" :
	       st == VIRTIO_BLK_S_UNSUPP ? "UNSUPP" : st == 0xff ? "not written" : "?";
}

static void put_desc(struct vring_desc *d, u64 addr, u32 len, u16 flags, u16 next)
{
	d->addr = addr;
	d->len = len;
	d->flags = flags;
	d->next = next;
}

/* Puts case c's malformed chain on disk 0's queue and rings the doorbell. */
static void hostile_submit(int c)
{
	struct vring_desc *d = vq->desc;
	u16 size = vq->size;

	hdr->type = VIRTIO_BLK_T_IN;
	hdr->reserved = 0;
	hdr->sector = 0;
	*status = 0xff;
	switch (c) {
	case H_LOOP:		/* 0 -> 1 -> 0 -> ... */
		put_desc(&d[0], (u64)hdr, sizeof(*hdr), VRING_DESC_F_NEXT, 1);
		put_desc(&d[1], (u64)buf, SECTOR, VRING_DESC_F_NEXT, 0);
		break;
	case H_SELFLOOP:	/* 0 -> 0 */
		put_desc(&d[0], (u64)hdr, sizeof(*hdr), VRING_DESC_F_NEXT, 0);
		break;
	case H_OOB:		/* a data buffer far beyond guest RAM */
		put_desc(&d[0], (u64)hdr, sizeof(*hdr), VRING_DESC_F_NEXT, 1);
		put_desc(&d[1], HOSTILE_OOB_ADDR, SECTOR, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2);
		put_desc(&d[2], (u64)status, 1, VRING_DESC_F_WRITE, 0);
		break;
	case H_INDIRECT_SELF:	/* indirect table whose only entry is an indirect descriptor for itself */
		put_desc(&itab[0], (u64)itab, sizeof(*itab), VRING_DESC_F_INDIRECT, 0);
		put_desc(&d[0], (u64)itab, sizeof(*itab), VRING_DESC_F_INDIRECT, 0);
		break;
	case H_NEXT_OOB:	/* next = queue size */
		put_desc(&d[0], (u64)hdr, sizeof(*hdr), VRING_DESC_F_NEXT, size);
		break;
	case H_HUGE:		/* a write whose data is 4 GiB - 1 from address 0 */
		hdr->type = VIRTIO_BLK_T_OUT;
		put_desc(&d[0], (u64)hdr, sizeof(*hdr), VRING_DESC_F_NEXT, 1);
		put_desc(&d[1], 0, 0xffffffffu, VRING_DESC_F_NEXT, 2);
		put_desc(&d[2], (u64)status, 1, VRING_DESC_F_WRITE, 0);
		break;
	case H_AVAIL_JUMP:	/* avail.idx jumps by size + 5, every entry a valid 1-sector read */
		put_desc(&d[0], (u64)hdr, sizeof(*hdr), VRING_DESC_F_NEXT, 1);
		put_desc(&d[1], (u64)buf, SECTOR, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2);
		put_desc(&d[2], (u64)status, 1, VRING_DESC_F_WRITE, 0);
		for (u16 i = 0; i < size; i++)
			vq->avail->ring[i] = 0;
		vq->avail_idx += size + 5;
		break;
	}
	if (c != H_AVAIL_JUMP) {
		vq->avail->ring[vq->avail_idx & vq->mask] = 0;
		vq->avail_idx++;
	}
	barrier();
	vq->avail->idx = vq->avail_idx;
	vq_notify(vq);
}

/* Resets disk 0 (status 0, bounded wait for 0) and initialises it again. */
static void disk0_reset(const char *name, bool indirect_next)
{
	if (!virtio_try_reset(dev, 1000000))
		inmate_fail(EXIT_TRANSPORT, "hostile: %s: disk 0 status stays %#x 1 s after writing 0", name,
			    virtio_get_status(dev));
	disk0_init(indirect_next);
}

/*
 * Without blk.strict=1, a completion instead of NEEDS_RESET is accepted for
 * oob: QEMU maps a guest-physical address where nothing is through its
 * bounce buffer (reads give 0xff, writes vanish), so the request completes.
 */
static bool may_complete(int c)
{
	return !hostile_strict && c == H_OOB;
}

static void hostile_malformed(int c, unsigned int n, bool indirect_next)
{
	const char *name = hostile_names[c];
	u64 t0 = rdtsc(), limit = us_to_tsc(hostile_us), us;
	u16 used0 = vq->used->idx, used;
	u8 st;
	char irq[48];
	const char *when = "while disk 0 needs reset";

	hostile_submit(c);
	while (!((st = virtio_get_status(dev)) & VIRTIO_S_NEEDS_RESET)) {
		used = vq->used->idx;
		if (used != used0 && may_complete(c) && *status != 0xff) {
			printk("hostile: %s -> completed with status %u (%s), no reset (status %#x, used idx %u -> %u; accepted without blk.strict=1)\n",
			       name, *status, st_name(*status), st, used0, used);
			when = "after disk 0's malformed chain";
			goto reset;
		}
		if (rdtsc() - t0 > limit)
			inmate_fail(EXIT_NORESET, "hostile: %s: device status %#x, used idx %u -> %u (avail idx %u), status byte %#x %lu ms after the malformed chain; want NEEDS_RESET (0x40)",
				    name, st, used0, used, vq->avail_idx, *status, hostile_us / 1000);
		cpu_relax();
	}
	us = tsc_to_us(rdtsc() - t0);
	used = vq->used->idx;
	if (!dev->msix_on) {
		snprintk(irq, sizeof(irq), "MSI-X off");
	} else if (virtio_wait_config_irq(dev, 1000000)) {
		snprintk(irq, sizeof(irq), "config interrupt %#x", dev->msix_vector + dev->msix_cfg_entry);
	} else {
		inmate_fail(EXIT_MSIX, "hostile: %s: NEEDS_RESET (status %#x) but config vector %#x not pending in the LAPIC IRR after 1 s",
			    name, st, dev->msix_vector + dev->msix_cfg_entry);
	}
	printk("hostile: %s -> needs reset (status %#x, used idx %u -> %u, %s, after %lu us)\n", name, st,
	       used0, used, irq, us);
reset:
	disk1_check(hostile_start + 4 * n, 4, when);
	disk0_reset(name, indirect_next);
	rw_check(hostile_start + 8 * n);
	printk("hostile: %s recovered\n", name);
}

/* badreq: well-formed chains carrying bad requests. */
struct badreq {
	const char *name;
	u32 type;
	u64 sector;		/* ~0: capacity */
	u32 hdr_len, data_len;	/* data: device-writable */
	u8 want;
};

static const struct badreq badreqs[] = {
	{ "short-header",    VIRTIO_BLK_T_IN, 0, 8, 0, VIRTIO_BLK_S_IOERR },
	{ "beyond-capacity", VIRTIO_BLK_T_IN, ~0ULL, 16, SECTOR, VIRTIO_BLK_S_IOERR },
	{ "sector-overflow", VIRTIO_BLK_T_IN, 1ULL << 55, 16, SECTOR, VIRTIO_BLK_S_IOERR },	/* * 512 = 2^64 */
	{ "partial-sector",  VIRTIO_BLK_T_IN, 0, 16, 700, VIRTIO_BLK_S_IOERR },
	{ "unknown-type",    0x77, 0, 16, 0, VIRTIO_BLK_S_UNSUPP },
};

static void hostile_badreq(unsigned int n, bool indirect_next)
{
	unsigned int ok = 0, resets = 0;

	for (unsigned int i = 0; i < ARRAY_SIZE(badreqs); i++) {
		const struct badreq *r = &badreqs[i];
		struct vbuf b[3];
		unsigned int nb = 0;
		u64 t0 = rdtsc(), limit = us_to_tsc(hostile_us), cookie;
		u32 len;
		u8 st;

		hdr->type = r->type;
		hdr->reserved = 0;
		hdr->sector = r->sector == ~0ULL ? capacity : r->sector;
		*status = 0xff;
		b[nb++] = (struct vbuf){ (u64)hdr, r->hdr_len, false };
		if (r->data_len)
			b[nb++] = (struct vbuf){ (u64)buf, r->data_len, true };
		b[nb++] = (struct vbuf){ (u64)status, 1, true };
		if (!vq_add(vq, b, nb, 0xbad0 + i))
			inmate_fail(EXIT_CONFIG, "hostile: badreq %s: no room in the queue", r->name);
		vq_kick(vq);
		for (;;) {
			if (vq_get_used(vq, &cookie, &len)) {
				st = virtio_get_status(dev);
				if (st & VIRTIO_S_NEEDS_RESET)
					inmate_fail(EXIT_BADRESET, "hostile: badreq %s: completed (status byte %u) but the device is in NEEDS_RESET (status %#x)",
						    r->name, *status, st);
				if (*status != r->want)
					inmate_fail(EXIT_IOSTATUS, "hostile: badreq %s: status %u (%s), want %u (%s)",
						    r->name, *status, st_name(*status), r->want, st_name(r->want));
				printk("hostile: badreq %s -> status %u (%s)\n", r->name, *status, st_name(*status));
				ok++;
				break;
			}
			st = virtio_get_status(dev);
			if (st & VIRTIO_S_NEEDS_RESET) {
				if (hostile_strict)
					inmate_fail(EXIT_BADRESET, "hostile: badreq %s: a well-formed chain put the device into NEEDS_RESET (status %#x); want status %u (%s)",
						    r->name, st, r->want, st_name(r->want));
				printk("hostile: badreq %s -> needs reset (status %#x; accepted without blk.strict=1, which wants %s)\n",
				       r->name, st, st_name(r->want));
				resets++;
				disk0_reset("badreq", false);
				break;
			}
			if (rdtsc() - t0 > limit)
				inmate_fail(EXIT_TIMEOUT, "hostile: badreq %s: neither completed nor NEEDS_RESET after %lu ms (status %#x, used idx %u)",
					    r->name, hostile_us / 1000, st, vq->used->idx);
			cpu_relax();
		}
	}
	printk("hostile: badreq -> %u error statuses, %u reset%s\n", ok, resets, resets == 1 ? "" : "s");
	disk1_check(hostile_start + 4 * n, 4, "after badreq");
	rw_check(hostile_start + 8 * n);
	if (indirect_next) {	/* the next case needs INDIRECT_DESC negotiated */
		disk0_reset("badreq", true);
		rw_check(hostile_start + 8 * n);
	}
	printk("hostile: badreq: disk 0 still works\n");
}

static void mode_hostile(u64 want)
{
	char list[160] = "all", *p;
	int cases[32];
	unsigned int ncases = 0, nmal = 0, nbad = 0;
	u64 sectors;

	hostile_want = want;
	hostile_us = cmdline_get_u64("blk.hostile_ms", 2000) * 1000;
	hostile_strict = cmdline_get_u64("blk.strict", 0) != 0;
	hostile_start = cmdline_get_u64("blk.start", 0);
	cmdline_get("blk.hostile", list, sizeof(list));
	p = list;
	while (*p) {
		char *e = p;
		int c = -1;

		while (*e && *e != ',')
			e++;
		if (*e)
			*e++ = '\0';
		if (!strcmp(p, "all")) {
			for (int k = 0; k < H_N && ncases < ARRAY_SIZE(cases); k++)
				cases[ncases++] = k;
			p = e;
			continue;
		}
		for (int k = 0; k < H_N; k++)
			if (!strcmp(p, hostile_names[k]))
				c = k;
		if (c < 0)
			inmate_fail(EXIT_CONFIG, "unknown blk.hostile case '%s' (all, loop, selfloop, oob, indirect-self, next-oob, huge, avail-jump, badreq; comma-separated)", p);
		if (ncases >= ARRAY_SIZE(cases))
			inmate_fail(EXIT_CONFIG, "blk.hostile: more than %u cases", (unsigned int)ARRAY_SIZE(cases));
		cases[ncases++] = c;
		p = e;
	}
	if (!ncases)
		inmate_fail(EXIT_CONFIG, "blk.hostile: no case given");
	printk("hostile: %u cases, %s, NEEDS_RESET wait %lu ms\n", ncases,
	       hostile_strict ? "strict" : "not strict (blk.strict=1: rtvisor's expectations)", hostile_us / 1000);

	itab = dma_alloc(sizeof(*itab), 16);
	disk_init(&disks[1], 1, want, 0x40, 256);
	disk0_init(cases[0] == H_INDIRECT_SELF);
	sectors = 8 * (u64)ncases + 32;
	if (hostile_start + sectors > disks[0].capacity || hostile_start + sectors > disks[1].capacity)
		inmate_fail(EXIT_CONFIG, "hostile: needs %lu sectors from %lu on both disks (capacities %lu, %lu)",
			    sectors, hostile_start, disks[0].capacity, disks[1].capacity);

	/* Both disks answer before anything hostile happens. */
	rw_check(hostile_start);
	disk1_check(hostile_start, 4, "before the first case");

	for (unsigned int i = 0; i < ncases; i++) {
		bool indirect_next = i + 1 < ncases && cases[i + 1] == H_INDIRECT_SELF;

		printk("hostile: case %u of %u: %s\n", i + 1, ncases, hostile_names[cases[i]]);
		if (cases[i] == H_BADREQ) {
			hostile_badreq(i + 1, indirect_next);
			nbad++;
		} else {
			hostile_malformed(cases[i], i + 1, indirect_next);
			nmal++;
		}
	}

	/* Disk 1 after all that: a normal write + flush + read-back. */
	select_disk(&disks[1]);
	walk(hostile_start, 32, true, false, true);
	flush();
	walk(hostile_start, 32, false, false, true);
	if (virtio_get_status(dev) & (VIRTIO_S_NEEDS_RESET | VIRTIO_S_FAILED))
		inmate_fail(EXIT_BADRESET, "hostile: disk 1 status %#x at the end", virtio_get_status(dev));
	if (nbad)
		printk("INMATE virtio-blk OK: hostile: %u cases, device reset each time, other disk unaffected; badreq: error statuses%s\n",
		       nmal, hostile_strict ? " without reset" : "");
	else
		printk("INMATE virtio-blk OK: hostile: %u cases, device reset each time, other disk unaffected\n", nmal);
}

void inmate_main(void)
{
	char mode[16] = "write";
	u64 start = cmdline_get_u64("blk.start", 0), sectors = cmdline_get_u64("blk.sectors", 64);
	u64 want = (1ULL << VIRTIO_BLK_F_SIZE_MAX) | (1ULL << VIRTIO_BLK_F_SEG_MAX) |
		   (1ULL << VIRTIO_BLK_F_RO) | (1ULL << VIRTIO_BLK_F_BLK_SIZE) |
		   (1ULL << VIRTIO_BLK_F_FLUSH) | (1ULL << VIRTIO_BLK_F_DISCARD) |
		   (1ULL << VIRTIO_BLK_F_WRITE_ZEROES);
	bool calibrated;
	u32 fnv;

	cmdline_get("blk.mode", mode, sizeof(mode));
	seed = (u32)cmdline_get_u64("blk.seed", 1);
	timeout_us = cmdline_get_u64("blk.timeout_ms", 5000) * 1000;
	if (strcmp(mode, "write") && strcmp(mode, "verify") && strcmp(mode, "readonly") &&
	    strcmp(mode, "zeroes") && strcmp(mode, "bench") && strcmp(mode, "hostile") && strcmp(mode, "durable") && strcmp(mode, "steady"))
		inmate_fail(EXIT_CONFIG, "unknown blk.mode=%s (write, verify, readonly, zeroes, bench, hostile, durable, steady)", mode);
	if (!cmdline_get_u64("blk.flush", 1))
		want &= ~(1ULL << VIRTIO_BLK_F_FLUSH);
	calibrated = timer_init();
	printk("virtio-blk: mode %s, TSC %lu kHz%s\n", mode, tsc_khz, calibrated ? "" : " (assumed)");

	dma_pool_init(pool, sizeof(pool));
	hdr = dma_alloc(sizeof(*hdr), 16);
	status = dma_alloc(1, 1);
	range = dma_alloc(sizeof(*range), 16);
	idbuf = dma_alloc(20, 4);
	buf = dma_alloc(BIG_BUF + 4096, 4096);

	if (!strcmp(mode, "hostile")) {
		mode_hostile(want);
		return;
	}

	disk_init(&disks[0], 0, want, 0x40, 256);
	get_id();

	if (!strcmp(mode, "readonly")) {
		mode_readonly(start);
	} else if (!strcmp(mode, "zeroes")) {
		mode_zeroes(start, sectors);
	} else if (!strcmp(mode, "bench")) {
		mode_bench(start);
	} else if (!strcmp(mode, "steady")) {
		mode_steady(start, sectors);
	} else if (!strcmp(mode, "durable")) {
		check_range(start, sectors);
		for (u64 s = start; s < start + sectors; s++) {
			write_chunk(s, 1, 1, NULL);
			if (virtio_has(dev, VIRTIO_BLK_F_FLUSH))
				expect_ok(blk_request(VIRTIO_BLK_T_FLUSH, 0, NULL, 0), "flush", s, 1);
			printk("ACK %lu\n", s);
		}
		printk("INMATE virtio-blk OK: durable: %lu sectors acknowledged\n", sectors);
	} else if (!strcmp(mode, "verify")) {
		check_range(start, sectors);
		fnv = walk(start, sectors, false, false, false);
		printk("INMATE virtio-blk OK: verified %lu sectors at %lu checksum=%#010x\n", sectors, start, fnv);
	} else {
		check_range(start, sectors);
		fnv = walk(start, sectors, true, false, false);
		flush();
		walk(start, sectors, false, false, true);
		printk("INMATE virtio-blk OK: wrote %lu sectors at %lu checksum=%#010x\n", sectors, start, fnv);
	}
	if (dev->vq[0].indirect_used)
		printk("virtio-blk: %lu of %lu requests used indirect descriptors\n", vq->indirect_used,
		       vq->submitted);
	printk("virtio-blk: %lu requests, %lu notifies\n", vq->submitted, vq->notifies);
}
