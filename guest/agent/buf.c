#include "buf.h"

#include <stdlib.h>
#include <string.h>

#include "protocol.h"

int buf_append(struct buf *b, const void *p, size_t n)
{
    if (b->head > 0 && b->head == b->len)
        b->head = b->len = 0;
    if (b->cap - b->len < n) {
        /* Compact before growing so a queue that is drained as fast as it fills stays small. */
        if (b->head > 0) {
            memmove(b->data, b->data + b->head, b->len - b->head);
            b->len -= b->head;
            b->head = 0;
        }
        if (b->cap - b->len < n) {
            size_t cap = b->cap ? b->cap : 4096;
            uint8_t *d;
            while (cap - b->len < n)
                cap *= 2;
            d = realloc(b->data, cap);
            if (!d)
                return -1;
            b->data = d;
            b->cap = cap;
        }
    }
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void buf_consume(struct buf *b, size_t n)
{
    b->head += n;
    if (b->head >= b->len)
        b->head = b->len = 0;
}

void buf_clear(struct buf *b) { b->head = b->len = 0; }

void buf_free(struct buf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

size_t frame_begin(struct buf *b, uint8_t type, uint32_t id)
{
    uint8_t h[VZ_HEADER_SIZE];
    size_t start;
    vz_put_header(h, type, id, 0);
    /* Compact first so the returned offset stays valid while fields are appended. */
    if (b->head > 0 && b->head == b->len)
        b->head = b->len = 0;
    start = b->len;
    if (buf_append(b, h, sizeof h))
        abort(); /* out of memory in a 1 MiB-bounded agent: nothing sane left to do */
    return start;
}

void frame_end(struct buf *b, size_t start)
{
    put_be32(b->data + start + 8, (uint32_t)(b->len - start - VZ_HEADER_SIZE));
}

void put_bytes(struct buf *b, uint16_t tag, const void *p, size_t n)
{
    uint8_t h[VZ_TLV_HEADER];
    h[0] = (uint8_t)(tag >> 8);
    h[1] = (uint8_t)tag;
    put_be32(h + 2, (uint32_t)n);
    if (buf_append(b, h, sizeof h) || buf_append(b, p, n))
        abort();
}

void put_str(struct buf *b, uint16_t tag, const char *s) { put_bytes(b, tag, s, strlen(s)); }

void put_u64(struct buf *b, uint16_t tag, uint64_t v)
{
    uint8_t p[8];
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
    put_bytes(b, tag, p, 8);
}
