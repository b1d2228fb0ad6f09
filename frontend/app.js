// AMT desk: one WebSocket to the API (/ws), a lightweight-charts v5 candlestick chart,
// a signals table and a services health strip. Plain JS, no build step.
//
// Server frames (see api/hub.py): first {"type":"snapshot", instruments, candles:{key:[...]},
// ticks:{key:tick}, profiles, signals:[...], health:{svc:h}, health_age_ms:{svc:ms}}, then
// {"type":"batch", ticks:{key:tick}, candles:[...], signals:[...], health:{svc:h}, profiles}
// every 100 ms at most. Prices are rupees; every `ts` is epoch ms UTC.
'use strict';

(function () {
  // lightweight-charts has no time-zone support: it formats every UTCTimestamp as UTC. We want
  // the axis and crosshair to read Indian wall-clock time (IST = UTC+05:30, no DST), so each
  // bar's time is shifted by +5.5 h = 19800 s before it reaches the chart. These shifted
  // numbers are only chart coordinates; text outside the chart is formatted with the real
  // time zone (Intl, Asia/Kolkata).
  const IST_OFFSET_S = 19800;
  const STALE_TICK_MS = 10000;      // banner when no tick has arrived for this long
  const STALE_HEALTH_MS = 5000;     // a service whose last report is older is shown stale
  const MAX_BARS = 2000;            // bars kept per instrument in the browser
  const MAX_SIGNALS = 500;

  const LWC = window.LightweightCharts;
  const $ = (id) => document.getElementById(id);
  const priceFmt = new Intl.NumberFormat('en-IN', { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const timeFmt = new Intl.DateTimeFormat('en-GB', {
    timeZone: 'Asia/Kolkata', hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
  });
  const dateFmt = new Intl.DateTimeFormat('en-GB', { timeZone: 'Asia/Kolkata', day: '2-digit', month: 'short' });

  const fmtPrice = (p) => (typeof p === 'number' && isFinite(p) ? priceFmt.format(p) : '—');
  const fmtTime = (ts) => timeFmt.format(new Date(ts));
  const barTime = (ts) => Math.floor(ts / 60000) * 60 + IST_OFFSET_S;   // chart time of ts's minute
  const istDay = (chartTime) => Math.floor(chartTime / 86400);         // IST calendar day of a bar
  const shortName = (key) => (key.includes('|') ? key.split('|').slice(1).join('|') : key);

  // --- state ------------------------------------------------------------------------------
  const state = {
    instruments: [],
    // ?instrument=KEY in the URL wins over the last choice remembered in this browser
    selected: new URLSearchParams(location.search).get('instrument') || localStorage.getItem('amt.instrument') || null,
    bars: new Map(),        // key -> Map(chartTime -> {time, open, high, low, close, final})
    ticks: new Map(),       // key -> last tick
    profiles: new Map(),    // key -> last profile
    signals: [],            // newest last
    signalIds: new Set(),
    health: new Map(),      // service -> {h, rx: Date.now() when received}
    lastTickRx: 0,          // Date.now() of the last tick that arrived live (0: none yet)
    connectedAt: 0,
    connected: false,
    history: null,          // frontend/history.js: {date, instrument_key, speed, label} while a recorded day is shown
  };

  // --- chart ------------------------------------------------------------------------------
  let chart = null;
  let series = null;
  let markers = null;
  let priceLines = [];
  let chartKey = null;          // instrument currently drawn
  let chartTimes = new Set();   // bar times currently in the series
  let chartLast = -Infinity;    // newest bar time in the series

  if (LWC) {
    chart = LWC.createChart($('chart'), {
      autoSize: true,
      layout: { background: { type: LWC.ColorType.Solid, color: '#121720' }, textColor: '#b4bccb',
                fontSize: 11 },
      grid: { vertLines: { color: '#1b222d' }, horzLines: { color: '#1b222d' } },
      rightPriceScale: { borderColor: '#232b38' },
      timeScale: { borderColor: '#232b38', timeVisible: true, secondsVisible: false, rightOffset: 4 },
      crosshair: { mode: LWC.CrosshairMode.Normal },
      localization: { priceFormatter: (p) => priceFmt.format(p) },
    });
    series = chart.addSeries(LWC.CandlestickSeries, {
      upColor: '#26a69a', downColor: '#ef5350', borderVisible: false,
      wickUpColor: '#26a69a', wickDownColor: '#ef5350',
      priceFormat: { type: 'price', precision: 2, minMove: 0.05 },
    });
    markers = LWC.createSeriesMarkers(series, []);
  } else {
    const div = document.createElement('div');
    div.className = 'chart-missing';
    div.textContent = 'Chart library not installed. Run "npm ci --prefix frontend" and reload the page.';
    $('chart').appendChild(div);
  }

  const lw = (b) => ({ time: b.time, open: b.open, high: b.high, low: b.low, close: b.close });

  // --- timeframes: 1-minute bars are kept; 3/5/15-minute bars are aggregated from them, in
  // buckets aligned to the 09:15 IST open as NSE charts are (555 = 09:15 in minutes).
  const TIMEFRAMES = [1, 3, 5, 15];
  let timeframe = Number(localStorage.getItem('amt.timeframe')) || 1;
  if (!TIMEFRAMES.includes(timeframe)) timeframe = 1;
  function bucketOf(time) {
    if (timeframe === 1) return time;
    const minute = Math.floor((time % 86400) / 60);
    return time - ((((minute - 555) % timeframe) + timeframe) % timeframe) * 60;
  }
  function aggregate(arr) {
    if (timeframe === 1) return arr;
    const out = [];
    for (const b of arr) {
      const t = bucketOf(b.time);
      const last = out[out.length - 1];
      if (last && last.time === t) {
        last.high = Math.max(last.high, b.high);
        last.low = Math.min(last.low, b.low);
        last.close = b.close;
      } else {
        out.push({ time: t, open: b.open, high: b.high, low: b.low, close: b.close });
      }
    }
    return out;
  }
  function bucketBar(key, time) {
    if (timeframe === 1) return barsOf(key).get(time);
    const start = bucketOf(time);
    const parts = [];
    for (let i = 0; i < timeframe; i++) {
      const b = barsOf(key).get(start + i * 60);
      if (b) parts.push(b);
    }
    return aggregate(parts)[0];
  }
  function setTimeframe(tf) {
    timeframe = tf;
    localStorage.setItem('amt.timeframe', String(tf));
    for (const btn of document.querySelectorAll('#timeframes button')) {
      btn.classList.toggle('active', Number(btn.dataset.tf) === tf);
    }
    const label = $('chart-interval');
    if (label) label.textContent = `${tf}-minute candles · times in IST`;
    redraw(false);
  }

  function barsOf(key) {
    let m = state.bars.get(key);
    if (!m) { m = new Map(); state.bars.set(key, m); }
    return m;
  }

  function sortedBars(key) {
    const m = barsOf(key);
    const arr = Array.from(m.values()).sort((a, b) => a.time - b.time);
    if (arr.length > MAX_BARS) {
      for (const b of arr.splice(0, arr.length - MAX_BARS)) m.delete(b.time);
    }
    return arr;
  }

  // Replace the series' data (snapshot, instrument switch). Live updates use series.update
  // so the user's zoom and scroll survive; setData here keeps it too unless `toRealTime`.
  function redraw(toRealTime) {
    if (!series || !state.selected) return;
    const ts = chart.timeScale();
    const scrolledBack = !toRealTime && chartKey === state.selected && ts.scrollPosition() < -1;
    const range = scrolledBack ? ts.getVisibleRange() : null;
    const arr = aggregate(sortedBars(state.selected));
    series.setData(arr.map(lw));
    chartKey = state.selected;
    chartTimes = new Set(arr.map((b) => b.time));
    chartLast = arr.length ? arr[arr.length - 1].time : -Infinity;
    if (range) ts.setVisibleRange(range);
    else if (toRealTime) ts.scrollToRealTime();
    redrawMarkers();
    redrawProfile();
  }

  let redrawPending = false;
  function pushBar(key, minuteBar) {
    if (!series || key !== chartKey) return;
    const b = bucketBar(key, minuteBar.time);
    if (b.time >= chartLast) {
      series.update(lw(b));
      chartLast = b.time;
      chartTimes.add(b.time);
    } else if (chartTimes.has(b.time)) {
      series.update(lw(b), true);        // correct an older bar in place (v5 historicalUpdate)
    } else if (!redrawPending) {         // a bar older than the newest one but missing: rare
      redrawPending = true;
      setTimeout(() => { redrawPending = false; redraw(false); }, 0);
    }
  }

  function applyCandle(c) {
    if (c.interval !== '1m') return;
    const time = barTime(c.ts);
    const bars = barsOf(c.instrument_key);
    const old = bars.get(time);
    if (old && old.final && !c.final) return;            // never overwrite a closed bar with a forming one
    const b = { time, open: c.open, high: c.high, low: c.low, close: c.close, final: c.final !== false };
    bars.set(time, b);
    pushBar(c.instrument_key, b);
  }

  // The forming bar is built from ticks. Batches carry only the last tick per 100 ms, so its
  // high/low can miss an extreme inside one window; the closed candle then corrects it.
  function applyTick(t) {
    state.ticks.set(t.instrument_key, t);
    const time = barTime(t.ts);
    const bars = barsOf(t.instrument_key);
    let b = bars.get(time);
    if (b && b.final) return;                            // late tick of a closed minute
    if (!b) {
      b = { time, open: t.ltp, high: t.ltp, low: t.ltp, close: t.ltp, final: false };
      bars.set(time, b);
    } else {
      b.high = Math.max(b.high, t.ltp);
      b.low = Math.min(b.low, t.ltp);
      b.close = t.ltp;
    }
    pushBar(t.instrument_key, b);
  }

  // --- signals ----------------------------------------------------------------------------
  const signalId = (s) => `${s.strategy}|${s.instrument_key}|${s.ts}|${s.side}|${s.entry}`;

  function addSignals(list) {
    const added = [];
    for (const s of list) {
      const id = signalId(s);
      if (state.signalIds.has(id)) continue;
      state.signalIds.add(id);
      state.signals.push(s);
      added.push(s);
    }
    if (state.signals.length > MAX_SIGNALS) {
      for (const s of state.signals.splice(0, state.signals.length - MAX_SIGNALS)) {
        state.signalIds.delete(signalId(s));
      }
    }
    return added;
  }

  // Entries and exits of paper/live positions (frontend/blotter.js hands over the blotter's
  // positions): an entry is a circle at its fill, an exit a square naming why it closed.
  let trades = [];              // [{instrument_key, side, entry_ts, entry_price, exit_ts, exit_price, exit_reason}]
  function setTrades(list) {
    const next = (list || []).filter((p) => p && p.entry_ts);
    if (JSON.stringify(next) === JSON.stringify(trades)) return;
    trades = next;
    redrawMarkers();
  }
  const EXIT_LABEL = { stop: 'SL', breakeven_stop: 'BE', target: 'TGT', time: 'TIME', square_off: 'SQ', kill_switch: 'KILL' };

  function redrawMarkers() {
    if (!markers) return;
    const list = state.signals
      .filter((s) => s.instrument_key === state.selected)
      .map((s) => ({
        time: bucketOf(barTime(s.ts)),
        position: s.side === 'BUY' ? 'belowBar' : 'aboveBar',
        shape: s.side === 'BUY' ? 'arrowUp' : 'arrowDown',
        color: s.side === 'BUY' ? '#26a69a' : '#ef5350',
        text: s.side === 'BUY' ? 'B' : 'S',
        size: 1.4,
        kind: 'signal',
      }));
    if (!state.history) {            // a recorded day shows its signals; trades are the live session's
      for (const p of trades.filter((t) => t.instrument_key === state.selected)) {
        const long = p.side === 'BUY';
        list.push({ time: bucketOf(barTime(p.entry_ts)), position: long ? 'belowBar' : 'aboveBar', shape: 'circle',
                    color: '#4f8cff', text: `entry ${priceFmt.format(p.entry_price)}`, size: 1, kind: 'entry' });
        if (p.exit_ts) {
          list.push({ time: bucketOf(barTime(p.exit_ts)), position: long ? 'aboveBar' : 'belowBar', shape: 'square',
                      color: p.realised_pnl >= 0 ? '#26a69a' : '#ef5350',
                      text: `exit ${EXIT_LABEL[p.exit_reason] || p.exit_reason} ${priceFmt.format(p.exit_price)}`,
                      size: 1, kind: 'exit' });
        }
      }
    }
    list.sort((a, b) => a.time - b.time);
    markers.setMarkers(list);
  }

  function signalRow(s) {
    const tr = document.createElement('tr');
    if (s.instrument_key === state.selected) tr.className = 'sel';
    const d = new Date(s.ts);
    const cells = [
      [fmtTime(s.ts), 'time', `${dateFmt.format(d)} ${fmtTime(s.ts)} IST`],
      [s.strategy, ''],
      [shortName(s.instrument_key), '', s.instrument_key],
      [s.side, `side-${s.side}`],
      [fmtPrice(s.entry), 'num'],
      [fmtPrice(s.stop_loss), 'num'],
      [fmtPrice(s.target), 'num'],
      [s.reason || '', 'reason'],
    ];
    for (const [text, cls, title] of cells) {
      const td = document.createElement('td');
      td.textContent = text;           // textContent: a strategy's reason is never parsed as HTML
      if (cls) td.className = cls;
      if (title) td.title = title;
      tr.appendChild(td);
    }
    return tr;
  }

  function renderSignals() {
    const body = $('signals-body');
    body.replaceChildren();
    if (!state.signals.length) {
      const tr = document.createElement('tr');
      tr.className = 'empty';
      tr.innerHTML = '<td colspan="8">no signals yet</td>';
      body.appendChild(tr);
    } else {
      const frag = document.createDocumentFragment();
      for (let i = state.signals.length - 1; i >= 0; i--) frag.appendChild(signalRow(state.signals[i]));
      body.appendChild(frag);
    }
    $('signal-count').textContent = String(state.signals.length);
  }

  function prependSignals(added) {
    if (!added.length) return;
    const body = $('signals-body');
    const empty = body.querySelector('tr.empty');
    if (empty) empty.remove();
    for (const s of added) body.insertBefore(signalRow(s), body.firstChild);
    while (body.rows.length > MAX_SIGNALS) body.deleteRow(body.rows.length - 1);
    $('signal-count').textContent = String(state.signals.length);
  }

  // --- Market Profile levels (drawn only if the profile carries poc / vah / val) ----------
  function redrawProfile() {
    if (!series) return;
    for (const l of priceLines) series.removePriceLine(l);
    priceLines = [];
    const p = state.profiles.get(state.selected);
    document.dispatchEvent(new CustomEvent('amt:profile'));
    if (!p || typeof p !== 'object') return;
    // Today's value (POC/VAH/VAL), the initial balance, and the prior session's value.
    const levels = [['poc', 'POC', '#f0b429', 'Dashed'], ['vah', 'VAH', '#4c8dff', 'Dashed'],
                    ['val', 'VAL', '#4c8dff', 'Dashed'], ['ib_high', 'IBH', '#9b7bd4', 'Dotted'],
                    ['ib_low', 'IBL', '#9b7bd4', 'Dotted'], ['prior_poc', 'pPOC', '#8a6d1f', 'SparseDotted'],
                    ['prior_vah', 'pVAH', '#3a5a8f', 'SparseDotted'], ['prior_val', 'pVAL', '#3a5a8f', 'SparseDotted']];
    for (const [field, title, color, style] of levels) {
      if (typeof p[field] === 'number' && isFinite(p[field])) {
        priceLines.push(series.createPriceLine({
          price: p[field], color, lineWidth: 1, lineStyle: LWC.LineStyle[style], axisLabelVisible: true, title,
        }));
      }
    }
  }

  // --- header -----------------------------------------------------------------------------
  // Change is shown against the previous session's last close when the browser holds bars of
  // an earlier IST day, else against the first bar (open) of the current day.
  function reference(key, day) {
    let prevClose = null, prevTime = -Infinity, dayOpen = null, openTime = Infinity;
    for (const b of barsOf(key).values()) {
      const d = istDay(b.time);
      if (d < day && b.time > prevTime) { prevTime = b.time; prevClose = b.close; }
      if (d === day && b.time < openTime) { openTime = b.time; dayOpen = b.open; }
    }
    if (prevClose !== null) return { price: prevClose, label: 'prev close' };
    if (dayOpen !== null) return { price: dayOpen, label: 'open' };
    return null;
  }

  function renderQuote() {
    const key = state.selected;
    $('chart-title').textContent = key ? `${shortName(key)}  ·  ${key}` : '—';
    const t = key ? state.ticks.get(key) : null;
    const ltpEl = $('ltp'), chEl = $('change');
    if (!t) {
      ltpEl.textContent = '—'; chEl.textContent = 'no ticks yet'; chEl.className = 'change muted';
      $('tick-time').textContent = '—';
    } else {
      ltpEl.textContent = fmtPrice(t.ltp);
      $('tick-time').textContent = fmtTime(t.ts);
      const ref = reference(key, istDay(barTime(t.ts)));
      if (ref) {
        const d = t.ltp - ref.price;
        const pct = ref.price ? (d / ref.price) * 100 : 0;
        const sign = d > 0 ? '+' : d < 0 ? '−' : '';
        chEl.textContent = `${sign}${fmtPrice(Math.abs(d))} (${sign}${Math.abs(pct).toFixed(2)}%) vs ${ref.label}`;
        chEl.className = 'change ' + (d > 0 ? 'up' : d < 0 ? 'down' : 'muted');
        ltpEl.className = 'ltp ' + (d > 0 ? 'up' : d < 0 ? 'down' : '');
      } else {
        chEl.textContent = '—'; chEl.className = 'change muted'; ltpEl.className = 'ltp';
      }
    }
    const bars = key ? barsOf(key) : null;
    let last = null;
    if (bars) for (const b of bars.values()) if (!last || b.time > last.time) last = b;
    $('bar-ohlc').textContent = last
      ? `O ${fmtPrice(last.open)} H ${fmtPrice(last.high)} L ${fmtPrice(last.low)} C ${fmtPrice(last.close)}${last.final ? '' : ' (forming)'}`
      : '—';
  }

  function renderInstruments() {
    const sel = $('instrument');
    const have = Array.from(sel.options).map((o) => o.value).join('\n');
    if (have === state.instruments.join('\n')) { sel.value = state.selected || ''; return; }
    sel.replaceChildren(...state.instruments.map((k) => {
      const o = document.createElement('option');
      o.value = k; o.textContent = shortName(k); o.title = k;
      return o;
    }));
    sel.value = state.selected || '';
  }

  function noteInstrument(key) {
    if (!state.instruments.includes(key)) {
      state.instruments.push(key);
      renderInstruments();
    }
    if (!state.selected) selectInstrument(key);
  }

  function selectInstrument(key) {
    state.selected = key;
    try { localStorage.setItem('amt.instrument', key); } catch (e) { /* private mode */ }
    renderInstruments();
    redraw(true);
    renderQuote();
    renderSignals();        // re-marks the rows of the selected instrument
    sendSubscribe(false);
    document.dispatchEvent(new CustomEvent('amt:selected'));
  }

  $('instrument').addEventListener('change', (e) => selectInstrument(e.target.value));

  // --- health strip -----------------------------------------------------------------------
  const STATUS_CLASS = { ready: 'ok', running: 'ok', starting: 'busy', stopping: 'busy', finished: 'done', error: 'err' };

  function fmtAge(ms) {
    if (ms < 1000) return '<1s';
    if (ms < 60000) return `${Math.floor(ms / 1000)}s`;
    if (ms < 3600000) return `${Math.floor(ms / 60000)}m`;
    return `${Math.floor(ms / 3600000)}h`;
  }

  // Exchange segments' status from the live feed's market-info message (Upstox), carried in the
  // ingestor's health details; hidden for the simulator and replays, which have none.
  const MARKET_TEXT = {
    PRE_OPEN_START: 'pre-open', PRE_OPEN_END: 'pre-open ended', NORMAL_OPEN: 'open',
    NORMAL_CLOSE: 'closed', CLOSING_START: 'closing session', CLOSING_END: 'closed',
  };

  function renderMarket() {
    const ing = state.health.get('ingestor');
    const ms = ing && ing.h.details && ing.h.details.market_status;
    $('market-row').hidden = !ms;
    if (!ms) return;
    const key = state.selected || '';
    const seg = key.includes('|') ? key.split('|')[0] : 'NSE_FO';
    const status = (ms.segments || {})[seg] || (ms.segments || {}).NSE_FO || '';
    const el = $('market-status');
    el.textContent = `${MARKET_TEXT[status] || status || '—'} (${seg}, ${fmtTime(ms.ts)} IST)`;
    el.className = status === 'NORMAL_OPEN' ? 'up' : 'muted';
    el.title = Object.entries(ms.segments || {}).map(([k, v]) => `${k}: ${v}`).join('\n');
  }

  // Feed and recording rates from consecutive ingestor reports (counters are cumulative).
  let feedRate = null;
  function ingestorRates(h) {
    const d = h.details || {};
    if (!feedRate || feedRate.ts !== h.ts) {
      const prev = feedRate;
      const next = { ts: h.ts, pub: d.ticks_published || 0, wr: d.ticks_written || 0,
                     tps: prev ? prev.tps : null, wps: prev ? prev.wps : null };
      if (prev && h.ts > prev.ts) {
        const dt = (h.ts - prev.ts) / 1000;
        next.tps = Math.max(0, (next.pub - prev.pub) / dt);
        next.wps = Math.max(0, (next.wr - prev.wr) / dt);
      }
      feedRate = next;
    }
    return feedRate;
  }
  const fmtRate = (x) => (x === null || !isFinite(x) ? '—' : x >= 1000 ? `${(x / 1000).toFixed(1)}k` : x.toFixed(0));

  function renderHealth() {
    renderMarket();
    const strip = $('health-strip');
    const now = Date.now();
    const items = Array.from(state.health.entries()).sort((a, b) => a[0].localeCompare(b[0]));
    if (!items.length) return;
    strip.replaceChildren(...items.map(([svc, { h, rx }]) => {
      const age = now - rx;
      const el = document.createElement('span');
      el.className = `svc ${STATUS_CLASS[h.status] || 'busy'}${age > STALE_HEALTH_MS ? ' stale' : ''}`;
      const parts = [['name', svc], ['st', h.status], ['muted', `pid ${h.pid}`], ['age', fmtAge(age)]];
      if (svc === 'ingestor') {
        const r = ingestorRates(h);
        const last = (h.details || {}).last_tick_wall_ms;
        parts.push(['muted rates', `${fmtRate(r.tps)} ticks/s · DuckDB ${fmtRate(r.wps)} rows/s` +
                                   (last ? ` · last tick ${fmtAge(now - last)} ago` : '')]);
      }
      const d = h.details || {};
      if (typeof d.bus_out_per_s === 'number') {        // every service's bus frames/s (scripts/service.py)
        parts.push(['bus', `↑${fmtRate(d.bus_out_per_s)} ↓${fmtRate(d.bus_in_per_s)}`]);
      }
      for (const [cls, text] of parts) {
        const s = document.createElement('span');
        s.className = cls; s.textContent = text;
        if (cls === 'bus') {
          s.dataset.out = h.details.bus_out_per_s; s.dataset.in = h.details.bus_in_per_s;
          s.title = `bus frames/s: ↑ ${h.details.bus_out_per_s} published, ↓ ${h.details.bus_in_per_s} received`
            + ` (totals ${h.details.bus_out} / ${h.details.bus_in})`;
        }
        el.appendChild(s);
      }
      el.title = JSON.stringify(h.details || {}, null, 1);
      return el;
    }));
  }

  // --- banner -----------------------------------------------------------------------------
  let reconnectAt = 0, attempt = 0, everConnected = false;

  function renderBanner() {
    const el = $('banner');
    let cls = '', html = '';
    if (!state.connected) {
      const secs = Math.max(0, Math.ceil((reconnectAt - Date.now()) / 1000));
      cls = 'error';
      const retry = `reconnecting${secs ? ` in ${secs}s` : '…'} (attempt ${attempt})`;
      html = !attempt ? 'Connecting to the API…'
        : everConnected ? `Connection to the API lost — ${retry}. Data shown may be out of date.`
        : `Cannot reach the API at ${location.host} — ${retry}. Is it running?`;
    } else if (!state.history) {            // a replayed day has no live ticks to miss
      const since = state.lastTickRx || state.connectedAt;
      const idle = Date.now() - since;
      if (idle > STALE_TICK_MS) {
        const t = state.ticks.get(state.selected);
        cls = 'warn';
        html = `No ticks for ${fmtAge(idle)} — feed stopped, replay finished or market closed.`
          + (t ? ` Last tick ${fmtTime(t.ts)} IST.` : '');
      }
    }
    if (!LWC) {
      cls = cls || 'warn';
      html = 'Chart library missing: run <code>npm ci --prefix frontend</code> and reload. ' + html;
    }
    el.hidden = !html;
    el.className = 'banner ' + cls;
    el.innerHTML = html;      // only our own fixed strings and formatted numbers
  }

  function renderConn() {
    $('conn-dot').className = 'dot ' + (state.connected ? 'ok' : 'bad');
    // in History mode (frontend/history.js) the header names the replayed day, never "live"
    $('conn-text').textContent = state.history ? state.history.label : state.connected ? 'live' : 'offline';
    $('conn-text').classList.toggle('history', !!state.history);
  }

  // --- frames -----------------------------------------------------------------------------
  function onSnapshot(s) {
    if (state.history) return onHeld(s);
    // The snapshot's closed candles win; bars and signals this page already holds are kept
    // (merged by time / identity), so a restarted API - which starts with an empty memory -
    // does not blank a page that has been watching the day.
    for (const [key, list] of Object.entries(s.candles || {})) {
      const m = barsOf(key);
      for (const c of list) m.set(barTime(c.ts), {
        time: barTime(c.ts), open: c.open, high: c.high, low: c.low, close: c.close, final: true,
      });
    }
    for (const t of Object.values(s.ticks || {})) applyTick(t);
    for (const [key, p] of Object.entries(s.profiles || {})) state.profiles.set(key, p);
    addSignals(s.signals || []);
    state.signals.sort((a, b) => a.ts - b.ts);
    const now = Date.now();
    state.health = new Map();
    for (const [svc, h] of Object.entries(s.health || {})) {
      state.health.set(svc, { h, rx: now - ((s.health_age_ms || {})[svc] || 0) });
    }
    const keys = new Set(s.instruments || []);
    for (const k of state.bars.keys()) keys.add(k);
    for (const k of state.ticks.keys()) keys.add(k);
    state.instruments = Array.from(keys);
    if (!state.selected || !keys.has(state.selected)) state.selected = state.instruments[0] || null;
    renderInstruments();
    redraw(chartKey !== state.selected);
    renderQuote();
    renderSignals();
    renderHealth();
    checkFilter(s);
    document.dispatchEvent(new CustomEvent('amt:frame', { detail: s }));     // frontend/options.js
  }

  function onBatch(b, replayed) {
    if (state.history && !replayed) return onHeld(b);
    let ticked = false;
    for (const c of b.candles || []) { noteInstrument(c.instrument_key); applyCandle(c); }
    for (const t of Object.values(b.ticks || {})) { noteInstrument(t.instrument_key); applyTick(t); ticked = true; }
    if (ticked) state.lastTickRx = Date.now();
    const added = addSignals(b.signals || []);
    if (added.length) {
      prependSignals(added);
      if (added.some((s) => s.instrument_key === state.selected)) redrawMarkers();
    }
    let profileChanged = false;
    for (const [key, p] of Object.entries(b.profiles || {})) {
      state.profiles.set(key, p);
      if (key === state.selected) profileChanged = true;
    }
    if (profileChanged) redrawProfile();
    const now = Date.now();
    let healthChanged = false;
    for (const [svc, h] of Object.entries(b.health || {})) { state.health.set(svc, { h, rx: now }); healthChanged = true; }
    if (healthChanged) renderHealth();
    if (b.health && b.health.api) checkInstrumentCount(b.health.api);
    renderQuote();
    document.dispatchEvent(new CustomEvent('amt:frame', { detail: b }));     // frontend/options.js
  }

  // --- subscription: the server sends this page only the instruments it shows (the chart's and
  // the option panel's, frontend/options.js) - {"subscribe":[key...]}, see api/hub.py. The
  // instrument list still grows: the API's health counts the instruments it knows, and when
  // that passes ours a fresh snapshot (which lists them all) is asked for, at most every 2 s.
  const extraKeys = new Set();
  let lastInstrumentRefresh = 0;
  const wantedKeys = () => Array.from(new Set([state.selected, ...extraKeys].filter(Boolean))).sort();
  function sendSubscribe(force) {
    const keys = wantedKeys();
    if (!ws || ws.readyState !== 1 || !keys.length) return;
    const text = JSON.stringify({ subscribe: keys });
    if (!force && text === sendSubscribe.last) return;
    sendSubscribe.last = text;
    ws.send(text);
  }
  function checkFilter(s) {            // after a snapshot: is the server's filter ours?
    sendSubscribe.last = null;
    if (JSON.stringify(s.filter || null) !== JSON.stringify(wantedKeys())) sendSubscribe(true);
  }
  function checkInstrumentCount(h) {   // a batch's health.api: does the server know more instruments?
    const n = h && h.details && h.details.instruments;
    if (!(n > state.instruments.length) || !ws || ws.readyState !== 1) return;
    if (Date.now() - lastInstrumentRefresh < 2000) return;
    lastInstrumentRefresh = Date.now();
    ws.send(JSON.stringify({ snapshot: true }));
  }
  function setExtraInstruments(keys) {
    extraKeys.clear();
    for (const k of keys) extraKeys.add(k);
    sendSubscribe(false);
  }

  // --- History mode (frontend/history.js) -------------------------------------------------
  // A recorded day is drawn by the same code as the live stream (its frames go through onBatch),
  // into fresh containers; the live ones are set aside, live frames meanwhile update only the
  // health strip, and Back to live puts the live containers back and asks for a fresh snapshot.
  const VIEW_KEYS = ['bars', 'ticks', 'profiles', 'signals', 'signalIds', 'instruments', 'selected'];
  let liveView = null;
  function onHeld(f) {
    const now = Date.now();
    for (const [svc, h] of Object.entries(f.health || {})) {
      state.health.set(svc, { h, rx: now - ((f.health_age_ms || {})[svc] || 0) });
    }
    if (Object.keys(f.health || {}).length) renderHealth();
  }
  function renderView() {
    renderInstruments(); redraw(true); renderQuote(); renderSignals(); renderConn(); renderBanner();
  }
  function enterHistory(info) {          // info: {date, instrument_key, speed, label}; starts empty
    if (!liveView) liveView = Object.fromEntries(VIEW_KEYS.map((k) => [k, state[k]]));
    Object.assign(state, { history: info, bars: new Map(), ticks: new Map(), profiles: new Map(), signals: [],
                           signalIds: new Set(), instruments: [info.instrument_key], selected: info.instrument_key });
    renderView();
  }
  function exitHistory() {
    if (!liveView) return;
    Object.assign(state, liveView, { history: null });
    liveView = null;
    renderView();
    if (ws && ws.readyState === 1) ws.send(JSON.stringify({ snapshot: true }));
  }

  // --- connection -------------------------------------------------------------------------
  // Reconnect with exponential backoff (0.5 s, x1.6 per attempt, at most 5 s, +-20 % jitter). Every new connection starts
  // with a fresh snapshot from the server, so a restarted API re-fills the page by itself.
  let ws = null;

  function connect() {
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
    ws = new WebSocket(url);
    ws.onopen = () => {
      state.connected = true;
      state.connectedAt = Date.now();
      state.lastTickRx = 0;
      attempt = 0;
      everConnected = true;
      renderConn(); renderBanner();
    };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { console.warn('bad frame', e); return; }
      if (msg.type === 'snapshot') onSnapshot(msg);
      else if (msg.type === 'batch') onBatch(msg);
    };
    ws.onclose = () => {
      const wasConnected = state.connected;
      state.connected = false;
      attempt += 1;
      const delay = Math.min(5000, 500 * 1.6 ** Math.min(attempt - 1, 8)) * (0.8 + 0.4 * Math.random());
      reconnectAt = Date.now() + delay;
      if (wasConnected) console.info('connection lost; reconnecting in', Math.round(delay), 'ms');
      renderConn(); renderBanner();
      setTimeout(connect, delay);
    };
    ws.onerror = () => { /* onclose follows */ };
  }

  // for the browser console: amt.state, amt.chart
  for (const btn of document.querySelectorAll('#timeframes button')) {
    btn.addEventListener('click', () => setTimeframe(Number(btn.dataset.tf)));
  }
  setTimeframe(timeframe);

  window.amt = {
    state, get chart() { return chart; }, get series() { return series; }, get markers() { return markers; },
    setTimeframe, get timeframe() { return timeframe; },
    setExtraInstruments, get subscribed() { return wantedKeys(); },
    enterHistory, exitHistory, applyHistory: (frame) => onBatch(frame, true), renderConn,   // frontend/history.js
    setTrades,                                                                              // frontend/blotter.js
    priceLines: () => Object.fromEntries(priceLines.map((l) => [l.options().title, l.options().price])),
  };

  // ages in the health strip and the staleness banner move with the clock
  setInterval(() => { renderHealth(); renderBanner(); }, 1000);

  renderConn();
  renderBanner();
  connect();
})();
