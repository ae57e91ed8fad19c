/* Request handlers: one function per message type. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>
#include <linux/random.h>

#include "agent.h"

#ifndef SYS_io_uring_setup
#define SYS_io_uring_setup 425 /* same number on every arch since Linux 5.1 */
#endif

static struct buf g_frame; /* scratch: one reply is built at a time */
static char g_arena_mem[VZ_MAX_PAYLOAD + 2 * (VZ_MAX_ARGS + VZ_MAX_ENV) + 64];

static size_t reply_begin(uint8_t type, uint32_t id)
{
    buf_clear(&g_frame);
    return frame_begin(&g_frame, type, id);
}

static void reply_end(struct conn *c, size_t s)
{
    frame_end(&g_frame, s);
    send_frame(c, &g_frame);
}

static void send_errno(struct conn *c, uint32_t id, const char *what, const char *path, int err)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s %s: %s", what, path ? path : "", strerror(err));
    send_error(c, id, err == ENOENT ? VZ_E_NOT_FOUND : VZ_E_IO, msg);
}

static void do_hello(struct conn *c, const struct vz_frame *f)
{
    struct utsname u;
    size_t s = reply_begin(VZ_MSG_OK, f->id);
    uname(&u);
    put_str(&g_frame, VZ_T_VERSION, VZ_AGENT_VERSION);
    put_u64(&g_frame, VZ_T_REVISION, VZ_AGENT_PROTOCOL_REVISION);
    put_str(&g_frame, VZ_T_SYSNAME, u.sysname);
    put_str(&g_frame, VZ_T_RELEASE, u.release);
    put_str(&g_frame, VZ_T_OS_VERSION, u.version);
    put_str(&g_frame, VZ_T_MACHINE, u.machine);
    put_u64(&g_frame, VZ_T_MONOTONIC_NS, (uint64_t)clock_ns(CLOCK_MONOTONIC));
    put_u64(&g_frame, VZ_T_BOOTTIME_NS, (uint64_t)clock_ns(CLOCK_BOOTTIME));
    put_u64(&g_frame, VZ_T_REALTIME_NS, (uint64_t)clock_ns(CLOCK_REALTIME));
    put_u64(&g_frame, VZ_T_START_BOOTTIME_NS, (uint64_t)g_start_boottime_ns);
    put_u64(&g_frame, VZ_T_START_MONOTONIC_NS, (uint64_t)g_start_monotonic_ns);
    put_u64(&g_frame, VZ_T_PID, (uint64_t)getpid());
    put_str(&g_frame, VZ_T_TRANSPORT, c->transport);
    reply_end(c, s);
}

static void do_ping(struct conn *c, const struct vz_frame *f, const struct vz_simple_req *r)
{
    size_t s = reply_begin(VZ_MSG_OK, f->id);
    if (r->has_data)
        put_bytes(&g_frame, VZ_T_DATA, r->data, r->data_len);
    reply_end(c, s);
}

static void do_exec(struct conn *c, const struct vz_frame *f, const struct vz_exec_req *r, int probe)
{
    const char *err = NULL;
    int e_no = 0;
    struct exec *e = exec_start(c, f->id, r, probe, &err, &e_no);
    if (!e) {
        if (e_no)
            send_errno(c, f->id, err, "", e_no);
        else
            send_error(c, f->id, VZ_E_BUSY, err);
        return;
    }
    if (!probe) {
        size_t s = reply_begin(VZ_MSG_STARTED, f->id);
        if (e->pid > 0) /* absent when the program could not be started (EXIT follows at once) */
            put_u64(&g_frame, VZ_T_PID, (uint64_t)e->pid);
        reply_end(c, s);
    }
    exec_queue_stdin(e, r->stdin_data, r->stdin_len, r->stdin_eof);
}

static void do_probe(struct conn *c, const struct vz_frame *f, const struct vz_simple_req *r)
{
    struct vz_exec_req x;
    if (!r->snippet) {
        send_error(c, f->id, VZ_E_BAD_PAYLOAD, "probe needs a SNIPPET field");
        return;
    }
    memset(&x, 0, sizeof x);
    x.argv[0] = (char *)"/bin/sh";
    x.argv[1] = (char *)"-c";
    x.argv[2] = r->snippet;
    x.argc = 3;
    x.timeout_ms = r->has_timeout_ms && r->timeout_ms ? r->timeout_ms : PROBE_TIMEOUT_MS;
    x.stdin_eof = 1;
    do_exec(c, f, &x, 1);
}

