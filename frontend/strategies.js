// Strategies panel: one row per strategy from the strategy manager's health report (GET /health,
// polled every second), with Restart and Enable/Disable buttons that POST a command to
// /api/strategies/control; the manager carries it out and reports the outcome in its health
// (details.last_command), shown under the table. Plain JS, no build step; text only via
// textContent (a strategy name or error message is never parsed as HTML).
(() => {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const body = $('strategies-body');
  if (!body) return;
  const note = $('strategies-note');
  const count = $('strategies-count');
  const STATE_CLASS = {
    running: 'ok', waiting: 'ok', warming: 'busy', starting: 'busy', restarting: 'busy',
    stopping: 'busy', failed: 'err', error: 'err', disabled: 'off', stopped: 'off',
  };
  let pending = null;            // {command, target, sentAt} until the manager reports it
  let lastCommandTs = 0;

  const fmtUptime = (s) => !s ? '—' : s < 60 ? `${Math.floor(s)}s`
    : s < 3600 ? `${Math.floor(s / 60)}m` : `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, '0')}`;
  const fmtMb = (b) => (b ? `${Math.round(b / 1e6)} MB` : '—');
  const fmtCpu = (c) => (typeof c === 'number' ? c.toFixed(1) : '—');

  function cell(text, cls) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function button(label, command, name, cls) {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = label;
    b.className = `strat-btn ${cls || ''}`;
    b.disabled = !!pending;
    b.addEventListener('click', () => send(command, name));
    return b;
  }

  function render(mgr) {
    const strategies = (mgr && mgr.details && mgr.details.strategies) || {};
    const names = Object.keys(strategies).sort();
    count.textContent = mgr ? `${names.length} · manager ${mgr.status}${mgr.stale ? ' (stale)' : ''}` : 'no strategy manager';
    if (!names.length) {
      const tr = document.createElement('tr');
      tr.className = 'empty';
      const td = cell(mgr ? 'no strategies configured' : 'waiting for the strategy manager…');
      td.colSpan = 10;
      tr.appendChild(td);
      body.replaceChildren(tr);
    } else {
      body.replaceChildren(...names.map((name) => {
        const s = strategies[name];
        const tr = document.createElement('tr');
        tr.dataset.strategy = name;
        tr.title = `${(s.instruments || []).join(', ')}${s.last_exit != null ? ` · last exit code ${s.last_exit}` : ''}`
          + (s.warm && s.warm.candles != null ? ` · warm start: ${s.warm.candles} candles in ${s.warm.took_ms || 0} ms` : '');
        tr.append(cell(name, 'name'), cell(s.cls || '—', 'muted'),
          cell(s.state || '—', `state ${STATE_CLASS[s.state] || 'busy'}`),
          cell(s.alive ? String(s.pid) : '—', 'num'), cell(fmtUptime(s.uptime_s), 'num'),
          cell(String(s.restarts || 0), 'num'), cell(fmtCpu(s.cpu_percent), 'num'),
          cell(fmtMb(s.rss_bytes), 'num'), cell(String(s.signals_today || 0), 'num'));
        const actions = document.createElement('td');
        actions.className = 'actions';
        actions.append(button('Restart', 'restart', name));
        actions.append(s.enabled ? button('Disable', 'disable', name, 'off')
          : button('Enable', 'enable', name, 'on'));
        tr.appendChild(actions);
        return tr;
      }));
    }
    const last = mgr && mgr.details && mgr.details.last_command;
    if (last && last.ts && last.ts !== lastCommandTs) {
      lastCommandTs = last.ts;
      if (pending && pending.target === last.target && pending.command === last.command) pending = null;
      note.textContent = `${last.command} ${last.target}: ${last.message}`;
      note.className = `strat-note ${last.ok ? 'ok' : 'err'}`;
    }
    if (pending && Date.now() - pending.sentAt > 15000) {
      note.textContent = `${pending.command} ${pending.target}: no answer from the strategy manager`;
      note.className = 'strat-note err';
      pending = null;
    }
  }

  async function send(command, name) {
    if (command !== 'enable' && !window.confirm(`${command[0].toUpperCase()}${command.slice(1)} strategy ${name}?`)) return;
    pending = { command, target: name, sentAt: Date.now() };
    note.textContent = `${command} ${name}: sent…`;
    note.className = 'strat-note';
    try {
      const r = await fetch('/api/strategies/control', {
        method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ command, target: name }),
      });
      if (!r.ok) {
        const j = await r.json().catch(() => ({}));
        throw new Error(j.error || `HTTP ${r.status}`);
      }
    } catch (e) {
      pending = null;
      note.textContent = `${command} ${name}: ${e.message}`;
      note.className = 'strat-note err';
    }
  }

  async function poll() {
    try {
      const r = await fetch('/health', { cache: 'no-store' });
      const j = await r.json();
      render((j.services || {}).strategy_manager);
    } catch (e) {
      count.textContent = 'API unreachable';
    }
    setTimeout(poll, 1000);
  }
  poll();
})();
