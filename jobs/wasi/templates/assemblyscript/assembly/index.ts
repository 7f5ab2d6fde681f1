// {{name}}: a peergrid wasi-v1 job in AssemblyScript (see peergrid.ts).
import { main, param, numbers, encodeList, decodeList, bytes, fail } from "./peergrid";

// Params (JSON) -> chunk inputs. Here: {"n": N, "chunks": C} -> ranges "lo hi".
function split(params: Uint8Array): Uint8Array {
  const n = param(params, "n", 1000);
  let chunks = param(params, "chunks", 10);
  if (chunks < 1) chunks = 1;
  let step = (n + chunks - 1) / chunks;
  if (step < 1) step = 1;
  const items = new Array<Uint8Array>();
  for (let lo: u64 = 1; lo <= n; lo += step) {
    const hi = lo + step < n + 1 ? lo + step : n + 1;
    items.push(bytes(lo.toString() + " " + hi.toString()));
  }
  return encodeList(items);
}

// One chunk input -> its output. Here: the sum of squares in [lo, hi).
function run(input: Uint8Array): Uint8Array {
  const v = numbers(input);
  if (v.length != 2) fail('expected "lo hi"');
  let sum: u64 = 0;
  for (let i = v[0]; i < v[1]; i++) sum += i * i;
  return bytes(sum.toString() + " " + (v[1] - 1).toString());
}

// The chunk outputs, in chunk order -> the result.
function merge(list: Uint8Array): Uint8Array {
  const outputs = decodeList(list);
  let sum: u64 = 0;
  let n: u64 = 0;
  for (let i = 0; i < outputs.length; i++) {
    const v = numbers(outputs[i]);
    if (v.length != 2) fail("bad chunk output " + i.toString());
    sum += v[0];
    if (v[1] > n) n = v[1];
  }
  return bytes('{"n":' + n.toString() + ',"sum_of_squares":' + sum.toString() + "}");
}

main(split, run, merge);
