// Euler's totient summed: phi(1) + ... + phi(N), the number of fractions a/b in
// lowest terms with 0 < a <= b <= N. A peergrid wasi-v1 job in AssemblyScript
// (see peergrid.ts).
//
// - split: params {"n": N, "chunks": C} -> C ranges "lo hi";
// - run:   "lo hi" -> phi(lo) + ... + phi(hi - 1);
// - merge: the sums -> {"n": N, "sum": S}.
//
// Known answers: N = 1000: 304 192; N = 100 000: 3 039 650 754.
import { main, param, numbers, encodeList, decodeList, bytes, fail } from "./peergrid";

function phi(n: u64): u64 {
  let result = n;
  let m = n;
  for (let p: u64 = 2; p * p <= m; p++) {
    if (m % p == 0) {
      while (m % p == 0) m /= p;
      result -= result / p;
    }
  }
  if (m > 1) result -= result / m;
  return result;
}

function split(params: Uint8Array): Uint8Array {
  const n = param(params, "n", 100000);
  const chunks = param(params, "chunks", 16);
  if (n < 1 || chunks < 1) fail("n and chunks must be at least 1");
  const step = (n + chunks - 1) / chunks;
  const items = new Array<Uint8Array>();
  for (let lo: u64 = 1; lo <= n; lo += step) {
    const hi = lo + step < n + 1 ? lo + step : n + 1;
    items.push(bytes(lo.toString() + " " + hi.toString()));
  }
  return encodeList(items);
}

function run(input: Uint8Array): Uint8Array {
  const v = numbers(input);
  if (v.length != 2) fail("expected \"lo hi\"");
  let sum: u64 = 0;
  for (let k = v[0]; k < v[1]; k++) sum += phi(k);
  return bytes(sum.toString() + " " + (v[1] - 1).toString());
}

function merge(input: Uint8Array): Uint8Array {
  const items = decodeList(input);
  let sum: u64 = 0;
  let n: u64 = 0;
  for (let i = 0; i < items.length; i++) {
    const v = numbers(items[i]);
    if (v.length != 2) fail("bad chunk output " + i.toString());
    sum += v[0];
    if (v[1] > n) n = v[1];
  }
  return bytes('{"n":' + n.toString() + ',"sum":' + sum.toString() + "}");
}

main(split, run, merge);
