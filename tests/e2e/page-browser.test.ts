/**
 * The status page in a real headless Chromium against a real agent: two cameras playing
 * the demo video at native speed (previews and snapshots on), a real mosquitto, the
 * REST API behind a bearer token. What a person at the line would do: give the token
 * once, watch the live pictures change, see an event arrive, open it, mark it as
 * normal, capture normal frames, switch to the heat map, and look at it on a phone.
 *
 * Screenshots go to a temporary folder printed in the output. With
 * LINEWATCH_DOCS_SCREENSHOT=1 the test also writes docs/screenshots/status-page.png
 * (the README's picture); run it alone for that:
 *   LINEWATCH_DOCS_SCREENSHOT=1 npx vitest run tests/e2e/page-browser.test.ts
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page, type Response } from 'playwright-core';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO, startAgent, writeConfig, type AgentProcess } from '../helpers/agent.js';
import { freePort, isMosquittoInstalled, startMosquitto, type MosquittoBroker } from '../helpers/mosquitto.js';

const CHROMIUM = '/usr/bin/chromium';
const VIDEO = path.join(REPO, 'assets/demo/bottle-detection.mp4');
const MODEL = path.join(REPO, 'models/demo');
const TOKEN = 'page-test-token-0123456789abcdef';
const CAMERAS = ['line1', 'line2'];
const missing = [
  isMosquittoInstalled() ? undefined : 'mosquitto is not installed (run scripts/setup.sh)',
  existsSync(CHROMIUM) ? undefined : `${CHROMIUM} is missing (the Debian chromium package; run scripts/setup.sh)`,
  existsSync(path.join(MODEL, 'manifest.json')) ? undefined : 'models/demo is missing',
].filter(Boolean);
if (missing.length) console.warn(`status page browser tests skipped: ${missing.join('; ')}`);

/** The little of an <img> the checks read (this file compiles without the DOM library). */
interface PageImage {
  complete: boolean;
  naturalWidth: number;
}

/**
 * A fingerprint of the picture an <img> shows, as the person sees it: its pixels drawn
 * small on a canvas (a blob: image is same-origin, so the canvas can be read).
 */
const pictureOf = (page: Page, selector: string): Promise<string | null> =>
  page.evaluate(`((img) => {
    if (!img || !img.complete || !img.naturalWidth) return null;
    const canvas = document.createElement('canvas');
    canvas.width = 96;
    canvas.height = 54;
    const context = canvas.getContext('2d');
    context.drawImage(img, 0, 0, 96, 54);
    const data = context.getImageData(0, 0, 96, 54).data;
    let hash = 2166136261;
    for (let i = 0; i < data.length; i++) hash = Math.imul(hash ^ data[i], 16777619);
    return (hash >>> 0).toString(16);
  })(document.querySelector(${JSON.stringify(selector)}))`);