static void do_stdin(struct conn *c, const struct vz_frame *f, const struct vz_simple_req *r)
{
    struct exec *e = exec_find(c, f->id);
    if (!e) {
        send_error(c, f->id, VZ_E_NOT_FOUND, "stdin for an exec that is not running");
        return;
    }
    exec_queue_stdin(e, r->data, r->has_data ? r->data_len : 0, r->eof);
}

/* FLOW: the host's queue for this exec is full (pause) or drained (resume). No reply: an exec that
 * has just finished is not an error, and replies would only add to the queue being relieved. */
static void do_flow(struct conn *c, const struct vz_frame *f, const struct vz_simple_req *r)
{
    struct exec *e = exec_find(c, f->id);
    if (!r->has_pause || r->pause > 1) {
        send_error(c, f->id, VZ_E_BAD_PAYLOAD, "flow needs PAUSE (0 or 1)");
        return;
    }
    struct fwd *fw = e ? NULL : fwd_find(c, f->id);
    if (e)
        e->paused = (int)r->pause;
    else if (fw)
        fw->paused = (int)r->pause;
}

/* RESIZE: the host's terminal changed size. No reply (like FLOW): an exec that has just ended is
 * not an error, and SIGWINCH storms should not fill the queue with replies. */
static void do_resize(struct conn *c, const struct vz_frame *f, const struct vz_simple_req *r)
{
    struct exec *e = exec_find(c, f->id);
    if (!r->has_rows || !r->has_cols || r->rows == 0 || r->cols == 0 || r->rows > VZ_MAX_WINSIZE ||
        r->cols > VZ_MAX_WINSIZE) {
        send_error(c, f->id, VZ_E_BAD_PAYLOAD, "resize needs ROWS and COLS (1..65535)");
        return;
    }
    if (e && e->pty_fd >= 0)
        pty_resize(e->pty_fd, (uint16_t)r->rows, (uint16_t)r->cols);
    else if (e)
        send_error(c, f->id, VZ_E_BAD_PAYLOAD, "resize of an exec that has no terminal");
}

static void do_signal(struct conn *c, const struct vz_frame *f, const struct vz_simple_req *r)
{
    struct exec *e;
    if (!r->has_exec_id || !r->has_signal || r->exec_id > UINT32_MAX || r->signal == 0 || r->signal > 64) {
        send_error(c, f->id, VZ_E_BAD_PAYLOAD, "signal needs EXEC_ID and SIGNAL (1..64)");
        return;
    }
    e = exec_find(c, (uint32_t)r->exec_id);
    if (!e || e->reaped) {
        send_error(c, f->id, VZ_E_NOT_FOUND, "no running exec with that id");
        return;
    }
    if (kill(-e->pid, (int)r->signal) != 0) {
        send_errno(c, f->id, "kill", "", errno);
        return;
    }
    reply_end(c, reply_begin(VZ_MSG_OK, f->id));
}

