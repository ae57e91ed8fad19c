/* vz-agent wire protocol (docs/PROTOCOL.md). Pure encode/decode: no I/O, no globals, fuzzed. */
#ifndef VZ_PROTOCOL_H
#define VZ_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

/* Bumped on any incompatible change; must equal vz_linux.version.AGENT_PROTOCOL_REVISION. */
#define VZ_AGENT_PROTOCOL_REVISION 3

#define VZ_MAGIC0 'V'
#define VZ_MAGIC1 'Z'
#define VZ_HEADER_SIZE 12u
#define VZ_MAX_PAYLOAD (1024u * 1024u)  /* hard limit per frame */
#define VZ_TLV_HEADER 6u
#define VZ_MAX_ARGS 256u
#define VZ_MAX_ENV 256u
/* TIMEOUT_MS above this is refused (BAD_PAYLOAD): a deadline of now + 2^63 ms would overflow. */
#define VZ_MAX_TIMEOUT_MS (1ull << 40)
/* ROWS / COLS of a terminal: 1..VZ_MAX_WINSIZE (struct winsize holds u16). */
#define VZ_MAX_WINSIZE 65535u

/* Message types: host -> agent */
enum {
    VZ_MSG_HELLO = 0x01,
    VZ_MSG_PING = 0x02,
    VZ_MSG_EXEC = 0x03,
    VZ_MSG_STDIN = 0x04,
    VZ_MSG_SIGNAL = 0x05,
    VZ_MSG_READ_FILE = 0x06,
    VZ_MSG_WRITE_FILE = 0x07,
    VZ_MSG_PROBE = 0x08,
    VZ_MSG_POWEROFF = 0x09,
    VZ_MSG_FLOW = 0x0A,      /* id = an exec's id: PAUSE 1 stops reading its output, 0 resumes */
    VZ_MSG_RESTORED = 0x0B,/* restored from a snapshot: step the clock, reseed the RNG */
    VZ_MSG_RESIZE = 0x10,        /* id = a TTY exec's id: ROWS, COLS (revision 3) */
    VZ_MSG_FORWARD_OPEN = 0x11,  /* connect to 127.0.0.1:PORT (in the netns at PATH): OK or ERROR */
    VZ_MSG_FORWARD_DATA = 0x12,  /* id = a forward's id: DATA?, EOF? (shut down our write side) */
    VZ_MSG_FORWARD_CLOSE = 0x13, /* id = a forward's id: abort the connection */
};
/* Message types: agent -> host */
enum {
    VZ_MSG_OK = 0x80,        /* success reply; fields depend on the request */
    VZ_MSG_ERROR = 0x81,     /* ERROR_CODE + MESSAGE */
    VZ_MSG_STARTED = 0x82,   /* exec started: PID */
    VZ_MSG_OUTPUT = 0x83,    /* exec output chunk: STREAM + DATA */
    VZ_MSG_EXIT = 0x84,      /* exec finished: EXIT_CODE or SIGNAL, TIMED_OUT, MESSAGE */
    VZ_MSG_FORWARD_RECV = 0x90,   /* bytes the guest socket sent: DATA */
    VZ_MSG_FORWARD_CLOSED = 0x91, /* EOF: the guest peer shut down its write side; else closed (MESSAGE?) */
    VZ_MSG_FORWARD_ACK = 0x92,    /* SIZE more bytes of FORWARD_DATA were written to the guest socket */
};

/* Field tags (one namespace for all messages). */
enum {
    VZ_T_ARGV = 1, VZ_T_ENV = 2, VZ_T_CWD = 3, VZ_T_TIMEOUT_MS = 4, VZ_T_DATA = 5, VZ_T_EOF = 6,
    VZ_T_STREAM = 7, VZ_T_EXIT_CODE = 8, VZ_T_SIGNAL = 9, VZ_T_EXEC_ID = 10, VZ_T_PATH = 11,
    VZ_T_MODE = 12, VZ_T_NAME = 13, VZ_T_SNIPPET = 14, VZ_T_PASS = 15, VZ_T_EVIDENCE = 16,
    VZ_T_ERROR_CODE = 17, VZ_T_MESSAGE = 18, VZ_T_PID = 19, VZ_T_VERSION = 20, VZ_T_REVISION = 21,
    VZ_T_SYSNAME = 22, VZ_T_RELEASE = 23, VZ_T_OS_VERSION = 24, VZ_T_MACHINE = 25,
    VZ_T_MONOTONIC_NS = 26, VZ_T_BOOTTIME_NS = 27, VZ_T_START_BOOTTIME_NS = 28,
    VZ_T_START_MONOTONIC_NS = 29, VZ_T_REALTIME_NS = 30, VZ_T_TIMED_OUT = 31, VZ_T_ACTION = 32,
    VZ_T_MAX_SIZE = 33, VZ_T_SIZE = 34, VZ_T_TRANSPORT = 35, VZ_T_PAUSE = 36,
    VZ_T_TTY = 40, VZ_T_ROWS = 41, VZ_T_COLS = 42, VZ_T_PORT = 43, /* revision 3 */
};

