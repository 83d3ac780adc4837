/*
 * virtio-net - drives a modern virtio-pci network device (1af4:1041, or the
 * transitional 1af4:1000 through its modern interface): queue 0 = receive,
 * queue 1 = transmit, polled, 12-byte virtio_net_hdr_v1, no offloads.
 *
 * net.mode=echo (default): sends net.frames test frames (ethertype 0x88B5)
 * and expects scripts/net-echo.py on the host side of the tap to answer each
 * one (ethertype 0x88B6, pattern bytes inverted).  net.mode=bench: transmit
 * as fast as possible, then receive a flood from net-echo.py --flood.
 * net.mode=pingpong: two of these inmates on one bridge; net.role=pong
 * answers every 60-byte ping frame, net.role=ping (default) times
 * net.rounds= (10000) round trips and prints median/p99/max as the ivshmem
 * inmate does (scripts/bench-channel.sh compares the two).
 * net.mode=reflect: answers net.frames echo test frames the way net-echo.py
 * does, so two guests on one host bridge exchange frames (one in echo mode,
 * optionally with net.peer=MAC for unicast, one in reflect mode).
 * Frame layout and bench protocol: docs/inmates.md.
 */
#include "virtio.h"

const char inmate_name[] = "virtio-net";

#define VIRTIO_NET_F_MTU	3
#define VIRTIO_NET_F_MAC	5
#define VIRTIO_NET_F_STATUS	16
#define VIRTIO_NET_S_LINK_UP	1

#define CFG_MAC			0
#define CFG_STATUS		6
#define CFG_MTU			10

#define ETH_TEST		0x88B5	/* guest -> host */
#define ETH_REPLY		0x88B6	/* host -> guest */
#define NET_HDR_LEN		12	/* struct virtio_net_hdr_v1 */
#define BUF_SIZE		2048
#define ETH_HLEN		14
#define MIN_FRAME		60
#define MAX_FRAME		1514
#define HDR_PAYLOAD		12	/* magic, seq, plen */
#define FRAME_OVERHEAD		(ETH_HLEN + HDR_PAYLOAD + 4)	/* + FNV */
#define MAX_FRAMES		(1u << 20)

#define MAGIC_ECHO		"RTVN"	/* echo test frame / reply */
#define MAGIC_TXBENCH		"RTVT"	/* bench transmit frame (counted by the host) */
#define MAGIC_FLOOD		"RTVF"	/* flood request (guest) / flood frame (host) */
#define MAGIC_DONE		"RTVD"	/* end of flood (host), carries the sent count */
#define MAGIC_PING		"RTVP"	/* ping-pong frame (guest <-> guest), carries the round */
#define PP_SAMPLES		100000

static u8 pool[2u << 20] __attribute__((aligned(4096)));

static struct virtio_dev dev;
static struct virtqueue *rxq, *txq;
static u8 *rxbuf, *txbuf;
static u16 ntx;				/* transmit buffers */
static u16 tx_free[VQ_MAX_SIZE], tx_nfree;
static u8 mac[6];
static u8 peer[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };	/* echo frames' destination */
static u64 timeout_us;
static bool msix_checked;

static u8 seen[MAX_FRAMES / 8];		/* echo replies received, by seq */
static u64 received, ignored;
static u64 flood_frames, flood_bytes, flood_t_first, flood_t_last, flood_host_sent, flood_late;
static u64 last_rx_tsc;
static bool flood_done, flood_any, flood_closed;

static inline void put32(u8 *p, u32 v) { p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24; }
static inline u32 get32(const u8 *p) { return p[0] | p[1] << 8 | p[2] << 16 | (u32)p[3] << 24; }

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* "02:00:00:aa:bb:02" into out[6]; false if it is not six hex octets. */
static bool parse_mac(const char *s, u8 *out)
{
	for (int k = 0; k < 6; k++, s += 3) {
		int hi = hex_digit(s[0]), lo = hi < 0 ? -1 : hex_digit(s[1]);

		if (lo < 0 || s[2] != (k == 5 ? '\0' : ':'))
			return false;
		out[k] = (u8)(hi << 4 | lo);
	}
	return true;
}

