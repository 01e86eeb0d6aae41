/**
 * The part of the protocol library that runs in a browser: address lists, media types, the message model
 * and its errors. The package's main entry also carries digests, JWTs and DPoP on node:crypto, which a web
 * page must not bundle; the webmail imports this entry so it parses addresses exactly as the mailbox does.
 */
export * from './address.js';
export * from './errors.js';
export * from './message.js';
export * from './mime.js';
