/** YAML in and out for `federizer operator render`: the resources a file declares, the manifests it yields. */
import { parseAllDocuments, stringify } from 'yaml';

export interface ParsedDocument {
  /** 1-based, as people count documents in a file. */
  readonly index: number;
  readonly value?: unknown;
  readonly error?: string;
}

/** Every non-empty document of a multi-document YAML text, or its syntax error. */
export function parseDocuments(text: string): ParsedDocument[] {
  return parseAllDocuments(text).flatMap((doc, i): ParsedDocument[] => {
    if (doc.errors.length > 0) return [{ index: i + 1, error: doc.errors[0]!.message }];
    const value: unknown = doc.toJS();
    // An empty document (a file ending in ---, or only comments) declares nothing.
    return value === null || value === undefined ? [] : [{ index: i + 1, value }];
  });
}

/** One manifest as a YAML document, `comment` lines first; long strings (keys, JWKs) stay on one line. */
export function manifestYaml(manifest: unknown, comment?: string): string {
  const head = comment ? `${comment.replace(/^/gm, '# ')}\n` : '';
  return `---\n${head}${stringify(manifest, { lineWidth: 0 })}`;
}