static u32 frame_len(u32 seq)
{
	if (seq == 0)
		return MIN_FRAME;
	if (seq == 1)
		return MAX_FRAME;
	return MIN_FRAME + (seq * 397u) % (MAX_FRAME - MIN_FRAME + 1);
}

static inline u8 pat(u32 seq, u32 i) { return (u8)(seq * 31 + i * 7); }

/* ---- buffers ------------------------------------------------------------- */

static void rx_post(u16 i)
{
	struct vbuf b = { (u64)(rxbuf + (u64)i * BUF_SIZE), BUF_SIZE, true };

	if (!vq_add(rxq, &b, 1, i))
		inmate_fail(EXIT_TRANSPORT, "receive queue full while reposting buffer %u", i);
}

static void tx_reclaim(void)
{
	u64 cookie;

	while (vq_get_used(txq, &cookie, NULL)) {
		tx_free[tx_nfree++] = (u16)cookie;
		if (!msix_checked) {
			msix_checked = true;
			virtio_check_msix(&dev);
		}
	}
}

/* A free transmit buffer; waits (bounded) for the device to return one. */
static u16 tx_get(void)
{
	u64 t0 = rdtsc(), limit = us_to_tsc(timeout_us);

	for (;;) {
		tx_reclaim();
		if (tx_nfree)
			return tx_free[--tx_nfree];
		if (rdtsc() - t0 > limit)
			inmate_fail(EXIT_TIMEOUT, "virtio-net: transmit queue 1 timed out: %u buffers in flight for %lu ms (avail idx %u, used idx %u)",
				    ntx, timeout_us / 1000, txq->avail_idx, txq->used->idx);
		cpu_relax();
	}
}

static u8 *tx_frame(u16 i) { return txbuf + (u64)i * BUF_SIZE + NET_HDR_LEN; }

/* Queue frame in transmit buffer i (len bytes); split header/frame if asked. */
static void tx_send(u16 i, u32 len, bool split)
{
	u8 *h = txbuf + (u64)i * BUF_SIZE;
	struct vbuf b[2];

	memset(h, 0, NET_HDR_LEN);	/* flags 0, GSO_NONE, num_buffers 0 */
	if (split) {
		b[0] = (struct vbuf){ (u64)h, NET_HDR_LEN, false };
		b[1] = (struct vbuf){ (u64)h + NET_HDR_LEN, len, false };
	} else {
		b[0] = (struct vbuf){ (u64)h, NET_HDR_LEN + len, false };
	}
	if (!vq_add(txq, b, split ? 2 : 1, i))
		inmate_fail(EXIT_TRANSPORT, "transmit queue full with a free buffer");
	vq_kick(txq);
}

static void eth_header(u8 *f, u16 type)
{
	memcpy(f, peer, 6);
	memcpy(f + 6, mac, 6);
	f[12] = type >> 8;
	f[13] = type & 0xff;
}

/* ---- receive -------------------------------------------------------------- */

