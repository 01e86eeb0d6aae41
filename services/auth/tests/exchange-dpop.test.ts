/**
 * DPoP proofs at the AS's token endpoint, over real HTTP with real clients, on both of its paths: the token
 * exchange, whose proofs the exchange checks itself with the protocol library (docs/protocol.md §10.3), and
 * oidc-provider's own grants (here the refresh of the webmail's DPoP-bound session, RFC 9449 §5), whose
 * proofs the provider checks and records through the same replay table.
 *
 * RFC 7519 §2: `iat` is a NumericDate, which may have a fraction; such a proof is accepted, and only once.
 * docs/protocol.md §10.3: a `jti` of any length is accepted (its replay record is a hash of fixed length).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as oidc from 'openid-client';
import type { HttpClient } from '@federizer/common';
import { contentId, externalContentType, prepareSend, validateMessage, type Message } from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { startFederation, type Federation, type TestDomain } from './harness.js';
import { MtaClient, sendParams, signIn, testHttp, type ExchangeOptions, type UserSession } from './exchange-client.js';

let serial = 0;

/** The headers of a fresh copy from alice to bob: what a send exchange signs. */
function exchangeHeaders(): readonly object[] {
  const bytes = `dpop test ${++serial}`;
  const draft: Message = validateMessage({
    envelope: [
      {
        headers: [
          { 'Message-ID': `<dpop-${serial}@example.com>` },
          { From: 'alice@example.com' },
          { To: 'bob@example.net' },
        ],
      },
    ],
    body: {
      parts: [
        {
          headers: [
            { 'Content-Disposition': 'inline' },
            { 'Content-ID': contentId(bytes) },
            { 'Content-Type': externalContentType(Buffer.byteLength(bytes), 'text/plain') },
          ],
        },
      ],
    },
  });
  return prepareSend(draft, { date: new Date() })[0]!.exchangeHeaders;
}

/** A proof changed right before openid-client signs it. */
function proofWith(change: (payload: Record<string, unknown>) => void): ExchangeOptions {
  return { modifyProof: (_header, payload) => change(payload) };
}

describe.each(testDatabases())('DPoP proofs at the token endpoint ($name)', ({ create }) => {
  let fed: Federation;
  let http: HttpClient;
  let com: TestDomain;
  let mta: MtaClient;
  let session: UserSession;

  beforeAll(async () => {
    fed = await startFederation(['example.com'], { database: create });
    com = fed.domains['example.com']!;
    http = testHttp();
    await com.createUser('alice@example.com', 'alice password');
    session = await signIn(com, http, 'alice@example.com', 'alice password');
    mta = await MtaClient.connect(com, http);
  });
  afterAll(async () => {
    await http?.close();
    await fed?.close();
  });

  describe('the token exchange (docs/protocol.md §4.4, §10.3)', () => {
    it('RFC 7519 §2: a proof whose iat has a fraction is accepted, and refused when replayed', async () => {
      const params = sendParams(session.accessToken, exchangeHeaders());
      const first = await mta.exchange(
        params,
        proofWith((p) => void (p.iat = (p.iat as number) + 0.5)),
      );
      expect(first.trace.status).toBe(200);
      const proof = first.trace.dpop!;
      expect(JSON.parse(Buffer.from(proof.split('.')[1]!, 'base64url').toString()).iat % 1).toBe(0.5);
      const replayed = await mta.refused(sendParams(session.accessToken, exchangeHeaders()), {
        tamper: ({ headers }) => void (headers.dpop = proof),
      });
      expect(replayed).toMatchObject({ status: 400, error: 'invalid_dpop_proof' });
      expect(replayed.error_description).toMatch(/was already used/);
    });

    it('docs/protocol.md §10.3: a proof whose jti has 4 000 characters is accepted', async () => {
      const params = sendParams(session.accessToken, exchangeHeaders());
      const issued = await mta.exchange(
        params,
        proofWith((p) => void (p.jti = 'j'.repeat(4000))),
      );
      expect(issued.trace.status).toBe(200);
    });
  });

  describe("oidc-provider's own grants (the webmail's refresh, RFC 9449 §5)", () => {
    let refreshToken: string;

    beforeAll(() => {
      refreshToken = session.refreshToken!;
    });

    async function refresh(change: (payload: Record<string, unknown>) => void) {
      const DPoP = oidc.getDPoPHandle(session.config, session.dpopKey, {
        [oidc.modifyAssertion]: (_header, payload) => change(payload as Record<string, unknown>),
      });
      const refreshed = await oidc.refreshTokenGrant(session.config, refreshToken, undefined, { DPoP });
      refreshToken = refreshed.refresh_token!;
      return refreshed;
    }

    it('RFC 7519 §2: a proof whose iat has a fraction is accepted', async () => {
      const refreshed = await refresh((p) => void (p.iat = (p.iat as number) + 0.25));
      expect(refreshed.token_type.toLowerCase()).toBe('dpop');
    });

    it('docs/protocol.md §10.3: a proof whose jti has 4 000 characters is accepted', async () => {
      const refreshed = await refresh((p) => void (p.jti = 'k'.repeat(4000)));
      expect(refreshed.token_type.toLowerCase()).toBe('dpop');
    });
  });
});
