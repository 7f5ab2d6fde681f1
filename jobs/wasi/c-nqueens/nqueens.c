/* N queens: how many ways to place N queens on an N x N board so that no two attack
 * each other. A peergrid wasi-v1 job in C (see ../include/peergrid_wasi.h).
 *
 * - split: params {"n": N} -> one chunk per column of the first row's queen, "N col";
 * - run:   "N col" -> the number of solutions with the first queen in that column;
 * - merge: the counts -> {"n": N, "solutions": total}.
 *
 * Known answers: N = 8: 92; N = 10: 724; N = 12: 14200.
 */
#include "peergrid_wasi.h"

static uint64_t solve(int n, int row, uint32_t cols, uint32_t d1, uint32_t d2) {
    if (row == n) return 1;
    uint64_t count = 0;
    uint32_t free_ = ~(cols | d1 | d2) & ((1u << n) - 1);
    while (free_) {
        uint32_t bit = free_ & -free_;
        free_ ^= bit;
        count += solve(n, row + 1, cols | bit, (d1 | bit) << 1, (d2 | bit) >> 1);
    }
    return count;
}

static int split(const pg_bytes *params, pg_bytes *out) {
    uint64_t n = pg_param_u64(params, "n", 12);
    if (n < 1 || n > 20) { fprintf(stderr, "n must be between 1 and 20\n"); return 1; }
    pg_list list = {0};
    for (uint64_t col = 0; col < n; col++) {
        char item[32];
        int len = snprintf(item, sizeof item, "%llu %llu", (unsigned long long)n,
                           (unsigned long long)col);
        pg_list_push(&list, item, (size_t)len);
    }
    pg_list_finish(&list, out);
    return 0;
}

static int run(const pg_bytes *in, pg_bytes *out) {
    uint64_t v[2];
    if (pg_numbers(in->data, in->len, v, 2) != 2 || v[0] > 20 || v[1] >= v[0]) {
        fprintf(stderr, "expected \"N col\" with col < N <= 20\n");
        return 1;
    }
    int n = (int)v[0];
    uint32_t bit = 1u << v[1];
    char text[32];
    snprintf(text, sizeof text, "%llu",
             (unsigned long long)solve(n, 1, bit, bit << 1, bit >> 1));
    pg_push_str(out, text);
    return 0;
}

static int merge(const pg_bytes *in, pg_bytes *out) {
    pg_reader r;
    uint64_t count, total = 0, n = 0;
    if (pg_list_open(&r, in, &count)) { fprintf(stderr, "bad list\n"); return 1; }
    n = count;
    for (uint64_t i = 0; i < count; i++) {
        const unsigned char *item;
        size_t len;
        uint64_t v;
        if (pg_list_next(&r, &item, &len) || pg_numbers(item, len, &v, 1) != 1) {
            fprintf(stderr, "bad chunk output %llu\n", (unsigned long long)i);
            return 1;
        }
        total += v;
    }
    char text[64];
    snprintf(text, sizeof text, "{\"n\":%llu,\"solutions\":%llu}", (unsigned long long)n,
             (unsigned long long)total);
    pg_push_str(out, text);
    return 0;
}

int main(int argc, char **argv) { return pg_main(argc, argv, split, run, merge); }