static void rx_frame(const u8 *f, u32 len, u32 nframes)
{
	u32 seq, plen, fnv;
	u16 type;

	if (len < ETH_HLEN + 4) {
		ignored++;
		return;
	}
	type = f[12] << 8 | f[13];
	if (type != ETH_REPLY) {
		ignored++;	/* IPv6 router solicitations and the like */
		return;
	}
	if (memcmp(f, mac, 6))
		inmate_fail(EXIT_MISMATCH, "reply to %02x:%02x:%02x:%02x:%02x:%02x, not to our MAC", f[0],
			    f[1], f[2], f[3], f[4], f[5]);
	if (!memcmp(f + 14, MAGIC_FLOOD, 4) || !memcmp(f + 14, MAGIC_DONE, 4)) {
		u64 now = rdtsc();

		if (!memcmp(f + 14, MAGIC_DONE, 4)) {
			flood_done = true;
			flood_host_sent = len >= 22 ? get32(f + 18) : 0;
			return;
		}
		if (flood_closed) {	/* after the measuring window: only drained */
			flood_late++;
			return;
		}
		if (!flood_any)
			flood_t_first = now;
		flood_any = true;
		flood_t_last = now;
		flood_frames++;
		flood_bytes += len;
		return;
	}
	if (memcmp(f + 14, MAGIC_ECHO, 4)) {
		ignored++;
		return;
	}
	if (len < FRAME_OVERHEAD)
		inmate_fail(EXIT_MISMATCH, "reply of %u bytes is too short", len);
	seq = get32(f + 18);
	plen = get32(f + 22);
	if (seq >= nframes)
		inmate_fail(EXIT_MISMATCH, "reply with seq %u, only %u frames sent", seq, nframes);
	if (plen != frame_len(seq) - FRAME_OVERHEAD || len != frame_len(seq))
		inmate_fail(EXIT_MISMATCH, "reply seq %u: %u bytes with payload length %u, want %u / %u",
			    seq, len, plen, frame_len(seq), frame_len(seq) - FRAME_OVERHEAD);
	for (u32 i = 0; i < plen; i++) {
		u8 want = 0xff - pat(seq, i);	/* == pattern ^ 0xff */

		if (f[26 + i] != want)
			inmate_fail(EXIT_MISMATCH, "reply seq %u: pattern byte %u is %#x, want %#x", seq, i,
				    f[26 + i], want);
	}
	fnv = fnv1a(FNV1A_INIT, f + 14, HDR_PAYLOAD + plen);
	if (get32(f + 26 + plen) != fnv)
		inmate_fail(EXIT_MISMATCH, "reply seq %u: checksum %#x, want %#x", seq, get32(f + 26 + plen), fnv);
	if (seen[seq / 8] & (1u << (seq % 8)))
		inmate_fail(EXIT_MISMATCH, "duplicate reply for seq %u", seq);
	seen[seq / 8] |= 1u << (seq % 8);
	received++;
}

/* Handles every completed receive buffer, reposts it.  Returns how many. */
static u32 rx_poll(u32 nframes)
{
	u64 cookie;
	u32 len, n = 0;

	while (vq_get_used(rxq, &cookie, &len)) {
		last_rx_tsc = rdtsc();
		if (len < NET_HDR_LEN || len > BUF_SIZE)
			inmate_fail(EXIT_TRANSPORT, "receive buffer %lu completed with length %u", cookie, len);
		rx_frame(rxbuf + cookie * BUF_SIZE + NET_HDR_LEN, len - NET_HDR_LEN, nframes);
		rx_post((u16)cookie);
		n++;
	}
	if (n)
		vq_kick(rxq);
	return n;
}

/* ---- modes ---------------------------------------------------------------- */

