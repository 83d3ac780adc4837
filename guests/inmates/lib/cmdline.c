/*
 * cmdline.c - "key=value" words from the start_info command line.
 * The line is copied at boot (cmdline_init) because it lives in the VMM's
 * low memory, which e.g. the smp inmate reuses for its AP trampoline.
 */
#include "inmate.h"

#define CMDLINE_MAX 1024

static char cmdline_buf[CMDLINE_MAX];

void cmdline_init(const struct hvm_start_info *si);
void cmdline_init(const struct hvm_start_info *si)
{
	const char *src;
	size_t n = 0;

	/* Only the identity-mapped low 4 GiB is reachable. */
	if (!si || !si->cmdline_paddr || si->cmdline_paddr >= (1ULL << 32))
		return;
	src = (const char *)si->cmdline_paddr;
	while (n < CMDLINE_MAX - 1 && src[n]) {
		cmdline_buf[n] = src[n];
		n++;
	}
	cmdline_buf[n] = '\0';
}

const char *cmdline(void)
{
	return cmdline_buf;
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

bool cmdline_get(const char *key, char *buf, size_t size)
{
	size_t klen = strlen(key);
	const char *p = cmdline_buf;

	while (*p) {
		const char *word;

		while (is_space(*p))
			p++;
		word = p;
		while (*p && !is_space(*p))
			p++;
		if (!strncmp(word, key, klen) && word[klen] == '=') {
			const char *v = word + klen + 1;
			size_t n = 0;

			while (v + n < p && n + 1 < size) {
				buf[n] = v[n];
				n++;
			}
			if (size)
				buf[n] = '\0';
			return true;	/* first occurrence wins */
		}
	}
	return false;
}

bool parse_u64(const char *s, u64 *out)
{
	unsigned int base = 10;
	u64 v = 0;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	}
	if (!*s)
		return false;
	for (; *s; s++) {
		unsigned int d;

		if (*s >= '0' && *s <= '9')
			d = *s - '0';
		else if (base == 16 && *s >= 'a' && *s <= 'f')
			d = *s - 'a' + 10;
		else if (base == 16 && *s >= 'A' && *s <= 'F')
			d = *s - 'A' + 10;
		else
			return false;
		v = v * base + d;
	}
	*out = v;
	return true;
}

u64 cmdline_get_u64(const char *key, u64 dflt)
{
	char buf[32];
	u64 v;

	if (!cmdline_get(key, buf, sizeof(buf)))
		return dflt;
	if (!parse_u64(buf, &v))
		inmate_fail(EXIT_FAIL, "bad number in %s=%s", key, buf);
	return v;
}
