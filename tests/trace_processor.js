// Runs Perfetto's trace_processor (the WebAssembly build) under node: loads a trace, runs SQL queries,
// prints the results as JSON. The tests use it as the authority on how Perfetto reads a trace.
//
//   node trace_processor.js <trace_processor.wasm> <trace file>  < queries.json  > results.json
//
// queries.json is {"name": "SQL", ...}; results.json is {"name": {"columns": [...], "rows": [[...]]} or
// {"error": "..."}}. Integers beyond 2^53 are given as {"int": "digits"}.
//
// The module is driven through its RPC entry points (trace_processor_rpc_init, _on_rpc_request),
// speaking the TraceProcessorRpcStream protocol (protos/perfetto/trace_processor/trace_processor.proto).
// The C library imports get minimal implementations: no file system, UTC clock, stderr output.
"use strict";

const fs = require("fs");

const TPM_APPEND_TRACE_DATA = 1;
const TPM_FINALIZE_TRACE_DATA = 2;
const TPM_QUERY_STREAMING = 3;
const REQUEST_BUFFER_BYTES = 32 * 1024 * 1024;
const ENOSYS = 52;
const CELL = { NULL: 1, VARINT: 2, FLOAT64: 3, STRING: 4, BLOB: 5 };

// ---- protobuf, the few shapes needed --------------------------------------------------------------

function varint(value) {
  const out = [];
  let v = BigInt(value);
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v) byte |= 0x80;
    out.push(byte);
  } while (v);
  return Buffer.from(out);
}

function field(number, wireType) {
  return varint((number << 3) | wireType);
}

function lengthDelimited(number, bytes) {
  return Buffer.concat([field(number, 2), varint(bytes.length), bytes]);
}

function varintField(number, value) {
  return Buffer.concat([field(number, 0), varint(value)]);
}

class Reader {
  constructor(bytes) {
    this.bytes = bytes;
    this.pos = 0;
  }
  done() {
    return this.pos >= this.bytes.length;
  }
  varint() {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      const byte = this.bytes[this.pos++];
      result |= BigInt(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return result;
      shift += 7n;
    }
  }
  // [field number, wire type, value]: a BigInt for varints, a Buffer for length-delimited, a double for 64-bit.
  next() {
    const key = Number(this.varint());
    const number = key >>> 3;
    const wireType = key & 7;
    if (wireType === 0) return [number, wireType, this.varint()];
    if (wireType === 1) {
      const value = this.bytes.readDoubleLE(this.pos);
      this.pos += 8;
      return [number, wireType, value];
    }
    if (wireType === 2) {
      const length = Number(this.varint());
      const value = this.bytes.subarray(this.pos, this.pos + length);
      this.pos += length;
      return [number, wireType, value];
    }
    if (wireType === 5) {
      this.pos += 4;
      return [number, wireType, null];
    }
    throw new Error(`unsupported wire type ${wireType}`);
  }
}

// An int64 cell: a number when exact as a double, else {"int": "digits"}.
function signed64(value) {
  const v = BigInt.asIntN(64, value);
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : { int: v.toString() };
}

function packedVarints(bytes) {
  const reader = new Reader(bytes);
  const out = [];
  while (!reader.done()) out.push(reader.varint());
  return out;
}

// ---- the C library's imports ----------------------------------------------------------------------