static void mode_echo(void)
{
	u64 nframes = cmdline_get_u64("net.frames", 32), window = cmdline_get_u64("net.window", 64);
	/* net.gap_us: a pause after each frame, for traffic that goes on for a while. */
	u64 gap = cmdline_get_u64("net.gap_us", 0);
	u64 t0, limit, sent_bytes = 0, t_start = rdtsc();

	if (nframes == 0 || nframes > MAX_FRAMES)
		inmate_fail(EXIT_CONFIG, "net.frames=%lu out of range (1..%u)", nframes, MAX_FRAMES);
	if (window == 0)
		window = 1;
	for (u32 seq = 0; seq < nframes; seq++) {
		u32 len = frame_len(seq), plen = len - FRAME_OVERHEAD;
		u16 i;
		u8 *f;

		/* Keep at most 'window' frames unanswered: the host side may drop bursts. */
		t0 = rdtsc();
		limit = us_to_tsc(timeout_us);
		while (seq - received >= window) {
			if (!rx_poll(nframes) && rdtsc() - t0 > limit)
				inmate_fail(EXIT_LOSS, "no reply for %lu ms with %lu of %u frames answered (is net-echo.py running?)",
					    timeout_us / 1000, received, seq);
			tx_reclaim();
		}
		i = tx_get();
		f = tx_frame(i);
		eth_header(f, ETH_TEST);
		memcpy(f + 14, MAGIC_ECHO, 4);
		put32(f + 18, seq);
		put32(f + 22, plen);
		for (u32 k = 0; k < plen; k++)
			f[26 + k] = pat(seq, k);
		put32(f + 26 + plen, fnv1a(FNV1A_INIT, f + 14, HDR_PAYLOAD + plen));
		tx_send(i, len, !(seq & 1));	/* even: header and frame in separate descriptors */
		sent_bytes += len;
		rx_poll(nframes);
		if (gap)
			udelay(gap);
	}
	printk("virtio-net: sent %lu frames (%lu bytes, 60..1514), waiting for replies\n", nframes, sent_bytes);

	t0 = rdtsc();
	limit = us_to_tsc(timeout_us);
	while (received < nframes) {
		if (rx_poll(nframes))
			t0 = rdtsc();	/* progress: restart the quiet-time limit */
		tx_reclaim();
		if (rdtsc() - t0 > limit) {
			u32 missing = 0, first = 0;

			for (u32 s = 0; s < nframes; s++)
				if (!(seen[s / 8] & (1u << (s % 8))) && missing++ == 0)
					first = s;
			inmate_fail(EXIT_LOSS, "received %lu of %lu replies (%u missing, first seq %u) after %lu ms without progress",
				    received, nframes, missing, first, timeout_us / 1000);
		}
		cpu_relax();
	}
	/* With net.window=1 each frame is one round trip (a ping-pong). */
	printk("virtio-net: %lu replies in %lu us, window %lu\n", received, tsc_to_us(rdtsc() - t_start), window);
	/* All transmit buffers back (bounded). */
	t0 = rdtsc();
	while (tx_nfree < ntx) {
		tx_reclaim();
		if (rdtsc() - t0 > limit)
			inmate_fail(EXIT_TIMEOUT, "transmit queue 1: %u buffers never completed", ntx - tx_nfree);
	}
	if (ignored)
		printk("virtio-net: ignored %lu unrelated frames\n", ignored);
	printk("INMATE virtio-net OK: sent %lu received %lu\n", nframes, received);
}

/* Ping-pong: the newest ping (ETH_TEST) or pong (ETH_REPLY) frame's round in *round. */
static bool pp_poll(u16 type, u32 *round)
{
	u64 cookie;
	u32 len;
	bool got = false;

	while (vq_get_used(rxq, &cookie, &len)) {
		const u8 *f = rxbuf + cookie * BUF_SIZE + NET_HDR_LEN;

		if (len >= NET_HDR_LEN + 22 && (f[12] << 8 | f[13]) == type && !memcmp(f + 14, MAGIC_PING, 4)) {
			*round = get32(f + 18);
			got = true;
		}
		rx_post((u16)cookie);
	}
	vq_kick(rxq);
	return got;
}

static void pp_send(u16 type, u32 round)
{
	u16 i = tx_get();
	u8 *f = tx_frame(i);

	memset(f, 0, MIN_FRAME);
	eth_header(f, type);
	memcpy(f + 14, MAGIC_PING, 4);
	put32(f + 18, round);
	tx_send(i, MIN_FRAME, false);
}

static u64 pp_samples[PP_SAMPLES];

static void mode_pingpong(void)
{
	char role[8] = "ping";
	u64 rounds = cmdline_get_u64("net.rounds", 10000), n;
	u32 got;

	cmdline_get("net.role", role, sizeof(role));
	if (!strcmp(role, "pong")) {
		printk("virtio-net: pong, answering pings\n");
		for (;;) {
			if (pp_poll(ETH_TEST, &got))
				pp_send(ETH_REPLY, got);
			tx_reclaim();
			cpu_relax();
		}
	}
	n = rounds < PP_SAMPLES ? rounds : PP_SAMPLES;
	/* Round 0 is rung every 100 ms until answered: the pong may still be booting. */
	for (u64 r = 0; r <= rounds; r++) {
		u64 t0 = rdtsc(), limit = us_to_tsc(r ? timeout_us : 100000);

		pp_send(ETH_TEST, (u32)r);
		for (;;) {
			if (pp_poll(ETH_REPLY, &got) && got == (u32)r)
				break;
			tx_reclaim();
			if (rdtsc() - t0 > limit) {
				if (r)
					inmate_fail(EXIT_LOSS, "virtio-net: no pong for round %lu in %lu ms", r, timeout_us / 1000);
				pp_send(ETH_TEST, 0);
				t0 = rdtsc();
			}
			cpu_relax();
		}
		if (r && r - 1 < n)
			pp_samples[r - 1] = rdtsc() - t0;
	}
	print_round_trips("virtio-net", rounds, pp_samples, n);
}

