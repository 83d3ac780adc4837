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
	u64 t0, t1;

	outb(0x61, (inb(0x61) & ~0x02) | 0x01);	/* gate 2 on, speaker off */
	outb(0x43, 0xb0);			/* channel 2, lo/hi byte, mode 0 */
	outb(0x42, count & 0xff);
	outb(0x42, count >> 8);
	t0 = rdtsc();
	/* Mode 0: OUT2 is low while counting and goes high at terminal count. */
	if (inb(0x61) & 0x20)
		return false;			/* nothing behind port 0x61 */
	do {
		t1 = rdtsc();
		if (t1 - t0 > 1000000000ULL)	/* ~0.3-1 s: give up */
			return false;
	} while (!(inb(0x61) & 0x20));
	*cycles = t1 - t0;
	return true;
}

/* Channel 0 read back through the latch command: needs only ports 0x40/0x43. */
static bool calibrate_ch0(u64 *cycles)
{
	const u32 count = PIT_HZ * CALIB_MS / 1000;
	u32 elapsed;
	u64 t0, t1;

	outb(0x43, 0x30);			/* channel 0, lo/hi byte, mode 0 */
	outb(0x40, 0xff);
	outb(0x40, 0xff);
	t0 = rdtsc();
	do {
		t1 = rdtsc();
		if (t1 - t0 > 100000000ULL)	/* ~30-100 ms: it is not counting */
			return false;
		outb(0x43, 0x00);		/* latch channel 0 */
		elapsed = inb(0x40);
		elapsed = 0xffff - (elapsed | (u32)inb(0x40) << 8);
	} while (elapsed < count);
	*cycles = t1 - t0;
	return true;
}

bool timer_init(void)
{
	u64 cycles;

	if (!calibrate_ch2(&cycles) && !calibrate_ch0(&cycles))
		return false;
	if (cycles < CALIB_MS * 1000ULL)	/* < 1 MHz: nonsense */
		return false;
	tsc_khz = cycles / CALIB_MS;
	return true;
}

void udelay(u64 us)
{
	u64 start = rdtsc(), cycles = us * tsc_khz / 1000;

	while (rdtsc() - start < cycles)
		cpu_relax();
}
