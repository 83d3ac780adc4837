/*
 * latency - bare-metal timer latency, in the spirit of Jailhouse's apic-demo.
 *
 * The LAPIC timer fires every `latency.period_us` microseconds on an
 * absolute schedule (deadline_{n+1} = deadline_n + period, as cyclictest's
 * default absolute mode).  The interrupt handler reads the TSC first and
 * records how late it runs: now - deadline, in ns.  The timer is
 *   - TSC-deadline mode (IA32_TSC_DEADLINE = the deadline itself) when
 *     CPUID.1:ECX[24] says so, else
 *   - one-shot mode: the initial count is (deadline - TSC just before the
 *     write) converted with a TSC-calibrated LAPIC timer rate (divide by 1).
 * `latency.mode=oneshot` forces one-shot mode (`tsc-deadline`: fail if absent).
 *
 * Between interrupts the CPU sleeps in `sti; hlt` (`latency.idle=poll`:
 * spins in a `pause` loop with interrupts on instead).
 *
 * Parameters: latency.period_us= (1000, 10..1000000), latency.samples=
 * (10000), latency.warmup= (100, interrupts not recorded), latency.mode=
 * auto|tsc-deadline|oneshot, latency.idle=hlt|poll.
 *
 * Output (machine-readable, one line each):
 *   LAT_START mode=… period_us=… samples=… warmup=… idle=… tsc_khz=… apic_khz=…
 *             pit_channel=2|0 cal_windows=…   (apic_khz=0 in TSC-deadline mode)
 *   LAT_BUCKET <lower_ns> <upper_ns> <count>   every non-empty bucket, ascending;
 *       a sample lies in [lower, upper).  Samples that arrived *early*
 *       (possible in one-shot mode only) share one bucket [min_ns, 0).
 *       Samples of 1 s or more are in the overflow bucket [1000000000, max_ns+1).
 *   LAT_SUMMARY n=… min_ns=… avg_ns=… max_ns=… period_us=… mode=… overruns=… early=…
 *             warmup=… idle=… tsc_khz=… elapsed_ms=…
 * then PASS.  min/avg/max are exact (min may be negative, see above).
 * overruns counts interrupts that came after the *next* deadline had
 * already passed; the schedule then restarts at now + period (those missed
 * periods are not samples).
 *
 * Histogram: 1 us buckets below 1 ms, 10 us below 10 ms, 100 us below
 * 100 ms, 1 ms below 1 s, then overflow: 3701 u32 counters.
 *
 * The handler is short on purpose: on this project's nested KVM every guest
 * ring-0 instruction is emulated (~2.5 us each), so each instruction in it
 * is paid for at every sample.  It is a GCC `interrupt` function that calls
 * nothing, so it saves only the registers it uses (6 pushes), then reads the
 * TSC; about 45 instructions on the common path.  Those pushes and the
 * interrupt delivery itself are part of the measured latency, as they are in
 * any interrupt-latency test.
 *
 * Accuracy: in TSC-deadline mode the deadline and the reading are the same
 * clock, so the only error is the TSC rate used to convert cycles to ns
 * (calibrated against the PIT, see calibrate_tsc: within 1 %).  In one-shot
 * mode the LAPIC/TSC rate ratio (median of five 20 ms windows) and the time
 * between the rdtsc and the initial-count write add to it.
 */
#include "inmate.h"

const char inmate_name[] = "latency";

#define TIMER_VECTOR		0x40
#define SPURIOUS_VECTOR		0xff
#define LAPIC_EOI		0x0b0
#define LAPIC_LVT_TIMER		0x320
#define LAPIC_TIMER_ICR		0x380
#define LAPIC_TIMER_CCR		0x390
#define LAPIC_TIMER_DCR		0x3e0
#define LVT_MASKED		(1u << 16)
#define LVT_TSC_DEADLINE	(2u << 17)
#define MSR_TSC_DEADLINE	0x6e0

