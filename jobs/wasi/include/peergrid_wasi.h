/* peergrid_wasi.h: the peergrid wasi-v1 job ABI (docs/ABI.md) for C, in one header.
 *
 * A job is a WASI command: argv[1] names the entry ("split", "run", "merge", or
 * "entries" when the host asks which of them exist), stdin is the entry's input,
 * stdout its output; exit code 0 means success, anything else is the job's error
 * with stderr as the message. Write three functions and call pg_main:
 *
 *     static int run(const pg_bytes *in, pg_bytes *out) { ... return 0; }
 *     int main(int argc, char **argv) { return pg_main(argc, argv, split, run, merge); }
 *
 * Lists (split's output, merge's input) are a LEB128 count, then each item as a
 * LEB128 length and its bytes: pg_list_push builds one, pg_list_next reads one.
 * Build: zig cc -target wasm32-wasi -O2 job.c -o job.wasm (or clang with wasi-libc).
 */
#ifndef PEERGRID_WASI_H
#define PEERGRID_WASI_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A growable byte buffer. */
typedef struct {
    unsigned char *data;
    size_t len;
    size_t cap;
} pg_bytes;

/* An entry: reads `in`, appends its output to `out`; returns 0 on success, or
 * non-zero after printing the reason to stderr. */
typedef int (*pg_entry)(const pg_bytes *in, pg_bytes *out);

static void pg_push(pg_bytes *b, const void *data, size_t len) {
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + len) cap *= 2;
        b->data = realloc(b->data, cap);
        if (!b->data) { fputs("out of memory\n", stderr); exit(1); }
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

static void pg_push_str(pg_bytes *b, const char *s) { pg_push(b, s, strlen(s)); }

static void pg_push_leb(pg_bytes *b, uint64_t v) {
    do {
        unsigned char byte = v & 0x7f;
        v >>= 7;
        if (v) byte |= 0x80;
        pg_push(b, &byte, 1);
    } while (v);
}

/* Appends one item to a list whose count is written by pg_list_finish. */
typedef struct { pg_bytes items; uint64_t count; } pg_list;

static void pg_list_push(pg_list *l, const void *data, size_t len) {
    pg_push_leb(&l->items, len);
    pg_push(&l->items, data, len);
    l->count++;
}

static void pg_list_finish(pg_list *l, pg_bytes *out) {
    pg_push_leb(out, l->count);
    pg_push(out, l->items.data, l->items.len);
    free(l->items.data);
}

/* Reads a LEB128 number at *at; returns -1 if the bytes end first. */
static int pg_get_leb(const pg_bytes *b, size_t *at, uint64_t *v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*at >= b->len) return -1;
        unsigned char byte = b->data[(*at)++];
        *v |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) return 0;
    }
    return -1;
}

/* A reader over a list: pg_list_open gives the count, pg_list_next each item. */
typedef struct { const pg_bytes *list; size_t at; } pg_reader;

static int pg_list_open(pg_reader *r, const pg_bytes *list, uint64_t *count) {
    r->list = list;
    r->at = 0;
    return pg_get_leb(list, &r->at, count);
}

static int pg_list_next(pg_reader *r, const unsigned char **item, size_t *len) {
    uint64_t n;
    if (pg_get_leb(r->list, &r->at, &n) || n > r->list->len - r->at) return -1;
    *item = r->list->data + r->at;
    *len = (size_t)n;
    r->at += (size_t)n;
    return 0;
}

/* The whole number after "key": in a flat JSON object, or `def` when absent. */
static uint64_t pg_param_u64(const pg_bytes *json, const char *key, uint64_t def) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\"", key);
    char *text = malloc(json->len + 1);
    if (!text) return def;
    memcpy(text, json->data, json->len);
    text[json->len] = 0;
    const char *p = strstr(text, pattern);
    uint64_t v = def;
    if (p) {
        p += strlen(pattern);
        while (*p == ' ' || *p == ':' || *p == '\t' || *p == '\n') p++;
        if (*p >= '0' && *p <= '9') v = strtoull(p, NULL, 10);
    }
    free(text);
    return v;
}

/* Reads an item of text such as "12 34" into up to `n` numbers; returns how many. */
static int pg_numbers(const unsigned char *data, size_t len, uint64_t *out, int n) {
    int got = 0;
    size_t i = 0;
    while (got < n && i < len) {
        while (i < len && (data[i] < '0' || data[i] > '9')) i++;
        if (i == len) break;
        uint64_t v = 0;
        while (i < len && data[i] >= '0' && data[i] <= '9') v = v * 10 + (data[i++] - '0');
        out[got++] = v;
    }
    return got;
}

/* Dispatches on argv[1]: reads stdin, runs the entry, writes stdout. `split` and
 * `merge` may be NULL (then "entries" does not list them). */
static int pg_main(int argc, char **argv, pg_entry split, pg_entry run, pg_entry merge) {
    const char *entry = argc > 1 ? argv[1] : "";
    pg_bytes in = {0}, out = {0};
    unsigned char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) pg_push(&in, buf, n);
    pg_entry f = NULL;
    if (!strcmp(entry, "entries")) {
        if (split) pg_push_str(&out, "split ");
        pg_push_str(&out, "run");
        if (merge) pg_push_str(&out, " merge");
    } else if (!strcmp(entry, "split")) f = split;
    else if (!strcmp(entry, "run")) f = run;
    else if (!strcmp(entry, "merge")) f = merge;
    if (strcmp(entry, "entries")) {
        if (!f) { fprintf(stderr, "unknown entry '%s'\n", entry); return 2; }
        int code = f(&in, &out);
        if (code) return code;
    }
    if (out.len && fwrite(out.data, 1, out.len, stdout) != out.len) return 1;
    return fflush(stdout) ? 1 : 0;
}

#endif
