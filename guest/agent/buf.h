/* Growable byte buffer with a consumed-prefix offset (queues for sockets and pipes). */
#ifndef VZ_BUF_H
#define VZ_BUF_H

#include <stddef.h>
#include <stdint.h>

struct buf {
    uint8_t *data;
    size_t head, len, cap; /* live bytes are data[head .. len) */
};

static inline size_t buf_size(const struct buf *b) { return b->len - b->head; }
static inline const uint8_t *buf_peek(const struct buf *b) { return b->data + b->head; }
int buf_append(struct buf *b, const void *p, size_t n);
void buf_consume(struct buf *b, size_t n);
void buf_free(struct buf *b);
void buf_clear(struct buf *b);

/* Frame builder on top of a buf: header first, fields, then the length is patched. */
size_t frame_begin(struct buf *b, uint8_t type, uint32_t id);
void frame_end(struct buf *b, size_t start);
void put_bytes(struct buf *b, uint16_t tag, const void *p, size_t n);
void put_str(struct buf *b, uint16_t tag, const char *s);
void put_u64(struct buf *b, uint16_t tag, uint64_t v);

#endif