#define NS_PER_S		1000000000ULL
/* Bucket layout: [start index, bucket width] per decade from 1 us to 1 s. */
#define B_US			1000		/* 0 .. 1 ms, 1 us wide */
#define B_10US			(B_US + 900)	/* 1 .. 10 ms, 10 us wide */
#define B_100US			(B_10US + 900)	/* 10 .. 100 ms, 100 us wide */
#define B_1MS			(B_100US + 900)	/* 100 ms .. 1 s, 1 ms wide */
#define B_OVERFLOW		B_1MS		/* >= 1 s */
#define NBUCKETS		(B_OVERFLOW + 1)

/* ---- state shared with the interrupt handler ---------------------------- */
static u32 hist[NBUCKETS];
static volatile u64 deadline;		/* TSC of the pending deadline */
static u64 period_cyc;
static u64 tsc_khz_isr;			/* copy of tsc_khz for the ns conversion */
static u64 apic_per_tsc_q32;		/* LAPIC timer ticks per TSC cycle, 32.32 */
static u32 remaining_warmup;
static u32 remaining;			/* samples still to record */
static volatile bool done;
static bool oneshot;
static u64 sum_ns, max_ns;		/* of the samples at or after their deadline */
static u64 min_ns = ~0ULL;
static u64 early, early_sum_ns;		/* samples before their deadline (one-shot only), */
static u64 early_max_ns;		/* in ns before it; max = the earliest one */
static u64 overruns;

