// Non-KVM Linux interfaces the device backends need and Swift cannot call directly:
// ioctl request numbers built by macros, and non-variadic wrappers (Swift cannot call variadic
// C functions such as ioctl(2) and fcntl(2)).
#ifndef CLINUX_H
#define CLINUX_H

#include <stdint.h>
#include <sys/types.h>
#include <linux/if_tun.h>
#include <linux/if.h>

extern const unsigned long CLINUX_TUNSETIFF;
extern const unsigned long CLINUX_TUNGETIFF;
extern const unsigned long CLINUX_TUNSETVNETHDRSZ;
extern const unsigned long CLINUX_TUNSETOFFLOAD;
extern const unsigned long CLINUX_TUNGETFEATURES;
extern const unsigned long CLINUX_BLKGETSIZE64;
extern const unsigned long CLINUX_SIOCGIFHWADDR;

// Each returns the call's result; on -1 errno is left for the caller.
int clinux_ioctl_ptr(int fd, unsigned long request, void *arg);
/// One byte of an open file description lock (F_OFD_SETLK, or F_OFD_GETLK with `test_only`):
/// 0 taken (or free, when testing), 1 another description holds a conflicting lock, -errno.
int clinux_ofd_lock(int fd, long long start, int exclusive, int test_only);
// Releases every OFD lock of fd's open file description: 0 or -errno.
int clinux_ofd_unlock_all(int fd);
int clinux_ioctl_val(int fd, unsigned long request, unsigned long arg);

/// Opens a TAP device named `name` (empty: the kernel picks tapN) with IFF_NO_PI|IFF_VNET_HDR on
/// the open /dev/net/tun descriptor `fd`; writes the final name to `out_name` (IFNAMSIZ bytes).
int clinux_tun_attach(int fd, const char *name, char *out_name);

/// rtnetlink (NETLINK_ROUTE), for taps on bridges (Sources/HostNetwork): message types, flags and
/// link attributes from <linux/rtnetlink.h> and <linux/if_link.h>, whose enums Swift would import
/// with varying types.
extern const uint16_t CLINUX_RTM_NEWLINK, CLINUX_RTM_GETLINK, CLINUX_RTM_SETLINK, CLINUX_NLMSG_ERROR;
extern const uint16_t CLINUX_NLM_F_REQUEST, CLINUX_NLM_F_ACK;
extern const uint16_t CLINUX_IFLA_IFNAME, CLINUX_IFLA_MTU, CLINUX_IFLA_MASTER, CLINUX_IFLA_LINKINFO, CLINUX_IFLA_INFO_KIND;
extern const uint32_t CLINUX_IFF_UP;
/// Sends one request on a fresh NETLINK_ROUTE socket and receives one reply datagram into
/// `reply` (at most `max` bytes): the reply's length, or -1 with errno (EMSGSIZE when it was
/// longer than `max`). Retries EINTR; gives up after 5 s without an answer (EAGAIN).
long clinux_netlink_route_exchange(const void *request, unsigned long len, void *reply, unsigned long max);

/// fallocate(2) modes, as ints (macros in <linux/falloc.h>).
extern const int CLINUX_FALLOC_PUNCH_HOLE_KEEP_SIZE;
extern const int CLINUX_FALLOC_ZERO_RANGE;
int clinux_fallocate(int fd, int mode, int64_t offset, int64_t length);
/// O_DIRECT (only visible to C with _GNU_SOURCE).
extern const int CLINUX_O_DIRECT;
/// O_PATH (_GNU_SOURCE too): a descriptor that names a file without opening it for I/O; a
/// FIFO or device found through it is never opened.
extern const int CLINUX_O_PATH;

/// epoll and eventfd without the packed struct epoll_event crossing into Swift.
int clinux_epoll_create(void);
int clinux_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token);
/// Waits for up to `max` events, filling tokens[i] and events[i]; returns the count or -1.
int clinux_epoll_wait(int epfd, uint64_t *tokens, uint32_t *events, int max, int timeout_ms);
int clinux_eventfd(int nonblocking);
extern const int CLINUX_EPOLL_CTL_ADD, CLINUX_EPOLL_CTL_MOD, CLINUX_EPOLL_CTL_DEL;
extern const uint32_t CLINUX_EPOLLIN, CLINUX_EPOLLOUT, CLINUX_EPOLLERR, CLINUX_EPOLLHUP, CLINUX_EPOLLET;

/// Names the calling thread (at most 15 characters are kept).
void clinux_set_thread_name(const char *name);

/// Scheduling of one thread (tid 0: the caller), without cpu_set_t macros crossing into Swift.
int clinux_gettid(void);
/// Restricts thread `tid` to cpus[0..<count]; returns 0 or -1 with errno.
int clinux_set_affinity(int tid, const int *cpus, int count);
/// Writes up to `max` CPU numbers of thread `tid`'s affinity into cpus; returns the count or -1.
int clinux_get_affinity(int tid, int *cpus, int max);
/// SCHED_FIFO at `priority` (SCHED_OTHER when priority is 0); 0 or -1 with errno.
int clinux_set_fifo(int tid, int priority);
/// The thread's policy (SCHED_OTHER 0, SCHED_FIFO 1, …) and priority; 0 or -1.
int clinux_get_scheduler(int tid, int *policy, int *priority);
/// mlockall(MCL_CURRENT | MCL_FUTURE).
int clinux_lock_all_memory(void);

/// The VMM jail (Sources/Sandbox/Jail.swift, docs/sandbox.md). Each returns 0 or -1 with errno
/// and, in `step` (at least 128 bytes), which operation failed.
/// A private mount namespace whose root is a fresh tmpfs at `root`, showing only `paths` (bind
/// mounts at the same paths; read-only where `readonly[i]`). The caller must be single-threaded.
int clinux_enter_mount_jail(const char *root, const char *const *paths, const int *readonly, int count, char *step);
/// Supplementary groups cleared, gid/uid switched (all threads: glibc's setxid broadcast), the
/// capability bounding set emptied first, no_new_privs set.
int clinux_drop_privileges(unsigned uid, unsigned gid, char *step);
/// posix_spawn of `path` in a new session with `stdin_fd` as its standard input.
int clinux_spawn_with_stdin(pid_t *pid, const char *path, char *const argv[], int stdin_fd);
/// The calling thread's CapEff/CapPrm/CapBnd words (from capget / prctl) for checks.
int clinux_capabilities(uint64_t *effective, uint64_t *permitted);
// A stream socket's bytes with descriptors riding along (SCM_RIGHTS): the VMM control socket
// passes the snapshot files this way. send: all of buf (the descriptors with its first byte),
// bytes sent or -1/errno. recv: bytes received (0 at end), up to `max` descriptors into `fds`
// (close-on-exec), their count in *nfds; -1/errno. Both retry EINTR. At most 64 descriptors.
long clinux_send_with_fds(int fd, const void *buf, unsigned long len, const int *fds, int nfds);
long clinux_recv_with_fds(int fd, void *buf, unsigned long len, int *fds, int max, int *nfds);
/// memfd_create(name, MFD_CLOEXEC [| MFD_HUGETLB | MFD_HUGE_2MB]): guest RAM another process can map.
int clinux_memfd(const char *name, int huge_2mb);

#endif
