/** `federizer mailbox` is configured by the environment (readMailboxEnv); the operator's builders feed it too. */
import { describe, expect, it } from 'vitest';
import { DEFAULT_SHARE_WINDOW_SECONDS } from '@federizer/protocol';
import { readMailboxEnv } from './config.js';

const ENV = {
  FEDERIZER_DOMAIN: 'example.com',
  FEDERIZER_MAILBOX_PUBLIC_URL: 'https://mail.example.com',
  FEDERIZER_AUTH_ISSUER: 'https://as.example.com',
  FEDERIZER_MAILBOX_BLOB_DIR: '/data/blobs',
  FEDERIZER_AUTH_ADMIN_TOKEN: 'admin-token-0123456789',
  // Development mode lets the MTA authenticate with a secret, so no key need be made here.
  FEDERIZER_DEV: '1',
  FEDERIZER_MTA_CLIENT_SECRET: 'mta-secret-0123456789',
};

describe('readMailboxEnv', () => {
  it('reads the share window as the AS does (FEDERIZER_SHARE_WINDOW), 7 days when unset', () => {
    expect(readMailboxEnv(ENV).config.shareWindowSeconds).toBe(DEFAULT_SHARE_WINDOW_SECONDS);
    expect(DEFAULT_SHARE_WINDOW_SECONDS).toBe(7 * 86400);
    expect(readMailboxEnv({ ...ENV, FEDERIZER_SHARE_WINDOW: '30d' }).config.shareWindowSeconds).toBe(30 * 86400);
    expect(readMailboxEnv({ ...ENV, FEDERIZER_SHARE_WINDOW: '36h' }).config.shareWindowSeconds).toBe(36 * 3600);
    expect(() => readMailboxEnv({ ...ENV, FEDERIZER_SHARE_WINDOW: '2 weeks' })).toThrow(
      'FEDERIZER_SHARE_WINDOW must be a duration like 3600, 90s, 30m, 6h or 1d, not "2 weeks"',
    );
    expect(() => readMailboxEnv({ ...ENV, FEDERIZER_SHARE_WINDOW: '0' })).toThrow(
      'shareWindowSeconds must be a whole number of seconds >= 1, not 0',
    );
  });

  it('needs the AS admin token: without it no recipient could be looked up', () => {
    expect(readMailboxEnv(ENV).secrets.authAdminToken).toBe('admin-token-0123456789');
    expect(() => readMailboxEnv({ ...ENV, FEDERIZER_AUTH_ADMIN_TOKEN: '' })).toThrow(
      'FEDERIZER_AUTH_ADMIN_TOKEN is required',
    );
  });
});
