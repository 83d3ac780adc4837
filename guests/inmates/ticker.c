/*
 * ticker - a guest whose state runs on by itself: every CPU counts the
 * interrupts of its LAPIC timer (periodic mode) and reports its count, so a
 * snapshot test can see the count continue after a restore (no restart from
 * zero) and the timer keep firing (the count grows).
 *
 * The BSP starts every AP the MP table lists (INIT/SIPI/SIPI); each CPU arms
 * its own timer and sleeps in `sti; hlt`.  Every ticker.report= ticks (10) a
 * CPU prints
 *   TICK cpu=<apic id> n=<ticks>
 * After ticker.total= ticks on the BSP (0 = never) it prints TICKER_DONE and
 * powers off (PASS).  It also echoes console input lines as
 *   ECHO <line>
 * so a test can check the restored guest still takes input.
 *
 * ticker.period_us= (10000) is nominal: the initial count assumes KVM's
 * 1 GHz LAPIC bus clock (divide by 1); nothing here depends on its accuracy.
 */
#include "inmate.h"

const char inmate_name[] = "ticker";

#define TIMER_VECTOR		0x41
#define SPURIOUS_VECTOR		0xff
#define LAPIC_EOI		0x0b0
#define LAPIC_LVT_TIMER		0x320
#define LAPIC_TIMER_ICR		0x380
#define LAPIC_TIMER_DCR		0x3e0
#define LVT_PERIODIC		(1u << 17)
#define ICR_INIT		0x00004500
#define ICR_STARTUP		0x00004600

static volatile u64 ticks[MAX_CPUS];
static spinlock_t print_lock;
static u64 period_count, report;
static volatile u32 aps_up;

struct interrupt_frame;
__attribute__((interrupt)) void ticker_isr(struct interrupt_frame *frame);
__attribute__((interrupt)) void ticker_isr(struct interrupt_frame *frame)
{
	(void)frame;
	ticks[lapic_id() & (MAX_CPUS - 1)]++;
	lapic_write(LAPIC_EOI, 0);
}

__attribute__((interrupt)) void ticker_spurious(struct interrupt_frame *frame);
__attribute__((interrupt)) void ticker_spurious(struct interrupt_frame *frame)
{
	(void)frame;
}

static void arm_timer(void)
{
	lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x100 | SPURIOUS_VECTOR);
	lapic_write(LAPIC_TIMER_DCR, 0xb);		/* divide by 1 */
	lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | TIMER_VECTOR);
	lapic_write(LAPIC_TIMER_ICR, (u32)period_count);
}

/* Sleeps between ticks; prints every `report` ticks; the BSP also echoes input. */
static void run(bool bsp, u64 total)
{
	u32 cpu = lapic_id() & (MAX_CPUS - 1);
	u64 printed = 0;
	char line[64];
	size_t len = 0;

	for (;;) {
		__asm__ volatile("sti; hlt; cli" ::: "memory");
		u64 n = ticks[cpu];
		if (n - printed >= report) {
			printed = n - n % report;
			spin_lock(&print_lock);
			printk("TICK cpu=%u n=%lu\n", cpu, n);
			spin_unlock(&print_lock);
		}
		/* Console input (polled: the UART's interrupt stays off). */
		while (bsp && (inb(COM1_PORT + 5) & 1)) {
			char c = (char)inb(COM1_PORT);
			if (c == '\r' || c == '\n') {
				line[len] = 0;
				spin_lock(&print_lock);
				printk("ECHO %s\n", line);
				spin_unlock(&print_lock);
				len = 0;
			} else if (len < sizeof(line) - 1) {
				line[len++] = c;
			}
		}
		if (bsp && total && n >= total) {
			spin_lock(&print_lock);
			printk("TICKER_DONE n=%lu\n", n);
			spin_unlock(&print_lock);
			return;
		}
	}
}

static void ap_main(u32 slot)
{
	(void)slot;
	arm_timer();
	__atomic_fetch_add(&aps_up, 1, __ATOMIC_SEQ_CST);
	run(false, 0);
}

void inmate_main(void)
{
	u64 period_us = cmdline_get_u64("ticker.period_us", 10000);
	u64 total = cmdline_get_u64("ticker.total", 0);
	struct mp_info mp;
	u32 bsp, nr_aps = 0;

	report = cmdline_get_u64("ticker.report", 10);
	if (!report)
		report = 1;
	if (period_us < 100 || period_us > 4000000)
		inmate_fail(EXIT_FAIL, "ticker.period_us=%lu outside 100..4000000", period_us);
	period_count = period_us * 1000;

	/* Only LAPIC timers interrupt: mask both 8259s. */
	outb(0x21, 0xff);
	outb(0xa1, 0xff);
	idt_set_gate(TIMER_VECTOR, ticker_isr);
	idt_set_gate(SPURIOUS_VECTOR, ticker_spurious);

	bsp = lapic_id();
	if (!mptable_find(&mp)) {
		ap_trampoline_install();
		ap_c_entry = ap_main;
		lapic_enable();
		if (!timer_init())
			printk("ticker: PIT channel 2 unusable, assuming a %lu kHz TSC\n", tsc_khz);
		for (u32 i = 0; i < mp.nr_cpus; i++) {
			if (mp.apic_ids[i] == bsp)
				continue;
			nr_aps++;
			lapic_send_ipi(mp.apic_ids[i], ICR_INIT);
			udelay(10000);
			lapic_send_ipi(mp.apic_ids[i], ICR_STARTUP | (AP_TRAMPOLINE >> 12));
			udelay(200);
			lapic_send_ipi(mp.apic_ids[i], ICR_STARTUP | (AP_TRAMPOLINE >> 12));
		}
		for (int i = 0; i < 20000 && aps_up < nr_aps; i++)
			udelay(100);
	}
	printk("TICKER_START cpus=%u period_us=%lu report=%lu\n", aps_up + 1, period_us, report);
	arm_timer();
	run(true, total);
}
