/* Functional capability probes: `vz-agent --probe NAME [ARGS...]` (docs/agent.md, "Probes").
 *
 * Each probe does the thing the capability promises, prints one evidence line on stdout and
 * returns 0, or prints one reason line on stderr and returns nonzero (PROBE_FAIL). Probes that
 * mount or create devices do so in a private mount namespace and a scratch directory under /tmp,
 * and undo what they made, so a probe leaves the guest as it found it. */
#ifndef VZ_PROBES_H
#define VZ_PROBES_H

#include <stddef.h>
#include <sys/types.h>

#define PROBE_FAIL 1
#define PROBE_USAGE 2

struct probe {
    const char *name;
    int (*run)(int argc, char **argv); /* argv: the probe's own arguments */
    const char *args;                  /* usage of the arguments, "" for none */
};

int run_probe(int argc, char **argv);

/* probes.c: helpers shared by the probe files */
int probe_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int probe_fail_errno(const char *what); /* "WHAT: strerror(errno)" */
int private_mounts(void);               /* unshare(CLONE_NEWNS) + make / private */
int scratch_dir(char *out, size_t len); /* mkdtemp under /tmp */
int write_all(int fd, const void *p, size_t n);
int read_file_str(const char *path, char *out, size_t len);
int write_file_str(const char *path, const char *text);
int nth_field(const char *line, int n, char *out, size_t len); /* whitespace-separated field N */

/* probes_net.c */
int probe_netns(int argc, char **argv);
int probe_nfsd(int argc, char **argv);
int probe_vsock(int argc, char **argv);

/* probes_blk.c */
int probe_btrfs(int argc, char **argv);
int probe_dm_linear(int argc, char **argv);
int probe_dm_crypt(int argc, char **argv);

#endif
