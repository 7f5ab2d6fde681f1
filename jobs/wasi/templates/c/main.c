/* {{name}}: a peergrid wasi-v1 job in C (see peergrid_wasi.h). */
#include "peergrid_wasi.h"

/* Params (JSON) -> chunk inputs. Here: {"n": N, "chunks": C} -> ranges "lo hi". */
static int split(const pg_bytes *params, pg_bytes *out) {
    uint64_t n = pg_param_u64(params, "n", 1000);
    uint64_t chunks = pg_param_u64(params, "chunks", 10);
    if (chunks < 1) chunks = 1;
    uint64_t step = (n + chunks - 1) / chunks;
    if (step < 1) step = 1;
    pg_list list = {0};
    for (uint64_t lo = 1; lo <= n; lo += step) {
        uint64_t hi = lo + step < n + 1 ? lo + step : n + 1;
        char item[48];
        int len = snprintf(item, sizeof item, "%llu %llu", (unsigned long long)lo,
                           (unsigned long long)hi);
        pg_list_push(&list, item, (size_t)len);
    }
    pg_list_finish(&list, out);
    return 0;
}

/* One chunk input -> its output. Here: the sum of squares in [lo, hi). */
static int run(const pg_bytes *in, pg_bytes *out) {
    uint64_t v[2];
    if (pg_numbers(in->data, in->len, v, 2) != 2) {
        fprintf(stderr, "expected \"lo hi\"\n");
        return 1;
    }
    uint64_t sum = 0;
    for (uint64_t i = v[0]; i < v[1]; i++) sum += i * i;
    char text[48];
    snprintf(text, sizeof text, "%llu %llu", (unsigned long long)sum,
             (unsigned long long)(v[1] - 1));
    pg_push_str(out, text);
    return 0;
}

/* The chunk outputs, in chunk order -> the result. */
static int merge(const pg_bytes *in, pg_bytes *out) {
    pg_reader r;
    uint64_t count, sum = 0, n = 0;
    if (pg_list_open(&r, in, &count)) { fprintf(stderr, "bad list\n"); return 1; }
    for (uint64_t i = 0; i < count; i++) {
        const unsigned char *item;
        size_t len;
        uint64_t v[2];
        if (pg_list_next(&r, &item, &len) || pg_numbers(item, len, v, 2) != 2) {
            fprintf(stderr, "bad chunk output %llu\n", (unsigned long long)i);
            return 1;
        }
        sum += v[0];
        if (v[1] > n) n = v[1];
    }
    char text[80];
    snprintf(text, sizeof text, "{\"n\":%llu,\"sum_of_squares\":%llu}",
             (unsigned long long)n, (unsigned long long)sum);
    pg_push_str(out, text);
    return 0;
}

int main(int argc, char **argv) { return pg_main(argc, argv, split, run, merge); }
