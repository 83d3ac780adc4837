#define _GNU_SOURCE
#include "cdaemon.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef POSIX_SPAWN_SETSID
#define POSIX_SPAWN_SETSID 0x80
#endif

int cdaemon_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

/* The signals the daemon handles, reset to their default action in every child it starts. */
static const int child_default_signals[] = { SIGHUP, SIGINT, SIGTERM, SIGCHLD, SIGUSR1, SIGUSR2, SIGPIPE };
#define CHILD_DEFAULT_SIGNALS (sizeof(child_default_signals) / sizeof(child_default_signals[0]))

int cdaemon_spawn(pid_t *pid, const char *path, char *const argv[], char *const envp[], int out_fd, int err_fd)
{
	return cdaemon_spawn_with_fds(pid, path, argv, envp, out_fd, err_fd, NULL, 0);
}

int cdaemon_spawn_with_fds(pid_t *pid, const char *path, char *const argv[], char *const envp[], int out_fd, int err_fd,
			   const int *fds, int nfds)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t empty, defaults;
	int r;

	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&attr);
	sigemptyset(&empty);
	sigemptyset(&defaults);
	for (size_t i = 0; i < CHILD_DEFAULT_SIGNALS; i++)
		sigaddset(&defaults, child_default_signals[i]);
	posix_spawnattr_setsigmask(&attr, &empty);
	posix_spawnattr_setsigdefault(&attr, &defaults);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSID);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	if (out_fd >= 0)
		posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
	if (err_fd >= 0)
		posix_spawn_file_actions_adddup2(&fa, err_fd, 2);
	/* The caller's descriptors become 3, 4, …; they must not already be any of 0…2+nfds
	 * (adddup2 onto itself would leave O_CLOEXEC set). */
	for (int i = 0; i < nfds; i++)
		posix_spawn_file_actions_adddup2(&fa, fds[i], 3 + i);
	r = posix_spawn(pid, path, &fa, &attr, argv, envp);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	return r;
}

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
struct cdaemon_clone_args {
	uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup;
};

int cdaemon_spawn_into_cgroup(pid_t *pid, const char *path, char *const argv[], char *const envp[], int cgroup_fd)
{
	return cdaemon_spawn_into_cgroup_with_fds(pid, path, argv, envp, cgroup_fd, NULL, 0);
}

int cdaemon_spawn_into_cgroup_with_fds(pid_t *pid, const char *path, char *const argv[], char *const envp[], int cgroup_fd,
				       const int *fds, int nfds)
{
	/* The child reports a failed exec through this pipe; a successful exec closes it. */
	int report[2];
	if (pipe2(report, O_CLOEXEC) != 0)
		return -errno;
	struct cdaemon_clone_args args;
	memset(&args, 0, sizeof(args));
	args.flags = CLONE_INTO_CGROUP;
	args.exit_signal = SIGCHLD;
	args.cgroup = (uint64_t)cgroup_fd;
	long r = syscall(SYS_clone3, &args, sizeof(args));
	if (r < 0) {
		int e = errno;
		close(report[0]);
		close(report[1]);
		return -e;
	}
	if (r == 0) {
		/* The child of a multithreaded parent: async-signal-safe calls only. */
		sigset_t empty;
		sigemptyset(&empty);
		for (size_t i = 0; i < CHILD_DEFAULT_SIGNALS; i++)
			signal(child_default_signals[i], SIG_DFL);
		sigprocmask(SIG_SETMASK, &empty, NULL);
		setsid();
		int null = open("/dev/null", O_RDONLY);
		if (null >= 0 && null != 0) {
			dup2(null, 0);
			close(null);
		}
		/* As in cdaemon_spawn_with_fds: fds[i] becomes 3 + i without close-on-exec (the caller
		 * keeps them above 2 + nfds, so no dup2 has its own target as source). */
		for (int i = 0; i < nfds; i++)
			if (dup2(fds[i], 3 + i) < 0)
				_exit(127);
		execve(path, argv, envp);
		int e = errno;
		(void)!write(report[1], &e, sizeof(e));
		_exit(127);
	}
	close(report[1]);
	int child_errno = 0;
	ssize_t n;
	do
		n = read(report[0], &child_errno, sizeof(child_errno));
	while (n < 0 && errno == EINTR);
	close(report[0]);
	if (n == (ssize_t)sizeof(child_errno)) {
		int status;
		while (waitpid((pid_t)r, &status, 0) < 0 && errno == EINTR)
			;
		return child_errno;
	}
	*pid = (pid_t)r;
	return 0;
}

