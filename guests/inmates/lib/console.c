/*
 * console.c - COM1 output and a small printf.
 *
 * The UART is used as the VMM and QEMU leave it: no baud/LCR programming,
 * since a virtual 16550 ignores it and every port access costs an exit.
 * One LSR read per byte (THR empty, bit 5), bounded so a missing or stuck
 * UART slows us down once instead of hanging us.
 *
 * Supported formats: %% %c %s %d %i %u %x %X %p with flags '0' '-' '#',
 * a width, and length modifiers l, ll, z.
 */
#include "inmate.h"

#define LSR_THRE 0x20

static spinlock_t console_lock;
static bool lsr_stuck;

static void serial_putc(char c)
{
	if (!lsr_stuck) {
		int tries = 0;

		while (!(inb(COM1_PORT + 5) & LSR_THRE)) {
			if (++tries == 10000) {
				lsr_stuck = true;	/* stop polling from now on */
				break;
			}
			cpu_relax();
		}
	}
	outb(COM1_PORT, c);
}

void console_putc(char c)
{
	spin_lock(&console_lock);
	serial_putc(c);
	spin_unlock(&console_lock);
}

void console_force_unlock(void);
void console_force_unlock(void)
{
	spin_unlock(&console_lock);
}

/* ---- formatting ----------------------------------------------------------- */

struct out {
	char *buf;
	size_t size, len;	/* len counts every char, even those cut off */
};

static void out_c(struct out *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static void out_num(struct out *o, u64 v, unsigned int base, bool neg, bool upper,
		    bool alt, int width, char pad, bool left)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	char tmp[24];
	int n = 0, total;

	do {
		tmp[n++] = digits[v % base];
		v /= base;
	} while (v);
	total = n + (neg ? 1 : 0) + (alt ? 2 : 0);
	if (!left && pad == ' ')
		for (; total < width; width--)
			out_c(o, ' ');
	if (neg)
		out_c(o, '-');
	if (alt) {
		out_c(o, '0');
		out_c(o, upper ? 'X' : 'x');
	}
	if (!left && pad == '0')
		for (; total < width; width--)
			out_c(o, '0');
	while (n)
		out_c(o, tmp[--n]);
	if (left)
		for (; total < width; width--)
			out_c(o, ' ');
}

int vsnprintk(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct out o = { buf, size, 0 };

	for (; *fmt; fmt++) {
		bool left = false, alt = false;
		char pad = ' ';
		int width = 0, lng = 0;

		if (*fmt != '%') {
			out_c(&o, *fmt);
			continue;
		}
		for (fmt++;; fmt++) {
			if (*fmt == '0')
				pad = '0';
			else if (*fmt == '-')
				left = true;
			else if (*fmt == '#')
				alt = true;
			else
				break;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l' || *fmt == 'z') {
			lng++;
			fmt++;
		}

		switch (*fmt) {
		case 'c':
			out_c(&o, (char)va_arg(ap, int));
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			int len;

			if (!s)
				s = "(null)";
			len = (int)strlen(s);
			if (!left)
				for (; len < width; width--)
					out_c(&o, ' ');
			while (*s)
				out_c(&o, *s++);
			if (left)
				for (; len < width; width--)
					out_c(&o, ' ');
			break;
		}
		case 'd':
		case 'i': {
			long long v = lng ? va_arg(ap, long long) : va_arg(ap, int);

			out_num(&o, v < 0 ? -(u64)v : (u64)v, 10, v < 0, false, false, width, pad, left);
			break;
		}
		case 'u':
		case 'x':
		case 'X': {
			u64 v = lng ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned int);

			out_num(&o, v, *fmt == 'u' ? 10 : 16, false, *fmt == 'X', alt && *fmt != 'u',
				width, pad, left);
			break;
		}
		case 'p':
			out_num(&o, (u64)va_arg(ap, void *), 16, false, false, true, width, pad, left);
			break;
		case '%':
			out_c(&o, '%');
			break;
		case '\0':
			fmt--;	/* lone '%' at the end */
			break;
		default:
			out_c(&o, '%');
			out_c(&o, *fmt);
		}
	}
	if (o.size)
		o.buf[o.len < o.size ? o.len : o.size - 1] = '\0';
	return (int)o.len;
}

int snprintk(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintk(buf, size, fmt, ap);
	va_end(ap);
	return n;
}

int vprintk(const char *fmt, va_list ap)
{
	char buf[256];
	int n = vsnprintk(buf, sizeof(buf), fmt, ap);

	/* One lock per message, so lines from different CPUs don't interleave. */
	spin_lock(&console_lock);
	for (const char *p = buf; *p; p++)
		serial_putc(*p);
	spin_unlock(&console_lock);
	return n;
}

int printk(const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vprintk(fmt, ap);
	va_end(ap);
	return n;
}
