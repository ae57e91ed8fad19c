/* vz-agent: entry point, transports and the poll loop. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#include "agent.h"
#include "probes.h"

#if defined(VZ_HOST_PROTOCOL_REVISION) && VZ_HOST_PROTOCOL_REVISION != VZ_AGENT_PROTOCOL_REVISION
#error "protocol.h VZ_AGENT_PROTOCOL_REVISION differs from vz_linux.version.AGENT_PROTOCOL_REVISION"
#endif

#define VSOCK_PORT 7424
#define SERIAL_NAME "org.vz.agent.0"
#define SERIAL_RETRY_MS 100

struct conn g_conns[MAX_CONNS];
int g_allow_poweroff;
int64_t g_start_boottime_ns, g_start_monotonic_ns;

static int g_sigfd = -1, g_unix_fd = -1, g_vsock_fd = -1;
static const char *g_unix_path;
static int g_serial_wanted;
static const char *g_serial_path; /* --listen serial:PATH (tests); default: discovered by name */
static struct conn *g_serial;
static int64_t g_serial_next_try;
static int g_quit, g_stdio_mode;

int64_t clock_ns(int clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t now_ms(void) { return clock_ns(CLOCK_MONOTONIC) / 1000000; }

void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void log_msg(const char *fmt, const char *arg)
{
    fprintf(stderr, "vz-agent: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
}

void send_frame(struct conn *c, const struct buf *frame)
{
    if (c->hup)
        return; /* serial host end gone: nobody to read it; the host resends after reconnecting */
    if (buf_size(&c->out) > OUT_HARD_LIMIT) {
        c->closing = 1; /* the peer stopped reading */
        return;
    }
    if (buf_append(&c->out, buf_peek(frame), buf_size(frame)))
        abort();
}

void send_error(struct conn *c, uint32_t id, uint32_t code, const char *msg)
{
    static struct buf frame;
    buf_clear(&frame);
    size_t s = frame_begin(&frame, VZ_MSG_ERROR, id);
    put_u64(&frame, VZ_T_ERROR_CODE, code);
    put_str(&frame, VZ_T_MESSAGE, msg);
    frame_end(&frame, s);
    send_frame(c, &frame);
}

static struct conn *conn_new(enum conn_kind kind, int in_fd, int out_fd, const char *transport)
{
    for (int i = 0; i < MAX_CONNS; i++) {
        struct conn *c = &g_conns[i];
        if (!c->used) {
            memset(c, 0, sizeof(*c));
            c->used = 1;
            c->kind = kind;
            c->in_fd = in_fd;
            c->out_fd = out_fd;
            c->transport = transport;
            set_nonblock(in_fd);
            set_nonblock(out_fd);
            return c;
        }
    }
    return NULL;
}

static void conn_close(struct conn *c)
{
    exec_detach_conn(c);
    fwd_detach_conn(c);
    if (c->in_fd >= 0)
        close(c->in_fd);
    if (c->out_fd >= 0 && c->out_fd != c->in_fd)
        close(c->out_fd);
    buf_free(&c->in);
    buf_free(&c->out);
    if (c == g_serial) {
        g_serial = NULL;
        g_serial_next_try = now_ms() + SERIAL_RETRY_MS;
    }
    if (c->kind == CONN_STDIO)
        g_quit = 1; /* --stdio serves exactly one peer */
    c->used = 0;
}

/* Serial host end went away: forget its partial frame, queued replies and execs. */
static void serial_hangup(struct conn *c)
{
    c->hup = 1;
    buf_clear(&c->in);
    buf_clear(&c->out);
    exec_detach_conn(c);
    fwd_detach_conn(c);
}

/* A framing error on a stream we cannot resynchronise: report and close. */
static void fatal_framing(struct conn *c, uint32_t id, uint32_t code, const char *msg)
{
    send_error(c, id, code, msg);
    buf_clear(&c->in);
    c->closing = 1;
    c->closing_deadline = now_ms() + 2000;
}

static void process_input(struct conn *c)
{
    while (!c->closing && !c->hup && buf_size(&c->in) > 0) {
        struct vz_frame f;
        size_t used;
        int rc = vz_frame_decode(buf_peek(&c->in), buf_size(&c->in), &f, &used);
        if (rc == VZ_DEC_NEED_MORE)
            break;
        if (rc == VZ_DEC_OK) {
            handle_frame(c, &f);
            buf_consume(&c->in, used);
            continue;
        }
        const char *msg = rc == VZ_DEC_TOO_BIG ? "frame payload over the 1 MiB limit" : "bad frame magic";
        uint32_t code = rc == VZ_DEC_TOO_BIG ? VZ_E_TOO_BIG : VZ_E_FRAMING;
        uint32_t id = rc == VZ_DEC_TOO_BIG ? f.id : 0;
        if (c->kind == CONN_SERIAL) {
            /* A serial port cannot be reopened by the host: skip to the next possible frame start. */
            send_error(c, id, code, msg);
            buf_consume(&c->in, vz_resync(buf_peek(&c->in), buf_size(&c->in)));
            continue;
        }
        fatal_framing(c, id, code, msg);
    }
}

static void conn_read(struct conn *c)
{
    uint8_t tmp[65536];
    for (int round = 0; round < 4; round++) { /* bounded: other connections get their turn */
        ssize_t n = read(c->in_fd, tmp, sizeof tmp);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            if (c->kind == CONN_SERIAL)
                serial_hangup(c);
            else if (buf_size(&c->in) > 0 || n < 0)
                conn_close(c); /* truncated frame or error */
            else
                c->eof = 1; /* clean half-close: results of running requests still go out */
            return;
        }
        if (buf_append(&c->in, tmp, (size_t)n))
            abort();
        process_input(c);
        if (!c->used || c->closing || c->hup)
            return;
    }
}

static void conn_write(struct conn *c)
{
    while (buf_size(&c->out) > 0) {
        ssize_t n = write(c->out_fd, buf_peek(&c->out), buf_size(&c->out));
        if (n > 0) {
            buf_consume(&c->out, (size_t)n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (c->kind == CONN_SERIAL)
            serial_hangup(c);
        else
            conn_close(c);
        return;
    }
}

static int find_serial_port(char *path, size_t len)
{
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *de;
    int found = 0;
    if (!d)
        return 0;
    while (!found && (de = readdir(d)) != NULL) {
        char p[512], name[128] = {0};
        FILE *f;
        if (de->d_name[0] == '.')
            continue;
        snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/name", de->d_name);
        if (!(f = fopen(p, "r")))
            continue;
        if (fgets(name, sizeof name, f)) {
            name[strcspn(name, "\n")] = 0;
            if (strcmp(name, SERIAL_NAME) == 0) {
                snprintf(path, len, "/dev/%s", de->d_name);
                found = 1;
            }
        }
        fclose(f);
    }
    closedir(d);
    return found;
}

static void serial_try_open(void)
{
    char path[300];
    int fd;
    if (!g_serial_wanted || g_serial || now_ms() < g_serial_next_try)
        return;
    g_serial_next_try = now_ms() + SERIAL_RETRY_MS;
    if (g_serial_path)
        snprintf(path, sizeof path, "%s", g_serial_path);
    else if (!find_serial_port(path, sizeof path))
        return;
    fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return;
    if (isatty(fd)) { /* a pty stands in for the port in tests: no echo, no line editing */
        struct termios t;
        if (tcgetattr(fd, &t) == 0) {
            cfmakeraw(&t);
            tcsetattr(fd, TCSANOW, &t);
        }
    }
    g_serial = conn_new(CONN_SERIAL, fd, fd, "virtio-serial");
    if (!g_serial) {
        close(fd);
        return;
    }
    log_msg("serving on %s", path);
}

/* While the host end is disconnected poll() reports POLLHUP at once: check it on a timer instead. */
static void serial_check_reconnect(void)
{
    struct pollfd p;
    if (!g_serial || !g_serial->hup)
        return;
    p.fd = g_serial->in_fd;
    p.events = POLLIN;
    p.revents = 0;
    if (poll(&p, 1, 0) >= 0 && !(p.revents & POLLHUP))
        g_serial->hup = 0;
}

static int listen_unix(const char *path)
{
    struct sockaddr_un sa;
    struct stat st;
    int fd;
    char tmp[sizeof sa.sun_path];
    /* Bind a temporary name and rename it once listening: the path appearing means "ready". */
    if (snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)getpid()) >= (int)sizeof tmp) {
        fprintf(stderr, "vz-agent: unix socket path too long: %s\n", path);
        return -1;
    }
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path); /* stale socket from an earlier run */
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, tmp);
    unlink(tmp);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 16) != 0 ||
        rename(tmp, path) != 0) {
        fprintf(stderr, "vz-agent: listen on unix:%s: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        unlink(tmp);
        return -1;
    }
    return fd;
}