static socklen_t fill_addr(struct sockaddr_un *sa, const char *path)
{
	size_t n = strlen(path);
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (n >= sizeof(sa->sun_path))
		n = sizeof(sa->sun_path) - 1;
	memcpy(sa->sun_path, path, n);
	if (path[0] == '@') {
		sa->sun_path[0] = 0;	/* abstract namespace: no trailing NUL counted */
		return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
	}
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
}

ssize_t cdaemon_send_datagram(int fd, const char *path, const void *data, size_t len)
{
	struct sockaddr_un sa;
	socklen_t sl = fill_addr(&sa, path);
	ssize_t r;
	do r = sendto(fd, data, len, MSG_NOSIGNAL, (struct sockaddr *)&sa, sl);
	while (r < 0 && errno == EINTR);
	return r;
}

ssize_t cdaemon_send_fd(int fd, const char *path, int passed_fd)
{
	struct sockaddr_un sa;
	socklen_t sl = fill_addr(&sa, path);
	union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } control;
	struct msghdr mh;
	struct cmsghdr *c;
	ssize_t r;

	memset(&mh, 0, sizeof(mh));
	memset(&control, 0, sizeof(control));
	mh.msg_name = &sa;
	mh.msg_namelen = sl;
	mh.msg_control = control.buf;
	mh.msg_controllen = sizeof(control.buf);
	c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &passed_fd, sizeof(int));
	do r = sendmsg(fd, &mh, MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
	return r;
}

int cdaemon_memfd(const char *name) { return memfd_create(name, MFD_ALLOW_SEALING | MFD_CLOEXEC); }

int cdaemon_seal_all(int fd)
{
	return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
}

int cdaemon_get_seals(int fd) { return fcntl(fd, F_GET_SEALS); }

int cdaemon_seal_size(int fd)
{
	return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
}

int cdaemon_set_sndbuf(int fd, int size) { return setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size)); }

int cdaemon_set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

int cdaemon_set_cloexec(int fd)
{
	int fl = fcntl(fd, F_GETFD);
	return fl < 0 ? -1 : fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
}

int cdaemon_peer_uid(int fd, uid_t *uid, gid_t *gid, pid_t *pid)
{
	struct ucred cr;
	socklen_t l = sizeof(cr);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &l) < 0)
		return -1;
	*uid = cr.uid; *gid = cr.gid; *pid = cr.pid;
	return 0;
}

size_t cdaemon_termios_size(void) { return sizeof(struct termios); }

int cdaemon_tty_raw(int fd, void *saved, size_t saved_size)
{
	struct termios t;
	if (saved_size < sizeof(t) || tcgetattr(fd, &t) < 0)
		return -1;
	memcpy(saved, &t, sizeof(t));
	cfmakeraw(&t);
	return tcsetattr(fd, TCSANOW, &t);
}

int cdaemon_tty_restore(int fd, const void *saved)
{
	return tcsetattr(fd, TCSANOW, (const struct termios *)saved);
}

/* Closes fd after a failed step and returns -1 with that step's errno (close may change it). */
static int close_failed(int fd)
{
	int e = errno;
	close(fd);
	errno = e;
	return -1;
}

/* A stream socket and the address of path for it; ENAMETOOLONG for a path sun_path cannot hold. */
static int stream_socket(const char *path, struct sockaddr_un *sa, socklen_t *sl)
{
	if (strlen(path) >= sizeof(sa->sun_path)) { errno = ENAMETOOLONG; return -1; }
	*sl = fill_addr(sa, path);
	return socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
}

int cdaemon_listen_unix(const char *path, int backlog, unsigned mode)
{
	struct sockaddr_un sa;
	socklen_t sl;
	int fd = stream_socket(path, &sa, &sl);

	if (fd < 0)
		return -1;
	unlink(path);
	if (bind(fd, (struct sockaddr *)&sa, sl) < 0 || chmod(path, mode) < 0 || listen(fd, backlog) < 0)
		return close_failed(fd);
	return fd;
}

