#!/usr/bin/env python3
"""Build the benchmark initramfs for scripts/bench-io-linux.sh: the minimal Linux guest's
initramfs (scripts/build-guest-kernel.sh) with a second newc archive appended (the kernel unpacks
concatenated archives in order) that adds

  /usr/bin/fio, /usr/bin/iperf3           Debian's binaries (packages fio, iperf3)
  /lib64/ld-linux-x86-64.so.2, /lib/x86_64-linux-gnu/*   their shared libraries (ldd), where the
                                          loader finds them without ld.so.cache or LD_LIBRARY_PATH
  /lib/rtvisor-shim.so                    SysV shm and timerfd for fio (below)
  /checks/bench.sh                        guests/linux/bench/bench.sh (rtvisor.check=bench)

Debian's fio links every I/O engine it can (librados, librbd, libgfapi, libibverbs, libpmem, …:
84 MB with their dependencies). Those libraries are replaced by stubs: a shared object with the
same soname that defines exactly the symbols the kept objects import from it (functions trap if
called, data objects have the real size), and no dependencies. fio's psync engine never calls
them; the image stays at ~9 MB instead of ~90 MB (on the emulating development KVM, unpacking
the initramfs is emulated kernel code: ~8 s per MB). libcrypto (iperf3's optional
authentication) is stubbed the same way.

The guest kernel has neither SysV IPC nor timerfd (CONFIG_SYSVIPC and CONFIG_TIMERFD are off in
guests/linux/rtvisor.config); fio keeps its job table in a shmget() segment and its helper thread
sleeps on a timerfd (both assert on failure). So fio runs with LD_PRELOAD=/lib/rtvisor-shim.so,
which emulates both in user space (see SHIM below).

Output: <cache>/bench-linux/<key>/initramfs.cpio (+ manifest.txt), keyed by a sha256 over the
base initramfs, this script, the check script, and the files put in; prints that directory as
the last line."""
import argparse, hashlib, os, re, shutil, subprocess, sys, tempfile

KEEP = {"ld-linux-x86-64.so.2", "libc.so.6", "libm.so.6", "libz.so.1", "libaio.so.1", "libnuma.so.1",
        "libiperf.so.0", "libsctp.so.1", "libgcc_s.so.1",
        # cyclictest (rt-tests): glibc's compatibility stubs, kept as they are (a few KB).
        "librt.so.1", "libpthread.so.0"}
# glibc dlopens libgcc_s for pthread_exit/pthread_cancel unwinding: keep it even if nothing links it.
EXTRA = ["/lib/x86_64-linux-gnu/libgcc_s.so.1"]
BINARIES = ["/usr/bin/fio", "/usr/bin/iperf3"]
LIBDIR = "/lib/x86_64-linux-gnu"