static int listen_vsock(void)
{
    struct sockaddr_vm sa;
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1; /* no vsock in this kernel / VM: virtio-serial only */
    memset(&sa, 0, sizeof sa);
    sa.svm_family = AF_VSOCK;
    sa.svm_cid = VMADDR_CID_ANY;
    sa.svm_port = VSOCK_PORT;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 16) != 0) {
        close(fd);
        return -1;
    }
    log_msg("serving on %s", "vsock port 7424");
    return fd;
}

static void accept_on(int lfd, int vsock)
{
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0)
            return;
        /* Only the host (CID 2) may drive the agent over vsock; other guests may share the bus. */
        if (vsock && ((struct sockaddr_vm *)&ss)->svm_cid != VMADDR_CID_HOST) {
            close(fd);
            continue;
        }
        if (!conn_new(CONN_STREAM, fd, fd, vsock ? "vsock" : "unix")) {
            close(fd); /* over MAX_CONNS */
        }
    }
}

static void on_signals(void)
{
    struct signalfd_siginfo si;
    while (read(g_sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGCHLD)
            exec_reap_all();
        else
            g_quit = 1;
    }
}

enum { P_SIG, P_UNIX, P_VSOCK, P_CONN_IN, P_CONN_OUT, P_STDIN, P_OUT, P_ERR, P_FWD };
struct slot {
    int kind;
    void *obj;
};

