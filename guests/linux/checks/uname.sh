# rtvisor.check=uname: trivial example check.
# Checks are sourced by /init (PID 1, busybox ash) between
# RTVISOR_CHECK_BEGIN and RTVISOR_CHECK_END; their status is the status of
# the last command, or `return N`.  Never `exit` (that would end PID 1).
# $RTVISOR_CMDLINE holds the kernel command line; /proc is mounted.
# Every process costs seconds on the emulating KVM: prefer builtins.
uname -r
