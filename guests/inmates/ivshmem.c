/*
 * ivshmem - two guests on one shared-memory channel (docs/channels.md): an
 * ivshmem device (1af4:1110 rev 1, as QEMU's), BAR0 registers, BAR1 MSI-X,
 * BAR2 the shared memory.  MSI-X entry i -> LAPIC vector 0x40 + i, each with
 * a handler that counts it.
 *
 *   ivshmem.role=pong   answers every doorbell on its vector 0: copies
 *                       ping_seq to pong_seq, echoes a new message ("echo: "
 *                       + message) and rings the pinger's vector 1.  Sleeps
 *                       in hlt between doorbells; runs until killed.
 *                       ivshmem.poll=1: spins instead, and also answers a
 *                       new message nobody rang for (the minimal Linux's
 *                       rtvisor.check=channel writes 0x100, polls 0x200).
 *   ivshmem.role=ping   (default) writes a message to BAR2, rings the peer's
 *                       vector 0 and waits for the echo on its own vector 1
 *                       (an interrupt on vector 0 instead is a failure);
 *                       then ivshmem.rounds= (10000) round trips, each one
 *                       timed, and prints median/p99/max; powers off (PASS).
 *
 *   ivshmem.role=probe  writes "probe from peer <IVPosition>" at BAR2 + 4 KiB
 *                       and reads it back (no interrupts: QEMU's ivshmem-plain
 *                       has no MSI-X), for a host to find in the memory file.
 *
 * ivshmem.peer= the other side's peer id (default: 1 - IVPosition).
 * ivshmem.stall_ok=1: a peer that stops answering (killed) is waited for,
 * re-rung every 100 ms, and reported when it answers again; without it a
 * round trip over ivshmem.timeout_ms= (5000) fails the inmate.
 * ivshmem.stay=1: the pinger halts instead of powering off when done (its
 * console stays readable under rtvisord).
 *
 * Output lines tests look for:
 *   ivshmem: IVPosition <n>, BAR2 <addr> <size> MiB, <k> vectors
 *   ivshmem: echo "<text>" on vector 1
 *   ivshmem: peer <p> silent at round <r>
 *   ivshmem: peer <p> answers again at round <r> (IVPosition <n>, boot <b>)
 *   ivshmem: <n> round trips: median <ns> ns, p99 <ns> ns, max <ns> ns
 */
#include "inmate.h"
#include "pci.h"

const char inmate_name[] = "ivshmem";

#define REG_INTR_MASK	0x00
#define REG_INTR_STATUS	0x04
#define REG_IVPOSITION	0x08
#define REG_DOORBELL	0x0c
#define FIRST_VECTOR	0x40
#define MAX_VECTORS	8
#define SPURIOUS_VECTOR	0xff
#define LAPIC_EOI	0x0b0
#define MAX_SAMPLES	100000
#define CHANNEL_MAGIC	0x4d485649u	/* "IVHM" */

/* The layout both roles agree on, at the start of BAR2. */
struct channel {
	volatile u32 magic;
	volatile u32 pong_position;	/* the ponger's IVPosition, written at its boot */
	volatile u64 pong_boots;	/* incremented at every ponger boot */
	volatile u64 ping_seq, pong_seq;
	volatile u64 msg_seq, echo_seq;
	char pad[0x100 - 0x30];
	char msg[256];			/* 0x100: where Linux's rtvisor.check=channel writes */
	char echo[256];			/* 0x200: and waits for "echo: " + its text */
};

static volatile u64 irqs[MAX_VECTORS];
static u64 regs;
static u64 samples[MAX_SAMPLES];

struct interrupt_frame;
#define VECTOR_HANDLER(n)							\
	__attribute__((interrupt)) void vector##n(struct interrupt_frame *f);	\
	__attribute__((interrupt)) void vector##n(struct interrupt_frame *f)	\
	{									\
		(void)f;							\
		irqs[n]++;							\
		lapic_write(LAPIC_EOI, 0);					\
	}
VECTOR_HANDLER(0) VECTOR_HANDLER(1) VECTOR_HANDLER(2) VECTOR_HANDLER(3)
VECTOR_HANDLER(4) VECTOR_HANDLER(5) VECTOR_HANDLER(6) VECTOR_HANDLER(7)
static void (*const handlers[MAX_VECTORS])(struct interrupt_frame *) = {
	vector0, vector1, vector2, vector3, vector4, vector5, vector6, vector7,
};

__attribute__((interrupt)) void spurious(struct interrupt_frame *f);
__attribute__((interrupt)) void spurious(struct interrupt_frame *f) { (void)f; }

