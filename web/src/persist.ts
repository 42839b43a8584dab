// Keeping serialized caches in the browser's IndexedDB, so a page can restore its KV cache after a
// reload and continue exactly where it was (the bytes are KVCache.serialize()'s: magic, version,
// config, payload, CRC32; Tqkv.deserialize checks them). A Runner (its position and cache) and a
// Calibration serialize the same way (Runner.restore, Tqkv.loadCalibration read them back).
//
//   await saveToIndexedDB('chat-1', cache);                  // or a runner, a calibration, any Uint8Array
//   const bytes = await loadFromIndexedDB('chat-1');         // undefined when absent
//   const cache = bytes && tqkv.deserialize(bytes);
//   await removeFromIndexedDB('chat-1');

/** Where the bytes go: database and object store names (defaults 'tqkv' and 'caches'). */
export interface IndexedDBOptions {
  database?: string;
  store?: string;
}

function open(options: IndexedDBOptions): Promise<{ db: IDBDatabase; store: string }> {
  const idb = (globalThis as { indexedDB?: IDBFactory }).indexedDB;
  if (!idb) return Promise.reject(new Error('tqkv: IndexedDB is not available here (browsers and workers only)'));
  const name = options.database ?? 'tqkv', store = options.store ?? 'caches';
  return new Promise((resolve, reject) => {
    const req = idb.open(name);
    req.onupgradeneeded = () => req.result.createObjectStore(store);
    req.onerror = () => reject(req.error);
    req.onsuccess = () => {
      const db = req.result;
      if (db.objectStoreNames.contains(store)) return resolve({ db, store });
      // A database made by another version of the page without this store: add it.
      const version = db.version + 1;
      db.close();
      const up = idb.open(name, version);
      up.onupgradeneeded = () => up.result.createObjectStore(store);
      up.onerror = () => reject(up.error);
      up.onsuccess = () => resolve({ db: up.result, store });
    };
  });
}

async function run<T>(options: IndexedDBOptions, mode: IDBTransactionMode, fn: (s: IDBObjectStore) => IDBRequest<T>): Promise<T> {
  const { db, store } = await open(options);
  try {
    return await new Promise<T>((resolve, reject) => {
      const tx = db.transaction(store, mode);
      const req = fn(tx.objectStore(store));
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = () => reject(tx.error ?? req.error);
      tx.onabort = () => reject(tx.error ?? new Error('tqkv: IndexedDB transaction aborted'));
    });
  } finally {
    db.close();
  }
}

/** Anything with a serialize() to bytes: KVCache, Runner, Calibration. */
export interface Serializable {
  serialize(): Uint8Array;
}

/** Stores a cache, runner or calibration (serialized now) or bytes under `key`; resolves to the byte count. */
export async function saveToIndexedDB(key: string, data: Serializable | Uint8Array, options: IndexedDBOptions = {}): Promise<number> {
  if (typeof key !== 'string') throw new TypeError('tqkv: saveToIndexedDB: key must be a string');
  if (!(data instanceof Uint8Array) && typeof (data as Serializable)?.serialize !== 'function')
    throw new TypeError('tqkv: saveToIndexedDB: data must be a Uint8Array or have serialize() (KVCache, Runner, Calibration)');
  const bytes = data instanceof Uint8Array ? data : data.serialize();
  // An ArrayBuffer of exactly these bytes (not a view into a larger buffer, e.g. wasm memory).
  const copy = bytes.slice().buffer;
  await run(options, 'readwrite', (s) => s.put(copy, key));
  return bytes.length;
}

/** The bytes stored under `key`, or undefined. */
export async function loadFromIndexedDB(key: string, options: IndexedDBOptions = {}): Promise<Uint8Array | undefined> {
  if (typeof key !== 'string') throw new TypeError('tqkv: loadFromIndexedDB: key must be a string');
  const v = await run<unknown>(options, 'readonly', (s) => s.get(key));
  if (v === undefined) return undefined;
  if (v instanceof ArrayBuffer) return new Uint8Array(v);
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  throw new TypeError(`tqkv: loadFromIndexedDB: '${key}' does not hold bytes`);
}

/** Deletes what is stored under `key` (nothing when absent). */
export async function removeFromIndexedDB(key: string, options: IndexedDBOptions = {}): Promise<void> {
  await run(options, 'readwrite', (s) => s.delete(key));
}
