// History mode: replay any recorded day of one instrument on the desk, at a chosen speed.
//
// A "History" button in the header opens a control bar: the date (GET /api/history/days lists the
// recorded IST trading days with their instruments and tick counts), the instrument, the speed
// (1x, 10x, 60x, 300x market time, or max = as fast as possible), Play / Pause / Back to live.
// Play opens its own WebSocket, /ws/history (see api/history.py), and sends
//   {"type":"history","date":"YYYY-MM-DD","instrument_key":K,"speed":X,"source":S}
// The server streams the day's ticks through the same candle builder and Market Profile engine as
// the live feed, in ~100 ms frames shaped like the live batches, which app.js draws with its own
// code (window.amt.applyHistory) while it holds the live chart data back; the header then reads
// "HISTORY 2022-06-09 ×60" instead of "live". Back to live stops the replay (closing the socket
// cancels it on the server), restores the live view and asks the server for a fresh snapshot.
// Text is only ever set with textContent. Plain JS, no build step.
(function () {
  'use strict';
  const amt = window.amt;
  const topbar = document.querySelector('.topbar');
  if (!amt || !topbar) return;

  const SPEEDS = [[1, '1×'], [10, '10×'], [60, '60×'], [300, '300×'], [0, 'max']];
  const timeFmt = new Intl.DateTimeFormat('en-GB', {
    timeZone: 'Asia/Kolkata', hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
  });
  const countFmt = new Intl.NumberFormat('en-IN');
  const shortName = (key) => (key.includes('|') ? key.split('|').slice(1).join('|') : key);
  const isOption = (key) => /\d+(CE|PE)$/.test(key);
  const speedText = (x) => (x === 0 ? '×max' : `×${x}`);

  // --- DOM: a header button and a control bar under the header ------------------------------
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text) e.textContent = text;
    return e;
  }
  const openBtn = el('button', { type: 'button', id: 'history-open', class: 'history-btn',
                                 title: 'Replay a recorded day on the chart' }, 'History');
  topbar.insertBefore(openBtn, topbar.querySelector('.conn'));

  const bar = el('section', { id: 'history-bar', class: 'history-bar', 'aria-label': 'History' });
  bar.hidden = true;
  const dateSel = el('select', { id: 'history-date', 'aria-label': 'Recorded day' });
  const keySel = el('select', { id: 'history-instrument', 'aria-label': 'Instrument of that day' });
  const speedSel = el('select', { id: 'history-speed', 'aria-label': 'Replay speed' });
  for (const [x, label] of SPEEDS) speedSel.appendChild(el('option', { value: String(x) }, label));
  speedSel.value = localStorage.getItem('amt.historySpeed') || '60';
  const playBtn = el('button', { type: 'button', id: 'history-play', class: 'strat-btn on' }, 'Play');
  const pauseBtn = el('button', { type: 'button', id: 'history-pause', class: 'strat-btn' }, 'Pause');
  const liveBtn = el('button', { type: 'button', id: 'history-live', class: 'strat-btn' }, 'Back to live');
  const status = el('span', { id: 'history-status', class: 'muted history-status' }, '');
  const field = (label, control) => {
    const l = el('label', { class: 'history-field' });
    l.append(el('span', { class: 'muted' }, label), control);
    return l;
  };
  bar.append(el('span', { class: 'history-title' }, 'History'), field('Day', dateSel),
             field('Instrument', keySel), field('Speed', speedSel), playBtn, pauseBtn, liveBtn, status);
  topbar.after(bar);

  // --- state --------------------------------------------------------------------------------
  const st = {
    days: [],            // GET /api/history/days "days"
    truncated: false,    // the server listed only the newest days
    status: 'live',      // live | loading | playing | paused | finished | error
    sid: null,           // the server's session id of the frames we accept
    date: null, instrument_key: null, source: null, speed: 60,
    done: 0, total: 0, candles: 0, signals: 0, market_ts: null, error: '',
  };
  let ws = null;

  function setStatus(text, cls) {
    status.textContent = text;
    status.className = `history-status ${cls || 'muted'}`;
  }

  function render() {
    const inHistory = !!amt.state.history;
    liveBtn.disabled = !inHistory;
    pauseBtn.disabled = st.status !== 'playing';
    playBtn.textContent = st.status === 'paused' ? 'Resume' : 'Play';
    openBtn.classList.toggle('active', inHistory || !bar.hidden);
    document.body.classList.toggle('history-mode', inHistory);
    const when = st.market_ts ? `${timeFmt.format(new Date(st.market_ts))} IST` : '';
    const pct = st.total ? `${Math.floor((100 * st.done) / st.total)} %` : '';
    if (st.status === 'loading') setStatus(`loading ${st.date} …`);
    else if (st.status === 'playing') setStatus(`${when} · ${pct} · ${countFmt.format(st.done)} ticks`);
    else if (st.status === 'paused') setStatus(`paused at ${when} · ${pct}`);
    else if (st.status === 'finished') {
      setStatus(`finished: ${st.candles} candles, ${countFmt.format(st.done)} ticks, ` +
                `${st.signals} signal${st.signals === 1 ? '' : 's'}`);
    } else if (st.status === 'error') setStatus(st.error, 'down');
    else {
      setStatus(st.days.length ? `${st.days.length} recorded day${st.days.length === 1 ? '' : 's'}` +
                (st.truncated ? ' (older days left out)' : '') : '');
    }
  }

  function label() {
    return `HISTORY ${st.date} ${speedText(st.speed)}`;
  }

  // --- the recorded days ----------------------------------------------------------------------
  async function loadDays() {
    try {
      const r = await fetch('/api/history/days', { cache: 'no-store' });
      const body = await r.json();
      if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
      st.days = body.days || [];
      st.truncated = !!body.truncated;
    } catch (e) {
      st.status = amt.state.history ? st.status : 'error';
      st.error = `cannot list the recorded days: ${e.message || e}`;
      render();
      return;
    }
    const keep = dateSel.value;
    dateSel.replaceChildren(...st.days.map((d) => el('option', { value: d.date },
      `${d.date} · ${d.instruments.length} instrument${d.instruments.length === 1 ? '' : 's'}`)));
    if (!st.days.length) dateSel.appendChild(el('option', { value: '' }, 'nothing recorded yet'));
    if (st.days.some((d) => d.date === keep)) dateSel.value = keep;
    fillInstruments();
    if (st.status === 'error' && !amt.state.history) st.status = 'live';
    render();
  }

  function fillInstruments() {
    const day = st.days.find((d) => d.date === dateSel.value);
    const keep = keySel.value || amt.state.selected;
    const list = day ? day.instruments.slice() : [];
    // indices and futures first (they have a Market Profile), options after; busiest first
    list.sort((a, b) => (isOption(a.instrument_key) - isOption(b.instrument_key)) || (b.ticks - a.ticks));
    keySel.replaceChildren(...list.map((i, n) => {
      const o = el('option', { value: String(n) },
        `${shortName(i.instrument_key)} · ${countFmt.format(i.ticks)} ticks · ${i.source}` +
        (i.signals ? ` · ${i.signals} signal${i.signals === 1 ? '' : 's'}` : ''));
      o.title = i.instrument_key;
      o.dataset.key = i.instrument_key;
      o.dataset.source = i.source;
      return o;
    }));
    const match = Array.from(keySel.options).find((o) => o.dataset.key === keep);
    if (match) keySel.value = match.value;
  }

  function chosen() {
    const o = keySel.selectedOptions[0];
    return o ? { date: dateSel.value, instrument_key: o.dataset.key, source: o.dataset.source } : null;
  }

  // --- the replay socket ----------------------------------------------------------------------
  function send(msg) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
  }

  function withSocket(then) {
    if (ws && ws.readyState === WebSocket.OPEN) return then();
    if (ws) { ws.onclose = null; ws.close(); }
    ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws/history`);
    const sock = ws;
    sock.onopen = then;
    sock.onmessage = (ev) => { if (sock === ws) onFrame(JSON.parse(ev.data)); };
    sock.onclose = () => {
      if (sock !== ws) return;
      ws = null;
      if (st.status === 'loading' || st.status === 'playing' || st.status === 'paused') {
        st.status = 'error';
        st.error = 'history connection lost: press Play to replay the day again, or Back to live';
        render();
      }
    };
  }

  function onFrame(msg) {
    switch (msg.type) {
      case 'history_start':
        st.sid = msg.sid;
        Object.assign(st, { date: msg.date, instrument_key: msg.instrument_key, source: msg.source,
                            speed: msg.speed, total: msg.ticks, done: 0, candles: 0, signals: 0,
                            market_ts: msg.first_ts, status: 'playing' });
        amt.enterHistory({ date: msg.date, instrument_key: msg.instrument_key, speed: msg.speed, label: label() });
        break;
      case 'history_batch':
        if (msg.sid !== st.sid) return;
        amt.applyHistory(msg);
        st.done = msg.done;
        if (msg.market_ts) st.market_ts = msg.market_ts;
        st.candles += (msg.candles || []).filter((c) => c.final).length;
        st.signals += (msg.signals || []).length;
        break;
      case 'history_state':
        if (msg.sid !== st.sid) return;
        if (msg.state === 'paused' || msg.state === 'playing') st.status = msg.state;
        st.speed = msg.speed;
        if (amt.state.history) { amt.state.history.label = label(); amt.state.history.speed = msg.speed; amt.renderConn(); }
        break;
      case 'history_end':
        if (msg.sid !== st.sid) return;
        st.status = 'finished';
        break;
      case 'history_error':
        // a start that failed before its history_start carries a sid we have not seen yet
        if (st.status !== 'loading' && msg.sid !== null && msg.sid !== undefined && msg.sid !== st.sid) return;
        st.status = 'error';
        st.error = msg.error;
        break;
      default:
        return;
    }
    render();
  }

  function play() {
    const pick = chosen();
    if (!pick || !pick.date) { st.status = 'error'; st.error = 'pick a recorded day first'; render(); return; }
    const speed = Number(speedSel.value);
    const same = amt.state.history && st.date === pick.date && st.instrument_key === pick.instrument_key;
    if (same && st.status === 'paused' && ws) { send({ type: 'history_resume' }); return; }
    if (same && st.status === 'playing' && ws) return;
    Object.assign(st, { status: 'loading', date: pick.date, instrument_key: pick.instrument_key, error: '' });
    render();
    withSocket(() => send({ type: 'history', date: pick.date, instrument_key: pick.instrument_key,
                            speed, source: pick.source }));
  }

  function pause() {
    if (st.status === 'playing') send({ type: 'history_pause' });
  }

  function backToLive() {
    if (ws) {
      if (st.status === 'loading' || st.status === 'playing' || st.status === 'paused') send({ type: 'history_stop' });
      const sock = ws;
      ws = null;
      sock.onclose = null;
      sock.close();
    }
    Object.assign(st, { status: 'live', sid: null, market_ts: null, error: '' });
    amt.exitHistory();
    render();
  }

  // --- wiring ---------------------------------------------------------------------------------
  openBtn.addEventListener('click', () => {
    bar.hidden = !bar.hidden;
    if (!bar.hidden) loadDays();
    render();
  });
  dateSel.addEventListener('change', fillInstruments);
  speedSel.addEventListener('change', () => {
    localStorage.setItem('amt.historySpeed', speedSel.value);
    if (ws && (st.status === 'playing' || st.status === 'paused')) send({ type: 'history_speed', speed: Number(speedSel.value) });
  });
  playBtn.addEventListener('click', play);
  pauseBtn.addEventListener('click', pause);
  liveBtn.addEventListener('click', backToLive);
  render();

  // for tests and the browser console
  window.amtHistory = { get state() { return { ...st }; }, loadDays, play, pause, backToLive };
})();