static void ring(u32 peer, u32 vector)
{
	mmio_write32(regs + REG_DOORBELL, peer << 16 | vector);
}

static void copy_string(char *dst, const char *src, size_t size)
{
	size_t i = 0;

	for (; i + 1 < size && src[i]; i++)
		dst[i] = src[i];
	dst[i] = 0;
}

/* Finds the device, maps its BARs, and routes MSI-X entry i to FIRST_VECTOR + i. */
static struct channel *setup(u32 *position, u32 *vectors, bool need_msix)
{
	static const u16 ids[][2] = { { 0x1af4, 0x1110 }, { 0, 0 } };
	struct pci_dev d;
	u64 bar2, table;
	u32 tbl;
	u16 mc;
	u8 cap;

	if (!pci_find(ids, 0, &d, false))
		inmate_fail(EXIT_FAIL, "ivshmem: no 1af4:1110 device on bus 0");
	if (d.revision != 1)
		inmate_fail(EXIT_FAIL, "ivshmem: revision %u, expected 1", d.revision);
	regs = pci_bar_map(&d, 0);
	bar2 = pci_bar_map(&d, 2);
	cap = pci_find_cap(&d, PCI_CAP_MSIX, 0);
	if (!regs || !bar2 || (need_msix && !cap))
		inmate_fail(EXIT_FAIL, "ivshmem: BAR0 %#lx, BAR2 %#lx, MSI-X capability %#x", regs, bar2, cap);
	if (!cap) {
		pci_enable(&d, false);
		*vectors = 0;
		*position = mmio_read32(regs + REG_IVPOSITION);
		printk("ivshmem: IVPosition %u, BAR2 %#lx %lu MiB, no MSI-X\n", *position, bar2, d.bar[2].size >> 20);
		return (struct channel *)bar2;
	}
	mc = pci_read16(&d, cap + 2);
	tbl = pci_read32(&d, cap + 4);
	table = pci_bar_map(&d, tbl & 7) + (tbl & ~7u);
	pci_enable(&d, false);
	*vectors = (mc & 0x7ff) + 1;
	if (*vectors > MAX_VECTORS)
		*vectors = MAX_VECTORS;
	*position = mmio_read32(regs + REG_IVPOSITION);

	outb(0x21, 0xff);	/* only MSI-X interrupts: both 8259s masked */
	outb(0xa1, 0xff);
	for (u32 i = 0; i < *vectors; i++)
		idt_set_gate(FIRST_VECTOR + i, handlers[i]);
	idt_set_gate(SPURIOUS_VECTOR, spurious);
	lapic_enable();
	lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x100 | SPURIOUS_VECTOR);
	pci_write16(&d, cap + 2, mc | 0x8000 | 0x4000);	/* enabled, function masked */
	for (u32 i = 0; i < *vectors; i++) {
		u64 e = table + 16 * i;

		mmio_write32(e + 0, 0xfee00000u | (lapic_id() << 12));
		mmio_write32(e + 4, 0);
		mmio_write32(e + 8, FIRST_VECTOR + i);
		mmio_write32(e + 12, 0);
	}
	pci_write16(&d, cap + 2, (mc | 0x8000) & ~0x4000);
	__asm__ volatile("sti");
	printk("ivshmem: IVPosition %u, BAR2 %#lx %lu MiB, %u vectors\n", *position, bar2, d.bar[2].size >> 20, *vectors);
	return (struct channel *)bar2;
}

/* Waits for a doorbell on vector 0 (hlt), or with poll also for a message nobody rang for. */
static void pong_wait(struct channel *c, u64 *seen, bool poll, const char *last)
{
	for (;;) {
		__asm__ volatile("cli" ::: "memory");
		if (irqs[0] != *seen || (poll && c->msg[0] && strcmp(c->msg, last)))
			break;
		/* sti; hlt: an interrupt between the look and the hlt still wakes it. */
		if (poll)
			__asm__ volatile("sti; pause" ::: "memory");
		else
			__asm__ volatile("sti; hlt" ::: "memory");
	}
	__asm__ volatile("sti" ::: "memory");
	*seen = irqs[0];
}

static noreturn void pong(struct channel *c, u32 position, u32 peer)
{
	bool poll = cmdline_get_u64("ivshmem.poll", 0) != 0;
	static char last[256];
	u64 seen = 0;

	c->pong_position = position;
	c->pong_boots++;
	c->magic = CHANNEL_MAGIC;
	for (;;) {
		pong_wait(c, &seen, poll, last);
		if (c->msg_seq != c->echo_seq || (poll && c->msg[0] && strcmp(c->msg, last))) {
			char line[256];

			copy_string(last, c->msg, sizeof(last));
			snprintk(line, sizeof(line), "echo: %s", last);
			copy_string(c->echo, line, sizeof(c->echo));
			barrier();
			c->echo_seq = c->msg_seq;
			printk("ivshmem: echoed \"%s\"\n", last);
		}
		c->pong_seq = c->ping_seq;
		ring(peer, 1);
	}
}