static void do_read_file(struct conn *c, const struct vz_frame *f, const struct vz_simple_req *r)
{
    static uint8_t data[FILE_LIMIT + 1];
    uint64_t limit = r->has_max_size && r->max_size < FILE_LIMIT ? r->max_size : FILE_LIMIT;
    struct stat st;
    size_t got = 0;
    int fd;
    if (!r->path || !r->path[0]) {
        send_error(c, f->id, VZ_E_BAD_PAYLOAD, "read_file needs a PATH field");
        return;
    }
    /* O_NONBLOCK: opening a FIFO must not hang the agent; non-regular files are refused below. */
    fd = open(r->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        send_errno(c, f->id, "open", r->path, errno);
        return;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        send_error(c, f->id, VZ_E_IO, "read_file: not a regular file");
        return;
    }
    while (got <= limit) {
        ssize_t n = read(fd, data + got, limit + 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            send_errno(c, f->id, "read", r->path, e);
            return;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    if (got > limit) {
        char msg[128];
        snprintf(msg, sizeof msg, "file is larger than the limit of %llu bytes", (unsigned long long)limit);
        send_error(c, f->id, VZ_E_LIMIT, msg);
        return;
    }
    size_t s = reply_begin(VZ_MSG_OK, f->id);
    put_u64(&g_frame, VZ_T_SIZE, got);
    put_bytes(&g_frame, VZ_T_DATA, data, got);
    reply_end(c, s);
}

static void do_write_file(struct conn *c, const struct vz_frame *f, const struct vz_simple_req *r)
{
    static unsigned counter;
    char tmp[4200];
    mode_t mode = r->has_mode ? (mode_t)(r->mode & 07777) : 0644;
    size_t off = 0;
    int fd;
    if (!r->path || !r->path[0] || !r->has_data) {
        send_error(c, f->id, VZ_E_BAD_PAYLOAD, "write_file needs PATH and DATA fields");
        return;
    }
    if (r->data_len > FILE_LIMIT) {
        send_error(c, f->id, VZ_E_LIMIT, "data is larger than the write_file limit");
        return;
    }
    if (snprintf(tmp, sizeof tmp, "%s.vz-tmp.%d.%u", r->path, (int)getpid(), counter++) >= (int)sizeof tmp) {
        send_error(c, f->id, VZ_E_BAD_PAYLOAD, "path too long");
        return;
    }
    /* Write beside the target, then rename: readers never see a half-written file. */
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) {
        send_errno(c, f->id, "create", r->path, errno);
        return;
    }
    while (off < r->data_len) {
        ssize_t n = write(fd, r->data + off, r->data_len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = n < 0 ? errno : EIO;
            close(fd);
            unlink(tmp);
            send_errno(c, f->id, "write", r->path, e);
            return;
        }
        off += (size_t)n;
    }
    if (fchmod(fd, mode) != 0 || close(fd) != 0 || rename(tmp, r->path) != 0) {
        int e = errno;
        unlink(tmp);
        send_errno(c, f->id, "write", r->path, e);
        return;
    }
    size_t s = reply_begin(VZ_MSG_OK, f->id);
    put_u64(&g_frame, VZ_T_SIZE, r->data_len);
    reply_end(c, s);
}

/* Write the reply synchronously: after reboot() nothing else will flush it. */
static void flush_blocking(struct conn *c)
{
    int64_t deadline = now_ms() + 1000;
    while (buf_size(&c->out) > 0 && now_ms() < deadline) {
        ssize_t n = write(c->out_fd, buf_peek(&c->out), buf_size(&c->out));
        if (n > 0)
            buf_consume(&c->out, (size_t)n);
        else if (n < 0 && errno != EAGAIN && errno != EINTR)
            break;
        else
            usleep(1000);
    }
}

static void do_poweroff(struct conn *c, const struct vz_frame *f, const struct vz_simple_req *r)
{
    uint64_t action = r->has_action ? r->action : VZ_POWER_REBOOT;
    int cmd;
    switch (action) {
    case VZ_POWER_OFF: cmd = RB_POWER_OFF; break;
    case VZ_POWER_REBOOT: cmd = RB_AUTOBOOT; break;
    case VZ_POWER_HALT: cmd = RB_HALT_SYSTEM; break;
    default:
        send_error(c, f->id, VZ_E_BAD_PAYLOAD, "ACTION must be 0 (poweroff), 1 (reboot) or 2 (halt)");
        return;
    }
    if (!g_allow_poweroff) {
        /* --listen/--stdio run on a developer's host: never reboot it. */
        send_error(c, f->id, VZ_E_NOT_PERMITTED, "poweroff is disabled in --listen/--stdio mode");
        return;
    }
    reply_end(c, reply_begin(VZ_MSG_OK, f->id));
    flush_blocking(c);
    sync();
    if (reboot(cmd) != 0) {
        send_errno(c, f->id, "reboot", "", errno);
    }
}

/* Mix the host's bytes into the input pool (credited) and force the CRNG to rekey from it, so
 * guests restored from one snapshot stop sharing the saved RNG state (docs/PROTOCOL.md). */
static int reseed(const uint8_t *p, uint32_t n, const char **what)
{
    uint32_t raw[2 + ENTROPY_MAX / 4]; /* struct rand_pool_info: entropy_count, buf_size, buf[] */
    struct rand_pool_info *info = (struct rand_pool_info *)raw;
    int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC), rc = -1;
    *what = "open /dev/urandom";
    if (fd < 0)
        return -1;
    info->entropy_count = (int)(n * 8);
    info->buf_size = (int)n;
    memcpy(raw + 2, p, n);
    *what = "RNDADDENTROPY";
    if (ioctl(fd, RNDADDENTROPY, info) == 0) {
        *what = "RNDRESEEDCRNG";
        rc = ioctl(fd, RNDRESEEDCRNG);
    }
    if (rc != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    close(fd);
    return 0;
}

static void do_restored(struct conn *c, const struct vz_frame *f, const struct vz_simple_req *r)
{
    const char *what = "";
    int64_t before = clock_ns(CLOCK_REALTIME);
    struct timespec ts;
    if (!r->has_realtime_ns || !r->has_data || r->data_len < ENTROPY_MIN || r->data_len > ENTROPY_MAX) {
        send_error(c, f->id, VZ_E_BAD_PAYLOAD, "restored needs REALTIME_NS and DATA (16..512 bytes of entropy)");
        return;
    }
    if (!g_allow_poweroff) {
        /* --listen/--stdio run on a developer's host: never set its clock. */
        send_error(c, f->id, VZ_E_NOT_PERMITTED, "restored is disabled in --listen/--stdio mode");
        return;
    }
    ts.tv_sec = (time_t)(r->realtime_ns / 1000000000u);
    ts.tv_nsec = (long)(r->realtime_ns % 1000000000u);
    if (clock_settime(CLOCK_REALTIME, &ts) != 0) {
        send_errno(c, f->id, "clock_settime", "", errno);
        return;
    }
    if (reseed(r->data, r->data_len, &what) != 0) {
        send_errno(c, f->id, what, "", errno);
        return;
    }
    size_t s = reply_begin(VZ_MSG_OK, f->id);
    put_u64(&g_frame, VZ_T_REALTIME_NS, (uint64_t)before);
    reply_end(c, s);
}

void handle_frame(struct conn *c, const struct vz_frame *f)
{
    struct vz_arena a = {g_arena_mem, sizeof g_arena_mem, 0};
    const char *why = "malformed payload";
    if (f->id == 0) {
        /* Id 0 is what framing errors carry: a request under it could not be told apart from one. */
        send_error(c, 0, VZ_E_BAD_PAYLOAD, "request id 0 is reserved");
        return;
    }
    if (!vz_known_request(f->type)) {
        char msg[64];
        snprintf(msg, sizeof msg, "unknown message type 0x%02x", f->type);
        send_error(c, f->id, VZ_E_UNKNOWN_TYPE, msg);
        return;
    }
    if (f->type == VZ_MSG_EXEC) {
        struct vz_exec_req x;
        if (vz_parse_exec(f, &a, &x, &why) != 0) {
            send_error(c, f->id, VZ_E_BAD_PAYLOAD, why);
            return;
        }
        do_exec(c, f, &x, 0);
        return;
    }
    struct vz_simple_req r;
    if (vz_parse_simple(f, &a, &r, &why) != 0) {
        send_error(c, f->id, VZ_E_BAD_PAYLOAD, why);
        return;
    }
    switch (f->type) {
    case VZ_MSG_HELLO: do_hello(c, f); break;
    case VZ_MSG_PING: do_ping(c, f, &r); break;
    case VZ_MSG_STDIN: do_stdin(c, f, &r); break;
    case VZ_MSG_SIGNAL: do_signal(c, f, &r); break;
    case VZ_MSG_READ_FILE: do_read_file(c, f, &r); break;
    case VZ_MSG_WRITE_FILE: do_write_file(c, f, &r); break;
    case VZ_MSG_PROBE: do_probe(c, f, &r); break;
    case VZ_MSG_POWEROFF: do_poweroff(c, f, &r); break;
    case VZ_MSG_FLOW: do_flow(c, f, &r); break;
    case VZ_MSG_RESTORED: do_restored(c, f, &r); break;
    case VZ_MSG_RESIZE: do_resize(c, f, &r); break;
    case VZ_MSG_FORWARD_OPEN: fwd_open(c, f->id, &r); break;
    case VZ_MSG_FORWARD_DATA: fwd_data(c, f->id, &r); break;
    case VZ_MSG_FORWARD_CLOSE: fwd_close(c, f->id); break;
    default: break;
    }
}