/* Error codes carried in ERROR frames. */
enum {
    VZ_E_FRAMING = 1,      /* bad magic / header: stream is closed (or resynchronised on serial) */
    VZ_E_TOO_BIG = 2,      /* payload length over VZ_MAX_PAYLOAD */
    VZ_E_UNKNOWN_TYPE = 3, /* unknown message type: frame skipped */
    VZ_E_BAD_PAYLOAD = 4,  /* malformed / truncated / missing fields */
    VZ_E_NOT_FOUND = 5,    /* exec id, file */
    VZ_E_BUSY = 6,         /* too many execs / connections */
    VZ_E_IO = 7,           /* system call failed (message has strerror) */
    VZ_E_NOT_PERMITTED = 8,
    VZ_E_LIMIT = 9,        /* file or stdin buffer over its limit */
};

/* Stream ids in OUTPUT frames. */
enum { VZ_STDOUT = 1, VZ_STDERR = 2 };
/* POWEROFF actions. */
enum { VZ_POWER_OFF = 0, VZ_POWER_REBOOT = 1, VZ_POWER_HALT = 2 };

struct vz_frame {
    uint8_t type;
    uint8_t flags;
    uint32_t id;
    const uint8_t *payload; /* points into the caller's buffer */
    uint32_t len;
};

/* vz_frame_decode results */
enum {
    VZ_DEC_OK = 0,        /* *out filled, *consumed bytes used */
    VZ_DEC_NEED_MORE = 1, /* not a whole frame yet */
    VZ_DEC_BAD_MAGIC = -1,
    VZ_DEC_TOO_BIG = -2,  /* header parsed (out->type/id valid), payload too long */
};

int vz_frame_decode(const uint8_t *buf, size_t len, struct vz_frame *out, size_t *consumed);
/* Offset of the next possible frame start after a framing error (>= 1), for resync on serial. */
size_t vz_resync(const uint8_t *buf, size_t len);
void vz_put_header(uint8_t *dst, uint8_t type, uint32_t id, uint32_t payload_len);

struct vz_tlv {
    uint16_t tag;
    uint32_t len;
    const uint8_t *val;
};
/* Iterate fields: returns 1 with *tlv filled, 0 at clean end, -1 on a truncated field. */
int vz_tlv_next(const uint8_t *payload, uint32_t len, uint32_t *pos, struct vz_tlv *tlv);
int vz_tlv_u64(const struct vz_tlv *t, uint64_t *v);
uint64_t vz_be64(const uint8_t *p);
uint32_t vz_be32(const uint8_t *p);

/* Parsed requests. Strings are copied and NUL-terminated into the caller-provided arena. */
struct vz_arena {
    char *base;
    size_t cap, used;
};

struct vz_exec_req {
    char *argv[VZ_MAX_ARGS + 1];
    unsigned argc;
    char *env[VZ_MAX_ENV + 1];
    unsigned envc;
    char *cwd;               /* NULL = agent's cwd */
    uint64_t timeout_ms;     /* 0 = none */
    const uint8_t *stdin_data;
    uint32_t stdin_len;
    int stdin_eof;
    int tty;                 /* TTY: run on a new pseudo-terminal (output as one stream) */
    uint16_t rows, cols;     /* its initial size (0 = kernel default) */
};

struct vz_simple_req {        /* every other request: the fields it may carry */
    char *path, *name, *snippet;
    const uint8_t *data;
    uint32_t data_len;
    int has_data, eof;
    uint64_t exec_id, signal, mode, action, max_size, timeout_ms, pause, realtime_ns, rows, cols, port;
    int has_exec_id, has_signal, has_mode, has_action, has_max_size, has_timeout_ms, has_pause,
        has_realtime_ns, has_rows, has_cols, has_port;
};

/* 0 on success; -1 on malformed payload with a static reason in *why. */
int vz_parse_exec(const struct vz_frame *f, struct vz_arena *a, struct vz_exec_req *r, const char **why);
int vz_parse_simple(const struct vz_frame *f, struct vz_arena *a, struct vz_simple_req *r, const char **why);
/* Which request types exist (1) or not (0). */
int vz_known_request(uint8_t type);

#endif
