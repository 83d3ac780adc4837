#define _GNU_SOURCE
#include "clinux.h"
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <errno.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

const unsigned long CLINUX_TUNSETIFF = TUNSETIFF;
const unsigned long CLINUX_TUNGETIFF = TUNGETIFF;
const unsigned long CLINUX_TUNSETVNETHDRSZ = TUNSETVNETHDRSZ;
const unsigned long CLINUX_TUNSETOFFLOAD = TUNSETOFFLOAD;
const unsigned long CLINUX_TUNGETFEATURES = TUNGETFEATURES;
const unsigned long CLINUX_BLKGETSIZE64 = BLKGETSIZE64;
const unsigned long CLINUX_SIOCGIFHWADDR = SIOCGIFHWADDR;
const int CLINUX_FALLOC_PUNCH_HOLE_KEEP_SIZE = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
const int CLINUX_FALLOC_ZERO_RANGE = FALLOC_FL_ZERO_RANGE;

int clinux_ioctl_ptr(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }
int clinux_ioctl_val(int fd, unsigned long request, unsigned long arg) { return ioctl(fd, request, arg); }

int clinux_tun_attach(int fd, const char *name, char *out_name) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    int rc = ioctl(fd, TUNSETIFF, &ifr);
    if (rc == 0 && out_name) memcpy(out_name, ifr.ifr_name, IFNAMSIZ);
    return rc;
}

void clinux_set_thread_name(const char *name) { prctl(PR_SET_NAME, name, 0, 0, 0); }

const int CLINUX_EPOLL_CTL_ADD = EPOLL_CTL_ADD, CLINUX_EPOLL_CTL_MOD = EPOLL_CTL_MOD, CLINUX_EPOLL_CTL_DEL = EPOLL_CTL_DEL;
const uint32_t CLINUX_EPOLLIN = EPOLLIN, CLINUX_EPOLLOUT = EPOLLOUT, CLINUX_EPOLLERR = EPOLLERR,
    CLINUX_EPOLLHUP = EPOLLHUP, CLINUX_EPOLLET = EPOLLET;

int clinux_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int clinux_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token) {
    struct epoll_event ev = { .events = events, .data.u64 = token };
    return epoll_ctl(epfd, op, fd, &ev);
}

int clinux_epoll_wait(int epfd, uint64_t *tokens, uint32_t *events, int max, int timeout_ms) {
    struct epoll_event evs[16];
    if (max > 16) max = 16;
    int n = epoll_wait(epfd, evs, max, timeout_ms);
    for (int i = 0; i < n; i++) { tokens[i] = evs[i].data.u64; events[i] = evs[i].events; }
    return n;
}

int clinux_eventfd(int nonblocking) { return eventfd(0, EFD_CLOEXEC | (nonblocking ? EFD_NONBLOCK : 0)); }

int clinux_fallocate(int fd, int mode, int64_t offset, int64_t length) { return fallocate(fd, mode, offset, length); }
const int CLINUX_O_DIRECT = O_DIRECT;
const int CLINUX_O_PATH = O_PATH;

int clinux_gettid(void) { return (int)syscall(SYS_gettid); }

int clinux_set_affinity(int tid, const int *cpus, int count) {
	cpu_set_t set;
	CPU_ZERO(&set);
	for (int i = 0; i < count; i++) {
		if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) { errno = EINVAL; return -1; }
		CPU_SET(cpus[i], &set);
	}
	return sched_setaffinity(tid, sizeof set, &set);
}

int clinux_get_affinity(int tid, int *cpus, int max) {
	cpu_set_t set;
	if (sched_getaffinity(tid, sizeof set, &set) != 0) return -1;
	int n = 0;
	for (int c = 0; c < CPU_SETSIZE && n < max; c++)
		if (CPU_ISSET(c, &set)) cpus[n++] = c;
	return n;
}

int clinux_set_fifo(int tid, int priority) {
	struct sched_param p = { .sched_priority = priority };
	return sched_setscheduler(tid, priority > 0 ? SCHED_FIFO : SCHED_OTHER, &p);
}

int clinux_get_scheduler(int tid, int *policy, int *priority) {
	struct sched_param p;
	int pol = sched_getscheduler(tid);
	if (pol < 0 || sched_getparam(tid, &p) != 0) return -1;
	*policy = pol;
	*priority = p.sched_priority;
	return 0;
}

int clinux_lock_all_memory(void) { return mlockall(MCL_CURRENT | MCL_FUTURE); }

