/* Port forwarding: one TCP connection to 127.0.0.1:PORT per FORWARD_OPEN, optionally inside the
 * network namespace at PATH (a container's), bytes relayed both ways (docs/PROTOCOL.md, "Ports"). */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent.h"

struct fwd g_fwds[MAX_FWDS];
static struct buf g_fwd_frame;

struct fwd *fwd_find(struct conn *c, uint32_t id)
{
    for (int i = 0; i < MAX_FWDS; i++)
        if (c && g_fwds[i].used && g_fwds[i].conn == c && g_fwds[i].id == id)
            return &g_fwds[i];
    return NULL;
}

static void fwd_free(struct fwd *f)
{
    if (f->fd >= 0)
        close(f->fd);
    buf_free(&f->q);
    memset(f, 0, sizeof *f);
    f->fd = -1;
}

/* One event frame for a forward: RECV (DATA), CLOSED (EOF flag / MESSAGE) or ACK (SIZE). */
static void fwd_send(struct fwd *f, uint8_t type, const void *data, size_t n, int eof, const char *msg)
{
    if (!f->conn)
        return;
    buf_clear(&g_fwd_frame);
    size_t s = frame_begin(&g_fwd_frame, type, f->id);
    if (type == VZ_MSG_FORWARD_RECV)
        put_bytes(&g_fwd_frame, VZ_T_DATA, data, n);
    if (type == VZ_MSG_FORWARD_ACK)
        put_u64(&g_fwd_frame, VZ_T_SIZE, n);
    if (eof)
        put_bytes(&g_fwd_frame, VZ_T_EOF, "", 0);
    if (msg)
        put_str(&g_fwd_frame, VZ_T_MESSAGE, msg);
    frame_end(&g_fwd_frame, s);
    send_frame(f->conn, &g_fwd_frame);
}

/* The connection is over: tell the host (unless it asked) and free the slot. */
static void fwd_end(struct fwd *f, const char *why)
{
    fwd_send(f, VZ_MSG_FORWARD_CLOSED, NULL, 0, 0, why);
    fwd_free(f);
}

/* A TCP socket in the network namespace at `netns` (NULL: the agent's own). -1 with errno set. */
static int socket_in(const char *netns, const char **what)
{
    int self = -1, target = -1, fd = -1, e = 0;
    *what = "socket";
    if (!netns)
        return socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    *what = "open the network namespace";
    if ((self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)) < 0 ||
        (target = open(netns, O_RDONLY | O_CLOEXEC)) < 0) {
        e = errno;
    } else if (*what = "setns", setns(target, CLONE_NEWNET) != 0) {
        e = errno;
    } else {
        /* A socket stays in the namespace it was made in: create it there, then switch back. */
        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        e = fd < 0 ? errno : 0;
        if (setns(self, CLONE_NEWNET) != 0)
            abort(); /* stuck in a container's netns: let init restart us rather than serve from it */
    }
    if (self >= 0)
        close(self);
    if (target >= 0)
        close(target);
    errno = e;
    return fd;
}

static void fwd_refuse(struct conn *c, uint32_t id, const char *what, uint16_t port, int e)
{
    char msg[256];
    snprintf(msg, sizeof msg, "%s 127.0.0.1:%u: %s", what, port, strerror(e));
    send_error(c, id, e == ECONNREFUSED ? VZ_E_NOT_FOUND : VZ_E_IO, msg);
}

void fwd_open(struct conn *c, uint32_t id, const struct vz_simple_req *r)
{
    struct sockaddr_in sa;
    struct fwd *f = NULL;
    const char *what;
    if (!r->has_port || r->port == 0 || r->port > 65535) {
        send_error(c, id, VZ_E_BAD_PAYLOAD, "forward_open needs PORT (1..65535)");
        return;
    }
    if (fwd_find(c, id)) {
        send_error(c, id, VZ_E_BAD_PAYLOAD, "request id already names a forward");
        return;
    }
    for (int i = 0; i < MAX_FWDS && !f; i++)
        if (!g_fwds[i].used)
            f = &g_fwds[i];
    if (!f) {
        send_error(c, id, VZ_E_BUSY, "too many forwarded connections");
        return;
    }
    int fd = socket_in(r->path, &what);
    if (fd < 0) {
        fwd_refuse(c, id, what, (uint16_t)r->port, errno);
        return;
    }
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)r->port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        fwd_refuse(c, id, "connect", (uint16_t)r->port, e);
        return;
    }
    memset(f, 0, sizeof *f);
    f->used = 1;
    f->conn = c;
    f->id = id;
    f->fd = fd;
    f->port = (uint16_t)r->port;
    f->connecting = 1; /* OK (or ERROR) once poll says the connect finished */
}

