// status-progress.mjs - the status page in a real browser while a slow job runs (run by
// tests/test-status.c): headless Chromium, driven through puppeteer-core (installed by
// scripts/install-deps), opens /status, waits until the job's progress bar has moved with at
// least three progress events of the page's own EventSource on /jobs/ID/events, takes a
// screenshot and prints what it saw as one JSON line.
//
//   node status-progress.mjs NODE_MODULES CHROMIUM URL SCREENSHOT
import { createRequire } from 'module';

const [modules, chromium, url, screenshot] = process.argv.slice(2);
const require = createRequire(modules + '/');
const puppeteer = require('puppeteer-core');

const browser = await puppeteer.launch({
  executablePath: chromium,
  headless: 'new',
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-default-apps'],
});
try {
  const page = await browser.newPage();
  const requests = [];
  page.on('request', (r) => requests.push(new URL(r.url()).pathname));
  await page.setViewport({ width: 1280, height: 1000 });
  await page.goto(url, { waitUntil: 'load' });
  await page.waitForFunction(() => {
    const row = document.querySelector('#running tr[data-job]');
    return row && (row.dataset.events || '').split(',').filter((x) => x !== '').length >= 3;
  }, { timeout: 30000, polling: 50 });
  const seen = await page.evaluate(() => {
    const row = document.querySelector('#running tr[data-job]');
    return {
      job: row.dataset.job,
      events: row.dataset.events.split(',').map(Number),
      width: row.querySelector('.bar .fill').style.width,
      text: row.querySelector('.bar .text').textContent,
      fn: row.cells[0].textContent,
    };
  });
  await page.screenshot({ path: screenshot });
  console.log(JSON.stringify({ ...seen, requests }));
} finally {
  await browser.close();
}
