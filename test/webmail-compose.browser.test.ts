/**
 * The webmail's compose and notifications in a real browser (Debian's Chromium, driven by playwright-core)
 * on the local federation (issue 6), the parts the first browser test leaves out: a large attachment's
 * upload progress bar advances and the upload can be cancelled, after which neither the mailbox's blob
 * store nor the saved draft holds any of it; and new mail shows a system notification when the page is
 * in the background and notifications are allowed, not while it is in front.
 *
 * Chromium without a display cannot put a page in the background: `document.visibilityState` stays
 * `visible` for a minimized window (CDP Browser.setWindowBounds), a tab opened behind it
 * (Target.createTarget with background: true) and a tab opened over it (window.open). So the page is
 * told it is hidden (visibilityState redefined, visibilitychange dispatched). The notification itself is
 * real: Chromium shows it, and the service worker's registration lists it (getNotifications), so no
 * stand-in for Notification is needed.
 *
 * Also: a draft clicked in Drafts opens in the compose with what it holds, survives a reload once saved
 * again, and is sent from there; and signing out in one tab signs out the other tabs of the browser, whose
 * IndexedDB keeps no mail.
 *
 * And the keyboard focus where jsdom cannot show it, on a phone-sized screen (one pane at a time): an opened
 * conversation takes it on its heading, the list takes it back on that row; the forward dialog, shown
 * modal by the browser, starts in its field, and Escape gives it back to the button that opened it.
 *
 * And a message forwarded as a new one of the user's own, from the button to the recipient's inbox.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BrowserContext, Page } from 'playwright-core';
import { afterAll, describe, expect, it } from 'vitest';
import {
  CHROMIUM,
  demoUser,
  type ChromiumOnFederation,
  signInThroughForm,
  useChromiumOnFederation,
} from './webmail-browser-helpers.js';

const MIB = 1024 * 1024;
/** Large enough that its upload, slowed to UPLOAD_RATE, is seen advancing for several seconds. */
const BIG_SIZE = 48 * MIB;
/** Bytes per second: loopback would finish 48 MiB before a test could look at the bar twice. */
const UPLOAD_RATE = 4 * MIB;

const report: string[] = [];
let world: ChromiumOnFederation;
const user = (address: string) => demoUser(world.fed, address);

async function newContext(viewport = { width: 1280, height: 800 }): Promise<BrowserContext> {
  const c = await world.browser.newContext({ viewport });
  // The machine is shared: every wait may take a while, none is a measure.
  c.setDefaultTimeout(60_000);
  world.contexts.push(c);
  return c;
}

/** Signs in through the AS's login form, then reloads once so that the service worker controls the page. */
async function signIn(page: Page, address: string): Promise<void> {
  await signInThroughForm(page, user(address));
  await page.waitForFunction('navigator.serviceWorker.controller !== null');
  await page.reload();
  await page.getByRole('heading', { name: 'Inbox' }).waitFor();
}

async function send(page: Page, to: string, subject: string): Promise<void> {
  await page.getByRole('link', { name: 'Compose' }).click();
  await page.getByLabel('To', { exact: true }).fill(to);
  await page.getByLabel('Subject', { exact: true }).fill(subject);
  await page.getByLabel('Message', { exact: true }).fill(`About: ${subject}`);
  await page.getByRole('button', { name: /^Send/ }).click();
  await page.getByRole('heading', { name: 'Sent' }).waitFor();
}

/** Every file under `root`, with its size (the blob store's objects/, tmp/ and partial/). */
async function filesUnder(root: string): Promise<{ path: string; size: number }[]> {
  const out: { path: string; size: number }[] = [];
  for (const entry of await readdir(root, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile()) continue;
    const path = join(entry.parentPath, entry.name);
    out.push({ path, size: (await stat(path)).size });
  }
  return out;
}