SHIM = r"""
/* What fio needs from kernel features the minimal guest kernel leaves out, emulated in user space
   (LD_PRELOAD=/lib/rtvisor-shim.so; enough for fio, not general implementations):
   - SysV shared memory (CONFIG_SYSVIPC off): fio keeps its job table in a shmget() segment; each
     segment is a shared anonymous mapping (shared with children across fork).
   - timerfd (CONFIG_TIMERFD off): fio's helper thread sleeps in select() on a timerfd; here the
     "timerfd" is one end of a Unix socket pair, and a thread per timer writes the 8-byte expiration
     count into it when the timer expires (pthread_cond_timedwait on CLOCK_MONOTONIC, i.e. futex
     timeouts, which the kernel has). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/timerfd.h>

#define MAXSEG 64
static struct { void *addr; size_t size; int used; } seg[MAXSEG];
static pthread_mutex_t seg_lock = PTHREAD_MUTEX_INITIALIZER;

int shmget(key_t key, size_t size, int flg) {
	(void)key; (void)flg;
	int id = -1;
	pthread_mutex_lock(&seg_lock);
	for (int i = 0; i < MAXSEG; i++)
		if (!seg[i].used) {
			void *p = mmap(0, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
			if (p == MAP_FAILED) { errno = ENOMEM; break; }
			seg[i].addr = p; seg[i].size = size; seg[i].used = 1;
			id = i + 1;
			break;
		}
	pthread_mutex_unlock(&seg_lock);
	if (id < 0 && errno != ENOMEM) errno = ENOSPC;
	return id;
}
void *shmat(int id, const void *addr, int flg) {
	(void)addr; (void)flg;
	if (id < 1 || id > MAXSEG || !seg[id - 1].used) { errno = EINVAL; return (void *)-1; }
	return seg[id - 1].addr;
}
int shmdt(const void *addr) { (void)addr; return 0; }
int shmctl(int id, int cmd, struct shmid_ds *buf) {
	if (id < 1 || id > MAXSEG || !seg[id - 1].used) { errno = EINVAL; return -1; }
	if (cmd == IPC_STAT && buf) { memset(buf, 0, sizeof *buf); buf->shm_segsz = seg[id - 1].size; buf->shm_nattch = 1; }
	return 0; /* IPC_RMID: the mapping goes away with the process */
}

#define MAXTFD 16
static struct tfd {
	int rfd, wfd, armed, started;
	struct timespec deadline, interval;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t thread;
} tfd[MAXTFD];
static int ntfd;
static pthread_mutex_t tfd_lock = PTHREAD_MUTEX_INITIALIZER;

static void ts_add(struct timespec *a, const struct timespec *b) {
	a->tv_sec += b->tv_sec; a->tv_nsec += b->tv_nsec;
	if (a->tv_nsec >= 1000000000L) { a->tv_sec++; a->tv_nsec -= 1000000000L; }
}
static int ts_le(const struct timespec *a, const struct timespec *b) {
	return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec <= b->tv_nsec);
}
static void *tfd_thread(void *arg) {
	struct tfd *t = arg;
	pthread_mutex_lock(&t->lock);
	for (;;) {
		while (!t->armed) pthread_cond_wait(&t->cond, &t->lock);
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (!ts_le(&t->deadline, &now)) {
			pthread_cond_timedwait(&t->cond, &t->lock, &t->deadline);
			continue; /* re-check: expired, re-armed or disarmed */
		}
		if (t->interval.tv_sec || t->interval.tv_nsec) ts_add(&t->deadline, &t->interval);
		else t->armed = 0;
		uint64_t one = 1;
		/* MSG_NOSIGNAL: fio closes the timerfd before it exits, a SIGPIPE would kill it. */
		if (send(t->wfd, &one, sizeof one, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) { /* full or closed: harmless */ }
	}
	return 0;
}
static struct tfd *tfd_find(int fd) {
	for (int i = 0; i < ntfd; i++) if (tfd[i].rfd == fd) return &tfd[i];
	return 0;
}
int timerfd_create(int clockid, int flags) {
	(void)clockid;
	int p[2];
	pthread_mutex_lock(&tfd_lock);
	if (ntfd == MAXTFD || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p) < 0) { pthread_mutex_unlock(&tfd_lock); errno = EMFILE; return -1; }
	if (flags & TFD_NONBLOCK) fcntl(p[0], F_SETFL, O_NONBLOCK);
	struct tfd *t = &tfd[ntfd++];
	memset(t, 0, sizeof *t);
	t->rfd = p[0]; t->wfd = p[1];
	pthread_mutex_init(&t->lock, 0);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&t->cond, &ca);
	pthread_mutex_unlock(&tfd_lock);
	return t->rfd;
}
int timerfd_settime(int fd, int flags, const struct itimerspec *nv, struct itimerspec *old) {
	struct tfd *t = tfd_find(fd);
	if (!t) { errno = EINVAL; return -1; }
	pthread_mutex_lock(&t->lock);
	if (old) memset(old, 0, sizeof *old);
	t->armed = nv->it_value.tv_sec || nv->it_value.tv_nsec;
	t->interval = nv->it_interval;
	if (flags & TFD_TIMER_ABSTIME) t->deadline = nv->it_value;
	else { clock_gettime(CLOCK_MONOTONIC, &t->deadline); ts_add(&t->deadline, &nv->it_value); }
	if (!t->started && pthread_create(&t->thread, 0, tfd_thread, t) == 0) t->started = 1;
	pthread_cond_signal(&t->cond);
	pthread_mutex_unlock(&t->lock);
	return 0;
}
int timerfd_gettime(int fd, struct itimerspec *cur) {
	if (!tfd_find(fd)) { errno = EINVAL; return -1; }
	memset(cur, 0, sizeof *cur);
	return 0;
}
"""


