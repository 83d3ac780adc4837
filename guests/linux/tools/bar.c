/* bar: reads and writes a PCI memory BAR from user space through its sysfs
 * resourceN file (mmap), for the minimal Linux's checks: busybox has no way to
 * map a file.  Statically linked into the initramfs by build-guest-kernel.sh.
 *
 *   bar FILE write OFFSET TEXT          TEXT and a NUL at OFFSET
 *   bar FILE read OFFSET MAX            the NUL-terminated text at OFFSET
 *   bar FILE wait OFFSET TEXT SECONDS   until TEXT is at OFFSET (exit 1 at timeout)
 *   bar FILE reg OFFSET                 the 32-bit register at OFFSET, in decimal
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int usage(void)
{
	fputs("usage: bar FILE write OFFSET TEXT | read OFFSET MAX | wait OFFSET TEXT SECONDS | reg OFFSET\n", stderr);
	return 2;
}

int main(int argc, char **argv)
{
	if (argc < 4)
		return usage();
	int fd = open(argv[1], O_RDWR | O_SYNC);
	if (fd < 0) {
		perror(argv[1]);
		return 2;
	}
	struct stat st;
	if (fstat(fd, &st) != 0 || st.st_size <= 0) {
		fprintf(stderr, "%s: no size\n", argv[1]);
		return 2;
	}
	size_t size = (size_t)st.st_size;
	volatile char *bar = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (bar == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	size_t off = strtoul(argv[3], NULL, 0);
	if (off >= size)
		return usage();
	if (strcmp(argv[2], "reg") == 0) {
		if (off % 4 || off + 4 > size)
			return usage();
		printf("%u\n", *(volatile unsigned int *)(bar + off));
		return 0;
	}
	if (argc < 5)
		return usage();
	if (strcmp(argv[2], "write") == 0) {
		size_t n = strlen(argv[4]);
		if (off + n + 1 > size)
			return usage();
		for (size_t i = 0; i < n; i++)
			bar[off + i] = argv[4][i];
		bar[off + n] = 0;
		return 0;
	}
	if (strcmp(argv[2], "read") == 0) {
		size_t max = strtoul(argv[4], NULL, 0);
		for (size_t i = 0; i < max && off + i < size && bar[off + i]; i++)
			putchar(bar[off + i]);
		putchar('\n');
		return 0;
	}
	if (strcmp(argv[2], "wait") == 0 && argc >= 6) {
		size_t n = strlen(argv[4]);
		time_t end = time(NULL) + atoi(argv[5]);
		if (off + n > size)
			return usage();
		do {
			size_t i = 0;
			while (i < n && bar[off + i] == argv[4][i])
				i++;
			if (i == n)
				return 0;
			usleep(1000);
		} while (time(NULL) < end);
		return 1;
	}
	return usage();
}
