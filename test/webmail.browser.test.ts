/**
 * The webmail in a real browser (Debian's Chromium, driven by playwright-core) on the local federation
 * that `npm start` runs (issue 6): Alice signs in and writes to Bob with a photo and a short video;
 * Bob, signed in in another browser context, sees it arrive without a reload, opens it, the photo
 * shows and the video seeks while it streams through the service worker (Range requests signed with
 * DPoP); Bob forwards it to bobby@example.org, who sees it too, on a 375 px wide screen. Screenshots
 * of the main views go to test-artifacts/webmail/; the time until the inbox is usable is printed.
 */
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CHROMIUM,
  demoUser,
  type ChromiumOnFederation,
  signInThroughForm,
  useChromiumOnFederation,
} from './webmail-browser-helpers.js';
import { iconPng } from '../webmail/build/icons.js';

const ARTIFACTS = join(import.meta.dirname, '..', 'test-artifacts', 'webmail');
const SUBJECT = 'Photo and video from the lake';

const report: string[] = [];
let world: ChromiumOnFederation;

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: false });
}

/**
 * Signs in the way a person does: the webmail's button, the AS's own login form, back to the app.
 * Returns the milliseconds from the start of the page's navigation to a usable inbox.
 */
async function signIn(page: Page, address: string): Promise<number> {
  await signInThroughForm(page, demoUser(world.fed, address));
  await page
    .getByRole('listbox', { name: 'Conversations in Inbox' })
    .or(page.getByText('No conversations here.'))
    .waitFor();
  // The service worker controls the pages loaded after its first visit: resources then stream through it.
  await page.waitForFunction('navigator.serviceWorker.controller !== null');
  // A fresh load, measured: from navigation start to the inbox shown from IndexedDB and synced.
  await page.reload();
  await page.getByRole('heading', { name: 'Inbox' }).waitFor();
  await page
    .getByRole('listbox', { name: 'Conversations in Inbox' })
    .or(page.getByText('No conversations here.'))
    .waitFor();
  return page.evaluate(() => performance.now());
}

/**
 * Runs in the page (a string: this Node program's types have no DOM). Noise keeps the encoder busy, so
 * the file is large enough to be fetched in several ranges.
 */
const RECORD_VIDEO = `(async () => {
  const type = ['video/mp4;codecs=avc1', 'video/webm;codecs=vp8'].find((t) => MediaRecorder.isTypeSupported(t));
  const canvas = document.querySelector('canvas');
  const g = canvas.getContext('2d');
  const recorder = new MediaRecorder(canvas.captureStream(30), { mimeType: type, videoBitsPerSecond: 2000000 });
  const chunks = [];
  recorder.ondataavailable = (e) => chunks.push(e.data);
  let frame = 0;
  const timer = setInterval(() => {
    const image = g.createImageData(320, 240);
    for (let i = 0; i < image.data.length; i++) image.data[i] = (Math.random() * 255) | 0;
    g.putImageData(image, 0, 0);
    g.fillStyle = '#fff';
    g.font = '48px sans-serif';
    g.fillText(String(frame++), 130, 140);
  }, 33);
  recorder.start(250);
  await new Promise((r) => setTimeout(r, 4000));
  recorder.stop();
  await new Promise((r) => (recorder.onstop = r));
  clearInterval(timer);
  const bytes = new Uint8Array(await new Blob(chunks).arrayBuffer());
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return { base64: btoa(binary), type };
})()`;

/** A short H.264 MP4 (WebM where H.264 is missing) recorded from a canvas by this browser's MediaRecorder. */
async function recordVideo(context: BrowserContext): Promise<{ buffer: Buffer; mimeType: string; name: string }> {
  const page = await context.newPage();
  await page.setContent('<canvas width="320" height="240"></canvas>');
  const { base64, type } = (await page.evaluate(RECORD_VIDEO)) as { base64: string; type: string };
  await page.close();
  const mp4 = type.startsWith('video/mp4');
  return {
    buffer: Buffer.from(base64, 'base64'),
    mimeType: mp4 ? 'video/mp4' : 'video/webm',
    name: mp4 ? 'lake.mp4' : 'lake.webm',
  };
}

