/* Shared state of the agent's event loop. */
#ifndef VZ_AGENT_H
#define VZ_AGENT_H

#include <stdint.h>
#include <sys/types.h>

#include "buf.h"
#include "protocol.h"

#ifndef VZ_AGENT_VERSION
#define VZ_AGENT_VERSION "0.0.0-dev"
#endif

#define MAX_CONNS 32
#define MAX_EXECS 128
#define OUT_HIGH_WATER (1u << 20)   /* stop reading children's pipes above this much queued output */
#define OUT_HARD_LIMIT (64u << 20)  /* a peer this far behind is dropped */
#define STDIN_LIMIT (8u << 20)      /* per-exec queued stdin */
#define CHUNK 32768u                /* output chunk size per read */
#define FILE_LIMIT (512u * 1024u)   /* read_file / write_file size limit */
#define EVIDENCE_TAIL 4096u
#define PROBE_TIMEOUT_MS 20000u
#define ENTROPY_MIN 16u              /* RESTORED: bytes of host entropy accepted */
#define ENTROPY_MAX 512u
#define EXIT_GRACE_MS 2000          /* after the child is reaped, wait this long for its pipes' EOF */

enum conn_kind { CONN_STREAM, CONN_SERIAL, CONN_STDIO };

struct conn {
    int used;
    enum conn_kind kind;
    int in_fd, out_fd;
    const char *transport;
    struct buf in, out;
    int closing;     /* flush out, then close */
    int hup;         /* serial only: host end not connected */
    int eof;         /* peer half-closed: finish its execs, flush, then close */
    int64_t closing_deadline;
};

struct exec {
    int used;
    struct conn *conn;  /* NULL once its connection has gone */
    uint32_t id;
    int probe;
    pid_t pid;
    int in_fd, out_fd, err_fd;
    struct buf stdin_q;
    int stdin_eof;
    int paused;          /* the host asked us to stop reading its output (FLOW) */
    int pty_fd;          /* TTY exec: the terminal's master (in_fd and out_fd are dups of it); else -1 */
    int reaped, status, timed_out, exec_errno;
    int64_t deadline, reaped_at;
    char name[64];
    char message[400]; /* why the exec failed (exec_errno != 0) */
    struct buf evidence;  /* probe: combined output, trimmed to the tail */
};

extern struct conn g_conns[MAX_CONNS];
extern struct exec g_execs[MAX_EXECS];
extern int g_allow_poweroff; /* guest mode: POWEROFF and RESTORED allowed (never in the host test modes) */
extern int64_t g_start_boottime_ns, g_start_monotonic_ns;

int64_t now_ms(void);
int64_t clock_ns(int clk);
void send_frame(struct conn *c, const struct buf *frame);
void send_error(struct conn *c, uint32_t id, uint32_t code, const char *msg);
void set_nonblock(int fd);

/* mounts.c: vz-agent --mount-api | --mount-root (the init's mounts, docs/guest.md "Init") */
int mounts_main(int argc, char **argv);

/* exec.c */
struct exec *exec_start(struct conn *c, uint32_t id, const struct vz_exec_req *r, int probe,
                        const char **err, int *err_errno);
struct exec *exec_find(struct conn *c, uint32_t id);
void exec_queue_stdin(struct exec *e, const uint8_t *p, size_t n, int eof);
void exec_reap_all(void);
void exec_detach_conn(struct conn *c);
void exec_tick(void);
void exec_write_stdin(struct exec *e);
void exec_read_pipe(struct exec *e, int stream);
int exec_count(const struct conn *c);

/* pty.c */
int pty_open(int *master, char *slave, size_t slave_len, uint16_t rows, uint16_t cols);
int pty_resize(int master, uint16_t rows, uint16_t cols);

/* forward.c: connections to 127.0.0.1:PORT in the guest (or a container's netns) */
#define MAX_FWDS 256
#define FWD_QUEUE_LIMIT (1u << 20) /* host data not yet written to the guest socket */
#define FWD_CHUNK (128u << 10)     /* guest socket bytes read per pass (one FORWARD_RECV) */
struct fwd {
    int used;
    struct conn *conn;
    uint32_t id;
    int fd;
    uint16_t port;
    int connecting; /* non-blocking connect in progress: OK/ERROR not sent yet */
    int paused;     /* FLOW: stop reading the guest socket */
    int host_eof;   /* the host shut down its write side: shutdown(SHUT_WR) once q drained */
    int wr_shut, rd_eof;
    struct buf q;
};
extern struct fwd g_fwds[MAX_FWDS];
void fwd_open(struct conn *c, uint32_t id, const struct vz_simple_req *r);
void fwd_data(struct conn *c, uint32_t id, const struct vz_simple_req *r);
void fwd_close(struct conn *c, uint32_t id);
struct fwd *fwd_find(struct conn *c, uint32_t id);
void fwd_io(struct fwd *f, short revents);
short fwd_events(const struct fwd *f);
void fwd_detach_conn(struct conn *c);

/* ops.c */
void handle_frame(struct conn *c, const struct vz_frame *f);

/* files.c: vz-agent --in-root ROOT --extract DEST | --create PATH (docs/oci.md, "Copying files") */
int files_main(int argc, char **argv);

#endif