void fwd_data(struct conn *c, uint32_t id, const struct vz_simple_req *r)
{
    struct fwd *f = fwd_find(c, id);
    if (!f)
        return; /* closed meanwhile: the host learns from FORWARD_CLOSED */
    if (f->host_eof && r->has_data && r->data_len) {
        fwd_end(f, "data after EOF");
        return;
    }
    if (r->has_data && r->data_len) {
        if (buf_size(&f->q) + r->data_len > FWD_QUEUE_LIMIT) {
            /* The host ignored its window (docs/PROTOCOL.md): drop the connection, keep the agent. */
            fwd_end(f, "forward queue over its limit");
            return;
        }
        if (buf_append(&f->q, r->data, r->data_len))
            abort();
    }
    if (r->eof)
        f->host_eof = 1;
}

void fwd_close(struct conn *c, uint32_t id)
{
    struct fwd *f = fwd_find(c, id);
    if (f)
        fwd_free(f); /* the host asked: no FORWARD_CLOSED */
}

short fwd_events(const struct fwd *f)
{
    short ev = 0;
    if (f->connecting)
        return POLLOUT;
    if (buf_size(&f->q) || (f->host_eof && !f->wr_shut))
        ev |= POLLOUT;
    if (!f->rd_eof && !f->paused && f->conn && buf_size(&f->conn->out) <= OUT_HIGH_WATER)
        ev |= POLLIN;
    return ev;
}

static void fwd_connected(struct fwd *f)
{
    int err = 0;
    socklen_t len = sizeof err;
    struct pollfd p = {.fd = f->fd, .events = POLLOUT, .revents = 0};
    if (poll(&p, 1, 0) != 1)
        return; /* not finished yet (a stale wake-up) */
    if (getsockopt(f->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    if (err) {
        struct conn *c = f->conn;
        uint32_t id = f->id;
        uint16_t port = f->port;
        fwd_free(f);
        if (c)
            fwd_refuse(c, id, "connect", port, err);
        return;
    }
    f->connecting = 0;
    if (f->conn) {
        buf_clear(&g_fwd_frame);
        frame_end(&g_fwd_frame, frame_begin(&g_fwd_frame, VZ_MSG_OK, f->id));
        send_frame(f->conn, &g_fwd_frame);
    }
}

static int fwd_write(struct fwd *f)
{
    size_t done = 0;
    while (buf_size(&f->q)) {
        ssize_t n = write(f->fd, buf_peek(&f->q), buf_size(&f->q));
        if (n > 0) {
            buf_consume(&f->q, (size_t)n);
            done += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        fwd_end(f, n < 0 ? strerror(errno) : "write failed");
        return -1;
    }
    if (done)
        fwd_send(f, VZ_MSG_FORWARD_ACK, NULL, done, 0, NULL);
    if (!buf_size(&f->q) && f->host_eof && !f->wr_shut) {
        shutdown(f->fd, SHUT_WR);
        f->wr_shut = 1;
    }
    return 0;
}

static void fwd_read(struct fwd *f)
{
    static uint8_t chunk[FWD_CHUNK];
    ssize_t n = read(f->fd, chunk, sizeof chunk);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n < 0) {
        fwd_end(f, strerror(errno));
        return;
    }
    if (n == 0) {
        f->rd_eof = 1;
        fwd_send(f, VZ_MSG_FORWARD_CLOSED, NULL, 0, 1, NULL); /* half-close: the host may still send */
        return;
    }
    fwd_send(f, VZ_MSG_FORWARD_RECV, chunk, (size_t)n, 0, NULL);
}

void fwd_io(struct fwd *f, short revents)
{
    if (f->connecting) {
        fwd_connected(f);
        return;
    }
    if ((revents & (POLLOUT | POLLERR | POLLHUP)) && (buf_size(&f->q) || (f->host_eof && !f->wr_shut)))
        if (fwd_write(f) != 0)
            return;
    if (f->used && !f->rd_eof && (revents & (POLLIN | POLLHUP | POLLERR)))
        fwd_read(f);
    if (f->used && f->rd_eof && f->wr_shut)
        fwd_end(f, NULL); /* both directions done */
}

void fwd_detach_conn(struct conn *c)
{
    for (int i = 0; i < MAX_FWDS; i++)
        if (g_fwds[i].used && g_fwds[i].conn == c)
            fwd_free(&g_fwds[i]);
}