// Debian's chromium is what .ci/run installs; no browser is ever downloaded, so without it there is none to drive.
describe.skipIf(!existsSync(CHROMIUM))('the webmail in Chromium on the local federation', () => {
  // Registered before the federation's hooks: the report is written once everything is closed.
  afterAll(async () => {
    if (report.length > 0) {
      await writeFile(join(ARTIFACTS, 'report.txt'), `${report.join('\n')}\n`).catch(() => undefined);
      process.stdout.write(`\nwebmail browser test:\n  ${report.join('\n  ')}\n`);
    }
  });
  world = useChromiumOnFederation('federizer-webmail-');
  beforeAll(async () => {
    await mkdir(ARTIFACTS, { recursive: true });
  });

  it('Alice sends a photo and a video; Bob sees it arrive, plays and seeks it, and forwards it to Bobby', async () => {
    const newContext = async (viewport = { width: 1280, height: 800 }, colorScheme: 'light' | 'dark' = 'light') => {
      const c = await world.browser.newContext({ viewport, colorScheme });
      // The machine is shared: every wait may take a while, none is a measure.
      c.setDefaultTimeout(60_000);
      world.contexts.push(c);
      return c;
    };
    const aliceContext = await newContext();
    const bobContext = await newContext();
    const bobbyContext = await newContext({ width: 375, height: 740 }, 'dark');
    const video = await recordVideo(aliceContext);
    const photo = { name: 'lake.png', mimeType: 'image/png', buffer: iconPng(640) };

    const bob = await bobContext.newPage();
    const bobUsable = await signIn(bob, 'bob@example.net');
    report.push(`inbox usable ${Math.round(bobUsable)} ms after navigation start (Bob, reload after sign-in)`);
    const alice = await aliceContext.newPage();
    const aliceUsable = await signIn(alice, 'alice@example.com');
    report.push(`inbox usable ${Math.round(aliceUsable)} ms after navigation start (Alice)`);
    report.push(`video: ${video.name}, ${video.buffer.length} bytes, recorded by MediaRecorder`);
    await shot(bob, 'bob-inbox-empty');

    // Installable: the manifest and every icon it lists are served (fetched by the page: the names are its).
    const icons = (await bob.evaluate(`(async () => {
      const manifest = await (await fetch('/manifest.webmanifest')).json();
      return Promise.all(manifest.icons.map(async (i) => {
        const res = await fetch(i.src);
        return [i.type, res.status, res.headers.get('content-type')];
      }));
    })()`)) as [string, number, string][];
    expect(icons.map(([type]) => type).sort()).toEqual(['image/png', 'image/png', 'image/png', 'image/svg+xml']);
    for (const [type, status, served] of icons) expect([status, served]).toEqual([200, expect.stringContaining(type)]);

    // Alice writes.
    await alice.getByRole('link', { name: 'Compose' }).click();
    await alice.getByLabel('To', { exact: true }).fill('Bob <bob@example.net>');
    await alice.getByLabel('Subject', { exact: true }).fill(SUBJECT);
    await alice.getByLabel('Message', { exact: true }).fill('The water was warm. The video is short.');
    await alice.locator('input[type=file]').setInputFiles([photo, video]);
    await expect
      .poll(() => alice.locator('[data-testid=compose-attachment][data-status=done]').count(), { timeout: 60_000 })
      .toBe(2);
    await shot(alice, 'alice-compose');
    await alice.getByRole('button', { name: /^Send/ }).click();
    await alice.getByRole('heading', { name: 'Sent' }).waitFor();

    // Bob sees it without a reload.
    const row = bob.getByRole('option', { name: new RegExp(`^Unread\\. alice@example\\.com: ${SUBJECT}`) });
    await row.waitFor({ timeout: 60_000 });
    expect(await bob.title()).toBe('(1) Federizer — bob@example.net');
    await shot(bob, 'bob-inbox-new-mail');

    // Bob opens it: text, photo and video, fetched by example.net from example.com.
    const ranges: string[] = [];
    bob.on('request', (r) => {
      if (new URL(r.url()).pathname.startsWith('/r/') && r.resourceType() === 'media')
        ranges.push(r.headers().range ?? '');
    });
    await row.click();
    const message = bob.getByRole('article', { name: /Message from alice@example\.com/ });
    await message.getByText('The water was warm. The video is short.').waitFor({ timeout: 60_000 });
    const image = message.getByRole('img', { name: 'lake.png' });
    await image.waitFor({ timeout: 60_000 });
    await expect.poll(() => image.evaluate((img) => img.complete && img.naturalWidth), { timeout: 20_000 }).toBe(640);
    const player = message.locator('video');
    await player.waitFor();
    await expect.poll(() => player.evaluate((v) => v.readyState), { timeout: 20_000 }).toBeGreaterThanOrEqual(1);
    const seek = await player.evaluate(async (v) => {
      const duration = v.duration;
      const target = Number.isFinite(duration) ? duration * 0.75 : 3;
      const seeked = new Promise<void>((resolve) => v.addEventListener('seeked', () => resolve(), { once: true }));
      v.currentTime = target;
      await seeked;
      // Decoded frames at the new position.
      await new Promise<void>((resolve) =>
        v.readyState >= 2 ? resolve() : v.addEventListener('loadeddata', () => resolve(), { once: true }),
      );
      return { duration, target, currentTime: v.currentTime, readyState: v.readyState };
    });
    expect(seek.currentTime).toBeCloseTo(seek.target, 1);
    expect(seek.readyState).toBeGreaterThanOrEqual(2);
    expect(ranges.length).toBeGreaterThan(0);
    expect(ranges.every((r) => /^bytes=\d+-\d*$/.test(r))).toBe(true);
    report.push(
      `video seeked to ${seek.currentTime.toFixed(2)} s of ${seek.duration.toFixed(2)} s; media requests through the service worker: ${ranges.join(', ')}`,
    );
    await shot(bob, 'bob-message');

    // Alice's sent message: per-recipient delivery.
    await alice.getByRole('option', { name: new RegExp(SUBJECT) }).click();
    await alice.locator('[data-testid=deliveries] li[data-status=fetched]').waitFor({ timeout: 60_000 });
    await shot(alice, 'alice-sent-delivery');

    // Bob forwards it through the chain; nothing is uploaded again.
    await message.getByRole('button', { name: 'Forward', exact: true }).click();
    const dialog = bob.getByRole('dialog', { name: /Forward/ });
    await dialog.getByLabel('Forward to').fill('bobby@example.org');
    await dialog.getByRole('button', { name: 'Forward' }).click();
    await dialog.getByRole('status').filter({ hasText: 'Forwarded to bobby@example.org.' }).waitFor();
    await shot(bob, 'bob-forwarded');

    // Bobby, on a phone-sized screen, reads it and sees the photo fetched from example.com.
    const bobby = await bobbyContext.newPage();
    await signIn(bobby, 'bobby@example.org');
    const forwarded = bobby.getByRole('option', { name: new RegExp(SUBJECT) });
    await forwarded.waitFor({ timeout: 60_000 });
    expect(Number(await bobby.evaluate('document.documentElement.scrollWidth'))).toBeLessThanOrEqual(375);
    // Bobby's system prefers dark: so does the app.
    expect(await bobby.evaluate('getComputedStyle(document.body).backgroundColor')).toBe('rgb(17, 20, 24)');
    await shot(bobby, 'bobby-inbox-375px-dark');
    await forwarded.click();
    const copy = bobby.getByRole('article', { name: /Message from alice@example\.com/ });
    await copy.getByText(/^Forwarded by .*bob@example\.net.* to bobby@example\.org$/).waitFor({ timeout: 60_000 });
    const bobbyImage = copy.getByRole('img', { name: 'lake.png' });
    await bobbyImage.waitFor({ timeout: 60_000 });
    await expect
      .poll(() => bobbyImage.evaluate((img) => img.complete && img.naturalWidth), { timeout: 20_000 })
      .toBe(640);
    expect(Number(await bobby.evaluate('document.documentElement.scrollWidth'))).toBeLessThanOrEqual(375);
    await shot(bobby, 'bobby-message-375px-dark');

    // Every server of example.net stops: Bob's page still opens, from the service worker's app shell,
    // with the mail synced into IndexedDB and the photo kept in Cache Storage.
    await world.fed.stopDomain('example.net');
    await bob.reload();
    await bob
      .getByRole('status')
      .filter({ hasText: 'Offline: showing the mail already synced' })
      .waitFor({ timeout: 60_000 });
    const offline = bob.getByRole('article', { name: /Message from alice@example\.com/ });
    await offline.getByText('The water was warm. The video is short.').waitFor();
    const offlineImage = offline.getByRole('img', { name: 'lake.png' });
    await expect
      .poll(() => offlineImage.evaluate((img) => img.complete && img.naturalWidth), {
        timeout: 20_000,
      })
      .toBe(640);
    await shot(bob, 'bob-offline');
  }, 420_000);
});
