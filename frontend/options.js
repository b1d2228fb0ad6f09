// Option premium charts: small 1-minute candle charts of the option contracts the user picks,
// beside (or under) the main chart, each with LTP, change, OI and OI change. Hidden entirely
// when no option is among the instruments the server knows.
//
// Which instruments are options comes from the server (GET /api/instruments, classified by
// data_handling/instruments.py: underlying, expiry, strike, CE/PE), fetched again whenever the
// page's instrument list changes. The bars are app.js's own (window.amt.state.bars: chart time
// -> {time, open, high, low, close, final}, built from the snapshot's closed candles, the live
// candles and the ticks); this file only draws them and listens to app.js's 'amt:frame' event
// (every snapshot and batch) for what changed. The shown options are added to the page's
// WebSocket subscription (amt.setExtraInstruments), so the server sends their ticks and candles
// and nothing else.
//
// The choice is kept in localStorage ('amt.options'); ?options=KEY1,KEY2 in the URL wins. With
// no choice made yet the first two of the list are shown: the list puts the chart instrument's
// underlying first, then the nearest expiry, then the strikes nearest its last price, CE before PE
// - so by default the at-the-money CE and PE of the chart's underlying.
// In History mode (frontend/history.js) the panel is hidden and left as it was until Back to live.
// Prices are rupees; chart times are shifted to IST exactly as app.js does (+19800 s).
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const panel = $('options-panel');
  const LWC = window.LightweightCharts;
  const amt = window.amt;
  if (!panel || !amt) return;

  const IST_OFFSET_S = 19800;
  const MAX_LIST = 300;                  // checkboxes rendered for one filter (1,372 on a full F&O day)
  const barTime = (ts) => Math.floor(ts / 60000) * 60 + IST_OFFSET_S;     // as app.js
  const istDay = (chartTime) => Math.floor(chartTime / 86400);
  const priceFmt = new Intl.NumberFormat('en-IN', { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const fmtPrice = (p) => (typeof p === 'number' && isFinite(p) ? priceFmt.format(p) : '—');
  // Open interest in Indian units: 1 L = 1,00,000, 1 Cr = 100 L.
  function fmtOi(x) {
    if (typeof x !== 'number' || !isFinite(x)) return '—';
    const a = Math.abs(x), sign = x < 0 ? '−' : '';
    if (a >= 1e7) return `${sign}${(a / 1e7).toFixed(2)} Cr`;
    if (a >= 1e5) return `${sign}${(a / 1e5).toFixed(2)} L`;
    if (a >= 1e3) return `${sign}${(a / 1e3).toFixed(1)} k`;
    return `${sign}${a.toFixed(0)}`;
  }

  // --- state ------------------------------------------------------------------------------
  let options = [];                       // [{instrument_key, underlying, expiry, strike, right, label}] present
  let infoByKey = new Map();              // every instrument's classification
  const urlChoice = new URLSearchParams(location.search).get('options');
  let chosen = urlChoice !== null ? urlChoice.split(',').map((k) => k.trim()).filter(Boolean) : loadChoice();
  const cards = new Map();                // key -> {el, chart, series, times:Set, last, oi:Map(time->oi)}
  let layout = localStorage.getItem('amt.optionsLayout') === 'below' ? 'below' : 'beside';
  let fetchedFor = -1;                    // instrument count the list was fetched for
  let fetching = false;
  let retryAt = 0;                        // after a failed fetch, not before this (Date.now() ms)

  function loadChoice() {
    try {
      const v = JSON.parse(localStorage.getItem('amt.options'));
      return Array.isArray(v) ? v.filter((k) => typeof k === 'string') : null;   // null: never chosen
    } catch (e) { return null; }
  }
  function saveChoice() {
    try { localStorage.setItem('amt.options', JSON.stringify(chosen)); } catch (e) { /* private mode */ }
  }

  // --- the list of options, ordered for the default choice (see the file's head) ------------
  function ordered() {
    const sel = amt.state.selected;
    const selInfo = sel ? infoByKey.get(sel) : null;
    const under = selInfo ? selInfo.underlying : '';
    const t = sel ? amt.state.ticks.get(sel) : null;
    // the underlying's price: the chart's own when it is the index or a future, else (an option
    // on the chart) the index's, else a future's, as far as the page holds their ticks
    let ltp = t && selInfo && selInfo.kind !== 'option' ? t.ltp : null;
    for (const kind of under ? ['index', 'future'] : []) {
      for (const [key, info] of infoByKey) {
        if (ltp !== null) break;
        const u = info.kind === kind && info.underlying === under && amt.state.ticks.get(key);
        if (u) ltp = u.ltp;
      }
    }
    // the nearest expiry of that underlying not before the last tick's date
    const today = t ? new Date(t.ts + IST_OFFSET_S * 1000).toISOString().slice(0, 10) : '';
    const expiries = options.filter((o) => o.underlying === under && o.expiry && o.expiry >= today)
      .map((o) => o.expiry).sort();
    const near = expiries[0] || null;
    const rank = (o) => [o.underlying === under ? 0 : 1, near && o.expiry === near ? 0 : 1, o.expiry || o.expiry_month,
                         ltp !== null && o.underlying === under ? Math.abs(o.strike - ltp) : o.strike,
                         o.strike, o.right === 'CE' ? 0 : 1];
    return options.slice().sort((a, b) => {
      const ra = rank(a), rb = rank(b);
      for (let i = 0; i < ra.length; i++) {
        if (ra[i] < rb[i]) return -1;
        if (ra[i] > rb[i]) return 1;
      }
      return 0;
    });
  }

  // With no choice made, the default is picked once (not re-picked at every tick, which would
  // swap charts as the price crosses a strike), and again when the chart's instrument changes.
  let fallback = null, fallbackPriced = false;
  function shown() {
    const present = new Set(options.map((o) => o.instrument_key));
    if (chosen === null) {
      const priced = Boolean(amt.state.selected && amt.state.ticks.get(amt.state.selected));
      if (fallback === null || fallback.length < Math.min(2, options.length) || (priced && !fallbackPriced)
          || !fallback.every((k) => present.has(k))) {
        fallback = ordered().slice(0, 2).map((o) => o.instrument_key);
        fallbackPriced = priced;
      }
      return fallback;
    }
    return chosen.filter((k) => present.has(k));
  }

  async function refreshList() {
    const n = amt.state.instruments.length;
    if (fetching || n === fetchedFor || Date.now() < retryAt) return;
    fetching = true;
    try {
      const r = await fetch('/api/instruments', { cache: 'no-store' });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const body = await r.json();
      infoByKey = new Map(body.instruments.map((i) => [i.instrument_key, i]));
      options = body.instruments.filter((i) => i.kind === 'option');
      fetchedFor = n;
    } catch (e) {
      console.warn('option list not loaded:', e.message);
      retryAt = Date.now() + 5000;
    } finally {
      fetching = false;
    }
    apply();
  }

  // --- layout -----------------------------------------------------------------------------
  function apply() {
    const has = options.length > 0;
    const toggle = $('options-toggle');
    if (amt.state.history) {             // History mode (frontend/history.js) shows one recorded
      panel.hidden = true;               // instrument: the panel waits, cards and subscription kept
      if (toggle) toggle.hidden = true;
      return;
    }
    panel.hidden = !has;
    if (toggle) {
      toggle.hidden = !has;
      toggle.textContent = layout === 'below' ? 'Options: below' : 'Options: beside';
    }
    const row = panel.parentElement;
    if (row) row.classList.toggle('opts-below', has && layout === 'below');
    const keys = has ? shown() : [];
    $('options-count').textContent = has ? `${keys.length} of ${options.length}` : '';
    syncCards(keys);
    amt.setExtraInstruments(keys);
    if ($('options-pick').open) renderChecks();
  }

  const toggle = $('options-toggle');
  if (toggle) {
    toggle.addEventListener('click', () => {
      layout = layout === 'below' ? 'beside' : 'below';
      try { localStorage.setItem('amt.optionsLayout', layout); } catch (e) { /* private mode */ }
      apply();
    });
  }

  // --- the picker: a filterable checkbox list ---------------------------------------------
  function renderChecks() {
    const box = $('options-checks');
    const q = $('options-filter').value.trim().toUpperCase().split(/\s+/).filter(Boolean);
    const on = new Set(shown());
    const list = ordered().filter((o) => q.every((w) => o.label.toUpperCase().includes(w)));
    const frag = document.createDocumentFragment();
    for (const o of list.slice(0, MAX_LIST)) {
      const label = document.createElement('label');
      const cb = document.createElement('input');
      cb.type = 'checkbox';
      cb.value = o.instrument_key;
      cb.checked = on.has(o.instrument_key);
      label.title = o.instrument_key;
      label.append(cb, document.createTextNode(' ' + o.label));
      frag.appendChild(label);
    }
    if (list.length > MAX_LIST) {
      const more = document.createElement('div');
      more.className = 'muted';
      more.textContent = `${list.length - MAX_LIST} more: type to narrow (e.g. "NIFTY 24 Nov 18300")`;
      frag.appendChild(more);
    }
    box.replaceChildren(frag);
  }

  $('options-pick').addEventListener('toggle', () => { if ($('options-pick').open) renderChecks(); });
  $('options-filter').addEventListener('input', renderChecks);
  $('options-checks').addEventListener('change', (e) => {
    if (e.target.type !== 'checkbox') return;
    const now = shown().filter((k) => k !== e.target.value);
    if (e.target.checked) now.push(e.target.value);
    chosen = now;
    saveChoice();
    apply();
  });
  $('options-clear').addEventListener('click', () => { chosen = []; saveChoice(); apply(); });

  // --- the small charts -------------------------------------------------------------------
  function makeCard(key) {
    const info = infoByKey.get(key) || { label: key };
    const el = document.createElement('div');
    el.className = 'opt-card';
    el.dataset.key = key;
    el.innerHTML = '<div class="opt-head"><span class="opt-name"></span>'
      + '<button type="button" class="opt-x" title="Remove this chart">×</button></div>'
      + '<div class="opt-quote"><span class="opt-ltp">—</span><span class="opt-chg muted">—</span>'
      + '<span class="opt-oi muted">OI —</span></div><div class="opt-chart"></div>';
    el.querySelector('.opt-name').textContent = info.label;
    el.querySelector('.opt-name').title = key;
    el.querySelector('.opt-x').addEventListener('click', () => {
      chosen = shown().filter((k) => k !== key);
      saveChoice();
      apply();
    });
    const card = { el, chart: null, series: null, times: new Set(), last: -Infinity, oi: new Map() };
    if (LWC) {
      card.chart = LWC.createChart(el.querySelector('.opt-chart'), {
        autoSize: true,
        // the TradingView attribution stays on the main chart; it would cover these small ones
        layout: { background: { type: LWC.ColorType.Solid, color: '#121720' }, textColor: '#b4bccb', fontSize: 10,
                  attributionLogo: false },
        grid: { vertLines: { visible: false }, horzLines: { color: '#1b222d' } },
        rightPriceScale: { borderColor: '#232b38' },
        timeScale: { borderColor: '#232b38', timeVisible: true, secondsVisible: false, rightOffset: 2 },
        crosshair: { mode: LWC.CrosshairMode.Normal },
        localization: { priceFormatter: (p) => priceFmt.format(p) },
      });
      card.series = card.chart.addSeries(LWC.CandlestickSeries, {
        upColor: '#26a69a', downColor: '#ef5350', borderVisible: false,
        wickUpColor: '#26a69a', wickDownColor: '#ef5350',
        priceFormat: { type: 'price', precision: 2, minMove: 0.05 },
      });
    }
    return card;
  }

  function syncCards(keys) {
    const body = $('options-body');
    for (const [key, card] of cards) {
      if (!keys.includes(key)) {
        if (card.chart) card.chart.remove();
        card.el.remove();
        cards.delete(key);
      }
    }
    for (const key of keys) {
      if (!cards.has(key)) {
        const card = makeCard(key);
        cards.set(key, card);
        redrawCard(key);
      }
      body.appendChild(cards.get(key).el);     // keeps the order of `keys`
    }
    const empty = $('options-empty');
    if (empty) empty.hidden = keys.length > 0;
  }

  const lw = (b) => ({ time: b.time, open: b.open, high: b.high, low: b.low, close: b.close });
  const barsOf = (key) => amt.state.bars.get(key) || new Map();

  function redrawCard(key) {
    const card = cards.get(key);
    if (!card) return;
    const arr = Array.from(barsOf(key).values()).sort((a, b) => a.time - b.time);
    if (card.series) {
      card.series.setData(arr.map(lw));
      card.chart.timeScale().fitContent();
    }
    card.times = new Set(arr.map((b) => b.time));
    card.last = arr.length ? arr[arr.length - 1].time : -Infinity;
    renderQuote(key);
  }

  function updateBar(key, time) {
    const card = cards.get(key);
    const b = barsOf(key).get(time);
    if (!card || !b) return;
    if (!card.series) return;
    if (time >= card.last) {
      card.series.update(lw(b));
      card.last = time;
      card.times.add(time);
    } else if (card.times.has(time)) {
      card.series.update(lw(b), true);       // correct an older bar in place (v5 historicalUpdate)
    } else {
      redrawCard(key);
    }
  }

  // LTP and change against the previous session's last close (when the page holds an earlier
  // IST day) else the day's first open; OI and its change against the previous session's last
  // candle, else the day's first candle (the OI after its first minute).
  function renderQuote(key) {
    const card = cards.get(key);
    if (!card) return;
    const t = amt.state.ticks.get(key);
    const bars = barsOf(key);
    let lastBar = null;
    for (const b of bars.values()) if (!lastBar || b.time > lastBar.time) lastBar = b;
    const ltp = t ? t.ltp : lastBar ? lastBar.close : null;
    const day = t ? istDay(barTime(t.ts)) : lastBar ? istDay(lastBar.time) : null;
    let ref = null, refTime = -Infinity, open = null, openTime = Infinity;
    for (const b of bars.values()) {
      const d = istDay(b.time);
      if (d < day && b.time > refTime) { refTime = b.time; ref = b.close; }
      if (d === day && b.time < openTime) { openTime = b.time; open = b.open; }
    }
    const base = ref !== null ? ref : open;
    const ltpEl = card.el.querySelector('.opt-ltp');
    const chEl = card.el.querySelector('.opt-chg');
    ltpEl.textContent = fmtPrice(ltp);
    if (ltp !== null && base !== null) {
      const d = ltp - base;
      const sign = d > 0 ? '+' : d < 0 ? '−' : '';
      chEl.textContent = `${sign}${fmtPrice(Math.abs(d))} (${sign}${base ? Math.abs((d / base) * 100).toFixed(1) : '0.0'}%)`;
      chEl.className = 'opt-chg ' + (d > 0 ? 'up' : d < 0 ? 'down' : 'muted');
      chEl.title = `vs ${ref !== null ? 'previous close' : 'day open'} ${fmtPrice(base)}`;
    } else {
      chEl.textContent = '—'; chEl.className = 'opt-chg muted';
    }
    // OI: the last tick's, else the last candle's
    let oiRef = null, oiRefT = -Infinity, oiOpen = null, oiOpenT = Infinity, oiLast = null, oiLastT = -Infinity;
    for (const [time, oi] of card.oi) {
      const d = istDay(time);
      if (d < day && time > oiRefT) { oiRefT = time; oiRef = oi; }
      if (d === day && time < oiOpenT) { oiOpenT = time; oiOpen = oi; }
      if (time > oiLastT) { oiLastT = time; oiLast = oi; }
    }
    const oi = t && t.oi ? t.oi : oiLast;
    const oiBase = oiRef !== null ? oiRef : oiOpen;
    const oiEl = card.el.querySelector('.opt-oi');
    if (typeof oi === 'number' && oi > 0) {
      const dOi = oiBase !== null ? oi - oiBase : null;
      oiEl.textContent = `OI ${fmtOi(oi)}` + (dOi !== null ? ` ${dOi >= 0 ? '+' : ''}${fmtOi(dOi)}` : '');
      oiEl.className = 'opt-oi ' + (dOi > 0 ? 'up' : dOi < 0 ? 'down' : 'muted');
      oiEl.title = `open interest ${oi.toLocaleString('en-IN')} units` + (dOi !== null
        ? `, change ${dOi.toLocaleString('en-IN')} vs ${oiRef !== null ? 'previous session' : 'first minute'}` : '');
    } else {
      oiEl.textContent = 'OI —'; oiEl.className = 'opt-oi muted';
    }
  }

  // --- frames from app.js -----------------------------------------------------------------
  function noteOi(c) {
    const card = cards.get(c.instrument_key);
    if (card && c.interval === '1m' && typeof c.oi === 'number') card.oi.set(barTime(c.ts), c.oi);
  }

  let inHistory = false;
  document.addEventListener('amt:frame', (ev) => {
    const msg = ev.detail || {};
    if (Boolean(amt.state.history) !== inHistory) { inHistory = !inHistory; apply(); }
    if (inHistory) return;
    if (amt.state.instruments.length !== fetchedFor) refreshList();
    else if (chosen === null && options.length && amt.state.ticks.get(amt.state.selected)
             && (!fallbackPriced || !fallback || fallback.length < Math.min(2, options.length))) apply();
    if (msg.type === 'snapshot') {
      for (const [key, list] of Object.entries(msg.candles || {})) {
        const card = cards.get(key);
        if (!card) continue;
        for (const c of list) noteOi(c);
      }
      for (const key of cards.keys()) redrawCard(key);
      return;
    }
    const touched = new Map();           // key -> Set(chart times)
    const touch = (key, ts) => {
      if (!cards.has(key)) return;
      if (!touched.has(key)) touched.set(key, new Set());
      touched.get(key).add(barTime(ts));
    };
    for (const c of msg.candles || []) { noteOi(c); if (c.interval === '1m') touch(c.instrument_key, c.ts); }
    for (const t of Object.values(msg.ticks || {})) touch(t.instrument_key, t.ts);
    for (const [key, times] of touched) {
      for (const time of Array.from(times).sort((a, b) => a - b)) updateBar(key, time);
      renderQuote(key);
    }
  });

  // the chart's instrument changed: the default choice follows its underlying
  document.addEventListener('amt:selected', () => { if (chosen === null) { fallback = null; apply(); } });

  // for tests and the browser console
  amt.options = {
    get shown() { return shown(); },
    get available() { return options.map((o) => o.instrument_key); },
    data: (key) => (cards.get(key) && cards.get(key).series ? cards.get(key).series.data() : null),
    choose(keys) { chosen = keys.slice(); saveChoice(); apply(); },
  };

  refreshList();
})();
