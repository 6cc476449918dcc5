/**
 * A second, independent C2PA reader: the Content Authenticity Initiative's web SDK
 * (@contentauth/c2pa-web, its own c2pa-rs build), stricter than the c2pa-wasm the project reads
 * with (it refuses a signing certificate with no O=, contentauth/c2pa-rs#2262).
 *
 * The SDK runs in a browser's Web Worker. Node has neither `Worker` nor `FileReaderSync`, so this
 * file supplies exactly those two, in this thread and only to the SDK: the SDK's own worker script runs over a
 * MessageChannel, and blobs it is sent are read once up front so that FileReaderSync can hand their
 * bytes back synchronously, as a worker's would. Nothing of the SDK's reading is replaced.
 */
import type { C2paSdk } from '@contentauth/c2pa-web';

/** A blob whose bytes are at hand. */
class BytesBlob extends Blob {
  readonly held: Uint8Array;
  constructor(held: Uint8Array, type: string) {
    super([held as Uint8Array<ArrayBuffer>], { type });
    this.held = held;
  }
  override slice(start = 0, end = this.held.length): BytesBlob {
    return new BytesBlob(this.held.subarray(start, end), this.type);
  }
}

class FileReaderSync {
  readAsArrayBuffer(blob: BytesBlob): ArrayBuffer {
    return blob.held.slice().buffer as ArrayBuffer;
  }
}

const readable = async (value: unknown): Promise<unknown> =>
  value instanceof Blob ? new BytesBlob(new Uint8Array(await value.arrayBuffer()), value.type) : Array.isArray(value) ? Promise.all(value.map(readable)) : value;

type Messages = EventTarget & { postMessage(data: unknown, options?: { transfer?: unknown[] }): void; terminate(): void };

/** A Web Worker for the SDK's classic worker script, which it passes as a data: URL. */
class InThreadWorker {
  constructor(url: string) {
    const { port1, port2 } = new MessageChannel();
    const scope = new EventTarget() as Messages;
    let delivered = Promise.resolve();
    port2.on('message', (data: { args?: unknown[] }) => {
      delivered = delivered.then(async () => {
        const event = Array.isArray(data?.args) ? { ...data, args: await readable(data.args) } : data;
        scope.dispatchEvent(new MessageEvent('message', { data: event }));
      });
    });
    scope.postMessage = (data, options) => port2.postMessage(data, options?.transfer as never);
    new Function('self', 'FileReaderSync', decodeURIComponent(url.slice(url.indexOf(',') + 1)))(scope, FileReaderSync);
    const main = new EventTarget() as Messages;
    port1.on('message', (data) => main.dispatchEvent(new MessageEvent('message', { data })));
    main.postMessage = (data, options) => port1.postMessage(data, options?.transfer as never);
    main.terminate = () => {
      port1.close();
      port2.close();
    };
    return main;
  }
}

let sdk: Promise<C2paSdk> | undefined;

export interface CaiReport {
  state: string;
  /** The active manifest's failure codes. */
  failures: string[];
  signer?: string;
}

/** What the CAI web SDK says of an image's C2PA manifest. */
export async function readWithCaiWebSdk(bytes: Buffer, mimeType: string): Promise<CaiReport> {
  sdk ??= (async () => {
    const { createC2pa } = await import('@contentauth/c2pa-web/inline');
    // Only while the SDK makes its worker: other libraries take a global Worker for a browser.
    Object.assign(globalThis, { Worker: InThreadWorker });
    try {
      return await createC2pa();
    } finally {
      delete (globalThis as { Worker?: unknown }).Worker;
    }
  })();
  const reader = await (await sdk).reader.fromBlob(mimeType, new Blob([bytes as Uint8Array<ArrayBuffer>], { type: mimeType }));
  if (!reader) throw new Error('no C2PA manifest');
  try {
    const store = await reader.manifestStore();
    const active = store.active_manifest ? store.manifests?.[store.active_manifest] : undefined;
    return {
      state: String(store.validation_state),
      failures: (store.validation_results?.activeManifest?.failure ?? []).map((s) => s.code),
      signer: active?.signature_info?.common_name ?? undefined,
    };
  } finally {
    await reader.free();
  }
}