/* Answers echo test frames (from a guest in echo mode on the same bridge) as
 * scripts/net-echo.py does: to the sender, ethertype ETH_REPLY, every pattern
 * byte inverted, the checksum recomputed.  Ends after net.frames answers. */
static void mode_reflect(void)
{
	u64 nframes = cmdline_get_u64("net.frames", 32), reflected = 0, t0 = rdtsc();
	u64 cookie;
	u32 len;

	printk("virtio-net: reflecting %lu frames\n", nframes);
	while (reflected < nframes) {
		const u8 *f;
		u32 flen, plen;
		u8 *r;
		u16 i;

		tx_reclaim();
		if (!vq_get_used(rxq, &cookie, &len)) {
			if (rdtsc() - t0 > us_to_tsc(timeout_us))
				inmate_fail(EXIT_LOSS, "reflected %lu of %lu frames, then none for %lu ms (is the echo guest on the bridge?)",
					    reflected, nframes, timeout_us / 1000);
			cpu_relax();
			continue;
		}
		t0 = rdtsc();
		if (len < NET_HDR_LEN || len > BUF_SIZE)
			inmate_fail(EXIT_TRANSPORT, "receive buffer %lu completed with length %u", cookie, len);
		f = rxbuf + cookie * BUF_SIZE + NET_HDR_LEN;
		flen = len - NET_HDR_LEN;
		plen = flen >= FRAME_OVERHEAD ? get32(f + 22) : 0;
		if (flen < FRAME_OVERHEAD || (f[12] << 8 | f[13]) != ETH_TEST || memcmp(f + 14, MAGIC_ECHO, 4) ||
		    plen != flen - FRAME_OVERHEAD) {
			ignored++;
		} else {
			i = tx_get();
			r = tx_frame(i);
			memcpy(r, f + 6, 6);
			memcpy(r + 6, mac, 6);
			r[12] = ETH_REPLY >> 8;
			r[13] = ETH_REPLY & 0xff;
			memcpy(r + 14, f + 14, HDR_PAYLOAD);
			for (u32 k = 0; k < plen; k++)
				r[26 + k] = f[26 + k] ^ 0xff;
			put32(r + 26 + plen, fnv1a(FNV1A_INIT, r + 14, HDR_PAYLOAD + plen));
			tx_send(i, flen, false);
			reflected++;
		}
		rx_post((u16)cookie);
		vq_kick(rxq);
	}
	t0 = rdtsc();
	while (tx_nfree < ntx) {
		tx_reclaim();
		if (rdtsc() - t0 > us_to_tsc(timeout_us))
			inmate_fail(EXIT_TIMEOUT, "transmit queue 1: %u buffers never completed", ntx - tx_nfree);
	}
	if (ignored)
		printk("virtio-net: ignored %lu unrelated frames\n", ignored);
	printk("INMATE virtio-net OK: reflected %lu\n", reflected);
}

