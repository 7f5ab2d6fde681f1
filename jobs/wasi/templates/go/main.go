// {{name}}: a peergrid wasi-v1 job in Go (see peergrid/peergrid.go).
package main

import (
	"strconv"

	"{{name}}/peergrid"
)

// split turns the params (JSON) into chunk inputs. Here: {"n": N, "chunks": C} ->
// ranges "lo hi".
func split(params []byte) ([]byte, error) {
	n := peergrid.Param(params, "n", 1000)
	chunks := max(peergrid.Param(params, "chunks", 10), 1)
	step := max((n+chunks-1)/chunks, 1)
	var items [][]byte
	for lo := uint64(1); lo <= n; lo += step {
		hi := min(lo+step, n+1)
		items = append(items, []byte(strconv.FormatUint(lo, 10)+" "+strconv.FormatUint(hi, 10)))
	}
	return peergrid.EncodeList(items), nil
}

// run turns one chunk input into its output. Here: the sum of squares in [lo, hi).
func run(input []byte) ([]byte, error) {
	v, err := peergrid.Numbers(input, 2)
	if err != nil {
		return nil, err
	}
	sum := uint64(0)
	for i := v[0]; i < v[1]; i++ {
		sum += i * i
	}
	return []byte(strconv.FormatUint(sum, 10) + " " + strconv.FormatUint(v[1]-1, 10)), nil
}

// merge turns the chunk outputs, in chunk order, into the result.
func merge(list []byte) ([]byte, error) {
	outputs, err := peergrid.DecodeList(list)
	if err != nil {
		return nil, err
	}
	var sum, n uint64
	for _, output := range outputs {
		v, err := peergrid.Numbers(output, 2)
		if err != nil {
			return nil, err
		}
		sum += v[0]
		n = max(n, v[1])
	}
	return []byte(`{"n":` + strconv.FormatUint(n, 10) + `,"sum_of_squares":` + strconv.FormatUint(sum, 10) + "}"), nil
}

func main() { peergrid.Main(split, run, merge) }
