/*
 * memwriter - writes guest memory at a fixed rate and checks all of it, so a
 * live migration test can see that no page was lost or stale on the way.
 *
 * A window of memw.mib MiB (4) from 4 MiB up is written one page per step:
 * step k marks page p(k) = (k * 7919) mod N with a pattern of (k, p, word);
 * gen[p] records k.  A running checksum (XOR over pages of hash(p, gen[p]))
 * is updated with every write.  Every memw.verify= steps (4096) the whole
 * window is read back and compared with the pattern of the step that last
 * wrote each page, computed from the step count alone (a register: memory a
 * migration left stale cannot agree with it), and gen[] and the checksum are
 * checked too; a mismatch fails the inmate (exit code 2).
 * memw.pages_per_ms= (2) sets the rate (TSC-paced), memw.steps= (0: for
 * ever) the end (then PASS).
 *
 * Output: MEMW_START pages=N rate=R, then after each verification
 *   MEMW step=K ok checksum=0x...
 * The count goes on across a migration: a test reads the steps before and
 * after the move as one sequence.
 */
#include "inmate.h"

const char inmate_name[] = "memwriter";

#define WINDOW_BASE	(4UL << 20)
#define MAX_PAGES	(64u << 8)	/* 64 MiB */

static u32 gen[MAX_PAGES];
static u64 checksum;

static u32 fmix32(u32 h)
{
	h ^= h >> 16; h *= 0x85ebca6b; h ^= h >> 13; h *= 0xc2b2ae35; h ^= h >> 16;
	return h;
}

static u64 page_hash(u32 p, u32 k) { return ((u64)fmix32(p * 0x9E3779B1u ^ k) << 32) | fmix32(k * 0x85EBCA77u ^ p); }

/* Eight words a page, one every 512 bytes: on the emulating development KVM every guest
 * instruction costs microseconds, so a page is marked, not filled; a page lost or stale in a
 * migration still shows in all eight. */
#define WORDS		8
#define STRIDE		128	/* u32s between two marked words */

static void fill(u32 p, u32 k)
{
	volatile u32 *w = (volatile u32 *)(WINDOW_BASE + (u64)p * 4096);
	for (u32 i = 0; i < WORDS; i++)
		w[i * STRIDE] = fmix32(k ^ (p << 12) ^ i);
}

/* The inverse of 7919 modulo npages (a power of two; 7919 is odd), by Newton's iteration. */
static u64 inverse_7919(u32 npages)
{
	u64 x = 7919;	/* correct to 3 bits; each step doubles them */
	for (int i = 0; i < 6; i++)
		x *= 2 - 7919 * x;
	return x & (npages - 1);
}

/* Which step last wrote page p by step `step`: the largest j <= step with j * 7919 = p
 * (mod npages), 0 if none. Computed from the step count alone (a register), never from memory
 * a migration could have left stale: a page that did not arrive, or arrived old, fails. */
static u32 expected_generation(u32 p, u64 step, u32 npages, u64 inv)
{
	u64 r = (p * inv) & (npages - 1);
	u64 back = (step - r) & (npages - 1);
	return step >= back && step - back >= 1 ? (u32)(step - back) : 0;
}

static void verify(u32 npages, u64 step, u64 inv)
{
	u64 sum = 0;
	for (u32 p = 0; p < npages; p++) {
		volatile u32 *w = (volatile u32 *)(WINDOW_BASE + (u64)p * 4096);
		u32 k = expected_generation(p, step, npages, inv);
		if (gen[p] != k)
			inmate_fail(EXIT_FAIL, "step %lu: page %u was last written at step %u, its record says %u", step, p, k, gen[p]);
		for (u32 i = 0; i < WORDS; i++) {
			u32 want = k ? fmix32(k ^ (p << 12) ^ i) : 0;
			if (w[i * STRIDE] != want)
				inmate_fail(EXIT_FAIL, "step %lu: page %u word %u is %#x, generation %u wants %#x", step, p, i * STRIDE, w[i * STRIDE], k, want);
		}
		sum ^= page_hash(p, k);
	}
	if (sum != checksum)
		inmate_fail(EXIT_FAIL, "step %lu: checksum %#lx, running checksum %#lx", step, sum, checksum);
}

void inmate_main(void)
{
	u64 mib = cmdline_get_u64("memw.mib", 4);
	u64 rate = cmdline_get_u64("memw.pages_per_ms", 2);
	u64 every = cmdline_get_u64("memw.verify", 1024);
	u64 steps = cmdline_get_u64("memw.steps", 0);
	u32 npages;
	u64 t0, per_page, inv;

	if (mib < 1 || mib > 64)
		inmate_fail(EXIT_FAIL, "memw.mib=%lu outside 1..64", mib);
	npages = (u32)(mib << 8);
	if (mib & (mib - 1))
		inmate_fail(EXIT_FAIL, "memw.mib=%lu must be a power of two", mib);
	inv = inverse_7919(npages);
	if (!every)
		every = 1024;
	if (!timer_init())
		printk("memwriter: PIT channel 2 unusable, assuming a %lu kHz TSC\n", tsc_khz);
	per_page = rate ? tsc_khz / rate : 0;
	/* The window starts zeroed (fresh guest RAM): generation 0 everywhere. */
	for (u32 p = 0; p < npages; p++)
		checksum ^= page_hash(p, 0);
	printk("MEMW_START pages=%u rate=%lu\n", npages, rate);
	t0 = rdtsc();
	for (u64 k = 1; !steps || k <= steps; k++) {
		u32 p = (u32)((k * 7919) % npages);
		checksum ^= page_hash(p, gen[p]);
		fill(p, (u32)k);
		gen[p] = (u32)k;
		checksum ^= page_hash(p, (u32)k);
		if (k % every == 0) {
			verify(npages, k, inv);
			printk("MEMW step=%lu ok checksum=%#lx\n", k, checksum);
		}
		/* Paced by the TSC: step k is due at t0 + k * per_page. */
		while (per_page && rdtsc() - t0 < k * per_page)
			cpu_relax();
	}
}
