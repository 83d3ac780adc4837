/*
 * smp - counts the CPUs in the MP table, checks expect_cpus=N if given,
 * then starts every AP with INIT / SIPI / SIPI (vector AP_TRAMPOLINE >> 12).
 * Each AP runs the trampoline real -> protected -> long mode onto its own
 * stack, prints "AP <apicid> up", increments a counter (lock xadd) and halts.
 * PASS if all APs check in within ap_timeout_ms=N (default 2000).
 */
#include "inmate.h"

const char inmate_name[] = "smp";

#define ICR_INIT	0x00004500	/* INIT, level assert, physical destination */
#define ICR_STARTUP	0x00004600	/* STARTUP (SIPI), vector in bits 0-7 */

static volatile u32 aps_up;

static void ap_main(u32 slot)
{
	(void)slot;
	/* Print first, count second: once the BSP sees the count, the line is out. */
	printk("AP %u up\n", lapic_id());
	__atomic_fetch_add(&aps_up, 1, __ATOMIC_SEQ_CST);
	halt_forever();
}

static void send_all(const struct mp_info *mp, u32 bsp, u32 icr)
{
	for (u32 i = 0; i < mp->nr_cpus; i++)
		if (mp->apic_ids[i] != bsp && !lapic_send_ipi(mp->apic_ids[i], icr))
			printk("smp: IPI %#x to APIC %u still pending\n", icr, mp->apic_ids[i]);
}

void inmate_main(void)
{
	u64 expect = cmdline_get_u64("expect_cpus", 0);
	u64 timeout_us = cmdline_get_u64("ap_timeout_ms", 2000) * 1000;
	struct mp_info mp;
	const char *err = mptable_find(&mp);
	char ids[4 * MAX_CPUS + 1];
	u32 bsp, nr_aps, up;
	size_t n = 0;
	u64 t0, t;

	if (err)
		inmate_fail(EXIT_FAIL, "%s", err);
	for (u32 i = 0; i < mp.nr_cpus; i++)
		n += snprintk(ids + n, sizeof(ids) - n, " %u", mp.apic_ids[i]);
	printk("smp: MP table at %#lx (config %#lx, lapic %#x): %u CPUs, APIC IDs:%s\n",
	       mp.mpf_addr, mp.table_addr, mp.lapic_addr, mp.nr_cpus, n ? ids : " none");
	if (expect && expect != mp.nr_cpus)
		inmate_fail(EXIT_FAIL, "expected %lu CPUs, MP table lists %u", expect, mp.nr_cpus);
	if (mp.lapic_addr != LAPIC_BASE)
		inmate_fail(EXIT_FAIL, "LAPIC at %#x, only %#lx is supported", mp.lapic_addr, LAPIC_BASE);

	bsp = lapic_id();
	nr_aps = 0;
	for (u32 i = 0; i < mp.nr_cpus; i++)
		nr_aps += mp.apic_ids[i] != bsp;
	if (nr_aps != mp.nr_cpus - 1)
		inmate_fail(EXIT_FAIL, "BSP APIC ID %u is not in the MP table once", bsp);
	if (!timer_init())
		printk("smp: PIT channel 2 unusable, assuming a %lu kHz TSC\n", tsc_khz);
	printk("smp: BSP APIC ID %u, TSC %lu kHz, starting %u APs\n", bsp, tsc_khz, nr_aps);
	if (!nr_aps)
		return;

	ap_trampoline_install();
	ap_c_entry = ap_main;
	lapic_enable();

	t0 = rdtsc();
	/* The MP spec's universal startup algorithm. */
	send_all(&mp, bsp, ICR_INIT);
	udelay(10000);
	send_all(&mp, bsp, ICR_STARTUP | (AP_TRAMPOLINE >> 12));
	udelay(200);
	send_all(&mp, bsp, ICR_STARTUP | (AP_TRAMPOLINE >> 12));

	/* Bounded wait: a missing AP must end in FAIL, not in a hang. */
	do {
		up = aps_up;
		t = tsc_to_us(rdtsc() - t0);
		if (up >= nr_aps)
			break;
		udelay(100);
	} while (t < timeout_us);
	printk("smp: %u of %u APs up after %lu us\n", up, nr_aps, t);
	if (up != nr_aps)
		inmate_fail(EXIT_FAIL, "only %u of %u APs came up", up, nr_aps);
}