static inline void wrmsr(u32 msr, u64 v)
{
	__asm__ volatile("wrmsr" :: "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)) : "memory");
}

/* Arms the timer for `when` (a TSC value). */
static inline void timer_arm(u64 when)
{
	if (oneshot) {
		u64 now = rdtsc(), ticks = 1;

		if (when > now)
			ticks = (u64)(((unsigned __int128)(when - now) * apic_per_tsc_q32) >> 32);
		lapic_write(LAPIC_TIMER_ICR, ticks ? (u32)ticks : 1);
	} else {
		wrmsr(MSR_TSC_DEADLINE, when);
	}
}

struct interrupt_frame;
__attribute__((interrupt)) void latency_timer_isr(struct interrupt_frame *frame);
__attribute__((interrupt)) void latency_timer_isr(struct interrupt_frame *frame)
{
	u64 now = rdtsc(), dl = deadline, next;

	(void)frame;
	if (remaining_warmup) {
		remaining_warmup--;
	} else {
		if (now >= dl) {
			u64 ns = (now - dl) * 1000000 / tsc_khz_isr;
			u32 i;

			if (ns < 1000000)
				i = ns / 1000;
			else if (ns < 10000000)
				i = B_US + (ns - 1000000) / 10000;
			else if (ns < 100000000)
				i = B_10US + (ns - 10000000) / 100000;
			else if (ns < NS_PER_S)
				i = B_100US + (ns - 100000000) / 1000000;
			else
				i = B_OVERFLOW;
			hist[i]++;
			sum_ns += ns;
			if (ns < min_ns)
				min_ns = ns;
			if (ns > max_ns)
				max_ns = ns;
		} else {
			u64 ns = (dl - now) * 1000000 / tsc_khz_isr;

			early++;
			early_sum_ns += ns;
			if (ns > early_max_ns)
				early_max_ns = ns;
		}
		if (--remaining == 0) {
			done = true;
			goto eoi;
		}
	}
	next = dl + period_cyc;
	if (next <= now) {		/* missed a whole period: restart the schedule */
		overruns++;
		next = now + period_cyc;
	}
	deadline = next;
	timer_arm(next);
eoi:
	lapic_write(LAPIC_EOI, 0);
}

__attribute__((interrupt)) void latency_spurious_isr(struct interrupt_frame *frame);
__attribute__((interrupt)) void latency_spurious_isr(struct interrupt_frame *frame)
{
	(void)frame;
}

/* ---- IDT: the runtime's exception gates plus the timer and spurious vectors */
static void idt_setup(void)
{
	idt_set_gate(TIMER_VECTOR, latency_timer_isr);
	idt_set_gate(SPURIOUS_VECTOR, latency_spurious_isr);
}

/*
 * ---- calibration that survives host preemption ------------------------------
 *
 * The library's timer_init() (median of three 10 ms PIT windows, each timed
 * from programming to terminal count) is thrown off when the vCPU thread is
 * preempted at the wrong moment: under host load it was seen to report a
 * 5.9 GHz TSC on a 2.5 GHz host.  Here a window is a series of PIT
 * read-backs of a free-running counter, each dated by the midpoint of the
 * rdtsc pair around it; the ticks between two reads are summed modulo 2^16,
 * so a preemption between reads is harmless unless the counter wrapped
 * during it (>= 55 ms).  A window is dropped if one gap shows more than
 * 30000 ticks (too close to a wrap to trust); a wrap that hid (few ticks
 * counted across >= 55 ms), or a preemption inside the first or last read,
 * gives a window that disagrees with the others.  So windows are collected
 * until three of them agree within 1 %, and the middle one of those is used.
 */
#define PIT_HZ		1193182
#define CAL_TICKS	23864		/* one window: 20 ms of PIT ticks */
#define CAL_GAP_TICKS	30000		/* a gap this long may hide a wrap: drop the window */
#define CAL_KEEP	16
#define CAL_TRIES	60
#define APIC_CAL_WINDOWS 5

static u16 pit_data_port;		/* 0x42 (channel 2, gated by port 0x61) or 0x40 */

static u16 pit_sample(u64 *mid)
{
	u64 before = rdtsc(), after;
	u16 v;

	outb(0x43, pit_data_port == 0x42 ? 0x80 : 0x00);	/* latch channel 2 / 0 */
	v = inb(pit_data_port);
	v |= (u16)inb(pit_data_port) << 8;
	after = rdtsc();
	*mid = before + (after - before) / 2;
	return v;
}

static bool pit_counting(void)
{
	u64 t;
	u16 a = pit_sample(&t);

	for (int i = 0; i < 1000; i++)
		if (pit_sample(&t) != a)
			return true;
	return false;
}

/* Free-running 16-bit down-counter: channel 2 if port 0x61 gates it (no IRQ), else channel 0. */
static bool pit_start(void)
{
	outb(0x61, (inb(0x61) & ~0x02) | 0x01);	/* gate 2 on, speaker off */
	outb(0x43, 0xb4);			/* channel 2, lo/hi, mode 2 (rate generator) */
	outb(0x42, 0);
	outb(0x42, 0);				/* count 65536 */
	pit_data_port = 0x42;
	if (pit_counting())
		return true;
	/* Nothing behind port 0x61: channel 0, as lib/lapic.c does (its IRQ 0 is masked below). */
	outb(0x43, 0x34);			/* channel 0, lo/hi, mode 2 */
	outb(0x40, 0);
	outb(0x40, 0);
	pit_data_port = 0x40;
	return pit_counting();
}

/* One window: TSC cycles per CAL_TICKS PIT ticks, 0 if a gap was too long to trust. */
static u64 pit_window(void)
{
	u64 t0, t, ticks = 0;
	u16 prev, v;

	prev = pit_sample(&t0);
	do {
		u64 d;

		v = pit_sample(&t);
		d = (u16)(prev - v);
		if (d > CAL_GAP_TICKS)
			return 0;
		ticks += d;
		prev = v;
		if (t - t0 > 100000000000ULL)	/* ~20+ s: not counting at the right rate */
			return 0;
	} while (ticks < CAL_TICKS);
	return (t - t0) * CAL_TICKS / ticks;
}

/* Sets the library's tsc_khz (udelay, tsc_to_us); false if the PIT is unusable. */
static bool calibrate_tsc(u32 *windows)
{
	u64 good[CAL_KEEP];
	int n = 0;

	*windows = 0;
	if (!pit_start())
		return false;
	while (*windows < CAL_TRIES) {
		u64 c = pit_window();

		(*windows)++;
		if (!c)
			continue;
		if (n == CAL_KEEP)
			n--;				/* replace the largest */
		good[n++] = c;
		sort_u64(good, n);
		/* three neighbours (sorted) within 1 % of the middle one */
		for (int i = 0; i + 2 < n; i++)
			if ((good[i + 2] - good[i]) * 100 <= good[i + 1]) {
				/* cycles per 20 ms worth of ticks -> kHz */
				tsc_khz = good[i + 1] * PIT_HZ / CAL_TICKS / 1000;
				return tsc_khz >= 1000;
			}
	}
	return false;
}

/* LAPIC timer reading with its TSC date; keeps the tightest of 5 tries (preemption widens one). */
static u32 apic_sample(u64 *mid)
{
	u64 best = ~0ULL;
	u32 v = 0;

	for (int i = 0; i < 5; i++) {
		u64 before = rdtsc();
		u32 c = lapic_read(LAPIC_TIMER_CCR);
		u64 after = rdtsc();

		if (after - before < best) {
			best = after - before;
			v = c;
			*mid = before + (after - before) / 2;
		}
	}
	return v;
}

/*
 * LAPIC timer ticks (divide by 1) per TSC cycle, 32.32 fixed point; 0 if it does
 * not count.  Median of five 20 ms windows (the LAPIC count is 32 bits: no wrap).
 */
static u64 calibrate_apic_timer(u64 *apic_khz)
{
	u64 ratio[APIC_CAL_WINDOWS];

	lapic_write(LAPIC_TIMER_DCR, 0xb);			/* divide by 1 */
	lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | TIMER_VECTOR);	/* one-shot, masked */
	for (int i = 0; i < APIC_CAL_WINDOWS; i++) {
		u64 t0 = 0, t1 = 0;
		u32 c0, c1;

		lapic_write(LAPIC_TIMER_ICR, 0xffffffff);
		c0 = apic_sample(&t0);
		udelay(20000);
		c1 = apic_sample(&t1);
		if (c1 == 0 || c1 >= c0 || t1 <= t0)
			return 0;
		ratio[i] = ((u64)(c0 - c1) << 32) / (t1 - t0);
	}
	lapic_write(LAPIC_TIMER_ICR, 0);
	sort_u64(ratio, APIC_CAL_WINDOWS);
	*apic_khz = (ratio[APIC_CAL_WINDOWS / 2] * tsc_khz) >> 32;
	return ratio[APIC_CAL_WINDOWS / 2];
}