static void mode_bench(void)
{
	u64 secs = cmdline_get_u64("bench.secs", 2), dur, t0, t, frames = 0, queued = 0;
	u32 len = MAX_FRAME, tx_fps, tx_mbps, rx_fps = 0, rx_mbps = 0, flood_ms;
	u16 i;
	u8 *f;

	if (!secs)
		secs = 1;
	dur = us_to_tsc(secs * 1000000);

	/* One frame with interrupts on first, for the MSI-X check (tx_reclaim). */
	i = tx_get();
	f = tx_frame(i);
	eth_header(f, ETH_TEST);
	memset(f + 14, 0, MIN_FRAME - 14);
	memcpy(f + 14, MAGIC_TXBENCH, 4);
	tx_send(i, MIN_FRAME, false);
	t0 = rdtsc();
	while (tx_nfree < ntx) {
		tx_reclaim();
		if (rdtsc() - t0 > us_to_tsc(timeout_us))
			inmate_fail(EXIT_TIMEOUT, "transmit queue 1: first frame never completed");
	}

	vq_set_interrupts(txq, cmdline_get_u64("bench.intr", 0) != 0);
	vq_set_interrupts(rxq, cmdline_get_u64("bench.intr", 0) != 0);

	/* Prebuilt transmit frames: only the seq changes. */
	for (i = 0; i < ntx; i++) {
		f = tx_frame(i);
		eth_header(f, ETH_TEST);
		memcpy(f + 14, MAGIC_TXBENCH, 4);
		for (u32 k = 18; k < len; k++)
			f[k] = (u8)k;
	}
	t0 = rdtsc();
	do {
		/* Fill the ring, one kick per batch; reclaim what completed. */
		while (tx_nfree) {
			i = tx_free[--tx_nfree];
			f = tx_frame(i);
			put32(f + 18, (u32)queued);
			memset(txbuf + (u64)i * BUF_SIZE, 0, NET_HDR_LEN);
			{
				struct vbuf b = { (u64)(txbuf + (u64)i * BUF_SIZE), NET_HDR_LEN + len, false };

				if (!vq_add(txq, &b, 1, i))
					inmate_fail(EXIT_TRANSPORT, "transmit queue full with a free buffer");
			}
			queued++;
		}
		vq_kick(txq);
		{
			u64 c;

			while (vq_get_used(txq, &c, NULL)) {
				tx_free[tx_nfree++] = (u16)c;
				frames++;
			}
		}
		rx_poll(0);	/* keep receive buffers flowing (and ignore) */
	} while ((t = rdtsc() - t0) < dur);
	tx_fps = frames * 1000000 / tsc_to_us(t);
	tx_mbps = frames * len * 8 / tsc_to_us(t);
	printk("bench: transmitted %lu frames of %u bytes in %lu ms\n", frames, len, tsc_to_us(t) / 1000);
	/* Let the rest drain (bounded) so the flood request gets out. */
	t0 = rdtsc();
	while (tx_nfree < ntx && rdtsc() - t0 < us_to_tsc(timeout_us)) {
		u64 c;

		if (vq_get_used(txq, &c, NULL))
			tx_free[tx_nfree++] = (u16)c;
	}

	/* Receive: ask the host for a flood of secs seconds. */
	flood_ms = secs * 1000;
	i = tx_get();
	f = tx_frame(i);
	eth_header(f, ETH_TEST);
	memset(f + 14, 0, MIN_FRAME - 14);
	memcpy(f + 14, MAGIC_FLOOD, 4);
	put32(f + 18, flood_ms);
	put32(f + 22, MAX_FRAME);
	tx_send(i, MIN_FRAME, false);
	/* The window: bench.secs from the first flood frame on (the guest may be
	 * slower than the flood; the end-of-flood frames then queue behind it). */
	t0 = rdtsc();
	while (!flood_any) {
		rx_poll(0);
		tx_reclaim();
		if (rdtsc() - t0 > us_to_tsc(timeout_us))
			inmate_fail(EXIT_LOSS, "no flood frames within %lu ms (is net-echo.py running with --flood?)",
				    timeout_us / 1000);
	}
	while (rdtsc() - flood_t_first < dur && !flood_done) {
		rx_poll(0);
		tx_reclaim();
	}
	flood_closed = true;
	t = flood_t_last - flood_t_first;
	/* Drain for the host's count: until "RTVD", 1 s without frames, or timeout. */
	t0 = rdtsc();
	last_rx_tsc = t0;
	while (!flood_done && rdtsc() - last_rx_tsc < us_to_tsc(1000000) &&
	       rdtsc() - t0 < us_to_tsc(timeout_us)) {
		rx_poll(0);
		tx_reclaim();
	}
	if (tsc_to_us(t)) {
		rx_fps = flood_frames * 1000000 / tsc_to_us(t);
		rx_mbps = flood_bytes * 8 / tsc_to_us(t);
	}
	printk("bench: received %lu flood frames (%lu bytes) in %lu ms, %lu more after the window; host sent %lu%s\n",
	       flood_frames, flood_bytes, tsc_to_us(t) / 1000, flood_late, flood_host_sent,
	       flood_done ? "" : " (no end-of-flood frame seen)");
	printk("BENCH net tx_fps=%u tx_mbps=%u rx_fps=%u rx_mbps=%u\n", tx_fps, tx_mbps, rx_fps, rx_mbps);
	printk("virtio-net: notifies: rx %lu, tx %lu for %lu frames\n", rxq->notifies, txq->notifies,
	       txq->submitted);
}

