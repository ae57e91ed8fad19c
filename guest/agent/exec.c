/* Child processes: spawn with pipes in a new session, stream output, reap, time out, report. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"

struct exec g_execs[MAX_EXECS];

struct exec *exec_find(struct conn *c, uint32_t id)
{
    for (int i = 0; i < MAX_EXECS; i++)
        if (g_execs[i].used && g_execs[i].conn == c && g_execs[i].id == id && c != NULL)
            return &g_execs[i];
    return NULL;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* Runs in the forked child; never returns. Only the child's own copy of the agent is touched. */
static void child(const struct vz_exec_req *r, int probe, int in_r, int out_w, int err_w, int errpipe)
{
    sigset_t none;
    int e;
    setsid(); /* own process group: timeout and signal reach grandchildren too */
    dup2(in_r, 0);
    dup2(out_w, 1);
    dup2(probe ? out_w : err_w, 2);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL); /* the agent blocks SIGCHLD etc. for its signalfd */
    signal(SIGPIPE, SIG_DFL);
    for (unsigned i = 0; i < r->envc; i++)
        putenv(r->env[i]);
    if (r->cwd && chdir(r->cwd) != 0) {
        e = errno;
        dprintf(2, "vz-agent: chdir %s: %s\n", r->cwd, strerror(e));
        if (write(errpipe, &e, sizeof e) < 0) { /* nothing to do: the exit code says it */ }
        _exit(127);
    }
    execvp(r->argv[0], r->argv);
    e = errno;
    dprintf(2, "vz-agent: exec %s: %s\n", r->argv[0], strerror(e));
    if (write(errpipe, &e, sizeof e) < 0) { /* as above */ }
    _exit(e == ENOENT ? 127 : 126);
}

struct exec *exec_start(struct conn *c, uint32_t id, const struct vz_exec_req *r, int probe,
                        const char **err, int *err_errno)
{
    struct exec *e = NULL;
    int in[2] = {-1, -1}, out[2] = {-1, -1}, errp[2] = {-1, -1}, ep[2] = {-1, -1};
    *err_errno = 0;
    if (exec_find(c, id)) {
        *err = "request id already names a running exec";
        return NULL;
    }
    for (int i = 0; i < MAX_EXECS; i++)
        if (!g_execs[i].used) {
            e = &g_execs[i];
            break;
        }
    if (!e) {
        *err = "too many concurrent execs";
        return NULL;
    }
    if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(errp, O_CLOEXEC) || pipe2(ep, O_CLOEXEC)) {
        *err_errno = errno;
        *err = "pipe";
        goto fail;
    }
    pid_t pid = fork();
    if (pid < 0) {
        *err_errno = errno;
        *err = "fork";
        goto fail;
    }
    if (pid == 0)
        child(r, probe, in[0], out[1], errp[1], ep[1]);
    close(in[0]);
    close(out[1]);
    close(errp[1]);
    close(ep[1]);
    memset(e, 0, sizeof(*e));
    e->used = 1;
    e->conn = c;
    e->id = id;
    e->probe = probe;
    e->pid = pid;
    e->in_fd = in[1];
    e->out_fd = out[0];
    e->errpipe = ep[0];
    e->err_fd = errp[0];
    if (probe) /* stderr shares stdout's pipe */
        close_fd(&e->err_fd);
    set_nonblock(e->in_fd);
    set_nonblock(e->out_fd);
    if (e->err_fd >= 0)
        set_nonblock(e->err_fd);
    set_nonblock(e->errpipe);
    e->deadline = r->timeout_ms ? now_ms() + (int64_t)r->timeout_ms : 0;
    snprintf(e->name, sizeof e->name, "%s", r->argv[0]);
    return e;
fail:
    for (int i = 0; i < 2; i++) {
        close_fd(&in[i]);
        close_fd(&out[i]);
        close_fd(&errp[i]);
        close_fd(&ep[i]);
    }
    return NULL;
}

void exec_queue_stdin(struct exec *e, const uint8_t *p, size_t n, int eof)
{
    if (e->in_fd >= 0 && n) {
        if (buf_size(&e->stdin_q) + n > STDIN_LIMIT) {
            if (e->conn)
                send_error(e->conn, e->id, VZ_E_LIMIT, "stdin queue over its limit; data dropped");
        } else if (buf_append(&e->stdin_q, p, n)) {
            abort();
        }
    }
    if (eof)
        e->stdin_eof = 1;
    if (e->stdin_eof && buf_size(&e->stdin_q) == 0)
        close_fd(&e->in_fd);
}

