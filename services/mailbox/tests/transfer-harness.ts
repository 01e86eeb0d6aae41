/**
 * The transfer endpoint of example.net over real HTTP, fed by real assertions: the AS harness runs the ASes
 * of example.com and example.net behind a real DNS server (`_federizer._as._tcp` / `_rs._tcp` SRV records, a
 * `/.well-known/federizer` per domain publishing its `mta_client_id`); alice@example.com signs in through
 * the login form and example.com's MTA exchanges her access token for the assertion A1 of each copy that
 * `prepareSend` makes (PROTOCOL.md §4). The endpoint runs on its own port with the mailbox stores on a test
 * database and a `Discovery` over the harness DNS.
 *
 * To break exactly one rule, an assertion can be re-signed with example.com's real signing key
 * (`resign`), and every part of the request (token, proof, body) can be replaced (`post`).
 */
import { KeyObject, sign } from 'node:crypto';
import express, { type NextFunction, type Request, type Response as ExpressResponse } from 'express';
import { type CryptoKey, type JWTPayload } from 'jose';
import type { Knex } from 'knex';
import { KnexReplayStore, createKnex, listen, migrateLatest, type HttpClient } from '@federizer/common';
import {
  contentId,
  createDpopProof,
  decodeJwt,
  externalContentType,
  headerValue,
  prepareForward,
  prepareSend,
  receiveBlock,
  validateMessage,
  withAssertion,
  type CreateDpopProofOptions,
  type DpopKey,
  type Header,
  type HeadersBlock,
  type JwsAlg,
  type Message,
  type OutgoingCopy,
  type Part,
  dpopKeyOf,
} from '@federizer/protocol';
import type { TestDatabase } from '../../common/src/testing/databases.js';
import { freePort, hostOf, startFederation, type Federation, type TestDomain } from '../../auth/tests/harness.js';
import { MtaClient, federationDiscovery, forwardParams, signIn, testHttp } from '../../auth/tests/exchange-client.js';
import {
  AccountStore,
  JobQueue,
  MAILBOX_MIGRATIONS_TABLE,
  MessageStore,
  TransferLog,
  mailboxMigrations,
} from '../src/index.js';
import { TRANSFER_PATH, transferRouter, type TransferDeps } from '../src/federation/transfer.js';
import { documented } from './openapi-check.js';

export const USERS_OF_EXAMPLE_NET = ['bob@example.net', 'carol@example.net'];
/** Small, so that an oversized body is cheap to send. */
export const MAX_MESSAGE_BYTES = 64 * 1024;

export interface DraftSpec {
  readonly messageId: string;
  readonly from?: string;
  readonly to?: string;
  readonly cc?: string;
  readonly bcc?: string;
  readonly subject?: string;
  readonly threadId?: string;
  /** Resource texts, one leaf each; a text may repeat (the same Content-ID twice). */
  readonly resources?: readonly string[];
}

/** One copy as MTA1 sends it: the message with A1 on top, and the DPoP key A1 is bound to. */
export interface Sent {
  readonly copy: OutgoingCopy;
  readonly message: Message;
  readonly token: string;
  readonly key: DpopKey;
}

export interface PostOptions {
  /** The message to post; the sent one by default. */
  readonly message?: Message;
  /** The `Authorization: DPoP` token; `envelope[0]`'s assertion by default. */
  readonly token?: string;
  /** The proof; `null` sends none. By default a fresh proof for POST to the endpoint, with the token's ath. */
  readonly proof?: string | null;
  /** Changes to the default proof. */
  readonly proofOptions?: Partial<CreateDpopProofOptions> & { readonly key?: DpopKey };
  /** Replaces the JSON body. */
  readonly body?: string | Uint8Array;
  /** Where the request goes; the endpoint's public URL by default. */
  readonly url?: string;
  /** The endpoint's public URL the proof names by default. */
  readonly endpoint?: string;
  /** More request headers (a Content-Encoding). */
  readonly headers?: Record<string, string>;
}

export interface TransferApp {
  readonly publicUrl: string;
  readonly endpoint: string;
  /** The same endpoint addressed by IP, not by its public name. */
  readonly loopbackEndpoint: string;
  close(): Promise<void>;
}

