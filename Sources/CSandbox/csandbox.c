#define _GNU_SOURCE
#include "csandbox.h"
#include <errno.h>
#include <seccomp.h>
#include <sched.h>
#include <signal.h>
#include <linux/vfio.h>
#include <sys/prctl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define NAMES 512
static char names[NAMES][32];
static char program[32] = "rtvisor-vmm";
static char subject[160];
static int status_fd = -1;
static char process_kind[16];
static __thread char thread_label[32] = "unknown";
static __thread char thread_kind[16] = "unfiltered";

static void copy(char *dst, size_t size, const char *src) {
	size_t n = strlen(src);
	if (n >= size) n = size - 1;
	memcpy(dst, src, n);
	dst[n] = 0;
}

void csandbox_set_process_kind(const char *kind) {
	copy(process_kind, sizeof process_kind, kind);
}

void csandbox_set_thread_label(const char *label, const char *kind) {
	copy(thread_label, sizeof thread_label, label);
	copy(thread_kind, sizeof thread_kind, kind);
}

// Appends without libc formatting (the handler may run with any lock held).
static size_t put(char *buf, size_t at, size_t size, const char *s) {
	while (*s && at + 1 < size) buf[at++] = *s++;
	buf[at] = 0;
	return at;
}
static size_t put_num(char *buf, size_t at, size_t size, long v) {
	char tmp[24];
	int n = 0;
	unsigned long u = v < 0 ? (unsigned long)-v : (unsigned long)v;
	do { tmp[n++] = (char)('0' + u % 10); u /= 10; } while (u && n < 23);
	if (v < 0) tmp[n++] = '-';
	while (n && at + 1 < size) buf[at++] = tmp[--n];
	buf[at] = 0;
	return at;
}

static void write_all(int fd, const char *p, size_t n) {
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w <= 0) return;
		p += w; n -= (size_t)w;
	}
}

static void on_sigsys(int sig, siginfo_t *si, void *ctx) {
	(void)sig;
	int saved = errno;
	int nr = si->si_syscall;
	const char *name = nr >= 0 && nr < NAMES && names[nr][0] ? names[nr] : "?";
	char what[256];
	size_t n = 0;
	n = put(what, n, sizeof what, "seccomp: thread ");
	if (process_kind[0] && strcmp(thread_kind, "unfiltered") == 0) {
		// A thread of a process-wide filter (rtvisord's API front): it inherited the filter but
		// not the label; its name (prctl is in that filter) and tid say which one it was.
		char comm[17] = "";
		prctl(PR_GET_NAME, comm, 0, 0, 0);
		n = put(what, n, sizeof what, comm[0] ? comm : "?");
		n = put(what, n, sizeof what, " tid ");
		n = put_num(what, n, sizeof what, (long)syscall(SYS_gettid));
		n = put(what, n, sizeof what, " (");
		n = put(what, n, sizeof what, process_kind);
	} else {
		n = put(what, n, sizeof what, thread_label);
		n = put(what, n, sizeof what, " (");
		n = put(what, n, sizeof what, thread_kind);
	}
	n = put(what, n, sizeof what, " filter) of ");
	n = put(what, n, sizeof what, subject);
	n = put(what, n, sizeof what, " made forbidden syscall ");
	n = put_num(what, n, sizeof what, nr);
	n = put(what, n, sizeof what, " (");
	n = put(what, n, sizeof what, name);
	n = put(what, n, sizeof what, ")\n");
	char line[300];
	size_t m = put(line, 0, sizeof line, program);
	m = put(line, m, sizeof line, ": ");
	m = put(line, m, sizeof line, what);
	write_all(STDERR_FILENO, line, m);
	if (status_fd >= 0) {
		// The exit-status file's format, "STATUS REASON": 128 + SIGSYS, as the shell reports it.
		m = put_num(line, 0, sizeof line, 128 + SIGSYS);
		m = put(line, m, sizeof line, " ");
		m = put(line, m, sizeof line, what);
		write_all(status_fd, line, m);
	}
	errno = saved;
	// SA_RESETHAND made SIGSYS's action the default again: the same call, trapped again,
	// now kills the whole process by SIGSYS (the filter never lets it run).
	greg_t *r = ((ucontext_t *)ctx)->uc_mcontext.gregs;
	syscall(nr, r[REG_RDI], r[REG_RSI], r[REG_RDX], r[REG_R10], r[REG_R8], r[REG_R9]);
	// Unreachable unless the syscall was allowed after all (it was not executed the first time).
	raise(SIGSYS);
	_exit(128 + SIGSYS);
}