function cLibrary(state) {
  const view = () => new DataView(state.memory.buffer);
  const bytes = () => new Uint8Array(state.memory.buffer);
  const cString = (ptr) => {
    const heap = bytes();
    let end = ptr;
    while (heap[end]) end++;
    return Buffer.from(heap.subarray(ptr, end)).toString("utf8");
  };
  const writeTm = (seconds, ptr) => {
    const date = new Date(Number(seconds) * 1000);
    const startOfYear = Date.UTC(date.getUTCFullYear(), 0, 1);
    const fields = [
      date.getUTCSeconds(), date.getUTCMinutes(), date.getUTCHours(), date.getUTCDate(), date.getUTCMonth(),
      date.getUTCFullYear() - 1900, date.getUTCDay(), Math.floor((date.getTime() - startOfYear) / 86400000), 0, 0, 0,
    ];
    fields.forEach((value, index) => view().setInt32(ptr + 4 * index, value, true));
  };
  const unsupported = () => -ENOSYS;
  const env = {
    emscripten_get_now: () => performance.now(),
    emscripten_date_now: () => Date.now(),
    __assert_fail: (condition, file, line, fn) => {
      throw new Error(`assertion failed: ${cString(condition)} at ${cString(file)}:${line} (${cString(fn)})`);
    },
    _abort_js: () => {
      throw new Error(`trace_processor aborted; stderr: ${state.stderr.slice(-20).join("")}`);
    },
    emscripten_err: (ptr) => state.stderr.push(cString(ptr) + "\n"),
    _tzset_js: (timezone, daylight, stdName, dstName) => {
      view().setInt32(timezone, 0, true);
      view().setInt32(daylight, 0, true);
      bytes().set(Buffer.from("UTC\0"), stdName);
      bytes().set(Buffer.from("UTC\0"), dstName);
    },
    _gmtime_js: writeTm,
    _localtime_js: writeTm,
    _timegm_js: (ptr) => {
      const get = (index) => view().getInt32(ptr + 4 * index, true);
      return BigInt(Math.floor(Date.UTC(get(5) + 1900, get(4), get(3), get(2), get(1), get(0)) / 1000));
    },
    _mmap_js: unsupported,
    _munmap_js: unsupported,
    emscripten_get_heap_max: () => 2147483648,
    emscripten_resize_heap: (requested) => {
      const needed = (requested >>> 0) - state.memory.buffer.byteLength;
      const pages = Math.ceil(Math.max(needed, state.memory.buffer.byteLength / 4) / 65536);
      try {
        state.memory.grow(pages);
        return 1;
      } catch (error) {
        return 0;
      }
    },
  };
  for (const name of [
    "__syscall_fcntl64", "__syscall_ioctl", "__syscall_faccessat", "__syscall_fchmod", "__syscall_chmod",
    "__syscall_fchown32", "__syscall_openat", "__syscall_fstat64", "__syscall_stat64", "__syscall_newfstatat",
    "__syscall_lstat64", "__syscall_ftruncate64", "__syscall_getcwd", "__syscall_mkdirat", "__syscall_readlinkat",
    "__syscall_rmdir", "__syscall_unlinkat", "__syscall_utimensat",
  ]) {
    env[name] = unsupported;
  }
  const wasi = {
    fd_write: (fd, iovs, count, written) => {
      let total = 0;
      for (let i = 0; i < count; i++) {
        const ptr = view().getUint32(iovs + 8 * i, true);
        const length = view().getUint32(iovs + 8 * i + 4, true);
        state.stderr.push(Buffer.from(bytes().subarray(ptr, ptr + length)).toString("utf8"));
        total += length;
      }
      view().setUint32(written, total, true);
      return 0;
    },
    fd_read: (fd, iovs, count, read) => {
      view().setUint32(read, 0, true);
      return 0;
    },
    fd_close: () => 0,
    fd_sync: () => 0,
    fd_seek: () => 70, // ESPIPE: no seekable file exists
    fd_fdstat_get: (fd, ptr) => {
      bytes().fill(0, ptr, ptr + 24);
      view().setUint8(ptr, 2); // a character device
      return 0;
    },
    environ_sizes_get: (count, size) => {
      view().setUint32(count, 0, true);
      view().setUint32(size, 0, true);
      return 0;
    },
    environ_get: () => 0,
    clock_time_get: (id, precision, ptr) => {
      view().setBigUint64(ptr, BigInt(Date.now()) * 1000000n, true);
      return 0;
    },
  };
  return { env, wasi_snapshot_preview1: wasi };
}

// A wasm function calling `callback(i32, i32)`: the only kind of function a wasm table accepts.
function wasmCallback(callback) {
  const module = Buffer.from([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
    0x01, 0x06, 0x01, 0x60, 0x02, 0x7f, 0x7f, 0x00, // types: (i32, i32) -> ()
    0x02, 0x07, 0x01, 0x01, 0x65, 0x01, 0x66, 0x00, 0x00, // import "e"."f" as function 0
    0x07, 0x05, 0x01, 0x01, 0x66, 0x00, 0x00, // export function 0 as "f"
  ]);
  return new WebAssembly.Instance(new WebAssembly.Module(module), { e: { f: callback } }).exports.f;
}

// ---- the RPC session ------------------------------------------------------------------------------

class TraceProcessor {
  constructor(wasmPath) {
    this.state = { memory: null, stderr: [] };
    const instance = new WebAssembly.Instance(new WebAssembly.Module(fs.readFileSync(wasmPath)), cLibrary(this.state));
    this.exports = instance.exports;
    this.state.memory = instance.exports.memory;
    this.exports.emscripten_stack_init();
    this.exports.__wasm_call_ctors();
    this.pending = Buffer.alloc(0);
    this.replies = [];
    this.seq = 0;
    const table = this.exports.__indirect_function_table;
    const slot = table.grow(1);
    table.set(slot, wasmCallback((ptr, length) => this.onReply(ptr >>> 0, length >>> 0)));
    this.requestBuffer = this.exports.trace_processor_rpc_init(slot, REQUEST_BUFFER_BYTES) >>> 0;
  }

  onReply(ptr, length) {
    const data = Buffer.from(new Uint8Array(this.state.memory.buffer, ptr, length));
    this.pending = Buffer.concat([this.pending, data]);
    // The replies are a TraceProcessorRpcStream: field 1, one TraceProcessorRpc each.
    for (let frame = takeFrame(this.pending); frame; frame = takeFrame(this.pending)) {
      this.replies.push(frame.message);
      this.pending = this.pending.subarray(frame.consumed);
    }
  }

