/**
 * The `Range` request header (RFC 9110 §14.1.2, §14.2) for one representation of `size` bytes, as the resource
 * and fetch endpoints honour it (PROTOCOL.md §6.2, §9).
 *
 * - `none`: serve the whole representation (200). A server may ignore Range (§14.2), and this one does for a
 *   header it cannot parse, for another range unit, and for several ranges (no multipart/byteranges).
 * - `range`: serve bytes `start` to `end` inclusive (206, `Content-Range: bytes start-end/size`).
 * - `unsatisfiable`: 416 with `Content-Range: bytes * /size` (without the space).
 */
export type ParsedRange = { kind: 'none' } | { kind: 'range'; start: number; end: number } | { kind: 'unsatisfiable' };

/** int-range = first-pos "-" [ last-pos ]; suffix-range = "-" suffix-length (§14.1.2). Digits only, ASCII. */
const RANGE_SPEC = /^(?:([0-9]+)-([0-9]*)|-([0-9]+))$/;
const BYTES = /^bytes$/i;

export function parseRange(header: string | undefined, size: number): ParsedRange {
  if (!Number.isSafeInteger(size) || size < 0) throw new TypeError(`size must be a non-negative integer, not ${size}`);
  if (typeof header !== 'string') return { kind: 'none' };
  const value = header.trim();
  const equals = value.indexOf('=');
  // Range units are case-insensitive (§14.1); the grammar allows no white space around "=".
  if (equals < 0 || !BYTES.test(value.slice(0, equals))) return { kind: 'none' };
  // range-set is a #list: a recipient accepts empty elements and white space around the commas (§5.6.1).
  const specs = value
    .slice(equals + 1)
    .split(',')
    .map((spec) => spec.trim())
    .filter((spec) => spec !== '');
  if (specs.length !== 1) return { kind: 'none' };
  const match = RANGE_SPEC.exec(specs[0] ?? '');
  if (match === null) return { kind: 'none' };

  // BigInt: positions longer than 2^53 must still compare exactly.
  const total = BigInt(size);
  const [, firstText, lastText, suffixText] = match;
  if (suffixText !== undefined) {
    const suffix = BigInt(suffixText);
    if (suffix === 0n) return { kind: 'unsatisfiable' };
    // Satisfiable by §14.1.1, but it selects no bytes: the whole (empty) representation answers it.
    if (size === 0) return { kind: 'none' };
    // A suffix longer than the representation selects all of it.
    return { kind: 'range', start: suffix >= total ? 0 : size - Number(suffix), end: size - 1 };
  }
  const first = BigInt(firstText ?? '');
  const last = lastText === undefined || lastText === '' ? undefined : BigInt(lastText);
  // last-pos < first-pos makes the range-spec invalid, and an invalid ranges-specifier is ignored (§14.1.1).
  if (last !== undefined && last < first) return { kind: 'none' };
  // `bytes=0-` of an empty representation is unsatisfiable by §14.1.1, but it is what a client resuming from
  // the bytes it holds (none) asks: the whole (empty) representation answers it, as §14.2 allows, rather
  // than a 416 after which such a client would only ask the same again.
  if (size === 0 && first === 0n) return { kind: 'none' };
  if (first >= total) return { kind: 'unsatisfiable' };
  const end = last === undefined || last >= total ? size - 1 : Number(last);
  return { kind: 'range', start: Number(first), end };
}
