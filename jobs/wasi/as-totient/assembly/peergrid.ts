// peergrid.ts: the peergrid wasi-v1 job ABI (docs/ABI.md) for AssemblyScript, with
// the few WASI imports it needs declared by hand (no WASI shim package).
//
// A job is a WASI command: argv[1] names the entry ("split", "run", "merge", or
// "entries" when the host asks which exist), stdin is the entry's input, stdout its
// output; exit code 0 means success, anything else is the job's error with stderr
// as the message. Call `main(split, run, merge)` at the top level of the entry file
// and build with `--exportStart _start --use abort=assembly/peergrid/abort`.
// Lists (split's output, merge's input) are a LEB128 count, then each item as a
// LEB128 length and its bytes: `encodeList`, `decodeList`.

@external("wasi_snapshot_preview1", "fd_read")
declare function fd_read(fd: u32, iovs: usize, iovsLen: u32, nread: usize): u32;
@external("wasi_snapshot_preview1", "fd_write")
declare function fd_write(fd: u32, iovs: usize, iovsLen: u32, nwritten: usize): u32;
@external("wasi_snapshot_preview1", "args_sizes_get")
declare function args_sizes_get(argc: usize, size: usize): u32;
@external("wasi_snapshot_preview1", "args_get")
declare function args_get(argv: usize, buf: usize): u32;
@external("wasi_snapshot_preview1", "proc_exit")
declare function proc_exit(code: u32): void;

export type Entry = (input: Uint8Array) => Uint8Array;

/** Writes all of `bytes` to a file descriptor (1 stdout, 2 stderr). */
export function write(fd: u32, bytes: Uint8Array): void {
  const iov = memory.data(16);
  let done = 0;
  while (done < bytes.length) {
    store<u32>(iov, bytes.dataStart + done);
    store<u32>(iov, bytes.length - done, 4);
    if (fd_write(fd, iov, 1, iov + 8) != 0) proc_exit(1);
    done += load<u32>(iov, 8);
  }
}

/** Stops the call with `message` on stderr: the job's error. */
export function fail(message: string): void {
  write(2, Uint8Array.wrap(String.UTF8.encode(message + "\n")));
  proc_exit(1);
}

/** For `--use abort=...`: an assertion or a runtime error ends the call. */
export function abort(message: string | null, file: string | null, line: u32, column: u32): void {
  fail("abort: " + (message ? message : "") + " at " + (file ? file : "") + ":" + line.toString());
}

function readStdin(): Uint8Array {
  let buf = new Uint8Array(65536);
  let len = 0;
  const iov = memory.data(16);
  while (true) {
    if (len == buf.length) {
      const bigger = new Uint8Array(buf.length * 2);
      bigger.set(buf);
      buf = bigger;
    }
    store<u32>(iov, buf.dataStart + len);
    store<u32>(iov, buf.length - len, 4);
    if (fd_read(0, iov, 1, iov + 8) != 0) fail("cannot read stdin");
    const n = load<u32>(iov, 8);
    if (n == 0) break;
    len += n;
  }
  return buf.subarray(0, len);
}

function entryName(): string {
  const sizes = memory.data(8);
  args_sizes_get(sizes, sizes + 4);
  const argc = load<u32>(sizes);
  if (argc < 2) return "";
  const argv = new Uint32Array(argc);
  const buf = new Uint8Array(load<u32>(sizes, 4));
  args_get(argv.dataStart, buf.dataStart);
  const start = argv[1] - <u32>buf.dataStart;
  let end = start;
  while (buf[end] != 0) end++;
  return String.UTF8.decodeUnsafe(buf.dataStart + start, end - start);
}

/** Text as bytes. */
export function bytes(text: string): Uint8Array {
  return Uint8Array.wrap(String.UTF8.encode(text));
}

/** Bytes as text. */
export function text(b: Uint8Array): string {
  return String.UTF8.decodeUnsafe(b.dataStart, b.length);
}

/** The whole number after "key": in a flat JSON object, or `def`. */
export function param(json: Uint8Array, key: string, def: u64): u64 {
  const t = text(json);
  const at = t.indexOf('"' + key + '"');
  if (at < 0) return def;
  let i = at + key.length + 2;
  while (i < t.length && (t.charCodeAt(i) == 32 || t.charCodeAt(i) == 58)) i++;
  let v: u64 = 0;
  let digits = 0;
  while (i < t.length && t.charCodeAt(i) >= 48 && t.charCodeAt(i) <= 57) {
    v = v * 10 + <u64>(t.charCodeAt(i) - 48);
    i++;
    digits++;
  }
  return digits > 0 ? v : def;
}

/** The whole numbers in text such as "12 34". */
export function numbers(b: Uint8Array): u64[] {
  const out = new Array<u64>();
  let i = 0;
  while (i < b.length) {
    while (i < b.length && (b[i] < 48 || b[i] > 57)) i++;
    if (i == b.length) break;
    let v: u64 = 0;
    while (i < b.length && b[i] >= 48 && b[i] <= 57) v = v * 10 + <u64>(b[i++] - 48);
    out.push(v);
  }
  return out;
}

function pushLeb(out: Array<u8>, v: u64): void {
  do {
    let byte = <u8>(v & 0x7f);
    v >>= 7;
    if (v != 0) byte |= 0x80;
    out.push(byte);
  } while (v != 0);
}

export function encodeList(items: Uint8Array[]): Uint8Array {
  const out = new Array<u8>();
  pushLeb(out, items.length);
  for (let i = 0; i < items.length; i++) {
    pushLeb(out, items[i].length);
    for (let j = 0; j < items[i].length; j++) out.push(items[i][j]);
  }
  const result = new Uint8Array(out.length);
  for (let i = 0; i < out.length; i++) result[i] = out[i];
  return result;
}

export function decodeList(b: Uint8Array): Uint8Array[] {
  let at = 0;
  const count = readLeb(b, at);
  at = lebEnd;
  const items = new Array<Uint8Array>();
  for (let i: u64 = 0; i < count; i++) {
    const len = <i32>readLeb(b, at);
    at = lebEnd;
    if (len < 0 || at + len > b.length) fail("bad list item " + i.toString());
    items.push(b.subarray(at, at + len));
    at += len;
  }
  return items;
}

let lebEnd = 0;

function readLeb(b: Uint8Array, at: i32): u64 {
  let v: u64 = 0;
  for (let shift: u64 = 0; shift < 64; shift += 7) {
    if (at >= b.length) fail("list ends inside a number");
    const byte = b[at++];
    v |= (<u64>(byte & 0x7f)) << shift;
    if ((byte & 0x80) == 0) break;
  }
  lebEnd = at;
  return v;
}

/** Runs the entry argv[1] names on stdin and writes its output to stdout. */
export function main(split: Entry | null, run: Entry, merge: Entry | null): void {
  const entry = entryName();
  const input = readStdin();
  if (entry == "entries") {
    write(1, bytes((split ? "split " : "") + "run" + (merge ? " merge" : "")));
  } else if (entry == "split" && split) {
    write(1, split(input));
  } else if (entry == "run") {
    write(1, run(input));
  } else if (entry == "merge" && merge) {
    write(1, merge(input));
  } else {
    fail("unknown entry " + entry);
  }
}