/* Rings the peer until pong_seq reaches seq; returns the cycles of the successful round. */
static u64 round_trip(struct channel *c, u32 peer, u64 seq, bool stall_ok, u64 timeout_ms)
{
	u64 retry = tsc_khz * 100, timeout = tsc_khz * timeout_ms;
	bool silent = false;

	for (;;) {
		u64 t0 = rdtsc(), before = irqs[1];

		c->ping_seq = seq;
		ring(peer, 0);
		while (c->pong_seq != seq || irqs[1] == before) {
			u64 waited = rdtsc() - t0;

			if (irqs[0])
				inmate_fail(EXIT_FAIL, "ivshmem: interrupt on vector 0, the peer rings vector 1");
			if (!stall_ok && waited > timeout)
				inmate_fail(EXIT_FAIL, "ivshmem: no answer from peer %u in %lu ms (round %lu)", peer, timeout_ms, seq);
			if (stall_ok && waited > retry)
				break;
			cpu_relax();
		}
		if (c->pong_seq == seq && irqs[1] != before) {
			u64 t = rdtsc() - t0;

			if (silent)
				printk("ivshmem: peer %u answers again at round %lu (IVPosition %u, boot %lu)\n",
				       peer, seq, c->pong_position, c->pong_boots);
			return t;
		}
		if (!silent)
			printk("ivshmem: peer %u silent at round %lu\n", peer, seq);
		silent = true;
	}
}

static void ping(struct channel *c, u32 position, u32 peer)
{
	u64 rounds = cmdline_get_u64("ivshmem.rounds", 10000);
	u64 timeout_ms = cmdline_get_u64("ivshmem.timeout_ms", 5000);
	bool stall_ok = cmdline_get_u64("ivshmem.stall_ok", 0) != 0;
	u64 n = rounds < MAX_SAMPLES ? rounds : MAX_SAMPLES, seq = c->ping_seq;
	char text[64];

	/* The message: written, then published by its sequence number, then rung. */
	snprintk(text, sizeof(text), "hello from peer %u", position);
	copy_string(c->msg, text, sizeof(c->msg));
	barrier();
	c->msg_seq = c->msg_seq + 1;
	/* The first round is rung until answered: the peer may still be booting. */
	round_trip(c, peer, ++seq, true, timeout_ms);
	if (c->echo_seq != c->msg_seq)
		inmate_fail(EXIT_FAIL, "ivshmem: answered without the echo (echo_seq %lu, msg_seq %lu)", c->echo_seq, c->msg_seq);
	printk("ivshmem: echo \"%s\" on vector 1\n", c->echo);

	for (u64 i = 0; i < rounds; i++) {
		u64 t = round_trip(c, peer, ++seq, stall_ok, timeout_ms);

		if (i < n)
			samples[i] = t;
	}
	print_round_trips("ivshmem", rounds, samples, n);
}

void inmate_main(void)
{
	char role[16] = "ping";
	u32 position, vectors, peer;
	struct channel *c;

	cmdline_get("ivshmem.role", role, sizeof(role));
	if (!timer_init())
		printk("ivshmem: PIT channel 2 unusable, assuming a %lu kHz TSC\n", tsc_khz);
	c = setup(&position, &vectors, strcmp(role, "probe") != 0);
	if (!strcmp(role, "probe")) {
		char *at = (char *)c + 4096, text[64];

		snprintk(text, sizeof(text), "probe from peer %u", position);
		copy_string(at, text, sizeof(text));
		if (strcmp(at, text))
			inmate_fail(EXIT_FAIL, "ivshmem: BAR2 reads back \"%s\"", at);
		printk("ivshmem: probe wrote \"%s\" at BAR2 + 4 KiB\n", text);
		return;
	}
	if (vectors < 2)
		inmate_fail(EXIT_FAIL, "ivshmem: %u MSI-X vectors, the ping-pong needs 2", vectors);
	peer = (u32)cmdline_get_u64("ivshmem.peer", 1 - (position & 1));
	if (!strcmp(role, "pong"))
		pong(c, position, peer);
	ping(c, position, peer);
	if (cmdline_get_u64("ivshmem.stay", 0)) {
		printk("ivshmem: done, staying up\n");
		halt_forever();
	}
}