void inmate_main(void)
{
	static const u16 ids[][2] = { { 0x1af4, 0x1041 }, { 0x1af4, 0x1000 }, { 0, 0 } };
	char mode[16] = "echo", peer_text[18];
	bool calibrated;

	cmdline_get("net.mode", mode, sizeof(mode));
	if (strcmp(mode, "echo") && strcmp(mode, "bench") && strcmp(mode, "reflect") && strcmp(mode, "pingpong"))
		inmate_fail(EXIT_CONFIG, "unknown net.mode=%s (echo, bench, reflect, pingpong)", mode);
	if (cmdline_get("net.peer", peer_text, sizeof(peer_text)) && !parse_mac(peer_text, peer))
		inmate_fail(EXIT_CONFIG, "net.peer=%s is not a MAC address like 02:00:00:aa:bb:02", peer_text);
	timeout_us = cmdline_get_u64("net.timeout_ms", 5000) * 1000;
	calibrated = timer_init();
	printk("virtio-net: mode %s, TSC %lu kHz%s\n", mode, tsc_khz, calibrated ? "" : " (assumed)");

	dma_pool_init(pool, sizeof(pool));
	virtio_init(&dev, "virtio-net", ids,
		    (1ULL << VIRTIO_NET_F_MAC) | (1ULL << VIRTIO_NET_F_STATUS) | (1ULL << VIRTIO_NET_F_MTU));
	if (!virtio_has(&dev, VIRTIO_NET_F_MAC))
		inmate_fail(EXIT_FEATURE, "device does not offer VIRTIO_NET_F_MAC");
	virtio_setup_msix(&dev);
	rxq = virtio_setup_queue(&dev, 0, 256);
	txq = virtio_setup_queue(&dev, 1, 256);
	rxbuf = dma_alloc((u64)rxq->size * BUF_SIZE, 4096);
	ntx = txq->size;
	txbuf = dma_alloc((u64)ntx * BUF_SIZE, 4096);
	for (u16 i = 0; i < ntx; i++)
		tx_free[tx_nfree++] = ntx - 1 - i;

	for (int k = 0; k < 6; k++)
		mac[k] = virtio_cfg8(&dev, CFG_MAC + k);
	printk("virtio-net: MAC %02x:%02x:%02x:%02x:%02x:%02x\n", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
	if (virtio_has(&dev, VIRTIO_NET_F_MTU))
		printk("virtio-net: MTU %u\n", virtio_cfg16(&dev, CFG_MTU));
	virtio_driver_ok(&dev);
	/* The whole receive ring, one 2 KiB buffer (header + frame) each. */
	for (u16 i = 0; i < rxq->size; i++)
		rx_post(i);
	vq_kick(rxq);
	if (virtio_has(&dev, VIRTIO_NET_F_STATUS)) {
		u16 st = virtio_cfg16(&dev, CFG_STATUS);

		printk("virtio-net: link %s (status %#x)\n", st & VIRTIO_NET_S_LINK_UP ? "up" : "down", st);
	}

	if (!strcmp(mode, "bench"))
		mode_bench();
	else if (!strcmp(mode, "pingpong"))
		mode_pingpong();
	else if (!strcmp(mode, "reflect"))
		mode_reflect();
	else
		mode_echo();
	printk("virtio-net: rx %lu buffers used, tx %lu frames, notifies rx %lu tx %lu, indirect %lu\n",
	       rxq->completed, txq->completed, rxq->notifies, txq->notifies, txq->indirect_used);
}
