/**
 * Every answer the mailbox tests read goes through `documented`: the answer is read whole, checked against
 * openapi/mailbox.openapi.json (the operation by its path template and method, the status, the content
 * type, the JSON body against its schema, the headers the document marks required), and handed back as an
 * equivalent, unread `Response`. An answer the document does not describe fails the test that got it, with
 * the operation and every violation named.
 */
import { OpenApiValidationError, loadOpenApi, validateResponse } from '../../common/src/testing/openapi.js';

const DOCUMENT = new URL('../../../openapi/mailbox.openapi.json', import.meta.url);

/** Statuses whose answers never have a body (RFC 9110 §15); `Response` refuses one for them. */
const NULL_BODY = new Set([101, 204, 205, 304]);

interface AnyResponse {
  readonly status: number;
  readonly statusText: string;
  readonly headers: Iterable<[string, string]> & { get(name: string): string | null };
  arrayBuffer(): Promise<ArrayBuffer>;
}

export async function documented(method: string, url: string, res: AnyResponse): Promise<Response> {
  const bytes = Buffer.from(await res.arrayBuffer());
  const contentType = res.headers.get('content-type');
  const textual = contentType !== null && (/[/+]json\b/.test(contentType) || contentType.startsWith('text/'));
  // Bytes of other types are described by media type only (`*/*`, no schema): a placeholder stands for them.
  const body = bytes.length === 0 ? undefined : textual ? bytes.toString('utf8') : 'bytes';
  const headers = new Headers([...res.headers]);
  try {
    validateResponse(loadOpenApi(DOCUMENT), {
      method,
      path: url,
      status: res.status,
      contentType: bytes.length === 0 ? null : contentType,
      body,
      headers,
    });
  } catch (e) {
    if (!(e instanceof OpenApiValidationError)) throw e;
    const shown = textual ? `\n  the body: ${bytes.toString('utf8', 0, 500)}` : '';
    throw new OpenApiValidationError(`${e.operation} (openapi/mailbox.openapi.json)`, [
      ...e.violations,
      `the answer: ${res.status} ${contentType ?? 'no content type'}${shown}`,
    ]);
  }
  return new Response(NULL_BODY.has(res.status) || bytes.length === 0 ? null : bytes, {
    status: res.status,
    statusText: res.statusText,
    headers,
  });
}
