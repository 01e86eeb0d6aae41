/**
 * The example DPoP proofs of openapi/mailbox.openapi.json's federation parameters are proofs the endpoints
 * accept (docs/protocol.md §10.3, RFC 9449 §4.3): `TransferDPoP` for `POST` to a transfer endpoint, bound to
 * the A1 of the transfer example by `ath` and by its key (A1's `cnf.jkt`); `FetchDPoP` for `POST` to a fetch
 * endpoint, bound to a fetch access token of example.net's AS. The keys are the examples' keys of
 * test/vectors/keys.json; EdDSA signatures are deterministic, so the access token is rebuilt here.
 */
import { readFileSync } from 'node:fs';
import { createPrivateKey } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  MemoryReplayStore,
  decodeJwt,
  importDpopKey,
  signJwt,
  verifyDpopProof,
  type JwsAlg,
} from '@federizer/protocol';
import type { JWK } from 'jose';

const doc = JSON.parse(readFileSync(new URL('../../../openapi/mailbox.openapi.json', import.meta.url), 'utf8')) as {
  paths: Record<string, Record<string, { parameters?: { $ref?: string }[] }>>;
  components: {
    parameters: Record<string, { example: string }>;
    examples: Record<string, { value: { message?: { envelope: { 'jwt-assertion'?: string }[] } } }>;
  };
};
const keys = JSON.parse(readFileSync(new URL('../../../test/vectors/keys.json', import.meta.url), 'utf8')) as Record<
  string,
  JWK
>;

/** The operation that uses a parameter component: its path and method. */
function userOf(parameter: string): string[] {
  return Object.entries(doc.paths).flatMap(([path, item]) =>
    Object.entries(item)
      .filter(([, op]) => op.parameters?.some((p) => p.$ref === `#/components/parameters/${parameter}`))
      .map(([method]) => `${method.toUpperCase()} ${path}`),
  );
}

function verify(proof: string, htu: string, accessToken: string, expectedJkt: string) {
  const { iat } = decodeJwt(proof).payload;
  return verifyDpopProof(proof, {
    htm: 'POST',
    htu,
    accessToken,
    expectedJkt,
    now: iat as number,
    replay: new MemoryReplayStore(),
  });
}

describe('the example DPoP proofs of the federation endpoints (docs/protocol.md §10.3)', () => {
  it('TransferDPoP: a proof for POST to the transfer endpoint, bound to the A1 of the transfer example', async () => {
    expect(userOf('TransferDPoP')).toEqual(['POST /federation/v1/transfer']);
    const a1 = doc.components.examples.TransferOrigin!.value.message!.envelope[0]!['jwt-assertion']!;
    const jkt = (decodeJwt(a1).payload.cnf as { jkt: string }).jkt;
    const key = await importDpopKey(keys['mta.example.com.dpop']!, 'EdDSA');
    expect(key.jkt).toBe(jkt);
    const proof = doc.components.parameters.TransferDPoP!.example;
    const verified = await verify(proof, 'https://mail.example.net/federation/v1/transfer', a1, jkt);
    expect((verified.payload.jti as string).length).toBeGreaterThanOrEqual(22); // 128 bits, RFC 9449 §4.2
  });

  it('FetchDPoP: a proof for POST to the fetch endpoint, bound to a fetch access token of example.net', async () => {
    expect(userOf('FetchDPoP')).toEqual(['POST /federation/v1/fetch']);
    const key = await importDpopKey(keys['mta.example.net.dpop']!, 'EdDSA');
    const { alg, kid, ...asJwk } = keys['as.example.net']!;
    const token = await signJwt(
      {
        iss: 'https://as.example.net',
        sub: 'mta.example.net',
        aud: 'https://mail.example.com/api/v1',
        client_id: 'mta.example.net',
        azp: 'mta.example.net',
        scope: 'internet_mail',
        message_id: '<b07d0cdf-c6f4-4f67-b24c-cc847a4c2df4@example.com>',
        cnf: { jkt: key.jkt },
        iat: 1734897000,
        exp: 1734897300,
        jti: 'iotSzHwmJe5yrjJqQkvjhg',
      },
      { typ: 'at+jwt', alg: alg as JwsAlg, key: createPrivateKey({ key: asJwk as never, format: 'jwk' }), kid },
    );
    const proof = doc.components.parameters.FetchDPoP!.example;
    const verified = await verify(proof, 'https://mail.example.com/federation/v1/fetch', token, key.jkt);
    expect((verified.payload.jti as string).length).toBeGreaterThanOrEqual(22);
  });
});

describe('the fetch operation says what the endpoint answers (docs/protocol.md §6.3)', () => {
  const fetchOp = (
    doc.paths['/federation/v1/fetch'] as unknown as {
      post: { description: string; responses: Record<string, { description: string }> };
    }
  ).post;

  it('an azp or client_id other than the mta_client_id is a 401, as the endpoint answers it, not a 403', () => {
    expect(fetchOp.description).toMatch(/`mta_client_id` included \(401\)/);
    expect(fetchOp.description).not.toMatch(/mta_client_id`[^.;]*\(403\)/);
  });

  it('an expired origin assertion is a 410 for any envelope, a failure of the mailbox itself a 503', () => {
    expect(fetchOp.responses['410']!.description).toMatch(/origin assertion A1 has expired/);
    expect(fetchOp.responses['503']!.description).toMatch(/its database, its DPoP replay store/);
  });
});
