// The VMM jail: a private mount namespace showing only what the VM needs, and the switch to an
// unprivileged uid without capabilities. Raw syscalls where glibc adds nothing; the uid switch
// uses glibc's set*id so every thread of the process changes together.
#define _GNU_SOURCE
#include "clinux.h"
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FAIL(...) do { int e = errno; snprintf(step, 128, __VA_ARGS__); errno = e; return -1; } while (0)

// mkdir -p under the new root for `path` (a directory, or the parent of a file).
static int make_dirs(const char *path) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) { errno = ENAMETOOLONG; return -1; }
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
    return 0;
}

int clinux_enter_mount_jail(const char *root, const char *const *paths, const int *readonly, int count, char *step) {
    if (unshare(CLONE_NEWNS) != 0) FAIL("unshare(CLONE_NEWNS)");
    // Nothing we mount may propagate back to the host's namespace.
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) FAIL("mount --make-rprivate /");
    if (mount("rtvisor-jail", root, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=1m") != 0) FAIL("mount tmpfs on %s", root);
    for (int i = 0; i < count; i++) {
        struct stat st;
        if (stat(paths[i], &st) != 0) FAIL("stat %s", paths[i]);
        char target[4096];
        if (snprintf(target, sizeof target, "%s%s", root, paths[i]) >= (int)sizeof target) { errno = ENAMETOOLONG; FAIL("%s", paths[i]); }
        if (S_ISDIR(st.st_mode)) {
            if (make_dirs(target) != 0) FAIL("mkdir %s", target);
        } else {
            char parent[4096];
            snprintf(parent, sizeof parent, "%s", target);
            char *slash = strrchr(parent, '/');
            if (slash && slash != parent) { *slash = 0; if (make_dirs(parent) != 0) FAIL("mkdir %s", parent); }
            int fd = open(target, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
            if (fd < 0) FAIL("create mount point %s", target);
            close(fd);
        }
        if (mount(paths[i], target, NULL, MS_BIND | MS_REC, NULL) != 0) FAIL("bind %s", paths[i]);
        if (readonly && readonly[i] &&
            mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID, NULL) != 0) FAIL("remount %s read-only", paths[i]);
    }
    // The tmpfs itself: read-only from here on.
    if (mount(NULL, root, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) FAIL("remount %s read-only", root);
    if (chdir(root) != 0) FAIL("chdir %s", root);
    if (syscall(SYS_pivot_root, ".", ".") != 0) FAIL("pivot_root %s", root);
    // The old root is stacked under the new one at "/": detach it.
    if (umount2(".", MNT_DETACH) != 0) FAIL("umount the old root");
    if (chdir("/") != 0) FAIL("chdir /");
    return 0;
}

int clinux_drop_privileges(unsigned uid, unsigned gid, char *step) {
    // The bounding set first: dropping needs CAP_SETPCAP, which the uid switch takes away.
    for (int cap = 0; cap <= 63; cap++) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) FAIL("PR_CAPBSET_DROP %d", cap);
    }
    if (setgroups(0, NULL) != 0) FAIL("setgroups(0)");
    if (setresgid(gid, gid, gid) != 0) FAIL("setresgid(%u)", gid);
    // From uid 0 to another uid with all three ids changed, the kernel clears the permitted,
    // effective and ambient sets (no SECBIT_KEEP_CAPS is set).
    if (setresuid(uid, uid, uid) != 0) FAIL("setresuid(%u)", uid);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) FAIL("PR_SET_NO_NEW_PRIVS");
    // Back to root must be impossible now.
    if (setresuid(0, 0, 0) == 0) { errno = EPERM; FAIL("uid 0 could be regained"); }
    return 0;
}

int clinux_capabilities(uint64_t *effective, uint64_t *permitted) {
    struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct d[2];
    memset(d, 0, sizeof d);
    if (syscall(SYS_capget, &h, d) != 0) return -1;
    *effective = (uint64_t)d[1].effective << 32 | d[0].effective;
    *permitted = (uint64_t)d[1].permitted << 32 | d[0].permitted;
    return 0;
}

#include <spawn.h>
#include <signal.h>
extern char **environ;

int clinux_spawn_with_stdin(pid_t *pid, const char *path, char *const argv[], int stdin_fd) {
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_adddup2(&fa, stdin_fd, 0);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    // Its own session: a terminal's Ctrl-C for the VMM must not reach the helper.
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK);
    int rc = posix_spawn(pid, path, &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) { errno = rc; return -1; }
    return 0;
}