int cdaemon_connect_unix(const char *path)
{
	struct sockaddr_un sa;
	socklen_t sl;
	int fd = stream_socket(path, &sa, &sl);

	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, sl) < 0)
		return close_failed(fd);
	return fd;
}

int cdaemon_pipe(int fds[2]) { return pipe2(fds, O_CLOEXEC | O_NONBLOCK); }

int cdaemon_accept(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK); }

int cdaemon_bind_datagram(const char *path)
{
	struct sockaddr_un sa;
	socklen_t sl = fill_addr(&sa, path);
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	if (path[0] != '@')
		unlink(path);
	if (bind(fd, (struct sockaddr *)&sa, sl) < 0)
		return close_failed(fd);
	return fd;
}

ssize_t cdaemon_recv_with_fd(int fd, void *buf, size_t len, int *passed_fd)
{
	union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } control;
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	struct msghdr mh;
	struct cmsghdr *c;
	ssize_t r;

	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = control.buf;
	mh.msg_controllen = sizeof(control.buf);
	*passed_fd = -1;
	do r = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return r;
	for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
			memcpy(passed_fd, CMSG_DATA(c), sizeof(int));
	return r;
}

int cdaemon_ficlone(int dst, int src) { return ioctl(dst, FICLONE, src); }

/* read/write, for file pairs copy_file_range refuses (across file systems before 5.3, or of
 * different types since 5.19). */
static int copy_range_by_hand(int src, int dst, int64_t offset, int64_t left)
{
	enum { chunk = 1 << 20 };
	char *buf = malloc(chunk);

	if (!buf)
		return -1;
	while (left > 0) {
		ssize_t n = pread(src, buf, left < chunk ? (size_t)left : chunk, offset);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n == 0)
				errno = EIO;
			free(buf);
			return -1;
		}
		for (ssize_t done = 0; done < n;) {
			ssize_t w = pwrite(dst, buf + done, (size_t)(n - done), offset + done);

			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0) {
				free(buf);
				return -1;
			}
			done += w;
		}
		offset += n;
		left -= n;
	}
	free(buf);
	return 0;
}

int cdaemon_copy_range(int src, int dst, int64_t offset, int64_t length)
{
	loff_t in = offset, out = offset;
	int64_t left = length;

	while (left > 0) {
		ssize_t n = copy_file_range(src, &in, dst, &out, (size_t)left, 0);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)
				return copy_range_by_hand(src, dst, (int64_t)in, left);
			return -1;
		}
		if (n == 0) {
			/* The source ended early (shrunk meanwhile). */
			errno = EIO;
			return -1;
		}
		left -= n;
	}
	return 0;
}

int64_t cdaemon_seek_data(int fd, int64_t offset) { return lseek(fd, offset, SEEK_DATA); }
int64_t cdaemon_seek_hole(int fd, int64_t offset) { return lseek(fd, offset, SEEK_HOLE); }

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

/* TCP for live migration: a listening socket on host:port (host "" or "*": every address) and
 * a client connected to host:port. -1 with errno (getaddrinfo failures: EHOSTUNREACH). */
/* backlog 0: connect; otherwise bind and listen with that backlog. */
static int tcp_socket(const char *host, const char *port, int backlog)
{
	int listening = backlog > 0;
	struct addrinfo hints, *res, *ai;
	int fd = -1, one = 1, saved = EHOSTUNREACH;

	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = listening ? AI_PASSIVE : 0;
	if (getaddrinfo((host[0] && strcmp(host, "*")) ? host : NULL, port, &hints, &res) != 0) {
		errno = EHOSTUNREACH;
		return -1;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0) { saved = errno; continue; }
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (listening) {
			setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
			if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, backlog) == 0) break;
		} else if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
			break;
		}
		saved = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) errno = saved;
	return fd;
}

int cdaemon_listen_tcp(const char *host, const char *port) { return tcp_socket(host, port, 1); }
int cdaemon_listen_tcp_backlog(const char *host, const char *port, int backlog) { return tcp_socket(host, port, backlog > 0 ? backlog : 1); }
int cdaemon_connect_tcp(const char *host, const char *port) { return tcp_socket(host, port, 0); }
