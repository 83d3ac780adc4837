#ifndef CDAEMON_H
#define CDAEMON_H
// Small non-variadic wrappers for the daemon side (Swift cannot call variadic C functions
// such as syscall/prctl/fcntl, and glibc's CMSG_* are macros).
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

// pidfd_open(2): a file descriptor that becomes readable when the process exits; works for
// processes that are not our children (VMMs re-adopted after a daemon restart). -1/errno on error.
int cdaemon_pidfd_open(pid_t pid);

// posix_spawn with argv/envp arrays (no shell), in a new session, with an empty signal mask
// and default dispositions for the signals the daemon handles. stdin is /dev/null; stdout and
// stderr are `out_fd`/`err_fd` (or inherited when -1). Returns 0 and the pid, or an errno.
int cdaemon_spawn(pid_t *pid, const char *path, char *const argv[], char *const envp[], int out_fd, int err_fd);
/// The same, with extra descriptors: fds[i] becomes descriptor 3 + i in the child.
int cdaemon_spawn_with_fds(pid_t *pid, const char *path, char *const argv[], char *const envp[], int out_fd, int err_fd,
			   const int *fds, int nfds);
/// cdaemon_spawn, with the child created directly in the cgroup (v2) open as `cgroup_fd`
/// (clone3 CLONE_INTO_CGROUP): no migration afterwards, which would wait for an RCU grace period
/// under the kernel's global cgroup lock. Returns 0 and the pid; a positive errno when the exec
/// failed; a negative errno when the child could not be created there (no clone3, not a cgroup
/// v2 directory: the caller then spawns normally). glibc 2.36 has no posix_spawn for it.
int cdaemon_spawn_into_cgroup(pid_t *pid, const char *path, char *const argv[], char *const envp[], int cgroup_fd);
/// The same, with fds[i] as descriptor 3 + i in the child (an incoming migration's stream).
int cdaemon_spawn_into_cgroup_with_fds(pid_t *pid, const char *path, char *const argv[], char *const envp[], int cgroup_fd,
				       const int *fds, int nfds);

// Sends `data` as one datagram to the unix socket at `path` (abstract when it starts with '@').
// Returns bytes sent or -1/errno. Used for $NOTIFY_SOCKET and the journal socket.
ssize_t cdaemon_send_datagram(int fd, const char *path, const void *data, size_t len);

// Sends an empty datagram carrying `passed_fd` (SCM_RIGHTS) to `path`: journald's memfd path
// for entries too large for one datagram.
ssize_t cdaemon_send_fd(int fd, const char *path, int passed_fd);

// memfd_create + seal helpers for the large-entry path.
int cdaemon_memfd(const char *name);
int cdaemon_seal_all(int fd);
int cdaemon_get_seals(int fd);
// A channel's shared memory (docs/channels.md): its size fixed for good, writes still allowed.
int cdaemon_seal_size(int fd);

// Sets SO_SNDBUF to `size` (best effort).
int cdaemon_set_sndbuf(int fd, int size);

// Sets O_NONBLOCK and FD_CLOEXEC.
int cdaemon_set_nonblock(int fd);
int cdaemon_set_cloexec(int fd);

// The peer's credentials of a connected unix socket (SO_PEERCRED).
int cdaemon_peer_uid(int fd, uid_t *uid, gid_t *gid, pid_t *pid);

// Terminal helpers for `rtvisorctl console`.
int cdaemon_tty_raw(int fd, void *saved, size_t saved_size);
int cdaemon_tty_restore(int fd, const void *saved);
size_t cdaemon_termios_size(void);



// Unix stream sockets by path: a listening socket (an existing socket file is replaced,
// mode set to `mode`), and a connected client. -1/errno on error. Both close-on-exec.
int cdaemon_listen_unix(const char *path, int backlog, unsigned mode);
int cdaemon_connect_unix(const char *path);

// pipe2(O_CLOEXEC|O_NONBLOCK) and accept4(SOCK_CLOEXEC|SOCK_NONBLOCK) (GNU extensions).
int cdaemon_pipe(int fds[2]);
int cdaemon_accept(int fd);

// A datagram socket bound to `path` ('@' = abstract), and a receive that also returns a file
// descriptor passed with SCM_RIGHTS (-1 when none): the receiving side of journald's and
// systemd's notify protocols, for tests.
int cdaemon_bind_datagram(const char *path);
ssize_t cdaemon_recv_with_fd(int fd, void *buf, size_t len, int *passed_fd);

// Disk copies for clones (docs/snapshot.md, "Clones"). ioctl(dst, FICLONE, src): `dst` shares
// all of `src`'s extents (copy on write); 0, or -1/errno (EOPNOTSUPP, EXDEV, EINVAL where the
// file system cannot). copy_file_range of [offset, offset + length) at the same offset in both
// files, looping until done; 0, or -1/errno.
int cdaemon_ficlone(int dst, int src);
int cdaemon_copy_range(int src, int dst, int64_t offset, int64_t length);
// lseek's SEEK_DATA and SEEK_HOLE (GNU extensions): the next data or hole offset at or after
// `offset`; -1/errno (ENXIO: no data after it).
int64_t cdaemon_seek_data(int fd, int64_t offset);
int64_t cdaemon_seek_hole(int fd, int64_t offset);
// TCP streams for live migration: a listening socket (backlog 1; host "" or "*" for every
// address) and a connected client, TCP_NODELAY, close-on-exec. -1/errno.
int cdaemon_listen_tcp(const char *host, const char *port);
int cdaemon_connect_tcp(const char *host, const char *port);
// The same listening socket with room for `backlog` connections (the metrics listener: many
// scrapers and browsers, not one migration).
int cdaemon_listen_tcp_backlog(const char *host, const char *port, int backlog);
#endif
