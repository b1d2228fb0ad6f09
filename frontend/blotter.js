// AMT desk: the execution blotter and the kill switch. Polls GET /api/execution once a second
// (api/blotter.py) and draws one row per signal: the risk decision (approved size or the
// rejection's reason), the entry fill, the stop (trailed to break-even or not), the target,
// the exit and the PnL, live while the position is open. Prices rupees; times IST.
'use strict';

(function () {
  const POLL_MS = 1000;
  const MAX_ROWS = 300;
  const $ = (id) => document.getElementById(id);
  const num = new Intl.NumberFormat('en-IN', { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const timeFmt = new Intl.DateTimeFormat('en-GB', {
    timeZone: 'Asia/Kolkata', hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
  });
  const price = (p) => (typeof p === 'number' && isFinite(p) && p !== 0 ? num.format(p) : '—');
  const time = (ts) => (ts ? timeFmt.format(new Date(ts)) : '—');
  const shortName = (key) => (key && key.includes('|') ? key.split('|').slice(1).join('|') : key || '—');
  const esc = (s) => String(s == null ? '' : s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' }[c]));
  let version = null;
  let busy = false;

  function pnlCell(v) {
    if (typeof v !== 'number') return '<td class="num">—</td>';
    const cls = v > 0 ? 'pnl-up' : v < 0 ? 'pnl-down' : '';
    return `<td class="num ${cls}">${num.format(v)}</td>`;
  }

  function row(r) {
    const d = r.decision, p = r.position;
    let decision = '<span class="muted">waiting for the risk guard</span>';
    if (d && d.approved) decision = `${d.lots} × ${d.lot_size}, risk ₹${Math.round(d.risk_amount).toLocaleString('en-IN')}, R:R ${d.reward_risk.toFixed(2)}`;
    else if (d) decision = `<span class="rej">${esc(d.rule)}</span> <span class="muted">${esc(d.reason)}</span>`;
    const qty = p ? p.quantity : d && d.approved ? d.quantity : null;
    let exit = '—', pnl = null, stop = r.stop_loss;
    if (p) {
      stop = p.stop_loss;
      if (p.status === 'closed') {
        exit = `${price(p.exit_price)} <span class="muted">${esc(p.exit_reason)} ${time(p.exit_ts)}</span>`;
        pnl = p.realised_pnl;
      } else {
        exit = `<span class="muted">last ${price(p.last_price)}</span>`;
        pnl = p.unrealised_pnl;
      }
    }
    const trailed = p && p.trailed ? ' <span class="muted" title="moved to break-even">BE</span>' : '';
    return `<tr title="${esc(r.reason)}">` +
      `<td class="time">${time(r.signal_ts)}</td><td>${esc(r.strategy)}</td>` +
      `<td>${esc(shortName(r.instrument_key))}</td><td class="side-${esc(r.side)}">${esc(r.side)}</td>` +
      `<td class="decision" title="${esc(d ? d.reason : '')}">${decision}</td><td class="num">${qty || '—'}</td>` +
      `<td class="num">${p ? price(p.entry_price) : '—'}</td><td class="num">${price(stop)}${trailed}</td>` +
      `<td class="num">${price(p ? p.target : r.target)}</td><td>${exit}</td>${pnlCell(pnl)}` +
      `<td class="st-${esc(r.status)}">${esc(r.status)}</td></tr>`;
  }

  function render(s) {
    const t = s.totals || {};
    const live = s.client && s.client !== 'paper';
    const client = $('exec-client');
    client.textContent = s.client ? (live ? 'LIVE ' + s.client : s.client) : '—';
    client.className = 'exec-client ' + (live ? 'live' : 'muted');
    $('exec-totals').textContent = t.signals
      ? `${s.day}: ${t.signals} signals · ${t.approved} approved · ${t.rejected} rejected · ${t.open} open · ` +
        `${t.closed} closed · realised ₹${num.format(t.realised)} · unrealised ₹${num.format(t.unrealised)}`
      : 'no trades yet';
    const on = s.kill_switch === true;
    $('exec-state').textContent = on ? 'KILL SWITCH ON: no new orders' : '';
    $('exec-state').className = on ? 'exec-state-on' : 'muted';
    $('kill-switch').hidden = on;
    $('kill-resume').hidden = !on;
    const body = $('blotter-body');
    const rows = (s.rows || []).slice(0, MAX_ROWS);
    body.innerHTML = rows.length ? rows.map(row).join('') : '<tr class="empty"><td colspan="12">no signals yet</td></tr>';
    if (window.amt && window.amt.setTrades) {            // entry and exit markers on the chart (app.js)
      window.amt.setTrades((s.rows || []).map((r) => r.position).filter(Boolean).map((p) => ({
        instrument_key: p.instrument_key, side: p.side, entry_ts: p.entry_ts, entry_price: p.entry_price,
        exit_ts: p.status === 'closed' ? p.exit_ts : 0, exit_price: p.exit_price, exit_reason: p.exit_reason,
        realised_pnl: p.realised_pnl,
      })));
    }
  }

  async function poll() {
    try {
      const r = await fetch('/api/execution', { cache: 'no-store' });
      if (r.ok) {
        const s = await r.json();
        if (s.version !== version) {
          version = s.version;
          render(s);
        }
      }
    } catch (e) {
      // the API is restarting: try again next time
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  async function send(resume) {
    if (busy) return;
    busy = true;
    try {
      await fetch('/api/kill-switch', {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ resume }),
      });
    } finally {
      busy = false;
    }
  }

  $('kill-switch').addEventListener('click', () => {
    if (window.confirm('Kill switch: cancel unfilled entries, exit EVERY open position now and refuse new signals?')) send(false);
  });
  $('kill-resume').addEventListener('click', () => {
    if (window.confirm('Release the kill switch and trade new signals again?')) send(true);
  });
  poll();
})();