export interface TransferHarness {
  readonly fed: Federation;
  readonly com: TestDomain;
  readonly http: HttpClient;
  readonly knex: Knex;
  readonly messages: MessageStore;
  readonly transfers: TransferLog;
  readonly jobs: JobQueue;
  readonly accounts: AccountStore;
  readonly app: TransferApp;
  /** What the forwarding hook answers for a recipient (true by default). */
  keep: (address: string) => boolean;
  /** Calls of `onReceived`, in order. */
  readonly received: { address: string; messageId: string; created: boolean }[];
  /** The deps every app of this harness shares; `startApp` may change some. */
  deps(publicUrl: string, overrides?: Partial<TransferDeps>): TransferDeps;
  startApp(overrides?: Partial<TransferDeps>): Promise<TransferApp>;
  /** A draft of alice's, turned into its copies; A1 obtained for the copy `which` (0: the To/Cc copy). */
  send(spec: DraftSpec, which?: number): Promise<Sent>;
  /**
   * §7: `forwardedFrom` (a user of example.com) forwards a copy that example.com received: its receive block
   * grown into the forward block H1, and A2 from example.com's AS on top: `[A2, H1, A1, H0]`.
   */
  forward(sent: Sent, forwardedFrom: string, forwardedTo: string): Promise<Sent>;
  /** The assertion with header or claims changed, signed again with example.com's real key. */
  resign(token: string, change: { header?: Record<string, unknown>; claims?: JWTPayload }): Promise<string>;
  post(sent: Sent, options?: PostOptions): Promise<Response>;
  close(): Promise<void>;
}

export function draft(spec: DraftSpec): Message {
  const headers: Header[] = [
    { 'Message-ID': spec.messageId },
    { From: spec.from ?? 'Alice <alice@example.com>' },
    ...(spec.to === undefined ? [] : [{ To: spec.to }]),
    ...(spec.cc === undefined ? [] : [{ Cc: spec.cc }]),
    ...(spec.bcc === undefined ? [] : [{ Bcc: spec.bcc }]),
    { Subject: spec.subject ?? 'Transfer test' },
    ...(spec.threadId === undefined ? [] : [{ 'X-Thread-ID': spec.threadId }]),
  ];
  const texts = spec.resources ?? [`Hello from ${spec.messageId}`];
  const parts: Part[] = texts.map((text, i): Part => ({
    headers: [
      { 'Content-Disposition': i === 0 ? 'inline' : `attachment; filename="part-${i}.txt"` },
      { 'Content-ID': contentId(text) },
      { 'Content-Type': externalContentType(Buffer.byteLength(text), 'text/plain; charset=UTF-8') },
    ],
  }));
  return validateMessage({ envelope: [{ headers }], body: { parts } });
}