def sh(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def ldd(path):
    """{soname: resolved path} for path's whole dependency closure."""
    out = {}
    for line in sh("ldd", path).splitlines():
        m = re.match(r"\s*(\S+) => (/\S+)", line)
        if m:
            out[m.group(1)] = m.group(2)
        m = re.match(r"\s*(/\S*ld-linux\S*) ", line)
        if m:
            out[os.path.basename(m.group(1))] = m.group(1)
    return out


def needed(path):
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(\S+)\]", sh("readelf", "-dW", path))


def dynsyms(path):
    """[(name, version or None, type, size, defined)] from the dynamic symbol table."""
    syms = []
    for line in sh("readelf", "--dyn-syms", "-W", path).splitlines():
        f = line.split()
        if len(f) < 8 or not f[0].endswith(":") or f[3] == "SECTION":
            continue
        name, _, ver = f[7].partition("@")
        if not name:
            continue
        size = int(f[2], 0) if f[2].isdigit() or f[2].startswith("0x") else 0
        syms.append((name, ver.lstrip("@") or None, f[3], size, f[6] != "UND"))
    return syms


def stub_source(real, wanted):
    """C source and version script of a stub for the library `real`: every (name, version) in
    `wanted` (the kept objects' imports) that `real` defines. glibc's loader insists that a
    versioned import is found in a library that defines that version."""
    defs = {}
    for name, ver, typ, size, defined in dynsyms(real):
        if defined and name in wanted and typ in ("FUNC", "IFUNC", "OBJECT", "NOTYPE"):
            t, z = defs.get(name, (typ, 0))
            defs[name] = (t, max(z, size))
    src = ["/* stub for %s: generated by scripts/bench/bench_linux_initramfs.py */" % os.path.basename(real)]
    versions = set()
    n = 0
    for name, (typ, size) in sorted(defs.items()):
        first = True
        for ver in sorted(wanted[name], key=lambda v: v or ""):
            local = name if ver is None else f"rtvstub_{n}"
            n += 1
            if typ == "OBJECT":
                src.append(f"char {local}[{max(size, 1)}] __attribute__((aligned(16)));")
            else:
                src.append(f"void {local}(void) {{ __builtin_trap(); }}")
            if ver is not None:
                versions.add(ver)
                src.append(f'__asm__(".symver {local}, {name}{"@@" if first else "@"}{ver}");')
                first = False
    vscript = "".join(f"{v} {{ }};\n" for v in sorted(versions)) or "{ global: *; };\n"
    return "\n".join(src) + "\n", vscript, len(defs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--guest", required=True, help="scripts/build-guest-kernel.sh output directory")
    ap.add_argument("--check", required=True, help="the check script, installed as /checks/NAME.sh")
    ap.add_argument("--check-name", default="bench", help="NAME for --check (rtvisor.check=NAME; default bench)")
    ap.add_argument("--binary", action="append", help="binaries to add with their libraries (default: fio and iperf3)")
    ap.add_argument("--cache", default=os.path.join(os.environ.get("RTVISOR_CACHE") or
                                                    os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                                 os.path.expanduser("~/.cache"), "rtvisor"), "bench-linux"))
    a = ap.parse_args()
    base = os.path.join(a.guest, "initramfs.cpio")
    binaries = a.binary or BINARIES

    closure = {}
    for b in binaries:
        closure.update(ldd(b))
    kept = {n: p for n, p in closure.items() if n in KEEP}
    for p in EXTRA:
        kept[os.path.basename(p)] = p
    kept_objs = binaries + sorted(kept.values())
    stubbed = sorted({n for o in kept_objs for n in needed(o)} - set(kept))

    h = hashlib.sha256()
    h.update(a.check_name.encode() + b"\0")
    for p in [base, a.check, os.path.abspath(__file__)] + kept_objs + [closure[s] for s in stubbed]:
        h.update(p.encode() + b"\0")
        with open(p, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    key = h.hexdigest()
    out = os.path.join(a.cache, key)
    if os.path.exists(os.path.join(out, "initramfs.cpio")):
        print(out)
        return

    os.makedirs(a.cache, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=a.cache)
    try:
        root = os.path.join(tmp, "root")
        for d in ("usr/bin", "lib64", "lib" + LIBDIR[4:], "checks"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        for b in binaries:
            os.makedirs(os.path.dirname(os.path.join(root, b[1:])), exist_ok=True)
            shutil.copy(b, os.path.join(root, b[1:]))
        for n, p in kept.items():
            dst = os.path.join(root, "lib64" if n.startswith("ld-linux") else LIBDIR[1:], n)
            shutil.copy(p, dst)
        # Imports of the kept objects: name -> {version or None}.
        wanted = {}
        for o in kept_objs:
            for name, ver, typ, size, defined in dynsyms(o):
                if not defined:
                    wanted.setdefault(name, set()).add(ver)
        manifest = [f"# rtvisor bench-linux initramfs (scripts/bench/bench_linux_initramfs.py)", f"key: {key}",
                    f"base: {base} sha256 {hashlib.sha256(open(base, 'rb').read()).hexdigest()}"]
        pkgs = [sh("dpkg-query", "-S", b).split(":")[0] for b in binaries] + ["libc6"]
        for pkg in pkgs:
            manifest.append(f"{pkg}: {sh('dpkg-query', '-W', '-f=${Version}', pkg)}")
        for s in stubbed:
            src, vscript, count = stub_source(closure[s], wanted)
            c, v = os.path.join(tmp, s + ".c"), os.path.join(tmp, s + ".map")
            with open(c, "w") as f:
                f.write(src)
            with open(v, "w") as f:
                f.write(vscript)
            subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-nostdlib", "-fno-builtin", f"-Wl,-soname,{s}",
                            f"-Wl,--version-script={v}", "-o", os.path.join(root, LIBDIR[1:], s), c], check=True)
            manifest.append(f"stub: {s} ({count} symbols; real {closure[s]})")
        c = os.path.join(tmp, "shim.c")
        with open(c, "w") as f:
            f.write(SHIM)
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", os.path.join(root, "lib/rtvisor-shim.so"), c], check=True)
        shutil.copy(a.check, os.path.join(root, f"checks/{a.check_name}.sh"))
        for dp, dns, fns in os.walk(root):
            for n in dns + fns:
                os.utime(os.path.join(dp, n), (0, 0), follow_symlinks=False)
        files = sorted(os.path.relpath(os.path.join(dp, n), root) for dp, dns, fns in os.walk(root) for n in dns + fns)
        extra = subprocess.run(["cpio", "-o", "-H", "newc", "--owner", "0:0", "--reproducible", "--quiet"],
                               input=("\n".join(files) + "\n").encode(), cwd=root, capture_output=True, check=True).stdout
        with open(os.path.join(tmp, "initramfs.cpio"), "wb") as f:
            f.write(open(base, "rb").read())
            f.write(extra)
        manifest.append(f"size: {os.path.getsize(os.path.join(tmp, 'initramfs.cpio'))} bytes (base {os.path.getsize(base)})")
        manifest += ["files:"] + [f"  {x}" for x in files]
        with open(os.path.join(tmp, "manifest.txt"), "w") as f:
            f.write("\n".join(manifest) + "\n")
        shutil.rmtree(root)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"bench initramfs: {out}", file=sys.stderr)
    print(out)


if __name__ == "__main__":
    main()
