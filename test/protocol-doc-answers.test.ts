/**
 * docs/protocol.md says what the transfer and fetch endpoints do (services/mailbox/src/federation): the
 * statements an audit found at odds with the code, each tied to the test that holds the code to it.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

const doc = readFileSync(new URL('../docs/protocol.md', import.meta.url), 'utf8');

/** The text of a `###` section, up to the next heading of level 2 or 3. */
function section(heading: string): string {
  const start = doc.indexOf(`\n### ${heading}\n`);
  expect(start, heading).toBeGreaterThan(0);
  const end = doc.slice(start + 1).search(/\n#{2,3} /);
  return doc.slice(start, end < 0 ? undefined : start + 1 + end);
}

/** Item `n` of the numbered list of a section, up to the next item or blank line. */
function item(text: string, n: number): string {
  const m = new RegExp(`\\n${n}\\. ([\\s\\S]*?)(?=\\n\\d+\\. |\\n\\n|\\n?$)`).exec(text);
  expect(m, `item ${n}`).not.toBeNull();
  return m![1]!.replace(/\s+/g, ' ');
}

describe('docs/protocol.md §5 and §6 say what the endpoints answer', () => {
  it('§5.2 check 9: a Bcc copy goes to its Bcc recipient only (transfer.test.ts, PROTOCOL §4.3)', () => {
    const check9 = item(section('5.2 The checks'), 9);
    expect(check9).not.toMatch(/`To`, `Cc` and `Bcc`/);
    expect(check9).toMatch(/`Bcc` recipient only, never its `To` and `Cc`/);
    expect(check9).toMatch(/for a forward block, its `Forwarded-To`/);
  });

  it('§5.2 check 8: an older hop’s failures are 400, the newest hop’s those of checks 2–7', () => {
    const check8 = item(section('5.2 The checks'), 8);
    expect(check8).toMatch(/`400 invalid_message`, the failures of an \*\*older\*\* hop's assertion included/);
    expect(check8).toMatch(/its failures are those of checks 2–7/);
  });

  it('§5.3: the 401 covers check 1 (Authorization is not envelope[0]) too; 503 covers MBX2’s own failures', () => {
    const answers = section('5.3 The answers');
    const row401 = answers.split('\n').find((l) => l.startsWith('| `401 Unauthorized`'))!;
    expect(row401).toMatch(
      /check 1 \(the `Authorization` header missing, .*its token not `envelope\[0\]`\) and checks 2–7/,
    );
    const row503 = answers.split('\n').find((l) => l.startsWith('| `503 Service Unavailable`'))!;
    expect(row503).toMatch(/its database, its DPoP replay store, its user directory during check 9/);
    const prose = answers.replace(/\s+/g, ' ');
    expect(prose).toMatch(/`DPoP error="invalid_token"` for the `Authorization` header of check 1/);
    // PROTOCOL §5: "401 invalid_token with WWW-Authenticate: DPoP error=..." (transfer.test.ts, check 6).
    expect(row401).toMatch(/`\{"error": "invalid_token", …\}` with `WWW-Authenticate: DPoP error="…"`/);
    expect(prose).toMatch(/Every `401` has the `error` `invalid_token`/);
  });

  it('§6.3: the recipients of check 9 are the copy’s, an expired A1 is 410 for any envelope, failures 503', () => {
    const checks = section('6.3 The checks');
    // Numbered in the order the mailbox makes them: 7 the origin assertion, 8 the chain, 9 the recipient.
    const recipient = item(checks, 9);
    expect(recipient).not.toMatch(/`To`, `Cc` or `Bcc` of the origin block/);
    expect(recipient).toMatch(/a Bcc copy's `Bcc` recipient only, otherwise its `To` and `Cc`/);
    expect(item(checks, 8)).toMatch(/the \*\*newest\*\* forward block's `Forwarded-To`/);
    expect(item(checks, 7)).toMatch(/A1 is unexpired.* for a direct copy as for a forwarded one/);
    expect(checks.replace(/\s+/g, ' ')).toMatch(/An expired A1 is always `410 share_expired`/);
    expect(checks.replace(/\s+/g, ' ')).toMatch(/answers `503 temporarily_unavailable` with a `Retry-After`/);
  });

  it('§10.3: a fractional iat and a jti of any length are accepted; the record is a hash', () => {
    const verification = section('10.3 Verification').replace(/\s+/g, ' ');
    expect(verification).toMatch(/may have a fraction/);
    expect(verification).toMatch(/`B64U\(SHA-256\(ASCII\(thumbprint\) ":" jti\)\)`/);
    expect(verification).toMatch(/a `jti` of any length is accepted/);
  });
});
