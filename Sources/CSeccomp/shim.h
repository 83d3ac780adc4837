// libseccomp (Debian libseccomp-dev) for the Sandbox module.
#include <seccomp.h>