static void get_word(const char *key, char *buf, size_t size, const char *dflt)
{
	if (!cmdline_get(key, buf, size)) {
		size_t n = strlen(dflt);

		memcpy(buf, dflt, n + 1 <= size ? n + 1 : size);
		buf[size - 1] = '\0';
	}
}

/*
 * The bucket lines are formatted into a page and written with `rep outsb`:
 * printk costs two port exits (LSR, THR) and ~80 emulated instructions per
 * byte, which made a 40 KB histogram take 10-20 s on the emulating KVM.  KVM
 * still exits once per byte of a `rep outsb` (measured: 1465 exits on port
 * 0x3f8 for 1465 bytes), so this halves the exits and drops most of the
 * instructions.  THRE is checked once per page, so it relies on a UART that
 * transmits synchronously, as rtvisor's and QEMU's do.
 */
static char out_buf[4096] __attribute__((aligned(4096)));
static u32 out_len;

static void out_flush(void)
{
	const char *p = out_buf;
	u64 n = out_len;

	for (int i = 0; i < 10000 && !(inb(COM1_PORT + 5) & 0x20); i++)
		cpu_relax();
	__asm__ volatile("rep outsb" : "+S"(p), "+c"(n) : "d"((u16)COM1_PORT) : "memory");
	out_len = 0;
}