static int poll_timeout(void)
{
    int64_t now = now_ms(), t = -1;
    for (int i = 0; i < MAX_EXECS; i++) {
        struct exec *e = &g_execs[i];
        int64_t at = -1;
        if (!e->used)
            continue;
        if (e->reaped)
            at = e->reaped_at + EXIT_GRACE_MS;
        else if (e->deadline && !e->timed_out)
            at = e->deadline;
        if (at >= 0 && (t < 0 || at < t))
            t = at;
    }
    if ((g_serial_wanted && !g_serial) || (g_serial && g_serial->hup)) {
        int64_t at = now + SERIAL_RETRY_MS;
        if (t < 0 || at < t)
            t = at;
    }
    for (int i = 0; i < MAX_CONNS; i++)
        if (g_conns[i].used && g_conns[i].closing) {
            int64_t at = g_conns[i].closing_deadline;
            if (t < 0 || at < t)
                t = at;
        }
    if (t < 0)
        return -1;
    return t <= now ? 0 : (int)(t - now);
}

static void loop(void)
{
    static struct pollfd pfd[4 + 2 * MAX_CONNS + 3 * MAX_EXECS + MAX_FWDS];
    static struct slot slots[4 + 2 * MAX_CONNS + 3 * MAX_EXECS + MAX_FWDS];
    while (!g_quit) {
        int n = 0;
#define ADD(fd_, ev_, kind_, obj_)                                                                     \
    do {                                                                                               \
        pfd[n].fd = (fd_);                                                                             \
        pfd[n].events = (short)(ev_);                                                                  \
        pfd[n].revents = 0;                                                                            \
        slots[n].kind = (kind_);                                                                       \
        slots[n].obj = (obj_);                                                                         \
        n++;                                                                                           \
    } while (0)
        serial_try_open();
        serial_check_reconnect();
        ADD(g_sigfd, POLLIN, P_SIG, NULL);
        if (g_unix_fd >= 0)
            ADD(g_unix_fd, POLLIN, P_UNIX, NULL);
        if (g_vsock_fd >= 0)
            ADD(g_vsock_fd, POLLIN, P_VSOCK, NULL);
        for (int i = 0; i < MAX_CONNS; i++) {
            struct conn *c = &g_conns[i];
            if (!c->used || c->hup)
                continue;
            if (c->closing && (buf_size(&c->out) == 0 || now_ms() >= c->closing_deadline)) {
                conn_close(c);
                continue;
            }
            if (c->eof && buf_size(&c->out) == 0 && exec_count(c) == 0) {
                conn_close(c);
                continue;
            }
            if (c->in_fd == c->out_fd) {
                short ev = (short)((c->closing || c->eof ? 0 : POLLIN) | (buf_size(&c->out) ? POLLOUT : 0));
                ADD(c->in_fd, ev, P_CONN_IN, c); /* even with no events: HUP/ERR are reported */
            } else {
                if (!c->closing && !c->eof && c->in_fd >= 0)
                    ADD(c->in_fd, POLLIN, P_CONN_IN, c);
                if (buf_size(&c->out))
                    ADD(c->out_fd, POLLOUT, P_CONN_OUT, c);
            }
        }
        if (g_quit)
            break;
        for (int i = 0; i < MAX_EXECS; i++) {
            struct exec *e = &g_execs[i];
            /* Backpressure: a connection with a full queue stops draining its children's pipes, and
             * an exec the host paused (FLOW: its reader is behind) stops draining its own. */
            int paused = e->paused || (e->conn && buf_size(&e->conn->out) > OUT_HIGH_WATER);
            if (!e->used)
                continue;
            if (e->in_fd >= 0 && buf_size(&e->stdin_q))
                ADD(e->in_fd, POLLOUT, P_STDIN, e);
            if (!paused && e->out_fd >= 0)
                ADD(e->out_fd, POLLIN, P_OUT, e);
            if (!paused && e->err_fd >= 0)
                ADD(e->err_fd, POLLIN, P_ERR, e);
        }
        for (int i = 0; i < MAX_FWDS; i++) {
            short ev = g_fwds[i].used ? fwd_events(&g_fwds[i]) : 0;
            if (ev) /* none wanted: leave it out, or a hung-up socket would wake us forever */
                ADD(g_fwds[i].fd, ev, P_FWD, &g_fwds[i]);
        }
        int rc = poll(pfd, (nfds_t)n, poll_timeout());
        if (rc < 0 && errno != EINTR) {
            perror("vz-agent: poll");
            return;
        }
        for (int i = 0; rc > 0 && i < n; i++) {
            short re = pfd[i].revents;
            if (!re)
                continue;
            switch (slots[i].kind) {
            case P_SIG: on_signals(); break;
            case P_UNIX: accept_on(g_unix_fd, 0); break;
            case P_VSOCK: accept_on(g_vsock_fd, 1); break;
            case P_CONN_IN:
            case P_CONN_OUT: {
                struct conn *c = slots[i].obj;
                if (!c->used || c->hup)
                    break;
                if (re & POLLOUT)
                    conn_write(c);
                if (!c->used || c->hup)
                    break;
                if (c->kind == CONN_SERIAL && (re & POLLHUP)) {
                    serial_hangup(c);
                    break;
                }
                if (c->eof && (re & (POLLHUP | POLLERR))) {
                    conn_close(c); /* half-closed peer went away entirely */
                    break;
                }
                if (re & (POLLIN | POLLHUP | POLLERR)) {
                    if (slots[i].kind == P_CONN_OUT)
                        conn_close(c); /* stdio: our stdout reader went away */
                    else
                        conn_read(c);
                }
                break;
            }
            case P_STDIN: {
                struct exec *e = slots[i].obj;
                if (e->used)
                    exec_write_stdin(e);
                break;
            }
            case P_OUT:
            case P_ERR: {
                struct exec *e = slots[i].obj;
                if (e->used)
                    exec_read_pipe(e, slots[i].kind == P_OUT ? VZ_STDOUT : VZ_STDERR);
                break;
            }
            case P_FWD: {
                struct fwd *f = slots[i].obj;
                if (f->used && f->fd == pfd[i].fd) /* not freed and reused earlier in this pass */
                    fwd_io(f, re);
                break;
            }
            }
        }
        exec_tick();
    }
}

