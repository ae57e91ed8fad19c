/* Child processes: spawn with pipes in a new session, stream output, reap, time out, report. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
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

extern char **environ;

/* The child's environment: the agent's, with the request's NAME=VALUE entries replacing or adding. */
static char **merged_env(const struct vz_exec_req *r)
{
    size_t n = 0, k = 0;
    char **out;
    while (environ[n])
        n++;
    out = calloc(n + r->envc + 1, sizeof *out);
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        size_t len = strcspn(environ[i], "=");
        int overridden = 0;
        for (unsigned j = 0; j < r->envc && !overridden; j++)
            overridden = strncmp(r->env[j], environ[i], len) == 0 && r->env[j][len] == '=';
        if (!overridden)
            out[k++] = environ[i];
    }
    for (unsigned j = 0; j < r->envc; j++)
        out[k++] = r->env[j];
    out[k] = NULL;
    return out;
}

/* posix_spawn (vfork-like: no copy of the agent's memory) into a new session = own process group,
 * so timeouts and signals reach grandchildren too. Returns 0 or an errno. */
static int spawn_child(const struct vz_exec_req *r, int probe, int in_r, int out_w, int err_w,
                       const char *tty, pid_t *pid)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    sigset_t none, all;
    char **envp = merged_env(r);
    int rc;
    if (!envp)
        return ENOMEM;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_init(&at);
    /* The agent blocks SIGCHLD etc. for its signalfd and ignores SIGPIPE: undo both for the child. */
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &all);
    posix_spawn_file_actions_init(&fa);
    if (tty) {
        /* File actions run after setsid(): the new session leader opening the terminal without
         * O_NOCTTY makes it its controlling terminal (what TIOCSCTTY does), with the child's
         * process group in the foreground, so ^C from the host reaches it. */
        posix_spawn_file_actions_addopen(&fa, 0, tty, O_RDWR, 0);
        posix_spawn_file_actions_adddup2(&fa, 0, 1);
        posix_spawn_file_actions_adddup2(&fa, 0, 2);
    } else {
        posix_spawn_file_actions_adddup2(&fa, in_r, 0);
        posix_spawn_file_actions_adddup2(&fa, out_w, 1);
        posix_spawn_file_actions_adddup2(&fa, probe ? out_w : err_w, 2);
    }
    if (r->cwd)
        posix_spawn_file_actions_addchdir_np(&fa, r->cwd);
    rc = posix_spawnp(pid, r->argv[0], &fa, &at, r->argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    free(envp);
    return rc;
}

/* A TTY exec talks through the terminal's master: stdin and output are dups of it (closed on their
 * own schedule), output is one stream, and a failed exec's message goes to the terminal. */
static void attach_pty(struct exec *e, int master, int *err_w)
{
    close_fd(&e->in_fd);
    close_fd(&e->out_fd);
    close_fd(&e->err_fd);
    close_fd(err_w);
    e->pty_fd = master;
    e->in_fd = fcntl(master, F_DUPFD_CLOEXEC, 3);
    e->out_fd = fcntl(master, F_DUPFD_CLOEXEC, 3);
    *err_w = -1;
}

/* Like a shell: the command "ran" and exited 127 (126 for other errors) with the reason on its
 * stderr (`err_w`, or the agent's when there is none), so hosts need no special case. */
static void exec_failed(struct exec *e, int spawn_errno, const char *msg, int err_w)
{
    dprintf(err_w >= 0 ? err_w : 2, "vz-agent: %s\n", msg);
    e->reaped = 1;
    e->status = (spawn_errno == ENOENT ? 127 : 126) << 8;
    e->reaped_at = now_ms();
    e->exec_errno = spawn_errno;
    snprintf(e->message, sizeof e->message, "%s", msg);
    close_fd(&e->in_fd);
    if (e->pty_fd >= 0)
        close_fd(&e->out_fd); /* nothing ever opened the terminal: no EIO would come */
}

