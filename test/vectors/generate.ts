/** `npm run vectors`: rewrites the vector files from test/vectors/build.ts. Review the diff before committing. */
import { readdirSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { messageToJson } from '@federizer/protocol';
import { VECTOR_DIR, buildVectors } from './build.js';

const dir = fileURLToPath(VECTOR_DIR);
for (const f of readdirSync(dir)) if (/\.(message|expected)\.json$/.test(f)) rmSync(`${dir}/${f}`);
for (const v of await buildVectors()) {
  writeFileSync(`${dir}/${v.name}.message.json`, messageToJson(v.message));
  writeFileSync(
    `${dir}/${v.name}.expected.json`,
    `${JSON.stringify({ description: v.description, ...v.expected }, null, 2)}\n`,
  );
  process.stdout.write(`wrote ${v.name}\n`);
}
