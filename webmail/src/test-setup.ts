/**
 * The jsdom project's setup. jsdom has no IndexedDB: fake-indexeddb is a complete implementation of it
 * in memory. And vitest's jsdom environment mixes two realms: jsdom's typed arrays and Blob on the
 * global object, Node's WebCrypto, TextEncoder and fetch. `digest() instanceof ArrayBuffer` is then
 * false (oauth4webapi rightly checks it) and fetch cannot read jsdom's Blob. A browser has one realm;
 * Node's constructors restore that here (found through structuredClone, which builds its copy with its
 * own realm's intrinsics).
 */
import { Blob as NodeBlob } from 'node:buffer';
import 'fake-indexeddb/auto';
import { cleanup, configure } from '@testing-library/react';
import { afterEach } from 'vitest';

for (const name of [
  'ArrayBuffer',
  'Uint8Array',
  'Uint8ClampedArray',
  'Uint16Array',
  'Uint32Array',
  'Int8Array',
  'Int16Array',
  'Int32Array',
  'Float32Array',
  'Float64Array',
]) {
  const global = globalThis as unknown as Record<string, new (n: number) => object>;
  // structuredClone builds its copy from this realm's intrinsics, whatever the global names point at.
  global[name] = structuredClone(new global[name]!(1)).constructor as new (n: number) => object;
}

globalThis.Blob = NodeBlob as unknown as typeof Blob;

// The app tests wait for real servers on a shared machine: findBy and waitFor give them time.
configure({ asyncUtilTimeout: 15_000 });

afterEach(() => cleanup());