struct exec *exec_start(struct conn *c, uint32_t id, const struct vz_exec_req *r, int probe,
                        const char **err, int *err_errno)
{
    struct exec *e = NULL;
    int in[2] = {-1, -1}, out[2] = {-1, -1}, errp[2] = {-1, -1};
    int spawn_errno = 0, master = -1;
    char msg[400], tty[128];
    struct stat st;
    pid_t pid = -1;
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
    if (r->tty && !probe) {
        int rc = pty_open(&master, tty, sizeof tty, r->rows, r->cols);
        if (rc) {
            *err_errno = rc;
            *err = "open a pseudo-terminal";
            return NULL;
        }
    }
    if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(errp, O_CLOEXEC)) {
        *err_errno = errno;
        *err = "pipe";
        for (int i = 0; i < 2; i++) {
            close_fd(&in[i]);
            close_fd(&out[i]);
            close_fd(&errp[i]);
        }
        close_fd(&master);
        return NULL;
    }
    /* Check the cwd here so its failure is reported as such, not as a failed exec. */
    if (r->cwd)
        spawn_errno = stat(r->cwd, &st) != 0 ? errno : !S_ISDIR(st.st_mode) ? ENOTDIR : 0;
    if (spawn_errno) {
        snprintf(msg, sizeof msg, "chdir %s: %s", r->cwd, strerror(spawn_errno));
    } else if ((spawn_errno = spawn_child(r, probe, in[0], out[1], errp[1], master >= 0 ? tty : NULL,
                                          &pid)) != 0) {
        snprintf(msg, sizeof msg, "exec %s: %s", r->argv[0], strerror(spawn_errno));
    }
    close(in[0]);
    close(out[1]);
    memset(e, 0, sizeof(*e));
    e->used = 1;
    e->conn = c;
    e->id = id;
    e->probe = probe;
    e->pid = pid;
    e->in_fd = in[1];
    e->out_fd = out[0];
    e->err_fd = errp[0];
    e->pty_fd = -1;
    if (master >= 0)
        attach_pty(e, master, &errp[1]);
    if (spawn_errno)
        exec_failed(e, spawn_errno, msg, probe ? -1 : errp[1]);
    close_fd(&errp[1]);
    if (probe) /* stderr shares stdout's pipe */
        close_fd(&e->err_fd);
    set_nonblock(e->in_fd);
    set_nonblock(e->out_fd);
    if (e->err_fd >= 0)
        set_nonblock(e->err_fd);
    e->deadline = r->timeout_ms ? now_ms() + (int64_t)r->timeout_ms : 0;
    snprintf(e->name, sizeof e->name, "%s", r->argv[0]);
    return e;
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
                e->reaped = 1;
                e->status = status;
                e->reaped_at = now_ms();
                break;
            }
        }
    }
}

static void finish(struct exec *e)
{
    static struct buf frame;
    uint32_t type = e->probe ? VZ_MSG_OK : VZ_MSG_EXIT;
    if (e->conn) {
        buf_clear(&frame);
        size_t s = frame_begin(&frame, (uint8_t)type, e->id);
        if (WIFSIGNALED(e->status))
            put_u64(&frame, VZ_T_SIGNAL, (uint64_t)WTERMSIG(e->status));
        else
            put_u64(&frame, VZ_T_EXIT_CODE, (uint64_t)WEXITSTATUS(e->status));
        put_u64(&frame, VZ_T_TIMED_OUT, (uint64_t)e->timed_out);
        if (e->pid > 0)
            put_u64(&frame, VZ_T_PID, (uint64_t)e->pid);
        if (e->exec_errno)
            put_str(&frame, VZ_T_MESSAGE, e->message);
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
    close_fd(&e->pty_fd);
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
            if (!e->reaped && e->pid > 0)
                kill(-e->pid, SIGKILL);
            e->conn = NULL;
            e->paused = 0; /* nobody reads it any more: drain the pipes so the exec can finish */
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
        if (!e->reaped && e->pid > 0 && e->deadline && now >= e->deadline && !e->timed_out) {
            e->timed_out = 1;
            kill(-e->pid, SIGKILL);
        }
        if (!e->reaped)
            continue;
        /* Output still open after the child exited: a background grandchild holds the pipe. */
        if ((e->out_fd >= 0 || e->err_fd >= 0) && e->conn &&
            (now - e->reaped_at < EXIT_GRACE_MS || e->paused || buf_size(&e->conn->out) > OUT_HIGH_WATER))
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
