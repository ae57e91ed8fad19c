/* Pseudo-terminals for TTY execs (docs/PROTOCOL.md, "Terminals"). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "agent.h"

/* A new master (close-on-exec, non-blocking) and its slave's path; the slave is opened by the child
 * only, so the master reads EIO once every process holding the slave is gone. 0 or an errno. */
int pty_open(int *master, char *slave, size_t slave_len, uint16_t rows, uint16_t cols)
{
    int fd = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    if (grantpt(fd) != 0 || unlockpt(fd) != 0 || ptsname_r(fd, slave, slave_len) != 0) {
        int e = errno ? errno : EIO;
        close(fd);
        return e;
    }
    if (rows && cols && pty_resize(fd, rows, cols) != 0) {
        int e = errno;
        close(fd);
        return e;
    }
    set_nonblock(fd);
    *master = fd;
    return 0;
}

/* TIOCSWINSZ on the master: the kernel sends SIGWINCH to the terminal's foreground process group. */
int pty_resize(int master, uint16_t rows, uint16_t cols)
{
    struct winsize ws;
    memset(&ws, 0, sizeof ws);
    ws.ws_row = rows;
    ws.ws_col = cols;
    return ioctl(master, TIOCSWINSZ, &ws);
}
