/**
 * The committed vectors are what the code builds (byte for byte: Ed25519 is deterministic), their
 * digests are what the library recomputes from the files alone, the CLI prints the same, and every
 * signed chain in them validates.
 */
import { execFile } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { assertionDigest, digestReport, parseMessage, transmittedEnvelope, validateChain } from '@federizer/protocol';
import { VECTOR_DIR, buildVectors, vectorTrust } from './vectors/build.js';

const read = (file: string) => readFileSync(new URL(file, VECTOR_DIR), 'utf8');
const names = readdirSync(VECTOR_DIR)
  .filter((f) => f.endsWith('.message.json'))
  .map((f) => f.replace('.message.json', ''))
  .sort();

interface Expected {
  digest: unknown;
  assertions: { index: number; digest: string }[];
  validateAt?: number;
}

describe('test vectors', () => {
  it('are exactly what test/vectors/build.ts builds (run `npm run vectors` after a deliberate change)', async () => {
    const built = await buildVectors();
    expect(built.map((v) => v.name)).toEqual(names);
    for (const v of built) {
      expect(JSON.parse(read(`${v.name}.message.json`))).toEqual(v.message);
      expect(JSON.parse(read(`${v.name}.expected.json`))).toEqual({ description: v.description, ...v.expected });
    }
  });

  it.each(names)('%s: digests recomputed from the file match', (name) => {
    const message = parseMessage(read(`${name}.message.json`));
    const expected = JSON.parse(read(`${name}.expected.json`)) as Expected;
    expect(digestReport(message)).toEqual(expected.digest);
    for (const a of expected.assertions) {
      const block = message.envelope[a.index] as { 'jwt-assertion': string };
      expect(assertionDigest(block['jwt-assertion'])).toBe(a.digest);
    }
  });

  it.each(names.filter((n) => n !== '01-draft'))('%s: the signed chain validates (PROTOCOL §5, §7)', async (name) => {
    const message = parseMessage(read(`${name}.message.json`));
    const expected = JSON.parse(read(`${name}.expected.json`)) as Expected;
    const first = expected.assertions.at(-1)!;
    const now = expected.validateAt ?? 1734896975 + 60;
    const chain = await validateChain(transmittedEnvelope(message), {
      trust: vectorTrust(),
      now,
      mode: 'transfer',
      body: message.body,
    });
    expect(chain.hops).toHaveLength(expected.assertions.length);
    expect(chain.origin.assertion).toBe(
      (message.envelope[first.index] as { 'jwt-assertion': string })['jwt-assertion'],
    );
  });

  it('`npx federizer protocol digest FILE` prints the expected digests of every vector', async () => {
    const bin = new URL('../node_modules/.bin/federizer', import.meta.url).pathname;
    for (const name of names) {
      const file = new URL(`${name}.message.json`, VECTOR_DIR).pathname;
      const { stdout } = await promisify(execFile)(bin, ['protocol', 'digest', file]);
      expect(JSON.parse(stdout), name).toEqual((JSON.parse(read(`${name}.expected.json`)) as Expected).digest);
    }
  });
});
