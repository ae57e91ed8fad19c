/* Frame and field codec (docs/PROTOCOL.md). Every length is checked before it is used. */
#include "protocol.h"

#include <string.h>

uint32_t vz_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

uint64_t vz_be64(const uint8_t *p)
{
    return ((uint64_t)vz_be32(p) << 32) | vz_be32(p + 4);
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

void vz_put_header(uint8_t *dst, uint8_t type, uint32_t id, uint32_t payload_len)
{
    dst[0] = VZ_MAGIC0;
    dst[1] = VZ_MAGIC1;
    dst[2] = type;
    dst[3] = 0;
    put32(dst + 4, id);
    put32(dst + 8, payload_len);
}

int vz_frame_decode(const uint8_t *buf, size_t len, struct vz_frame *out, size_t *consumed)
{
    *consumed = 0;
    if (len >= 1 && buf[0] != VZ_MAGIC0)
        return VZ_DEC_BAD_MAGIC;
    if (len >= 2 && buf[1] != VZ_MAGIC1)
        return VZ_DEC_BAD_MAGIC;
    if (len < VZ_HEADER_SIZE)
        return VZ_DEC_NEED_MORE;
    out->type = buf[2];
    out->flags = buf[3];
    out->id = vz_be32(buf + 4);
    out->len = vz_be32(buf + 8);
    out->payload = NULL;
    if (out->len > VZ_MAX_PAYLOAD)
        return VZ_DEC_TOO_BIG;
    if (len - VZ_HEADER_SIZE < out->len)
        return VZ_DEC_NEED_MORE;
    out->payload = buf + VZ_HEADER_SIZE;
    *consumed = VZ_HEADER_SIZE + (size_t)out->len;
    return VZ_DEC_OK;
}

size_t vz_resync(const uint8_t *buf, size_t len)
{
    size_t i;
    for (i = 1; i < len; i++) {
        if (buf[i] == VZ_MAGIC0 && (i + 1 >= len || buf[i + 1] == VZ_MAGIC1))
            return i;
    }
    return len ? len : 1;
}

int vz_tlv_next(const uint8_t *payload, uint32_t len, uint32_t *pos, struct vz_tlv *tlv)
{
    uint32_t p = *pos;
    if (p == len)
        return 0;
    if (p > len || len - p < VZ_TLV_HEADER)
        return -1;
    tlv->tag = (uint16_t)((payload[p] << 8) | payload[p + 1]);
    tlv->len = vz_be32(payload + p + 2);
    p += VZ_TLV_HEADER;
    if (tlv->len > len - p)
        return -1;
    tlv->val = payload + p;
    *pos = p + tlv->len;
    return 1;
}

int vz_tlv_u64(const struct vz_tlv *t, uint64_t *v)
{
    if (t->len != 8)
        return -1;
    *v = vz_be64(t->val);
    return 0;
}

/* Copy a field into the arena as a C string; fields with an embedded NUL are refused. */
static char *arena_str(struct vz_arena *a, const struct vz_tlv *t)
{
    char *s;
    if (memchr(t->val, 0, t->len) != NULL)
        return NULL;
    if (a->cap - a->used < (size_t)t->len + 1)
        return NULL;
    s = a->base + a->used;
    memcpy(s, t->val, t->len);
    s[t->len] = '\0';
    a->used += (size_t)t->len + 1;
    return s;
}

int vz_known_request(uint8_t type)
{
    switch (type) {
    case VZ_MSG_HELLO: case VZ_MSG_PING: case VZ_MSG_EXEC: case VZ_MSG_STDIN: case VZ_MSG_SIGNAL:
    case VZ_MSG_READ_FILE: case VZ_MSG_WRITE_FILE: case VZ_MSG_PROBE: case VZ_MSG_POWEROFF:
    case VZ_MSG_FLOW: case VZ_MSG_RESTORED: case VZ_MSG_RESIZE: case VZ_MSG_FORWARD_OPEN:
    case VZ_MSG_FORWARD_DATA: case VZ_MSG_FORWARD_CLOSE:
        return 1;
    default:
        return 0;
    }
}

/* ROWS / COLS: 8 bytes, 1..VZ_MAX_WINSIZE. */
static int winsize_field(const struct vz_tlv *t, uint16_t *out)
{
    uint64_t v;
    if (vz_tlv_u64(t, &v) || v == 0 || v > VZ_MAX_WINSIZE)
        return -1;
    *out = (uint16_t)v;
    return 0;
}

int vz_parse_exec(const struct vz_frame *f, struct vz_arena *a, struct vz_exec_req *r, const char **why)
{
    uint32_t pos = 0;
    struct vz_tlv t;
    int rc;
    memset(r, 0, sizeof(*r));
    while ((rc = vz_tlv_next(f->payload, f->len, &pos, &t)) == 1) {
        switch (t.tag) {
        case VZ_T_ARGV:
            if (r->argc >= VZ_MAX_ARGS) { *why = "too many argv fields"; return -1; }
            if (!(r->argv[r->argc++] = arena_str(a, &t))) { *why = "argv contains NUL"; return -1; }
            break;
        case VZ_T_ENV:
            if (r->envc >= VZ_MAX_ENV) { *why = "too many env fields"; return -1; }
            if (!memchr(t.val, '=', t.len) || t.len == 0 || t.val[0] == '=') {
                *why = "env field is not NAME=VALUE";
                return -1;
            }
            if (!(r->env[r->envc++] = arena_str(a, &t))) { *why = "env contains NUL"; return -1; }
            break;
        case VZ_T_CWD:
            if (!(r->cwd = arena_str(a, &t)) || !r->cwd[0]) { *why = "bad cwd"; return -1; }
            break;
        case VZ_T_TIMEOUT_MS:
            if (vz_tlv_u64(&t, &r->timeout_ms)) { *why = "timeout_ms must be 8 bytes"; return -1; }
            if (r->timeout_ms > VZ_MAX_TIMEOUT_MS) { *why = "timeout_ms over the 2^40 ms limit"; return -1; }
            break;
        case VZ_T_DATA:
            r->stdin_data = t.val;
            r->stdin_len = t.len;
            break;
        case VZ_T_EOF:
            r->stdin_eof = 1;
            break;
        case VZ_T_TTY:
            r->tty = 1;
            break;
        case VZ_T_ROWS:
            if (winsize_field(&t, &r->rows)) { *why = "ROWS must be 8 bytes, 1..65535"; return -1; }
            break;
        case VZ_T_COLS:
            if (winsize_field(&t, &r->cols)) { *why = "COLS must be 8 bytes, 1..65535"; return -1; }
            break;
        default:
            break; /* unknown fields are ignored: newer hosts may add optional ones */
        }
    }
    if (rc < 0) { *why = "truncated field"; return -1; }
    if (r->argc == 0 || r->argv[0][0] == '\0') { *why = "exec needs a non-empty argv"; return -1; }
    r->argv[r->argc] = NULL;
    r->env[r->envc] = NULL;
    return 0;
}

int vz_parse_simple(const struct vz_frame *f, struct vz_arena *a, struct vz_simple_req *r, const char **why)
{
    uint32_t pos = 0;
    struct vz_tlv t;
    int rc;
    char **dst;
    memset(r, 0, sizeof(*r));
    while ((rc = vz_tlv_next(f->payload, f->len, &pos, &t)) == 1) {
        uint64_t *num = NULL;
        int *has = NULL;
        dst = NULL;
        switch (t.tag) {
        case VZ_T_PATH: dst = &r->path; break;
        case VZ_T_NAME: dst = &r->name; break;
        case VZ_T_SNIPPET: dst = &r->snippet; break;
        case VZ_T_DATA: r->data = t.val; r->data_len = t.len; r->has_data = 1; break;
        case VZ_T_EOF: r->eof = 1; break;
        case VZ_T_EXEC_ID: num = &r->exec_id; has = &r->has_exec_id; break;
        case VZ_T_SIGNAL: num = &r->signal; has = &r->has_signal; break;
        case VZ_T_MODE: num = &r->mode; has = &r->has_mode; break;
        case VZ_T_ACTION: num = &r->action; has = &r->has_action; break;
        case VZ_T_MAX_SIZE: num = &r->max_size; has = &r->has_max_size; break;
        case VZ_T_TIMEOUT_MS: num = &r->timeout_ms; has = &r->has_timeout_ms; break;
        case VZ_T_PAUSE: num = &r->pause; has = &r->has_pause; break;
        case VZ_T_REALTIME_NS: num = &r->realtime_ns; has = &r->has_realtime_ns; break;
        case VZ_T_ROWS: num = &r->rows; has = &r->has_rows; break;
        case VZ_T_COLS: num = &r->cols; has = &r->has_cols; break;
        case VZ_T_PORT: num = &r->port; has = &r->has_port; break;
        default: break;
        }
        if (dst && !(*dst = arena_str(a, &t))) { *why = "string field contains NUL"; return -1; }
        if (num) {
            if (vz_tlv_u64(&t, num)) { *why = "integer field must be 8 bytes"; return -1; }
            *has = 1;
        }
        if (num == &r->timeout_ms && r->timeout_ms > VZ_MAX_TIMEOUT_MS) {
            *why = "timeout_ms over the 2^40 ms limit";
            return -1;
        }
    }
    if (rc < 0) { *why = "truncated field"; return -1; }
    return 0;
}