int clinux_ofd_lock(int fd, long long start, int exclusive, int test_only) {
	struct flock fl;
	memset(&fl, 0, sizeof fl);
	fl.l_type = exclusive ? F_WRLCK : F_RDLCK;
	fl.l_whence = SEEK_SET;
	fl.l_start = (off_t)start;
	fl.l_len = 1;
	if (test_only) {
		if (fcntl(fd, F_OFD_GETLK, &fl) != 0) return -errno;
		return fl.l_type == F_UNLCK ? 0 : 1;
	}
	if (fcntl(fd, F_OFD_SETLK, &fl) == 0) return 0;
	return (errno == EAGAIN || errno == EACCES) ? 1 : -errno;
}

/* Drops every OFD lock this open file description holds (a migration hands the image over). */
int clinux_ofd_unlock_all(int fd) {
	struct flock fl;
	memset(&fl, 0, sizeof fl);
	fl.l_type = F_UNLCK;
	fl.l_whence = SEEK_SET;
	fl.l_start = 0;
	fl.l_len = 0;
	return fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : -errno;
}

#include <sys/socket.h>

/* SCM_MAX_FD: a channel passes its memory and up to 16 × 8 doorbells in one message. */
#define CLINUX_MAX_PASSED_FDS 253

long clinux_send_with_fds(int fd, const void *buf, unsigned long len, const int *fds, int nfds)
{
	union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int) * CLINUX_MAX_PASSED_FDS)]; } control;
	unsigned long done = 0;
	if (nfds < 0 || nfds > CLINUX_MAX_PASSED_FDS || (nfds > 0 && len == 0)) { errno = EINVAL; return -1; }
	while (done < len) {
		struct iovec iov = { .iov_base = (char *)buf + done, .iov_len = len - done };
		struct msghdr mh;
		ssize_t r;
		memset(&mh, 0, sizeof(mh));
		mh.msg_iov = &iov;
		mh.msg_iovlen = 1;
		if (done == 0 && nfds > 0) {
			struct cmsghdr *c;
			memset(&control, 0, sizeof(control));
			mh.msg_control = control.buf;
			mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
			c = CMSG_FIRSTHDR(&mh);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
			memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
		}
		do r = sendmsg(fd, &mh, MSG_NOSIGNAL);
		while (r < 0 && errno == EINTR);
		if (r < 0)
			return -1;
		done += (unsigned long)r;
	}
	return (long)done;
}

long clinux_recv_with_fds(int fd, void *buf, unsigned long len, int *fds, int max, int *nfds)
{
	union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int) * CLINUX_MAX_PASSED_FDS)]; } control;
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	struct msghdr mh;
	struct cmsghdr *c;
	ssize_t r;

	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = control.buf;
	mh.msg_controllen = sizeof(control.buf);
	*nfds = 0;
	do r = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -1;
	for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		for (int i = 0; i < n; i++) {
			int passed;
			memcpy(&passed, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (*nfds < max)
				fds[(*nfds)++] = passed;
			else
				close(passed); /* more than the caller takes: never leak them */
		}
	}
	return r;
}

int clinux_memfd(const char *name, int huge_2mb)
{
	unsigned flags = MFD_CLOEXEC;
	if (huge_2mb)
		flags |= MFD_HUGETLB | (21U << 26); /* MFD_HUGE_2MB */
	return memfd_create(name, flags);
}

const uint16_t CLINUX_RTM_NEWLINK = RTM_NEWLINK, CLINUX_RTM_GETLINK = RTM_GETLINK, CLINUX_RTM_SETLINK = RTM_SETLINK,
    CLINUX_NLMSG_ERROR = NLMSG_ERROR;
const uint16_t CLINUX_NLM_F_REQUEST = NLM_F_REQUEST, CLINUX_NLM_F_ACK = NLM_F_ACK;
const uint16_t CLINUX_IFLA_IFNAME = IFLA_IFNAME, CLINUX_IFLA_MTU = IFLA_MTU, CLINUX_IFLA_MASTER = IFLA_MASTER,
    CLINUX_IFLA_LINKINFO = IFLA_LINKINFO, CLINUX_IFLA_INFO_KIND = IFLA_INFO_KIND;
const uint32_t CLINUX_IFF_UP = IFF_UP;

long clinux_netlink_route_exchange(const void *request, unsigned long len, void *reply, unsigned long max)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) return -1;
    struct timeval timeout = { .tv_sec = 5 };
    struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
    long n = -1;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) != 0) goto out;
    do n = sendto(fd, request, len, 0, (struct sockaddr *)&kernel, sizeof kernel); while (n < 0 && errno == EINTR);
    if (n < 0) goto out;
    if ((unsigned long)n != len) { errno = EMSGSIZE; n = -1; goto out; }
    // MSG_TRUNC: the datagram's real length, so a reply longer than `max` is an error, not cut.
    do n = recv(fd, reply, max, MSG_TRUNC); while (n < 0 && errno == EINTR);
    if (n > (long)max) { errno = EMSGSIZE; n = -1; }
out:;
    int saved = errno;
    close(fd);
    errno = saved;
    return n;
}
