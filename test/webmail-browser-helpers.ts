/**
 * What the webmail's browser tests share: the local federation that `npm start` runs, in a temporary
 * folder, with Debian's Chromium (driven by playwright-core) on it, and the sign-in through the AS's form.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll } from 'vitest';
import {
  WEBMAIL_ROOT,
  ensureWebmailBuilt,
  startLocalFederation,
  type LocalFederation,
} from '../services/cli/src/federation/index.js';

/** Debian's chromium is what .ci/run installs; no browser is ever downloaded. */
export const CHROMIUM = '/usr/bin/chromium';

export interface ChromiumOnFederation {
  /** The temporary folder; the federation's data is in `data/` below it. */
  dir: string;
  fed: LocalFederation;
  browser: Browser;
  /** Contexts a test opens, closed after the suite. */
  readonly contexts: BrowserContext[];
}

export interface DemoUser {
  address: string;
  password: string;
  domain: string;
  webmailUrl: string;
}

/**
 * Registers, in the calling suite, the hooks that build the webmail, start the federation and Chromium, and
 * close them all after it. afterAll hooks the suite registers before this call run after the clean-up.
 */
export function useChromiumOnFederation(tmpPrefix: string): ChromiumOnFederation {
  const world = { contexts: [] as BrowserContext[] } as ChromiumOnFederation;
  beforeAll(async () => {
    const build = await ensureWebmailBuilt(WEBMAIL_ROOT);
    if (build.status === 'failed' || build.status === 'skipped') throw new Error(`webmail build: ${build.reason}`);
    world.dir = await mkdtemp(join(tmpdir(), tmpPrefix));
    world.fed = await startLocalFederation({
      dataDir: join(world.dir, 'data'),
      portBase: 0,
      processes: false,
      logLevel: 'error',
    });
    world.browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  }, 180_000);
  afterAll(async () => {
    for (const c of world.contexts) await c.close().catch(() => undefined);
    await world.browser?.close();
    await world.fed?.close();
    if (world.dir) await rm(world.dir, { recursive: true, force: true });
  });
  return world;
}

export function demoUser(fed: LocalFederation, address: string): DemoUser {
  const u = fed.users.find((x) => x.address === address);
  if (!u) throw new Error(`${address} is not a demo user of the federation`);
  return { address, password: u.password, domain: u.domain, webmailUrl: fed.domains[u.domain]!.webmailUrl };
}

/** Signs in the way a person does: the webmail's button, the AS's own login form, back to the app's Inbox. */
export async function signInThroughForm(page: Page, user: DemoUser): Promise<void> {
  await page.goto(user.webmailUrl);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByLabel('Email address').fill(user.address);
  await page.getByLabel('Password').fill(user.password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Inbox' }).waitFor();
}
