// Package peergrid is the peergrid wasi-v1 job ABI (docs/ABI.md) for Go.
//
// A job is a WASI command (GOOS=wasip1 GOARCH=wasm): argv[1] names the entry
// ("split", "run", "merge", or "entries" when the host asks which exist), stdin is
// the entry's input, stdout its output; exit code 0 means success, anything else
// is the job's error with stderr as the message. Call Main from main:
//
//	func main() { peergrid.Main(split, run, merge) }
//
// Lists (split's output, merge's input) are a LEB128 count, then each item as a
// LEB128 length and its bytes: EncodeList and DecodeList.
package peergrid

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
)

// Entry turns an input into an output.
type Entry func(input []byte) ([]byte, error)

// Main dispatches on os.Args[1]; split and merge may be nil.
func Main(split, run, merge Entry) {
	entry := ""
	if len(os.Args) > 1 {
		entry = os.Args[1]
	}
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(errors.New("reading stdin: " + err.Error()))
	}
	var f Entry
	switch entry {
	case "entries":
		out := "run"
		if split != nil {
			out = "split " + out
		}
		if merge != nil {
			out += " merge"
		}
		os.Stdout.WriteString(out)
		return
	case "split":
		f = split
	case "run":
		f = run
	case "merge":
		f = merge
	}
	if f == nil {
		fail(errors.New("unknown entry " + strconv.Quote(entry)))
	}
	out, err := f(input)
	if err != nil {
		fail(err)
	}
	if _, err := os.Stdout.Write(out); err != nil {
		fail(err)
	}
}

func fail(err error) {
	os.Stderr.WriteString(err.Error() + "\n")
	os.Exit(1)
}

// Param is the whole number after "key": in a flat JSON object, or def when absent.
// (encoding/json works too, at about 1 MB more module.)
func Param(json []byte, key string, def uint64) uint64 {
	text := string(json)
	at := strings.Index(text, `"`+key+`"`)
	if at < 0 {
		return def
	}
	rest := strings.TrimLeft(text[at+len(key)+2:], " \t\r\n:")
	end := 0
	for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
		end++
	}
	v, err := strconv.ParseUint(rest[:end], 10, 64)
	if err != nil {
		return def
	}
	return v
}

// Numbers reads n whole numbers separated by spaces, such as "12 34".
func Numbers(text []byte, n int) ([]uint64, error) {
	fields := strings.Fields(string(text))
	if len(fields) != n {
		return nil, errors.New("expected " + strconv.Itoa(n) + " numbers, got " + strconv.Quote(string(text)))
	}
	out := make([]uint64, n)
	for i, f := range fields {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

// EncodeList writes items in the list encoding.
func EncodeList(items [][]byte) []byte {
	out := binary.AppendUvarint(nil, uint64(len(items)))
	for _, item := range items {
		out = binary.AppendUvarint(out, uint64(len(item)))
		out = append(out, item...)
	}
	return out
}

// DecodeList reads a list; the items share the input's memory.
func DecodeList(b []byte) ([][]byte, error) {
	count, n := binary.Uvarint(b)
	if n <= 0 {
		return nil, errors.New("bad list count")
	}
	b = b[n:]
	items := make([][]byte, 0, min(count, uint64(len(b))))
	for i := uint64(0); i < count; i++ {
		size, n := binary.Uvarint(b)
		if n <= 0 || size > uint64(len(b)-n) {
			return nil, errors.New("bad list item " + strconv.FormatUint(i, 10))
		}
		items = append(items, b[n:n+int(size)])
		b = b[n+int(size):]
	}
	return items, nil
}
