// Amicable numbers: the sum of every amicable number below a limit (a and b are
// amicable when a != b, the proper divisors of a sum to b and those of b to a).
// A peergrid wasi-v1 job in Go (see peergrid/peergrid.go).
//
//   - split: params {"limit": N, "chunks": C} -> C ranges "lo hi";
//   - run:   "lo hi" -> the sum of the amicable numbers in [lo, hi);
//   - merge: the sums -> {"limit": N, "sum": S}.
//
// Known answers: below 10 000 the sum is 31 626; below 100 000 it is 852 810.
package main

import (
	"errors"
	"strconv"
	"strings"

	"amicable/peergrid"
)

func split(input []byte) ([]byte, error) {
	limit := peergrid.Param(input, "limit", 100000)
	chunks := peergrid.Param(input, "chunks", 16)
	if limit < 2 || chunks < 1 {
		return nil, errors.New("limit must be at least 2 and chunks at least 1")
	}
	step := (limit + chunks - 1) / chunks
	var items [][]byte
	for lo := uint64(0); lo < limit; lo += step {
		items = append(items, []byte(strings.Join([]string{
			strconv.FormatUint(lo, 10), strconv.FormatUint(min(lo+step, limit), 10),
			strconv.FormatUint(limit, 10)}, " ")))
	}
	return peergrid.EncodeList(items), nil
}

// divisorSum is the sum of the proper divisors of n.
func divisorSum(n uint64) uint64 {
	if n < 2 {
		return 0
	}
	sum := uint64(1)
	for d := uint64(2); d*d <= n; d++ {
		if n%d == 0 {
			sum += d
			if d*d != n {
				sum += n / d
			}
		}
	}
	return sum
}

func run(input []byte) ([]byte, error) {
	v, err := peergrid.Numbers(input, 3)
	if err != nil {
		return nil, err
	}
	lo, hi, limit := v[0], v[1], v[2]
	sum := uint64(0)
	for a := max(lo, 2); a < hi; a++ {
		b := divisorSum(a)
		if b != a && divisorSum(b) == a {
			sum += a
		}
	}
	return []byte(strconv.FormatUint(sum, 10) + " " + strconv.FormatUint(limit, 10)), nil
}

func merge(input []byte) ([]byte, error) {
	items, err := peergrid.DecodeList(input)
	if err != nil {
		return nil, err
	}
	var total, limit uint64
	for _, item := range items {
		v, err := peergrid.Numbers(item, 2)
		if err != nil {
			return nil, err
		}
		total += v[0]
		limit = v[1]
	}
	return []byte(`{"limit":` + strconv.FormatUint(limit, 10) + `,"sum":` + strconv.FormatUint(total, 10) + "}"), nil
}

func main() { peergrid.Main(split, run, merge) }