/* Called by the loop when the child's stdin pipe is writable. */
void exec_write_stdin(struct exec *e);
void exec_write_stdin(struct exec *e)
{
    while (e->in_fd >= 0 && buf_size(&e->stdin_q) > 0) {
        ssize_t n = write(e->in_fd, buf_peek(&e->stdin_q), buf_size(&e->stdin_q));
        if (n > 0) {
            buf_consume(&e->stdin_q, (size_t)n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        /* EPIPE: the child stopped reading stdin; drop the rest. */
        buf_clear(&e->stdin_q);
        close_fd(&e->in_fd);
        return;
    }
    if (e->stdin_eof)
        close_fd(&e->in_fd);
}

/* Read one chunk from a child's pipe (one per loop pass keeps floods fair). */
void exec_read_pipe(struct exec *e, int stream);
void exec_read_pipe(struct exec *e, int stream)
{
    static uint8_t chunk[CHUNK];
    static struct buf frame;
    int *fd = stream == VZ_STDERR ? &e->err_fd : &e->out_fd;
    ssize_t n = read(*fd, chunk, sizeof chunk);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        close_fd(fd);
        return;
    }
    if (e->probe) {
        buf_append(&e->evidence, chunk, (size_t)n);
        if (buf_size(&e->evidence) > 2 * EVIDENCE_TAIL)
            buf_consume(&e->evidence, buf_size(&e->evidence) - EVIDENCE_TAIL);
        return;
    }
    if (!e->conn)
        return;
    buf_clear(&frame);
    size_t s = frame_begin(&frame, VZ_MSG_OUTPUT, e->id);
    put_u64(&frame, VZ_T_STREAM, (uint64_t)stream);
    put_bytes(&frame, VZ_T_DATA, chunk, (size_t)n);
    frame_end(&frame, s);
    send_frame(e->conn, &frame);
}

void exec_reap_all(void)
{
    int status;
    pid_t pid;
    /* Also reaps orphans re-parented to us (we are a child subreaper): they match no exec. */
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < MAX_EXECS; i++) {
            struct exec *e = &g_execs[i];
            if (e->used && !e->reaped && e->pid == pid) {
                int err;
                e->reaped = 1;
                e->status = status;
                e->reaped_at = now_ms();
                if (read(e->errpipe, &err, sizeof err) == (ssize_t)sizeof err)
                    e->exec_errno = err;
                break;
            }
        }
    }
}

static void finish(struct exec *e)
{
    static struct buf frame;
    char msg[160];
    uint32_t type = e->probe ? VZ_MSG_OK : VZ_MSG_EXIT;
    if (e->conn) {
        buf_clear(&frame);
        size_t s = frame_begin(&frame, (uint8_t)type, e->id);
        if (WIFSIGNALED(e->status))
            put_u64(&frame, VZ_T_SIGNAL, (uint64_t)WTERMSIG(e->status));
        else
            put_u64(&frame, VZ_T_EXIT_CODE, (uint64_t)WEXITSTATUS(e->status));
        put_u64(&frame, VZ_T_TIMED_OUT, (uint64_t)e->timed_out);
        put_u64(&frame, VZ_T_PID, (uint64_t)e->pid);
        if (e->exec_errno) {
            snprintf(msg, sizeof msg, "exec %s: %s", e->name, strerror(e->exec_errno));
            put_str(&frame, VZ_T_MESSAGE, msg);
        }
        if (e->probe) {
            int pass = !e->timed_out && WIFEXITED(e->status) && WEXITSTATUS(e->status) == 0;
            size_t n = buf_size(&e->evidence);
            size_t skip = n > EVIDENCE_TAIL ? n - EVIDENCE_TAIL : 0;
            put_u64(&frame, VZ_T_PASS, (uint64_t)pass);
            put_bytes(&frame, VZ_T_EVIDENCE, buf_peek(&e->evidence) + skip, n - skip);
        }
        frame_end(&frame, s);
        send_frame(e->conn, &frame);
    }
    close_fd(&e->in_fd);
    close_fd(&e->out_fd);
    close_fd(&e->err_fd);
    close_fd(&e->errpipe);
    buf_free(&e->stdin_q);
    buf_free(&e->evidence);
    e->used = 0;
}

void exec_detach_conn(struct conn *c)
{
    for (int i = 0; i < MAX_EXECS; i++) {
        struct exec *e = &g_execs[i];
        if (e->used && e->conn == c) {
            /* Nobody is left to read the result: stop the whole process group. */
            if (!e->reaped)
                kill(-e->pid, SIGKILL);
            e->conn = NULL;
        }
    }
}

/* Timeouts and completion; called once per loop pass. */
void exec_tick(void)
{
    int64_t now = now_ms();
    for (int i = 0; i < MAX_EXECS; i++) {
        struct exec *e = &g_execs[i];
        if (!e->used)
            continue;
        if (!e->reaped && e->deadline && now >= e->deadline && !e->timed_out) {
            e->timed_out = 1;
            kill(-e->pid, SIGKILL);
        }
        if (!e->reaped)
            continue;
        /* Output still open after the child exited: a background grandchild holds the pipe. */
        if ((e->out_fd >= 0 || e->err_fd >= 0) && e->conn &&
            (now - e->reaped_at < EXIT_GRACE_MS || buf_size(&e->conn->out) > OUT_HIGH_WATER))
            continue;
        finish(e);
    }
}

int exec_count(const struct conn *c)
{
    int n = 0;
    for (int i = 0; i < MAX_EXECS; i++)
        n += g_execs[i].used && g_execs[i].conn == c;
    return n;
}