export async function startTransferHarness(database: TestDatabase): Promise<TransferHarness> {
  const fed = await startFederation(['example.com', 'example.net'], { database: database.create });
  const cleanups: (() => Promise<unknown>)[] = [() => fed.close()];
  try {
    const com = fed.domains['example.com']!;
    await com.createUser('alice@example.com', 'alice password', { displayName: 'Alice' });
    // §7: zed forwards (the AS's forwarding policy allows it).
    await com.createUser('zed@example.com', 'zed password', { displayName: 'Zed', forwardingPolicy: 'any' });
    const http = testHttp();
    cleanups.push(() => http.close());
    const session = await signIn(com, http, 'alice@example.com', 'alice password');
    const mta = await MtaClient.connect(com, http);

    const db = await database.create();
    cleanups.push(() => db.destroy());
    const knex = createKnex(db.config);
    cleanups.push(() => knex.destroy());
    await migrateLatest(knex, mailboxMigrations, MAILBOX_MIGRATIONS_TABLE);
    const messages = new MessageStore(knex);
    const transfers = new TransferLog(knex);
    const jobs = new JobQueue(knex);
    const accounts = new AccountStore(knex);
    const replay = new KnexReplayStore(knex, { table: 'mail_replay' });
    const trust = federationDiscovery(fed, http);
    const received: TransferHarness['received'] = [];

    const harness: TransferHarness = {
      fed,
      com,
      http,
      knex,
      messages,
      transfers,
      jobs,
      accounts,
      app: undefined as unknown as TransferApp,
      keep: () => true,
      received,
      deps(publicUrl, overrides = {}) {
        return {
          config: { domain: 'example.net', publicUrl, maxMessageBytes: MAX_MESSAGE_BYTES },
          trust,
          replay,
          messages,
          transfers,
          jobs,
          accounts,
          recipientExists: async (address) => USERS_OF_EXAMPLE_NET.includes(address),
          onReceived: (address, messageId, _envelope, stored) => {
            received.push({ address, messageId, created: stored.created });
            return { keep: harness.keep(address) };
          },
          ...overrides,
        };
      },
      async startApp(overrides = {}) {
        const port = await freePort();
        const publicUrl = `http://${hostOf('mail', 'example.net')}:${port}`;
        const app = express();
        app.use(TRANSFER_PATH, transferRouter(harness.deps(publicUrl, overrides)));
        app.use((err: Error, _req: Request, res: ExpressResponse, _next: NextFunction) => {
          res.status(500).json({ error: 'server_error', error_description: err.stack ?? err.message });
        });
        const server = await listen(app, { port });
        cleanups.push(() => server.close(100));
        return {
          publicUrl,
          endpoint: `${publicUrl}${TRANSFER_PATH}`,
          loopbackEndpoint: `${server.url}${TRANSFER_PATH}`,
          close: () => server.close(100),
        };
      },
      async send(spec, which = 0) {
        const copy = prepareSend(draft(spec), { date: new Date() })[which]!;
        const a1 = await mta.send(session.accessToken, copy.exchangeHeaders);
        return {
          copy,
          message: withAssertion(copy.message, a1.token),
          token: a1.token,
          key: await dpopKeyOf(a1.dpopKey),
        };
      },
      async forward(sent, forwardedFrom, forwardedTo) {
        const messageId = headerValue((sent.message.envelope[1] as HeadersBlock).headers, 'Message-ID')!;
        const stored: Message = {
          envelope: [
            receiveBlock({
              messageId,
              assertion: sent.token,
              senderDomain: 'example.com',
              receiverDomain: 'example.com',
              date: new Date(),
            }),
            ...sent.message.envelope,
          ],
          body: sent.message.body,
        };
        const prepared = prepareForward(stored, { date: new Date(), forwardedFrom, forwardedTo });
        const a2 = await mta.exchange(
          forwardParams(prepared.subjectAssertion, prepared.exchangeHeaders, 'example.com'),
        );
        return {
          copy: sent.copy,
          message: withAssertion(prepared.message, a2.token),
          token: a2.token,
          key: await dpopKeyOf(a2.dpopKey),
        };
      },
      async resign(token, change) {
        const { header, payload } = decodeJwt(token);
        const signing = com.as.keys.keys.find((k) => k.kid === header.kid)!;
        const input = `${b64({ ...header, ...change.header })}.${b64({ ...payload, ...change.claims })}`;
        return `${input}.${signInput(input, signing.privateKey, signing.alg)}`;
      },
      async post(sent, options = {}) {
        const message = options.message ?? sent.message;
        const first = message.envelope[0];
        const token = options.token ?? (first !== undefined && 'jwt-assertion' in first ? first['jwt-assertion'] : '');
        const { key, ...proofChanges } = options.proofOptions ?? {};
        const proof =
          options.proof === undefined
            ? await createDpopProof(key ?? sent.key, {
                htm: 'POST',
                htu: options.endpoint ?? harness.app.endpoint,
                accessToken: token,
                ...proofChanges,
              })
            : options.proof;
        const url = options.url ?? options.endpoint ?? harness.app.endpoint;
        const res = await http.fetch(url, {
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            authorization: `DPoP ${token}`,
            ...(proof === null ? {} : { dpop: proof }),
            ...options.headers,
          },
          body: options.body ?? JSON.stringify({ message }),
        });
        return documented('POST', url, res);
      },
      async close() {
        for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
      },
    };
    (harness as { app: TransferApp }).app = await harness.startApp();
    return harness;
  } catch (e) {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    throw e;
  }
}

function b64(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

/** The JWS signature of a signing input (RFC 7515 §5.1), in the JOSE form of its algorithm (RFC 7518 §3.4). */
function signInput(input: string, key: CryptoKey, alg: JwsAlg): string {
  const keyObject = KeyObject.from(key);
  const data = Buffer.from(input, 'ascii');
  const signature =
    alg === 'ES256'
      ? sign('sha256', data, { key: keyObject, dsaEncoding: 'ieee-p1363' })
      : sign(alg === 'EdDSA' ? null : 'sha256', data, keyObject);
  return signature.toString('base64url');
}