/* Every emulated instruction counts: literals go in with memcpy (one rep movsb),
 * digits are written backwards into a scratch buffer and copied the same way. */
static void out_lit(const char *s, u32 n)
{
	memcpy(out_buf + out_len, s, n);
	out_len += n;
}
#define OUT_LIT(s) out_lit(s, sizeof(s) - 1)

static void out_u64(u64 v)
{
	char d[20], *p = d + sizeof(d);

	do {
		*--p = '0' + v % 10;
		v /= 10;
	} while (v);
	out_lit(p, d + sizeof(d) - p);
}

/* One "LAT_BUCKET lo hi count" line (at most 76 bytes). */
static void out_bucket(bool negative_lo, u64 lo, u64 hi, u64 count)
{
	if (out_len > sizeof(out_buf) - 80)
		out_flush();
	OUT_LIT("LAT_BUCKET ");
	if (negative_lo)
		OUT_LIT("-");
	out_u64(lo);
	OUT_LIT(" ");
	out_u64(hi);
	OUT_LIT(" ");
	out_u64(count);
	OUT_LIT("\n");
}

/* Lower and upper bound (ns) of bucket i; upper is exclusive. */
static void bucket_bounds(u32 i, u64 *lo, u64 *hi)
{
	if (i < B_US) {
		*lo = i * 1000ULL; *hi = *lo + 1000;
	} else if (i < B_10US) {
		*lo = 1000000 + (i - B_US) * 10000ULL; *hi = *lo + 10000;
	} else if (i < B_100US) {
		*lo = 10000000 + (i - B_10US) * 100000ULL; *hi = *lo + 100000;
	} else if (i < B_1MS) {
		*lo = 100000000 + (i - B_100US) * 1000000ULL; *hi = *lo + 1000000;
	} else {
		*lo = NS_PER_S; *hi = max_ns + 1;
	}
}

