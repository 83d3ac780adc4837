// The async-signal-safe half of the sandbox (docs/sandbox.md): the SIGSYS handler that reports a
// forbidden syscall, and the per-thread label it names. Filters themselves are built in Swift.
#ifndef CSANDBOX_H
#define CSANDBOX_H
#include <stddef.h>
#include <stdint.h>

/// Prepares the report: syscall names (resolved now, not in the handler), the VM name, the
/// status file descriptor (-1: none), and installs the SIGSYS handler (SA_RESETHAND: the
/// second SIGSYS, from re-issuing the syscall, kills the process with the default action).
int csandbox_install_sigsys_handler(const char *vm_name, int status_fd);
/// The same for any confined process: the report reads "PROGRAM: seccomp: thread T (KIND filter)
/// of SUBJECT made forbidden syscall N (NAME)" (the VMM's: "rtvisor-vmm", "VM NAME").
int csandbox_install_sigsys_report(const char *program, const char *subject, int status_fd);

/// The calling thread's label and kind for the report (copied into thread-local storage).
void csandbox_set_thread_label(const char *label, const char *kind);
/// For a process whose threads all inherit one filter: the kind the report names for threads
/// that set no label (their name and tid identify them).
void csandbox_set_process_kind(const char *kind);

/// Argument values the filters check (from headers Swift's Glibc module does not expose).
extern const uint64_t CSANDBOX_CLONE_THREAD, CSANDBOX_PR_SET_NAME, CSANDBOX_PR_GET_NAME, CSANDBOX_PR_SET_NO_NEW_PRIVS, CSANDBOX_PR_SET_SECCOMP;
/// VFIO_DEVICE_SET_IRQS (the guest enabling MSI/MSI-X/INTx on a passed-through function).
extern const uint64_t CSANDBOX_VFIO_DEVICE_SET_IRQS;

/// SCMP_ACT_* values (SCMP_ACT_ERRNO is a function-like macro Swift cannot import).
uint32_t csandbox_act_allow(void);
uint32_t csandbox_act_trap(void);
uint32_t csandbox_act_log(void);
uint32_t csandbox_act_errno(uint16_t err);

/// The syscall number of `name` on this architecture, or a negative value if unknown.
int csandbox_syscall_number(const char *name);

/// The classic-BPF program libseccomp generated for `ctx` (a scmp_filter_ctx), in a malloc'd
/// buffer the caller frees: its length in bytes (a multiple of 8), or -errno.
long csandbox_export_program(void *ctx, uint8_t **out);
/// Installs a compiled program on the calling thread: PR_SET_NO_NEW_PRIVS, then
/// seccomp(SECCOMP_SET_MODE_FILTER) (or prctl(PR_SET_SECCOMP) where seccomp(2) is refused),
/// nothing compiled. 0 or -errno.
int csandbox_load_program(const uint8_t *program, size_t length);

/// Used by a test hook: allocates and frees 6 MB in 100 kB blocks, 50 times, on the calling thread.
void csandbox_malloc_churn(void);

/// Used by the test hook: socket(AF_INET, SOCK_STREAM, 0), returning its result (-errno on error).
long csandbox_forbidden_socket(void);
#endif
