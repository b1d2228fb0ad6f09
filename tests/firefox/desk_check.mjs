// Opens the desk in Debian's Firefox ESR (puppeteer-core over WebDriver BiDi: no browser
// download) and prints what the page drew as one JSON object on stdout, for
// tests/test_browser.py to compare with the engine:
//   {"userAgent", "bars": [[time, open, high, low, close], ...], "lines": {"POC": price, ...},
//    "profile": {...}, "tpoRows": n, "pocRow": price|null, "markers": n, "health": "...",
//    "errors": ["pageerror: ...", "console: ..."]}
// Usage: node desk_check.mjs URL MIN_BARS SCREENSHOT.png  (AMT_FIREFOX: the binary, default /usr/bin/firefox-esr)
import puppeteer from 'puppeteer-core';

const [url, minBars, shot] = process.argv.slice(2);
if (!url || !minBars || !shot) {
  console.error('usage: node desk_check.mjs URL MIN_BARS SCREENSHOT.png');
  process.exit(2);
}
const browser = await puppeteer.launch({
  browser: 'firefox',
  executablePath: process.env.AMT_FIREFOX || '/usr/bin/firefox-esr',
  headless: true,
  // set as the pages open, where puppeteer tolerates Firefox ESR 140.12's lack of the screen
  // orientation override that page.setViewport() also sends (and fails on)
  defaultViewport: { width: 1400, height: 900 },
  // no updates, telemetry or other calls out: the machine may be offline
  extraPrefsFirefox: { 'app.update.enabled': false, 'datareporting.policy.dataSubmissionEnabled': false,
                       'toolkit.telemetry.enabled': false, 'network.captive-portal-service.enabled': false },
});
const errors = [];
try {
  const page = await browser.newPage();
  page.on('pageerror', (err) => errors.push(`pageerror: ${err.message || err}`));
  page.on('console', (msg) => { if (msg.type() === 'error') errors.push(`console: ${msg.text()}`); });
  await page.goto(url);
  await page.waitForFunction(() => window.amt && window.amt.state.connected, { timeout: 20000 });
  await page.waitForFunction((n) => window.amt.series.data().length >= n, { timeout: 20000 }, Number(minBars));
  await page.waitForFunction(() => window.amt.state.profiles.get(window.amt.state.selected)
                                   && document.querySelectorAll('#tpo-body .tpo-row').length > 5
                                   && window.amt.markers.markers().length > 0
                                   && document.querySelector('#health-strip').textContent.includes('ticks/s'),
                             { timeout: 20000 });
  const drawn = await page.evaluate(() => ({
    userAgent: navigator.userAgent,
    bars: window.amt.series.data().map((b) => [b.time, b.open, b.high, b.low, b.close]),
    lines: window.amt.priceLines(),
    profile: window.amt.state.profiles.get(window.amt.state.selected),
    tpoRows: document.querySelectorAll('#tpo-body .tpo-row').length,
    pocRow: Number((document.querySelector('#tpo-body .tpo-row.poc') || { dataset: {} }).dataset.price) || null,
    markers: window.amt.markers.markers().length,
    health: document.querySelector('#health-strip').textContent,
  }));
  await page.screenshot({ path: shot });
  console.log(JSON.stringify({ ...drawn, errors }));
} finally {
  await browser.close();
}