static void usage(void)
{
    fprintf(stderr,
            "usage: vz-agent                      serve on virtio-serial %s and vsock port %d\n"
            "       vz-agent --listen unix:PATH   serve on a Unix socket (host tests)\n"
            "       vz-agent --listen serial:PATH serve on a character device as on the port (tests)\n"
            "       vz-agent --stdio              serve one peer on stdin/stdout\n"
            "       vz-agent --probe NAME [ARGS]  run one capability probe (docs/agent.md, \"Probes\")\n"
            "       vz-agent --in-root ROOT --extract DEST | --create PATH   tar on stdin/stdout\n"
            "       vz-agent --mount-api [--quiet]            init: mount /proc, /sys, /dev, /run... (docs/guest.md)\n"
            "       vz-agent --mount-root [--quiet] [--disk DEV]  init: switch to the rootfs share or disk DEV\n"
            "       vz-agent --oci-prepare CONFIG DISK IMAGE WORK ROOTFS CWD  a restored container VM (docs/oci.md)\n"
            "       vz-agent --mkdir-in ROOT PATH     mkdir -p PATH resolved inside ROOT\n"
            "       vz-agent --version\n",
            SERIAL_NAME, VSOCK_PORT);
}

int main(int argc, char **argv)
{
    sigset_t mask;
    g_start_boottime_ns = clock_ns(CLOCK_BOOTTIME);
    g_start_monotonic_ns = clock_ns(CLOCK_MONOTONIC);
    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        printf("vz-agent %s protocol %d\n", VZ_AGENT_VERSION, VZ_AGENT_PROTOCOL_REVISION);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "--in-root") == 0)
        return files_main(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "--probe") == 0)
        return run_probe(argc - 2, argv + 2);
    if (argc >= 2 && (strcmp(argv[1], "--mount-api") == 0 || strcmp(argv[1], "--mount-root") == 0 ||
                      strcmp(argv[1], "--oci-prepare") == 0 || strcmp(argv[1], "--mkdir-in") == 0))
        return mounts_main(argc, argv);
    if (argc == 3 && strcmp(argv[1], "--listen") == 0) {
        if (strncmp(argv[2], "unix:", 5) == 0 && argv[2][5]) {
            g_unix_path = argv[2] + 5;
        } else if (strncmp(argv[2], "serial:", 7) == 0 && argv[2][7]) {
            g_serial_path = argv[2] + 7;
            g_serial_wanted = 1;
        } else {
            fprintf(stderr, "vz-agent: --listen takes unix:PATH or serial:PATH\n");
            return 2;
        }
    } else if (argc == 2 && strcmp(argv[1], "--stdio") == 0) {
        g_stdio_mode = 1;
    } else if (argc == 1) {
        g_serial_wanted = 1;
        g_allow_poweroff = 1;
    } else {
        usage();
        return 2;
    }
    /* Keep fds 0-2 taken (init may start us with them closed) so pipes never land there. */
    for (int fd = open("/dev/null", O_RDWR | O_CLOEXEC); fd >= 0 && fd <= 2; fd = open("/dev/null", O_RDWR | O_CLOEXEC))
        ;
    if (!getenv("PATH"))
        setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
    signal(SIGPIPE, SIG_IGN);
    /* Orphaned grandchildren of execs are re-parented to us and reaped, not left to PID 1. */
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    g_sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (g_sigfd < 0) {
        perror("vz-agent: signalfd");
        return 1;
    }
    if (g_unix_path && (g_unix_fd = listen_unix(g_unix_path)) < 0)
        return 1;
    if (g_stdio_mode && !conn_new(CONN_STDIO, 0, 1, "stdio"))
        return 1;
    if (g_serial_wanted)
        g_vsock_fd = listen_vsock();
    loop();
    for (int i = 0; i < MAX_CONNS; i++)
        if (g_conns[i].used && g_conns[i].kind == CONN_STDIO)
            conn_close(&g_conns[i]);
    for (int i = 0; i < MAX_EXECS; i++)
        if (g_execs[i].used && !g_execs[i].reaped)
            kill(-g_execs[i].pid, SIGKILL);
    if (g_unix_fd >= 0)
        unlink(g_unix_path);
    return 0;
}