void inmate_main(void)
{
	u64 period_us = cmdline_get_u64("latency.period_us", 1000);
	u64 samples = cmdline_get_u64("latency.samples", 10000);
	u64 warmup = cmdline_get_u64("latency.warmup", 100);
	char mode[16], idle[8];
	u32 a, b, c, d;
	u64 apic_khz = 0, t_start, t_end;
	u32 cal_windows;
	bool has_deadline, poll;
	const char *mode_name;

	get_word("latency.mode", mode, sizeof(mode), "auto");
	get_word("latency.idle", idle, sizeof(idle), "hlt");
	if (period_us < 10 || period_us > 1000000)
		inmate_fail(EXIT_FAIL, "latency.period_us=%lu: must be 10..1000000", period_us);
	if (samples < 1 || samples > 0xffffffffULL)
		inmate_fail(EXIT_FAIL, "latency.samples=%lu: must be 1..4294967295", samples);
	if (warmup > 0xffffffffULL)
		inmate_fail(EXIT_FAIL, "latency.warmup=%lu: too large", warmup);
	if (strcmp(idle, "hlt") && strcmp(idle, "poll"))
		inmate_fail(EXIT_FAIL, "latency.idle=%s: must be hlt or poll", idle);
	poll = !strcmp(idle, "poll");

	cpuid(1, 0, &a, &b, &c, &d);
	has_deadline = c & (1u << 24);
	if (!strcmp(mode, "auto"))
		oneshot = !has_deadline;
	else if (!strcmp(mode, "oneshot"))
		oneshot = true;
	else if (!strcmp(mode, "tsc-deadline")) {
		if (!has_deadline)
			inmate_fail(EXIT_FAIL, "latency.mode=tsc-deadline but CPUID.1:ECX[24] is clear");
		oneshot = false;
	} else
		inmate_fail(EXIT_FAIL, "latency.mode=%s: must be auto, tsc-deadline or oneshot", mode);
	if (!(d & (1u << 4)))
		inmate_fail(EXIT_FAIL, "no TSC (CPUID.1:EDX[4] clear)");
	mode_name = oneshot ? "oneshot" : "tsc-deadline";

	if (!calibrate_tsc(&cal_windows))
		inmate_fail(EXIT_FAIL, "cannot calibrate the TSC against the PIT (%u windows, no three agree)",
			    cal_windows);
	tsc_khz_isr = tsc_khz;
	period_cyc = period_us * tsc_khz / 1000;

	/* Only the LAPIC timer may interrupt: mask both 8259s (a BIOS may have left its
	 * tick running on IRQ 0, at a vector that is an exception here) and stop PIT
	 * channel 0 if calibration used it (mode 0 with no count loaded waits). */
	outb(0x21, 0xff);
	outb(0xa1, 0xff);
	if (pit_data_port == 0x40)
		outb(0x43, 0x30);
	idt_setup();
	lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x100 | SPURIOUS_VECTOR);
	if (oneshot) {
		apic_per_tsc_q32 = calibrate_apic_timer(&apic_khz);
		if (!apic_per_tsc_q32)
			inmate_fail(EXIT_FAIL, "the LAPIC timer does not count");
		lapic_write(LAPIC_LVT_TIMER, TIMER_VECTOR);		/* one-shot */
	} else {
		lapic_write(LAPIC_LVT_TIMER, LVT_TSC_DEADLINE | TIMER_VECTOR);
	}
	/* Read back: the LVT write must take effect before the first IA32_TSC_DEADLINE
	 * write (SDM 10.5.4.1); an uncached read completes only after it. */
	(void)lapic_read(LAPIC_LVT_TIMER);

	remaining_warmup = (u32)warmup;
	remaining = (u32)samples;
	printk("LAT_START mode=%s period_us=%lu samples=%lu warmup=%lu idle=%s tsc_khz=%lu apic_khz=%lu"
	       " pit_channel=%u cal_windows=%u\n", mode_name, period_us, samples, warmup, idle, tsc_khz,
	       apic_khz, pit_data_port - 0x40, cal_windows);

	t_start = rdtsc();
	deadline = t_start + period_cyc;
	timer_arm(deadline);
	if (poll) {
		__asm__ volatile("sti" ::: "memory");
		while (!done)
			cpu_relax();
		__asm__ volatile("cli" ::: "memory");
	} else {
		/* sti's one-instruction shadow covers hlt: no wake-up is lost. */
		while (!done)
			__asm__ volatile("sti; hlt; cli" ::: "memory");
	}
	t_end = rdtsc();
	/* Stop the timer (the handler did not re-arm it; this is for certainty). */
	lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | TIMER_VECTOR);
	lapic_write(LAPIC_TIMER_ICR, 0);

	if (early)
		out_bucket(true, early_max_ns, 0, early);
	for (u32 i = 0; i < NBUCKETS; i++) {
		u64 lo, hi;

		if (!hist[i])
			continue;
		bucket_bounds(i, &lo, &hi);
		out_bucket(false, lo, hi, hist[i]);
	}
	out_flush();
	{
		/* Over all samples, an early one counting as its negative latency. */
		long long min = early ? -(long long)early_max_ns : (long long)min_ns;
		long long max = early < samples ? (long long)max_ns : -(long long)early_max_ns;
		long long avg = ((long long)sum_ns - (long long)early_sum_ns) / (long long)samples;

		printk("LAT_SUMMARY n=%lu min_ns=%lld avg_ns=%lld max_ns=%lld period_us=%lu mode=%s"
		       " overruns=%lu early=%lu warmup=%lu idle=%s tsc_khz=%lu elapsed_ms=%lu\n",
		       samples, min, avg, max, period_us, mode_name,
		       overruns, early, warmup, idle, tsc_khz, tsc_to_us(t_end - t_start) / 1000);
	}
}