  call(method, argsField, args) {
    this.seq += 1;
    const parts = [varintField(1, this.seq), varintField(2, method)];
    if (argsField) parts.push(lengthDelimited(argsField, args));
    const request = lengthDelimited(1, Buffer.concat(parts));
    for (let offset = 0; offset < request.length; offset += REQUEST_BUFFER_BYTES) {
      const piece = request.subarray(offset, offset + REQUEST_BUFFER_BYTES);
      new Uint8Array(this.state.memory.buffer).set(piece, this.requestBuffer);
      this.exports.trace_processor_on_rpc_request(piece.length);
    }
    const replies = this.replies;
    this.replies = [];
    return replies.map(parseRpc);
  }

  load(trace) {
    const step = 8 * 1024 * 1024;
    for (let offset = 0; offset < trace.length; offset += step) {
      for (const reply of this.call(TPM_APPEND_TRACE_DATA, 101, trace.subarray(offset, offset + step))) {
        if (reply.appendError) throw new Error(`trace_processor could not parse the trace: ${reply.appendError}`);
      }
    }
    this.call(TPM_FINALIZE_TRACE_DATA);
  }

  query(sql) {
    const result = { columns: [], rows: [] };
    const cells = [];
    for (const reply of this.call(TPM_QUERY_STREAMING, 103, lengthDelimited(1, Buffer.from(sql, "utf8")))) {
      if (reply.fatalError) throw new Error(`trace_processor: ${reply.fatalError}`);
      const query = reply.queryResult;
      if (!query) continue;
      if (query.error) return { error: query.error };
      result.columns.push(...query.columns);
      cells.push(...query.cells);
    }
    const width = result.columns.length;
    for (let i = 0; width && i < cells.length; i += width) result.rows.push(cells.slice(i, i + width));
    return result;
  }
}

// The first whole length-delimited field 1 of `bytes` ({message, consumed}), or null if incomplete.
function takeFrame(bytes) {
  let pos = 0;
  const readVarint = () => {
    let result = 0;
    let scale = 1;
    for (;;) {
      if (pos >= bytes.length) return null;
      const byte = bytes[pos++];
      result += (byte & 0x7f) * scale;
      if (!(byte & 0x80)) return result;
      scale *= 128;
    }
  };
  const key = readVarint();
  if (key === null) return null;
  if (key !== ((1 << 3) | 2)) throw new Error(`unexpected reply key ${key}`);
  const length = readVarint();
  if (length === null || pos + length > bytes.length) return null;
  return { message: Buffer.from(bytes.subarray(pos, pos + length)), consumed: pos + length };
}

function parseRpc(bytes) {
  const reader = new Reader(bytes);
  const out = {};
  while (!reader.done()) {
    const [number, , value] = reader.next();
    if (number === 5) out.fatalError = value.toString("utf8");
    if (number === 201) out.appendError = parseAppendError(value);
    if (number === 203) out.queryResult = parseQueryResult(value);
  }
  return out;
}

function parseAppendError(bytes) {
  const reader = new Reader(bytes);
  let error = null;
  while (!reader.done()) {
    const [number, , value] = reader.next();
    if (number === 2) error = value.toString("utf8");
  }
  return error;
}

function parseQueryResult(bytes) {
  const reader = new Reader(bytes);
  const out = { columns: [], cells: [], error: null };
  while (!reader.done()) {
    const [number, , value] = reader.next();
    if (number === 1) out.columns.push(value.toString("utf8"));
    if (number === 2) out.error = value.toString("utf8");
    if (number === 3) out.cells.push(...parseBatch(value));
  }
  return out;
}

function parseBatch(bytes) {
  const reader = new Reader(bytes);
  let types = [];
  const varints = [];
  const doubles = [];
  const blobs = [];
  let strings = [];
  while (!reader.done()) {
    const [number, wireType, value] = reader.next();
    if (number === 1) types = types.concat(wireType === 2 ? packedVarints(value).map(Number) : [Number(value)]);
    if (number === 2) varints.push(...(wireType === 2 ? packedVarints(value) : [value]));
    if (number === 3) {
      if (wireType === 2) for (let i = 0; i < value.length; i += 8) doubles.push(value.readDoubleLE(i));
      else doubles.push(value);
    }
    if (number === 4) blobs.push(value.toString("base64"));
    if (number === 5) strings = value.toString("utf8").split("\0");
  }
  const cursors = { varint: 0, double: 0, string: 0, blob: 0 };
  return types.map((type) => {
    if (type === CELL.VARINT) return signed64(varints[cursors.varint++]);
    if (type === CELL.FLOAT64) return doubles[cursors.double++];
    if (type === CELL.STRING) return strings[cursors.string++];
    if (type === CELL.BLOB) return blobs[cursors.blob++];
    return null;
  });
}

function main() {
  const [wasmPath, tracePath] = process.argv.slice(2);
  const queries = JSON.parse(fs.readFileSync(0, "utf8"));
  const processor = new TraceProcessor(wasmPath);
  processor.load(fs.readFileSync(tracePath));
  const results = {};
  for (const [name, sql] of Object.entries(queries)) results[name] = processor.query(sql);
  process.stdout.write(JSON.stringify(results));
}

main();
