/* libFuzzer target: the stream decoder plus every request parser, on arbitrary bytes. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "protocol.h"

static char arena_mem[VZ_MAX_PAYLOAD + 2 * (VZ_MAX_ARGS + VZ_MAX_ENV) + 64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t pos = 0;
    /* Same loop the agent runs on a serial stream: decode, handle, resync on framing errors. */
    while (pos < size) {
        struct vz_frame f;
        size_t used = 0;
        int rc = vz_frame_decode(data + pos, size - pos, &f, &used);
        if (rc == VZ_DEC_NEED_MORE)
            break;
        if (rc != VZ_DEC_OK) {
            size_t skip = vz_resync(data + pos, size - pos);
            if (skip == 0 || skip > size - pos)
                __builtin_trap();
            pos += skip;
            continue;
        }
        if (used < VZ_HEADER_SIZE || used > size - pos)
            __builtin_trap();
        struct vz_arena a = {arena_mem, sizeof arena_mem, 0};
        const char *why = NULL;
        if (f.type == VZ_MSG_EXEC) {
            struct vz_exec_req r;
            if (vz_parse_exec(&f, &a, &r, &why) == 0) {
                if (r.argc == 0 || r.argv[r.argc] != NULL)
                    __builtin_trap();
                for (unsigned i = 0; i < r.argc; i++)
                    (void)strlen(r.argv[i]);
                for (unsigned i = 0; i < r.envc; i++)
                    (void)strlen(r.env[i]);
                if (r.rows > VZ_MAX_WINSIZE || r.cols > VZ_MAX_WINSIZE)
                    __builtin_trap();
            } else if (!why) {
                __builtin_trap();
            }
        } else {
            struct vz_simple_req r;
            if (vz_parse_simple(&f, &a, &r, &why) == 0) {
                if (r.path) (void)strlen(r.path);
                if (r.snippet) (void)strlen(r.snippet);
                if (r.has_data && r.data_len) (void)r.data[r.data_len - 1];
            } else if (!why) {
                __builtin_trap();
            }
        }
        if (a.used > a.cap)
            __builtin_trap();
        pos += used;
    }
    return 0;
}