describe.skipIf(missing.length > 0)('the status page in headless Chromium', () => {
  let dir: string;
  let dataDir: string;
  let shots: string;
  let broker: MosquittoBroker;
  let agent: AgentProcess;
  let baseUrl: string;
  let browser: Browser;
  let context: BrowserContext;
  let page: Page;
  /** Fingerprints of the live frames the page showed. */
  let frames = new Set<string>();
  /** Every request the page made, and what went wrong in it (script errors, CSP violations). */
  const requests: { url: string; authorization: string | undefined }[] = [];
  const problems: string[] = [];
  /** Failed replies other than the expected ones: 401 (asks for the token), 503 (no frame yet). */
  const failures: string[] = [];

  const shoot = async (name: string, target: Page = page) => {
    const file = path.join(shots, `${name}.png`);
    await target.screenshot({ path: file, fullPage: true });
    return file;
  };
  const card = (camera: string) => page.locator(`.card[data-camera="${camera}"]`);

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-page-'));
    dataDir = path.join(dir, 'data');
    shots = mkdtempSync(path.join(tmpdir(), 'linewatch-page-screenshots-'));
    console.log(`status page screenshots: ${shots}`);
    broker = await startMosquitto();
    const port = await freePort();
    const config = writeConfig(path.join(dir, 'config.yaml'), {
      deviceId: 'pagetest',
      dataDir,
      mqtt: { url: broker.url },
      health: { enabled: true, host: '127.0.0.1', port, token: TOKEN },
      defaults: {
        model: MODEL,
        fps: 10,
        loop: true,
        realtime: true,
        stallTimeoutS: 5,
        preview: { enabled: true, fps: 2 },
        snapshots: { enabled: true, retain: 20 },
      },
      cameras: CAMERAS.map((name) => ({ name, url: VIDEO })),
    });
    agent = startAgent(['run', '--config', config]);
    await agent.waitForOutput(/status page: http:\/\/127\.0\.0\.1:\d+\//, 60_000);
    baseUrl = `http://127.0.0.1:${port}`;

    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
    context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
    page = await context.newPage();
    page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
    page.on('console', (message) => {
      // Failed loads are checked by their replies below, with their URLs.
      if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) problems.push(`console: ${message.text()}`);
    });
    page.on('request', (request) => requests.push({ url: request.url(), authorization: request.headers().authorization }));
    page.on('response', (response: Response) => {
      const where = new URL(response.url()).pathname;
      // The browser's own favicon request is not the page's.
      if (response.status() >= 400 && response.status() !== 401 && response.status() !== 503 && where !== '/favicon.ico') {
        failures.push(`${response.status()} ${response.request().method()} ${where}`);
      }
    });
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    if (agent) {
      agent.child.kill('SIGTERM');
      await agent.exited();
    }
    await broker?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('asks for the API token once, shows a card per camera with a changing live picture, the score chart and an event', async () => {
    await page.goto(`${baseUrl}/`);
    // The API needs the token: the page asks, and keeps it for the next visit.
    const auth = page.locator('#auth');
    await expect.poll(() => auth.isVisible(), { timeout: 15_000 }).toBe(true);
    await page.fill('#auth-token', TOKEN);
    await page.click('#auth button[type=submit]');
    await expect.poll(() => auth.isVisible()).toBe(false);

    expect(await page.locator('.card[data-camera]').count()).toBe(CAMERAS.length);
    for (const camera of CAMERAS) {
      await expect.poll(() => card(camera).locator('.state').textContent(), { timeout: 30_000 }).toBe('streaming');
      await expect.poll(() => card(camera).locator('.live-image').getAttribute('src'), { timeout: 30_000 }).toMatch(/^blob:/);
    }

    // The live picture changes: the <img> shows new pictures as the video plays.
    const seen = new Set<string>();
    await expect
      .poll(
        async () => {
          const picture = await pictureOf(page, '.card[data-camera="line1"] .live-image');
          if (picture) seen.add(picture);
          return seen.size;
        },
        { timeout: 20_000, interval: 400 },
      )
      .toBeGreaterThanOrEqual(3);
    expect(await card('line1').locator('.live-image').evaluate((img: PageImage) => img.naturalWidth)).toBeGreaterThan(100);
    frames = seen;

    // The score of the last minutes, against the threshold.
    await expect.poll(async () => Number(await card('line1').locator('.chart').getAttribute('data-points')), { timeout: 20_000 }).toBeGreaterThan(10);
    expect(await card('line1').locator('.chart .threshold').count()).toBe(1);
    expect(await card('line1').locator('.chart .label').allTextContents()).toEqual(expect.arrayContaining([expect.stringMatching(/^threshold /)]));

    // The demo video's hand enters at ~5 s: an event with its snapshot shows as a thumbnail.
    const thumb = card('line1').locator('button.thumb').first();
    await expect.poll(() => thumb.count(), { timeout: 60_000 }).toBe(1);
    await expect.poll(() => thumb.locator('img').getAttribute('src'), { timeout: 15_000 }).toMatch(/^blob:/);
    await expect.poll(() => thumb.locator('img').evaluate((img: PageImage) => img.naturalWidth), { timeout: 15_000 }).toBeGreaterThan(100);
    await shoot('1-cameras-with-event');

    // The token never travels in a URL, every /api call carries it, and nothing leaves the agent.
    expect(requests.filter((request) => request.url.includes(TOKEN))).toEqual([]);
    expect(requests.filter((request) => !request.url.startsWith(`${baseUrl}/`) && !request.url.startsWith('blob:'))).toEqual([]);
    const apiCalls = requests.filter((request) => new URL(request.url).pathname.startsWith('/api/') && !request.url.endsWith('/api/openapi.json'));
    expect(apiCalls.length).toBeGreaterThan(10);
    // The first calls went out before the page had the token (their 401 asked for it); every call since carries it.
    const firstWithToken = apiCalls.findIndex((request) => request.authorization === `Bearer ${TOKEN}`);
    expect(firstWithToken).toBeGreaterThan(0);
    expect(apiCalls.slice(firstWithToken).filter((request) => request.authorization !== `Bearer ${TOKEN}`).map((request) => request.url)).toEqual([]);
  }, 180_000);

  it('opens an event with its snapshot and score timeline, and "mark as normal" stores its picture', async () => {
    const thumb = card('line1').locator('button.thumb').first();
    const eventId = await thumb.getAttribute('data-event-id');
    expect(eventId).toMatch(/^[A-Za-z0-9_-]+$/);
    await thumb.click();
    const dialog = page.locator('#event-dialog');
    await expect.poll(() => dialog.isVisible()).toBe(true);
    await expect.poll(() => page.locator('#event-image').evaluate((img: PageImage) => img.naturalWidth), { timeout: 15_000 }).toBeGreaterThan(100);
    await expect.poll(() => page.locator('#event-chart svg polyline').count(), { timeout: 15_000 }).toBeGreaterThan(0);
    expect(await page.locator('#event-facts').textContent()).toContain('peak score');
    expect(await page.locator('#event-title').textContent()).toContain('line1');

    await page.click('#mark-normal');
    await expect.poll(() => page.locator('#event-reply').textContent(), { timeout: 15_000 }).toMatch(/^HTTP 200/);
    const reply = (await page.locator('#event-reply').textContent())!;
    expect(reply).toContain('"created": true');
    const image = path.join(dataDir, 'feedback', 'line1', `${eventId}.jpg`);
    expect(existsSync(image)).toBe(true);
    expect(statSync(image).size).toBeGreaterThan(1000);
    expect(JSON.parse(readFileSync(path.join(dataDir, 'feedback', 'line1', `${eventId}.json`), 'utf8'))).toMatchObject({ kind: 'event', eventId, camera: 'line1' });
    await shoot('2-event-marked-normal');
    await page.click('#event-dialog .close');
    await expect.poll(() => dialog.isVisible()).toBe(false);
  }, 60_000);

  it('captures normal frames of a camera and shows the reply', async () => {
    const capture = card('line2').locator('.capture');
    await capture.locator('.capture-count').fill('2');
    await capture.locator('.capture-button').click();
    await expect.poll(() => capture.locator('.capture-reply').textContent(), { timeout: 30_000 }).toMatch(/^HTTP 200/);
    expect(await capture.locator('.capture-reply').textContent()).toContain('"complete": true');
    const stored = readdirSync(path.join(dataDir, 'feedback', 'line2')).filter((name) => /^capture-.*\.jpg$/.test(name));
    expect(stored).toHaveLength(2);
  }, 60_000);

  it('switches the live picture to the heat map and back', async () => {
    const live = card('line1').locator('.live-image');
    const toggle = card('line1').locator('.heatmap-toggle');
    const before = await live.getAttribute('src');
    const heatmap = page.waitForResponse((response) => response.url().endsWith('/api/cameras/line1/heatmap.jpg') && response.status() === 200);
    await toggle.click();
    expect(await toggle.getAttribute('aria-pressed')).toBe('true');
    await heatmap;
    await expect.poll(() => live.getAttribute('data-kind')).toBe('heatmap');
    expect(await live.getAttribute('src')).not.toBe(before);
    // A different picture, not a frame again: the anomaly map is drawn over the scored frame.
    const shown = await pictureOf(page, '.card[data-camera="line1"] .live-image');
    expect(shown).not.toBeNull();
    expect(frames.has(shown!)).toBe(false);
    await shoot('3-heatmap');
    await toggle.click();
    await expect.poll(() => live.getAttribute('data-kind'), { timeout: 10_000 }).toBe('frame');
  }, 60_000);

  it('keeps the token for the next visit and fits a phone screen', async () => {
    const phone = await context.newPage();
    await phone.setViewportSize({ width: 390, height: 844 });
    await phone.goto(`${baseUrl}/`);
    await expect.poll(() => phone.locator('.card[data-camera="line1"] .live-image').getAttribute('src'), { timeout: 20_000 }).toMatch(/^blob:/);
    expect(await phone.locator('#auth').isVisible()).toBe(false);
    // One column, nothing wider than the screen.
    const layout = await phone.evaluate<{ scrollWidth: number; cards: { top: number; bottom: number; right: number }[] }>(`({
      scrollWidth: document.documentElement.scrollWidth,
      cards: [...document.querySelectorAll('.card')].map((card) => card.getBoundingClientRect().toJSON()),
    })`);
    expect(layout.scrollWidth).toBeLessThanOrEqual(390);
    expect(layout.cards).toHaveLength(2);
    expect(layout.cards[1]!.top).toBeGreaterThanOrEqual(layout.cards[0]!.bottom);
    for (const box of layout.cards) expect(box.right).toBeLessThanOrEqual(390);
    await shoot('4-phone', phone);
    await phone.close();
  }, 60_000);

  it('asks again when the token it kept is refused', async () => {
    const other = await browser.newContext();
    try {
      const stale = await other.newPage();
      await stale.goto(`${baseUrl}/healthz`);
      await stale.evaluate(`localStorage.setItem('linewatch.apiToken', 'an-old-token-0123456789')`);
      await stale.goto(`${baseUrl}/`);
      await expect.poll(() => stale.locator('#auth').isVisible(), { timeout: 15_000 }).toBe(true);
      expect(await stale.locator('#auth-message').textContent()).toMatch(/refused/);
      expect(await stale.evaluate(`localStorage.getItem('linewatch.apiToken')`)).toBeNull();
      await stale.fill('#auth-token', TOKEN);
      await stale.click('#auth button[type=submit]');
      await expect.poll(() => stale.locator('.card[data-camera="line2"] .live-image').getAttribute('src'), { timeout: 20_000 }).toMatch(/^blob:/);
      expect(await stale.evaluate(`localStorage.getItem('linewatch.apiToken')`)).toBe(TOKEN);
    } finally {
      await other.close();
    }
  }, 60_000);

  it('shows the essentials without JavaScript', async () => {
    const plain = await browser.newContext({ javaScriptEnabled: false, viewport: { width: 1200, height: 900 } });
    const noScript = await plain.newPage();
    await noScript.goto(`${baseUrl}/`);
    expect(await noScript.locator('.card[data-camera]').count()).toBe(2);
    expect(await noScript.locator('.card[data-camera="line1"] .state').textContent()).toBe('streaming');
    expect(await noScript.locator('.card[data-camera="line1"] .bar').count()).toBe(1);
    expect(await noScript.locator('table tr[data-event-id]').count()).toBeGreaterThan(0);
    expect(await noScript.locator('table a[href^="/snapshots/line1/"]').count()).toBeGreaterThan(0);
    await shoot('5-no-javascript', noScript);
    await plain.close();
  }, 60_000);

  it('ran without script errors or CSP violations; the README picture on request', async () => {
    expect(problems).toEqual([]);
    expect(failures).toEqual([]);
    if (process.env.LINEWATCH_DOCS_SCREENSHOT === '1') {
      // The picture of a working page: the live views, charts and an event's thumbnail, not the full event table.
      await page.evaluate('window.scrollTo(0, 0)');
      const png = await page.screenshot({ clip: { x: 0, y: 0, width: 1200, height: 900 } });
      const target = path.join(REPO, 'docs', 'screenshots', 'status-page.png');
      mkdirSync(path.dirname(target), { recursive: true });
      await sharp(png).png({ palette: true, quality: 80, compressionLevel: 9 }).toFile(target);
      console.log(`wrote ${target} (${statSync(target).size} bytes)`);
    }
  });
});
