/*
 * stats.c - sorting TSC samples and the round-trip line the ping-pong inmates
 * print (ivshmem, virtio-net net.mode=pingpong; scripts/bench-channel.sh
 * parses it).
 */
#include "inmate.h"

void sort_u64(u64 *a, u64 n)
{
	static const u64 gaps[] = { 1750, 701, 301, 132, 57, 23, 10, 4, 1 };	/* Ciura's */

	for (unsigned int g = 0; g < ARRAY_SIZE(gaps); g++)
		for (u64 i = gaps[g]; i < n; i++) {
			u64 v = a[i], j = i;

			for (; j >= gaps[g] && a[j - gaps[g]] > v; j -= gaps[g])
				a[j] = a[j - gaps[g]];
			a[j] = v;
		}
}

void print_round_trips(const char *who, u64 rounds, u64 *cycles, u64 n)
{
	if (!n)
		return;
	sort_u64(cycles, n);
	printk("%s: %lu round trips: median %lu ns, p99 %lu ns, max %lu ns\n", who, rounds,
	       cycles[n / 2] * 1000000 / tsc_khz, cycles[n * 99 / 100] * 1000000 / tsc_khz,
	       cycles[n - 1] * 1000000 / tsc_khz);
}
