//! How values become payloads and results, and back: a Buffer or Uint8Array is sent as it is,
//! a string as UTF-8, `undefined` as nothing, anything else as JSON.

/** What `submit` takes as a payload and a handler may return as a result. */
export type Value = Uint8Array | string | undefined | null | boolean | number | object;

export function encode(value: Value): Buffer {
  if (value === undefined) return Buffer.alloc(0);
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  if (typeof value === 'string') return Buffer.from(value, 'utf8');
  return Buffer.from(JSON.stringify(value), 'utf8');
}

/** Bytes from jobd (a payload, a result), with the decodings `encode` implies. */
export class Bytes {
  constructor(readonly bytes: Buffer) {}

  /** The bytes as UTF-8 text. */
  text(): string {
    return this.bytes.toString('utf8');
  }

  /** The bytes parsed as JSON; `undefined` when empty. */
  json<T = unknown>(): T {
    return (this.bytes.length === 0 ? undefined : JSON.parse(this.text())) as T;
  }
}
