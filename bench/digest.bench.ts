/**
 * Digests and parsing of a realistic 20-resource message: nested multipart, Unicode filenames, Content-IDs of
 * real random bytes. Target: Body-Digest at ≥ 20,000 messages/s on one core.
 */
import { randomBytes } from 'node:crypto';
import {
  bodyDigest,
  contentId,
  digestReport,
  externalContentType,
  formatDate,
  messageToJson,
  parseMessage,
  recipientsDigest,
  type Body,
  type Header,
  type Message,
  type Part,
} from '@federizer/protocol';
import { measure, report } from './lib.js';

const h = (name: string, value: string | readonly [string, string]): Header => ({ [name]: value });

function leaf(mediaType: string, size: number, disposition: string, extra: Header[] = []): Part {
  return {
    headers: [
      h('Content-Disposition', disposition),
      h('Content-ID', contentId(randomBytes(size))),
      h('Content-Type', externalContentType(size, mediaType)),
      ...extra,
    ],
  };
}

const multipart = (type: string, parts: Part[]): Part => ({ headers: [h('Content-Type', type)], parts });
const attachment = (name: string) => `attachment; filename="${name.replace(/[\\"]/g, '\\$&')}"`;

/** 20 leaf parts (External Resources) in 4 multipart containers, 3 levels deep. */
function makeBody(): Body {
  return {
    parts: [
      multipart('multipart/mixed', [
        multipart('multipart/alternative', [
          leaf('text/plain; charset=utf-8', 2_431, 'inline'),
          multipart('multipart/related; type="text/html"', [
            leaf('text/html; charset=utf-8', 18_902, 'inline'),
            leaf('image/png', 4_812, 'inline; filename="logo.png"'),
            leaf('image/png', 12_330, 'inline; filename="banner@2x.png"'),
            leaf('image/jpeg', 7_004, 'inline; filename="signature.jpg"'),
          ]),
        ]),
        leaf('application/pdf', 1_482_113, attachment('Angebot 2025 – Müller & Söhne GmbH.pdf'), [
          h('Content-Description', 'Angebot (unterschrieben)'),
        ]),
        leaf(
          'application/vnd.openxmlformats-officedocument.spreadsheetml.sheet',
          88_412,
          attachment('Übersicht Q4 "final".xlsx'),
        ),
        leaf(
          'application/vnd.openxmlformats-officedocument.wordprocessingml.document',
          41_207,
          attachment('Protokoll_2024-12-22.docx'),
        ),
        leaf('image/jpeg', 2_811_530, attachment('IMG_20241222_204935.jpg')),
        leaf('image/heic', 1_930_044, attachment('写真 (1).heic'), [h('Content-Language', 'ja')]),
        leaf('application/zip', 904_118, attachment('source-code.zip')),
        leaf('text/csv; charset=utf-8', 12_009, attachment('contacts.csv')),
        leaf('application/pdf', 230_771, attachment('Facture n° 2024-1187.pdf'), [h('Content-Language', 'fr')]),
        leaf('audio/ogg; codecs=opus', 311_402, attachment('Sprachnachricht.ogg')),
        leaf('video/mp4', 4_790_218, attachment('demo.mp4')),
        leaf('application/pgp-keys', 3_104, attachment('0xA1B2C3D4.asc')),
        leaf('text/plain; charset=utf-8', 844, attachment('README.txt')),
        leaf('message/rfc822', 58_330, attachment('Fwd: Re: Vertrag.eml')),
        multipart('multipart/mixed', [
          leaf('text/calendar; method=REQUEST; charset=utf-8', 2_203, 'inline'),
          leaf('application/ics', 2_203, attachment('invite.ics')),
        ]),
      ]),
    ],
  };
}

function countParts(parts: readonly Part[]): { leaves: number; containers: number } {
  let leaves = 0;
  let containers = 0;
  for (const p of parts) {
    if (p.parts === undefined) leaves++;
    else {
      containers++;
      const inner = countParts(p.parts);
      leaves += inner.leaves;
      containers += inner.containers;
    }
  }
  return { leaves, containers };
}

/** A JWS-shaped assertion (header and claims as the protocol writes them; the signature is random bytes). */
function assertion(): string {
  const enc = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const now = 1_734_896_975;
  return [
    enc({ alg: 'ES256', typ: 'eh+jwt', kid: 'as1-2024-12' }),
    enc({
      iss: 'https://as.example.com',
      azp: 'mta.example.com',
      scope: 'internet_mail',
      cnf: { jkt: randomBytes(32).toString('base64url') },
      eh: {
        eht: randomBytes(32).toString('base64url'),
        ehl: ['Message-ID', 'From', 'Recipients-Digest', 'Body-Digest'],
      },
      iat: now,
      exp: now + 7 * 86_400,
      jti: randomBytes(16).toString('base64url'),
    }),
    randomBytes(64).toString('base64url'),
  ].join('.');
}

function makeOriginCopy(body: Body): Message {
  const addressing: Header[] = [
    h('Message-ID', `<${randomBytes(12).toString('base64url')}@example.com>`),
    h('From', 'Jürgen Müller <juergen.mueller@example.com>'),
    h('To', '"Smith, Anna" <anna.smith@example.net>, 山田 太郎 <taro@example.org>'),
    h('Cc', 'Zoë Saldaña <zoe@example.net>, team@example.com'),
    h('Subject', 'Angebot 2025 / 見積書 — bitte bis Freitag prüfen ✔'),
  ];
  return {
    envelope: [
      { 'jwt-assertion': assertion() },
      {
        headers: [
          h('Date', formatDate(new Date('2024-12-22T19:49:35Z'), 60)),
          h('Recipients-Digest', recipientsDigest(addressing, 'origin')),
          h('Body-Digest', bodyDigest(body)),
          ...addressing,
        ],
      },
    ],
    body,
  };
}

export async function run(): Promise<void> {
  const body = makeBody();
  const message = makeOriginCopy(body);
  const json = messageToJson(message);
  const { leaves, containers } = countParts(body.parts);
  console.log(
    `message: ${leaves} leaf parts + ${containers} multipart containers, ` +
      `${Buffer.byteLength(json).toLocaleString('en-US')} bytes of JSON (body ${Buffer.byteLength(JSON.stringify(body)).toLocaleString('en-US')})`,
  );

  const results = [
    await measure('Body-Digest (JCS + SHA-256 of the body)', () => bodyDigest(message.body), {
      iterations: 4_000,
      target: 20_000,
    }),
    await measure('parseMessage + validate, from JSON', () => parseMessage(json, { format: 'json' }), {
      iterations: 800,
    }),
    await measure('digestReport of the origin copy', () => digestReport(message), { iterations: 4_000 }),
  ];
  report(results);
}
