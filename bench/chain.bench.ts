/**
 * Validation of a 3-hop chain (origin, then two forwards) with the issuers' keys already cached, as a
 * receiving mailbox validates every transfer. Target: ≥ 1,500 validations per second on one core.
 */
import { exportJWK, generateKeyPair, type CryptoKey, type JWK } from 'jose';
import {
  FORWARD_EHL,
  ORIGIN_EHL,
  StaticTrust,
  contentId,
  externalContentType,
  prepareForward,
  prepareSend,
  receiveBlock,
  signAssertion,
  validateChain,
  withAssertion,
  type Message,
} from '@federizer/protocol';
import { measure, report } from './lib.js';

const HOPS = [
  ['example.com', 'alice@example.com'],
  ['example.net', 'bob@example.net'],
  ['example.org', 'bobby@example.org'],
  ['example.edu', 'bo@example.edu'],
] as const;

export async function run(): Promise<void> {
  const keys: Record<string, { key: CryptoKey; jwk: JWK }> = {};
  for (const [domain] of HOPS) {
    const { privateKey, publicKey } = await generateKeyPair('ES256');
    keys[domain] = { key: privateKey, jwk: { ...(await exportJWK(publicKey)), kid: `${domain}-1`, alg: 'ES256' } };
  }
  const trust = new StaticTrust(
    Object.fromEntries(
      HOPS.map(([d]) => [d, { issuer: `https://as.${d}`, mtaClientId: `mta.${d}`, jwks: { keys: [keys[d]!.jwk] } }]),
    ),
  );
  const sign = (
    domain: string,
    headers: Parameters<typeof signAssertion>[0]['headers'],
    ehl: readonly string[],
    iat: number,
  ) =>
    signAssertion(
      {
        iss: `https://as.${domain}`,
        azp: `mta.${domain}`,
        jkt: 'bench-jkt',
        headers,
        ehl,
        iat,
        jti: `${domain}-${iat}`,
      },
      { key: keys[domain]!.key, alg: 'ES256', kid: `${domain}-1` },
    );

  const now = Math.floor(Date.now() / 1000);
  const draft: Message = {
    envelope: [
      {
        headers: [
          { From: `Alice <${HOPS[0][1]}>` },
          { To: `Bob <${HOPS[1][1]}>` },
          { Subject: 'A chain' },
          { 'Message-ID': '<bench@example.com>' },
        ],
      },
    ],
    body: {
      parts: [
        {
          headers: [
            { 'Content-Disposition': 'inline' },
            { 'Content-ID': contentId('hi') },
            { 'Content-Type': externalContentType(2, 'text/plain') },
          ],
        },
      ],
    },
  };
  const copy = prepareSend(draft, { date: new Date(now * 1000) })[0]!;
  let message = withAssertion(copy.message, await sign('example.com', copy.exchangeHeaders, ORIGIN_EHL, now));
  for (let hop = 1; hop <= 2; hop++) {
    const [domain, forwarder] = HOPS[hop]!;
    const assertion = (message.envelope[0] as { 'jwt-assertion': string })['jwt-assertion'];
    const stored: Message = {
      envelope: [
        receiveBlock({
          messageId: '<bench@example.com>',
          assertion,
          senderDomain: HOPS[hop - 1]![0],
          receiverDomain: domain,
          date: new Date(now * 1000),
        }),
        ...message.envelope,
      ],
      body: message.body,
    };
    const fwd = prepareForward(stored, {
      date: new Date(now * 1000),
      forwardedFrom: forwarder,
      forwardedTo: HOPS[hop + 1]![1],
    });
    message = withAssertion(fwd.message, await sign(domain, fwd.exchangeHeaders, FORWARD_EHL, now));
  }
  const options = { trust, now: now + 60, mode: 'transfer' as const, body: message.body };
  const chain = await validateChain(message.envelope, options); // fills the key cache
  console.log(
    `chain: ${chain.hops.length} hops (${chain.hops.map((h) => h.senderDomain).join(' → ')}), ES256, keys cached`,
  );
  report([
    await measure('validateChain, 3 hops, transfer mode', () => validateChain(message.envelope, options), {
      iterations: 500,
      target: 1_500,
    }),
  ]);
}