/** The notifications Chromium shows for this origin, as its service worker registration lists them. */
function shownNotifications(page: Page): Promise<{ title: string; body: string; url: unknown }[]> {
  return page.evaluate(`(async () => {
    const registration = await navigator.serviceWorker.ready;
    return (await registration.getNotifications()).map((n) => ({ title: n.title, body: n.body, url: n.data?.url }));
  })()`);
}

// Debian's chromium is what .ci/run installs; no browser is ever downloaded, so without it there is none to drive.
describe.skipIf(!existsSync(CHROMIUM))('composing and notifications in Chromium on the local federation', () => {
  // Registered before the federation's hooks: the report is printed once everything is closed.
  afterAll(() => {
    if (report.length > 0) process.stdout.write(`\nwebmail compose browser test:\n  ${report.join('\n  ')}\n`);
  });
  world = useChromiumOnFederation('federizer-webmail-compose-');

  it('a large upload shows its progress, is cancelled, and leaves nothing in the mailbox or the draft, which reopens to be finished and sent', async () => {
    const subject = 'The raw footage, maybe';
    const blobs = join(world.dir, 'data', 'example.com', 'blobs');
    const big = join(world.dir, 'lake-raw.bin');
    // Random bytes: nothing on the way can make them smaller.
    await writeFile(big, randomBytes(BIG_SIZE));

    const context = await newContext();
    const page = await context.newPage();
    await signIn(page, 'alice@example.com');
    await page.getByRole('link', { name: 'Compose' }).click();
    await page.getByLabel('To', { exact: true }).fill('bob@example.net');
    await page.getByLabel('Subject', { exact: true }).fill(subject);
    await page.getByLabel('Message', { exact: true }).fill('Only the small note should go.');
    const fileInput = page.locator('input[type=file]');
    await fileInput.setInputFiles({ name: 'note.txt', mimeType: 'text/plain', buffer: Buffer.from('a small note') });
    const rows = page.locator('[data-testid=compose-attachment]');
    await expect.poll(() => page.locator('[data-testid=compose-attachment][data-status=done]').count()).toBe(1);
    const before = await filesUnder(blobs);

    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    await cdp.send('Network.emulateNetworkConditions', {
      offline: false,
      latency: 0,
      downloadThroughput: -1,
      uploadThroughput: UPLOAD_RATE,
    });
    // A path, not a buffer: playwright refuses buffers over 50 MB, and a file is what a person picks.
    await fileInput.setInputFiles(big);
    const bar = page.getByRole('progressbar', { name: 'Uploading lake-raw.bin' });
    await bar.waitFor();
    const valueNow = async () => Number(await bar.getAttribute('aria-valuenow'));
    const seen = [await valueNow()];
    await expect
      .poll(
        async () => {
          seen.push(await valueNow());
          return seen.at(-1)!;
        },
        { timeout: 60_000, interval: 100 },
      )
      // Five points at least: an advance, not a rounding.
      .toBeGreaterThanOrEqual(seen[0]! + 5);
    report.push(`upload progress seen (aria-valuenow): ${[...new Set(seen)].join(', ')}`);
    // It advanced, and is not done: there is something to cancel.
    expect(seen.at(-1)).toBeLessThan(100);
    expect(await bar.getAttribute('aria-valuetext')).toMatch(/^[\d.]+ (B|KiB|MiB) of 48 MiB$/);
    // The mailbox is receiving it: a put in progress in the blob store's tmp/.
    await expect.poll(async () => (await filesUnder(join(blobs, 'tmp'))).length).toBe(1);

    await page.getByRole('button', { name: 'Cancel the upload of lake-raw.bin' }).click();
    await expect.poll(() => rows.count()).toBe(1);
    expect(await rows.first().textContent()).toContain('note.txt');
    // The cancelled row's button is gone: focus moves to its neighbour, not to the page's body.
    expect(await page.evaluate('document.activeElement?.getAttribute("aria-label")')).toBe('Remove note.txt');
    await cdp.send('Network.emulateNetworkConditions', {
      offline: false,
      latency: 0,
      downloadThroughput: -1,
      uploadThroughput: -1,
    });

    // The mailbox dropped the partial put and stored nothing of it.
    await expect.poll(async () => (await filesUnder(join(blobs, 'tmp'))).length, { timeout: 30_000 }).toBe(0);
    const after = await filesUnder(blobs);
    expect(after.filter((f) => f.size >= MIB)).toEqual([]);
    expect(after.filter((f) => !before.some((b) => b.path === f.path)).every((f) => f.size < MIB)).toBe(true);

    // Leaving the compose saves the draft; it lists the note and nothing of the cancelled file.
    await page.getByRole('link', { name: /^Drafts/ }).click();
    const draft = page.getByRole('option', { name: new RegExp(subject) });
    await draft.waitFor({ timeout: 60_000 });
    await draft.click();
    // A draft opens in the compose, to be finished: what was written, and the note, nothing of the cancelled file.
    await page.getByRole('heading', { name: 'Edit draft' }).waitFor();
    expect(await page.getByLabel('To', { exact: true }).inputValue()).toBe('bob@example.net');
    expect(await page.getByLabel('Subject', { exact: true }).inputValue()).toBe(subject);
    const text = page.getByLabel('Message', { exact: true });
    expect(await text.inputValue()).toBe('Only the small note should go.');
    expect(await rows.allTextContents()).toEqual([expect.stringContaining('note.txt')]);
    expect(await page.getByText('lake-raw.bin').count()).toBe(0);

    // Changed, it saves itself again, and the address follows the saved draft (the mailbox gives each saved
    // version a new id): a reload reopens it as saved, not the replaced id, which "cannot be opened".
    const hash = async () => String(await page.evaluate('location.hash'));
    const opened = await hash();
    expect(opened).toMatch(/^#\/compose\?draft=/);
    await text.fill('Only the small note should go. Finished.');
    await expect.poll(hash, { timeout: 60_000 }).not.toBe(opened);
    expect(await hash()).toMatch(/^#\/compose\?draft=/);
    await page.reload();
    await page.getByRole('heading', { name: 'Edit draft' }).waitFor();
    expect(await page.getByRole('alert').count()).toBe(0);
    expect(await text.inputValue()).toBe('Only the small note should go. Finished.');
    expect(await rows.allTextContents()).toEqual([expect.stringContaining('note.txt')]);
    // Then it is sent from here, and leaves the Drafts.
    await page.getByRole('button', { name: /^Send/ }).click();
    await page.getByRole('heading', { name: 'Sent' }).waitFor();
    await page.getByRole('option', { name: new RegExp(subject) }).click();
    const sent = page.getByRole('article', { name: /Message from alice@example\.com/ });
    await sent.getByText('Only the small note should go. Finished.').waitFor({ timeout: 60_000 });
    await sent.getByText('note.txt').first().waitFor();
    await page.getByRole('link', { name: /^Drafts/ }).click();
    await page.getByText('No conversations here.').waitFor();
  }, 300_000);

  it('signing out in one tab signs out the others, which forget the mail they showed', async () => {
    const context = await newContext();
    const first = await context.newPage();
    await signIn(first, 'alice@example.com');
    // Alice has sent mail (the first test), and received none.
    await first.getByRole('link', { name: /^Sent/ }).click();
    await first.getByRole('option').first().waitFor({ timeout: 60_000 });
    const second = await context.newPage();
    await second.goto(user('alice@example.com').webmailUrl);
    await second.getByRole('heading', { name: 'Inbox' }).waitFor();
    await second.getByRole('link', { name: /^Sent/ }).click();
    await second.getByRole('option').first().waitFor({ timeout: 60_000 });

    await first.getByRole('button', { name: 'Sign out' }).click();
    await second.getByRole('button', { name: 'Sign in' }).waitFor({ timeout: 30_000 });
    await second.getByText('You signed out in another tab.').waitFor();
    expect(await second.getByRole('option').count()).toBe(0);
    // IndexedDB, shared by the tabs, holds no mail and no session.
    const left = await second.evaluate(`new Promise((resolve, reject) => {
      const open = indexedDB.open('federizer-webmail');
      open.onerror = () => reject(open.error);
      open.onsuccess = () => {
        const t = open.result.transaction(['summaries', 'messages', 'kv']);
        const counts = {};
        let pending = 3;
        for (const name of ['summaries', 'messages', 'kv']) {
          const r = t.objectStore(name).count();
          r.onsuccess = () => {
            counts[name] = r.result;
            if (--pending === 0) { open.result.close(); resolve(counts); }
          };
        }
      };
    })`);
    expect(left).toEqual({ summaries: 0, messages: 0, kv: expect.any(Number) });
    const keys = (await second.evaluate(`new Promise((resolve) => {
      const open = indexedDB.open('federizer-webmail');
      open.onsuccess = () => {
        const r = open.result.transaction('kv').objectStore('kv').getAllKeys();
        r.onsuccess = () => { open.result.close(); resolve(r.result); };
      };
    })`)) as string[];
    expect(keys).not.toContain('auth');
    expect(keys).not.toContain('sync');
  }, 300_000);

  it('new mail shows a system notification while the page is in the background, and none while in front', async () => {
    const bobContext = await newContext();
    await bobContext.grantPermissions(['notifications'], { origin: user('bob@example.net').webmailUrl });
    const bob = await bobContext.newPage();
    await signIn(bob, 'bob@example.net');
    expect(await bob.evaluate('Notification.permission')).toBe('granted');
    const alice = await (await newContext()).newPage();
    await signIn(alice, 'alice@example.com');

    // In front: the mail shows, the title counts it, and no notification is shown.
    await send(alice, 'bob@example.net', 'Seen at once');
    await bob.getByRole('option', { name: /Seen at once/ }).waitFor({ timeout: 60_000 });
    expect(await shownNotifications(bob)).toEqual([]);

    await bob.evaluate(`(() => {
      Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
      Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
      document.dispatchEvent(new Event('visibilitychange'));
    })()`);
    await send(alice, 'bob@example.net', 'Seen in the background');
    await bob.getByRole('option', { name: /Seen in the background/ }).waitFor({ timeout: 60_000 });
    await expect.poll(() => shownNotifications(bob), { timeout: 30_000 }).toHaveLength(1);
    const [shown] = await shownNotifications(bob);
    expect(shown).toEqual({
      title: 'alice@example.com',
      body: 'Seen in the background',
      url: expect.stringMatching(/^\/#\/inbox\/thread\/\S+$/),
    });
  }, 300_000);

  it('on a phone, the focus goes into the conversation opened, back to its row, and into and out of the forward dialog', async () => {
    const subject = 'Where does the focus go';
    const alice = await (await newContext()).newPage();
    await signIn(alice, 'alice@example.com');
    await send(alice, 'bob@example.net', subject);
    const bob = await (await newContext({ width: 375, height: 740 })).newPage();
    await signIn(bob, 'bob@example.net');
    /** The focused element, told by its role or tag, and its name. */
    const focused = () =>
      bob.evaluate(`(() => {
        const el = document.activeElement;
        const row = el?.getAttribute('aria-activedescendant');
        return [
          el?.getAttribute('role') ?? el?.tagName.toLowerCase(),
          (row ? document.getElementById(row)?.getAttribute('aria-label') : el?.getAttribute('aria-label')) ??
            el?.getAttribute('name') ?? el?.textContent.trim(),
          el?.closest('dialog') !== null,
        ].join(' | ');
      })()`);

    const row = bob.getByRole('option', { name: new RegExp(subject) });
    await row.click({ timeout: 60_000 });
    const message = bob.getByRole('article', { name: /Message from alice@example\.com/ });
    await message.getByText(`About: ${subject}`).waitFor({ timeout: 60_000 });
    expect(await focused()).toBe(`h2 | ${subject} | false`);
    // The list was hidden while reading; back, it is shown and has the focus, on the row just read.
    await bob.getByRole('button', { name: 'Back to the list' }).click();
    await expect.poll(focused).toMatch(new RegExp(`^listbox \\| .*${subject}.* \\| false$`));

    await bob.keyboard.press('Enter');
    await message.getByRole('button', { name: 'Forward', exact: true }).click();
    const dialog = bob.getByRole('dialog', { name: /Forward/ });
    await dialog.waitFor();
    await expect.poll(focused).toBe('input | forward-to | true');
    // Modal: Tab goes through the dialog's controls, not to the page behind it.
    await bob.keyboard.press('Tab');
    expect(await focused()).toBe('button | Cancel | true');
    await bob.keyboard.press('Tab');
    expect(await focused()).toBe('button | Forward | true');
    await bob.keyboard.press('Shift+Tab');
    await bob.keyboard.press('Shift+Tab');
    expect(await focused()).toBe('input | forward-to | true');
    await bob.keyboard.press('Escape');
    await dialog.waitFor({ state: 'detached' });
    await expect.poll(focused).toBe('button | Forward | false');
    // Escape again, outside the dialog: back to the list, on that row.
    await bob.keyboard.press('Escape');
    await expect.poll(focused).toMatch(new RegExp(`^listbox \\| .*${subject}.* \\| false$`));
  }, 300_000);

  it('forwards a message as a new one of the user’s own: the original quoted below, the recipient to choose', async () => {
    const subject = 'The minutes, for Bobby too';
    const alice = await (await newContext()).newPage();
    await signIn(alice, 'alice@example.com');
    await send(alice, 'bob@example.net', subject);
    const bob = await (await newContext()).newPage();
    await signIn(bob, 'bob@example.net');
    await bob.getByRole('option', { name: new RegExp(subject) }).click({ timeout: 60_000 });
    const message = bob.getByRole('article', { name: /Message from alice@example\.com/ });
    await message.getByText(`About: ${subject}`).waitFor({ timeout: 60_000 });

    await message.getByRole('button', { name: 'Forward as new message' }).click();
    await bob.getByRole('heading', { name: 'Forward as a new message' }).waitFor();
    expect(await bob.getByLabel('Subject', { exact: true }).inputValue()).toBe(`Fwd: ${subject}`);
    const text = bob.getByLabel('Message', { exact: true });
    await expect
      .poll(() => text.inputValue())
      .toMatch(
        new RegExp(
          `^\\n\\n---------- Forwarded message ----------\\nFrom: alice@example\\.com\\n[^]*\\nAbout: ${subject}$`,
        ),
      );
    // To is empty: the writing starts there.
    expect(await bob.evaluate('document.activeElement?.getAttribute("name")')).toBe('to');
    await bob.keyboard.type('bobby@example.org');
    await text.press('Control+Home');
    await text.pressSequentially('For you as well.');
    await bob.getByRole('button', { name: /^Send/ }).click();
    await bob.getByRole('heading', { name: 'Sent' }).waitFor();

    // Bobby has it from Bob, with Bob's words above Alice's.
    const bobby = await (await newContext()).newPage();
    await signIn(bobby, 'bobby@example.org');
    await bobby.getByRole('option', { name: new RegExp(`Fwd: ${subject}`) }).click({ timeout: 60_000 });
    const copy = bobby.getByRole('article', { name: /Message from bob@example\.net/ });
    await copy.getByText(/^For you as well\.\s+---------- Forwarded message ----------/).waitFor({ timeout: 60_000 });
  }, 300_000);
});
