/*
 * idle - a long-running inmate for the daemon's tests: prints IDLE_START at once, then a
 * marker with its command line once its timer runs, then sleeps in HLT woken by the LAPIC timer (10 Hz), prints a heartbeat every
 * `idle.heartbeat=` seconds (default 5), and powers off cleanly when it sees Ctrl-Alt-Del
 * on the i8042 (scancode set 1: 1d, 38, e0 53), which is how rtvisord asks a guest to shut
 * down. `idle.seconds=N` powers off after N seconds (0 = never, the default).
 *
 * Self-contained on purpose: it builds its own 256-entry IDT (the library's covers only the
 * 32 exceptions, whose gates it copies) so the shared runtime stays unchanged.
 */
#include "inmate.h"

const char inmate_name[] = "idle";

#define TIMER_VECTOR	0x30
#define SPURIOUS_VECTOR	0xff
#define LAPIC_EOI	0x0b0
#define LAPIC_LVT_TIMER	0x320
#define LAPIC_TIMER_ICR	0x380
#define LAPIC_TIMER_DCR	0x3e0
#define HZ		10

volatile u64 idle_ticks;

void idle_timer_irq(void);
void idle_spurious_irq(void);
/* The handlers touch only rax and memory: no C call, so no need to save more. */
__asm__(".text\n"
	".globl idle_timer_irq\n"
	"idle_timer_irq:\n"
	"	push %rax\n"
	"	lock incq idle_ticks(%rip)\n"
	"	movabs $0xfee000b0, %rax\n"	/* EOI */
	"	movl $0, (%rax)\n"
	"	pop %rax\n"
	"	iretq\n"
	".globl idle_spurious_irq\n"
	"idle_spurious_irq:\n"
	"	iretq\n");

static void idt_setup(void)
{
	idt_set_gate(TIMER_VECTOR, idle_timer_irq);
	idt_set_gate(SPURIOUS_VECTOR, idle_spurious_irq);
}

static void timer_setup(void)
{
	u64 ticks;

	lapic_enable();
	lapic_write(LAPIC_TIMER_DCR, 0x3);		/* divide by 16 */
	lapic_write(LAPIC_LVT_TIMER, TIMER_VECTOR);	/* one-shot, to measure the rate */
	lapic_write(LAPIC_TIMER_ICR, 0xffffffff);
	udelay(10000);
	ticks = 0xffffffffu - lapic_read(0x390);	/* current count */
	lapic_write(LAPIC_TIMER_ICR, 0);
	if (ticks == 0)
		ticks = 62500;				/* KVM's 1 GHz bus / 16, per 10 ms */
	lapic_write(LAPIC_LVT_TIMER, TIMER_VECTOR | (1u << 17));	/* periodic */
	lapic_write(LAPIC_TIMER_ICR, (u32)(ticks * 100 / HZ));
}

void inmate_main(void)
{
	u64 heartbeat = cmdline_get_u64("idle.heartbeat", 5);
	u64 limit = cmdline_get_u64("idle.seconds", 0);
	u64 last = 0, beats = 0;
	bool ctrl = false, alt = false, e0 = false;

	/* First, before any work: the creation-rate benchmark's "the guest runs" marker. */
	printk("IDLE_START\n");
	timer_init();
	/* Only the LAPIC timer may interrupt. timer_init() falls back to PIT channel 0 in mode 0
	 * when channel 2 looks absent, which also happens when the vCPU is descheduled for the
	 * whole 10 ms window (a loaded host); channel 0's terminal count then raises IRQ 0 on an
	 * 8259 nobody initialized (vector base 0, nothing masked), which arrives through LINT0
	 * (ExtINT) as vector 0, a #DE, at the first `sti; hlt`. As latency.c does: mask both
	 * 8259s and stop channel 0 (mode 0 with no count loaded waits). */
	outb(0x21, 0xff);
	outb(0xa1, 0xff);
	outb(0x43, 0x30);
	idt_setup();
	timer_setup();
	printk("IDLE_READY cmdline=\"%s\" heartbeat=%lus\n", cmdline(), heartbeat);
	for (;;) {
		__asm__ volatile("sti; hlt; cli" ::: "memory");
		while (inb(0x64) & 1) {			/* i8042 output buffer full */
			u8 sc = inb(0x60);

			if (sc == 0xe0) { e0 = true; continue; }
			if (sc == 0x1d) ctrl = true;
			else if (sc == 0x9d) ctrl = false;
			else if (sc == 0x38) alt = true;
			else if (sc == 0xb8) alt = false;
			else if (e0 && sc == 0x53 && ctrl && alt) {
				printk("IDLE_CTRL_ALT_DEL powering off after %lu s\n", idle_ticks / HZ);
				inmate_exit(EXIT_PASS);
			}
			e0 = false;
		}
		if (heartbeat && idle_ticks - last >= heartbeat * HZ) {
			last = idle_ticks;
			printk("IDLE_HEARTBEAT %lu\n", ++beats);
		}
		if (limit && idle_ticks >= limit * HZ) {
			printk("IDLE_TIME_LIMIT %lu s\n", limit);
			inmate_exit(EXIT_PASS);
		}
	}
}