int csandbox_install_sigsys_handler(const char *vm_name, int fd) {
	char s[sizeof subject];
	size_t n = put(s, 0, sizeof s, "VM ");
	put(s, n, sizeof s, vm_name);
	return csandbox_install_sigsys_report("rtvisor-vmm", s, fd);
}

int csandbox_install_sigsys_report(const char *program_name, const char *what, int fd) {
	for (int i = 0; i < NAMES; i++) {
		char *s = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, i);
		if (s) { copy(names[i], sizeof names[i], s); free(s); }
	}
	copy(program, sizeof program, program_name);
	copy(subject, sizeof subject, what);
	status_fd = fd;
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_sigsys;
	sa.sa_flags = SA_SIGINFO | SA_RESETHAND | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	return sigaction(SIGSYS, &sa, NULL);
}

const uint64_t CSANDBOX_CLONE_THREAD = CLONE_THREAD, CSANDBOX_PR_SET_NAME = PR_SET_NAME, CSANDBOX_PR_GET_NAME = PR_GET_NAME,
	CSANDBOX_PR_SET_NO_NEW_PRIVS = PR_SET_NO_NEW_PRIVS, CSANDBOX_PR_SET_SECCOMP = PR_SET_SECCOMP, CSANDBOX_VFIO_DEVICE_SET_IRQS = VFIO_DEVICE_SET_IRQS;

uint32_t csandbox_act_allow(void) { return SCMP_ACT_ALLOW; }
uint32_t csandbox_act_trap(void) { return SCMP_ACT_TRAP; }
uint32_t csandbox_act_log(void) { return SCMP_ACT_LOG; }
uint32_t csandbox_act_errno(uint16_t err) { return SCMP_ACT_ERRNO(err); }

int csandbox_syscall_number(const char *name) { return seccomp_syscall_resolve_name(name); }

void csandbox_malloc_churn(void) {
	// Below the mmap threshold, so the blocks come from this thread's arena and freeing them
	// shrinks its heap (glibc then checks /proc/sys/vm/overcommit_memory once per process).
	for (int round = 0; round < 50; round++) {
		void *blocks[64];
		for (int i = 0; i < 64; i++) { blocks[i] = malloc(100000); if (blocks[i]) ((volatile char *)blocks[i])[0] = 1; }
		for (int i = 63; i >= 0; i--) free(blocks[i]);
	}
}

long csandbox_forbidden_socket(void) {
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) return -errno;
	close(fd);
	return fd;
}

// ---- compiled filters (docs/sandbox.md, "Filters are compiled once") ----
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>

long csandbox_export_program(void *ctx, uint8_t **out) {
	*out = NULL;
	int fd = memfd_create("rtvisor-seccomp", MFD_CLOEXEC);
	if (fd < 0) return -errno;
	int rc = seccomp_export_bpf((scmp_filter_ctx)ctx, fd);
	if (rc < 0) { close(fd); return rc; }
	off_t size = lseek(fd, 0, SEEK_END);
	if (size <= 0 || size % sizeof(struct sock_filter) != 0 || size > BPF_MAXINSNS * (off_t)sizeof(struct sock_filter)) {
		close(fd);
		return -EINVAL;
	}
	uint8_t *buf = malloc((size_t)size);
	if (!buf) { close(fd); return -ENOMEM; }
	off_t got = 0;
	while (got < size) {
		ssize_t n = pread(fd, buf + got, (size_t)(size - got), got);
		if (n < 0 && errno == EINTR) continue;
		if (n <= 0) { int e = n < 0 ? errno : EIO; free(buf); close(fd); return -e; }
		got += n;
	}
	close(fd);
	*out = buf;
	return (long)size;
}

int csandbox_load_program(const uint8_t *program, size_t length) {
	if (length == 0 || length % sizeof(struct sock_filter) != 0 || length / sizeof(struct sock_filter) > BPF_MAXINSNS) return -EINVAL;
	struct sock_fprog prog = { .len = (unsigned short)(length / sizeof(struct sock_filter)), .filter = (struct sock_filter *)program };
	// As libseccomp's seccomp_load: without CAP_SYS_ADMIN a filter needs no_new_privs.
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -errno;
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) == 0) return 0;
	// As libseccomp does: where seccomp(2) itself is filtered (systemd's SystemCallFilter=
	// answers it with EPERM) or missing, the older prctl interface loads the same program.
	if (errno != EPERM && errno != ENOSYS) return -errno;
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0) return -errno;
	return 0;
}
