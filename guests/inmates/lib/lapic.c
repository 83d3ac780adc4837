/*
 * lapic.c - xAPIC IPIs and a TSC-based delay calibrated against the PIT.
 *
 * Calibration polls the PIT (channel 2 through port 0x61, else channel 0
 * read back with the latch command), so it needs no interrupt and works
 * with interrupts off, with KVM's in-kernel PIT as well as QEMU's.  If there
 * is no PIT we keep an assumed TSC rate, so delays stay bounded, not hang.
 */
#include "inmate.h"

#define ICR_BUSY	(1u << 12)	/* delivery status */
#define PIT_HZ		1193182
#define CALIB_MS	10

u64 tsc_khz = 2000000;	/* assumed 2 GHz until timer_init() succeeds */

void lapic_enable(void)
{
	/* Software-enable, spurious vector 0xff (never delivered: IF stays 0). */
	lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x100 | 0xff);
}

bool lapic_send_ipi(u32 apic_id, u32 icr_lo)
{
	lapic_write(LAPIC_ICR_HI, apic_id << 24);
	lapic_write(LAPIC_ICR_LO, icr_lo);
	/* Each read may be an exit: bounded, and KVM reports idle at once. */
	for (int i = 0; i < 1000; i++) {
		if (!(lapic_read(LAPIC_ICR_LO) & ICR_BUSY))
			return true;
		cpu_relax();
	}
	return false;
}

/* Channel 2: gate and OUT2 on port 0x61 (PC speaker port, not on microvm). */
static bool calibrate_ch2(u64 *cycles)
{
	const u32 count = PIT_HZ * CALIB_MS / 1000;
	u64 t0, t1, before;

	outb(0x61, (inb(0x61) & ~0x02) | 0x01);	/* gate 2 on, speaker off */
	outb(0x43, 0xb0);			/* channel 2, lo/hi byte, mode 0 */
	outb(0x42, count & 0xff);
	before = rdtsc();
	outb(0x42, count >> 8);			/* counting starts here */
	/* Port accesses may be slow exits: date events at the access midpoint. */
	t0 = before + (rdtsc() - before) / 2;
	/* Mode 0: OUT2 is low while counting and goes high at terminal count. */
	if (inb(0x61) & 0x20)
		return false;			/* nothing behind port 0x61 */
	do {
		before = rdtsc();
		if (before - t0 > 1000000000ULL)	/* ~0.3-1 s: give up */
			return false;
	} while (!(inb(0x61) & 0x20));
	t1 = before + (rdtsc() - before) / 2;
	*cycles = t1 - t0;
	return true;
}

/* Channel 0 read back with the latch command: needs only ports 0x40/0x43. */
static u32 pit_ch0_read(u64 *tsc)
{
	u64 before = rdtsc();
	u32 v;

	outb(0x43, 0x00);			/* latch channel 0 */
	v = inb(0x40);
	v |= (u32)inb(0x40) << 8;
	/* Each access may be a slow exit: date the sample at the latch's midpoint. */
	*tsc = before + (rdtsc() - before) / 2;
	return v;
}

static bool calibrate_ch0(u64 *cycles)
{
	const u32 count = PIT_HZ * CALIB_MS / 1000;
	u32 start, now;
	u64 t0, t1;

	outb(0x43, 0x30);			/* channel 0, lo/hi byte, mode 0 */
	outb(0x40, 0xff);
	outb(0x40, 0xff);
	/* Time from the first sample, not from programming: no start-up latency. */
	start = pit_ch0_read(&t0);
	do {
		now = pit_ch0_read(&t1);
		if (t1 - t0 > 100000000ULL)	/* ~30-100 ms: it is not counting */
			return false;
	} while (now > start || start - now < count);
	/* Scale to exactly CALIB_MS worth of PIT ticks. */
	*cycles = (t1 - t0) * count / (start - now);
	return true;
}

bool timer_init(void)
{
	u64 c[3], t;

	/* Median of three: one run can be skewed when the host preempts us. */
	for (int i = 0; i < 3; i++)
		if (!calibrate_ch2(&c[i]) && !calibrate_ch0(&c[i]))
			return false;
	if (c[0] > c[1]) { t = c[0]; c[0] = c[1]; c[1] = t; }
	if (c[1] > c[2]) { t = c[1]; c[1] = c[2]; c[2] = t; }
	if (c[0] > c[1]) { t = c[0]; c[0] = c[1]; c[1] = t; }
	if (c[1] < CALIB_MS * 1000ULL)		/* < 1 MHz: nonsense */
		return false;
	tsc_khz = c[1] / CALIB_MS;
	return true;
}

void udelay(u64 us)
{
	u64 start = rdtsc(), cycles = us * tsc_khz / 1000;

	while (rdtsc() - start < cycles)
		cpu_relax();
}
