// TPO profile panel: the selected instrument's Market Profile drawn as letters per price row
// (A = 09:15–09:45 IST … M = 15:15–15:30), with the value area shaded, the POC marked, single
// prints and poor extremes flagged, and a toggle to a volume-at-price histogram. It reads the
// `profile.<instrument_key>` messages app.js keeps in window.amt.state and redraws on the
// 'amt:profile' event app.js fires whenever the shown profile changes.
(function () {
  const $ = (id) => document.getElementById(id);
  const panel = $('tpo');
  if (!panel) return;
  let mode = localStorage.getItem('amt.profileMode') === 'volume' ? 'volume' : 'tpo';

  const fmt = new Intl.NumberFormat('en-IN', { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);

  // Row index of a price, as the engine buckets it: rows span [row_low + i*size, + size).
  const rowOf = (p, price) => Math.floor((price - p.row_low) / p.row_size + 1e-9);

  function rows(p) {
    const n = Math.max(p.tpo.length, p.volume.length);
    const out = [];
    for (let i = 0; i < n; i++) out.push({ price: p.row_low + i * p.row_size, letters: '' });
    for (const [letter, low, high] of p.periods || []) {
      const lo = Math.max(0, rowOf(p, low));
      const hi = Math.min(n - 1, rowOf(p, high));
      for (let i = lo; i <= hi; i++) out[i].letters += letter;
    }
    return out;
  }

  function isSingle(p, price) {
    return (p.single_prints || []).some(([lo, hi]) => price >= lo - 1e-9 && price <= hi + 1e-9);
  }

  function render() {
    const amt = window.amt;
    if (!amt) return;
    const p = amt.state.profiles.get(amt.state.selected);
    const head = $('tpo-head');
    const body = $('tpo-body');
    if (!p || !p.row_size || p.row_low === null || p.row_low === undefined) {
      head.textContent = 'Market Profile: waiting for data';
      body.innerHTML = '';
      return;
    }
    const volume = mode === 'volume' && p.volume_source !== 'tpo';
    const parts = [`${p.session} · ${p.period ? 'period ' + p.period : ''}`,
                   p.open_type ? `open: ${p.open_type}${p.open_type_final ? '' : ' (provisional)'}` : '',
                   p.day_type ? `day: ${p.day_type}${p.day_type_final ? '' : ' (provisional)'}` : '',
                   p.volume_source === 'tpo' ? 'no traded volume: TPO counts' : ''];
    head.textContent = parts.filter(Boolean).join(' · ');
    const rs = rows(p);
    const maxVol = Math.max(1, ...p.volume);
    const html = [];
    for (let i = rs.length - 1; i >= 0; i--) {
      const r = rs[i];
      const cls = ['tpo-row'];
      if (p.val !== null && p.vah !== null && r.price >= p.val - 1e-9 && r.price <= p.vah + 1e-9) cls.push('va');
      if (p.poc !== null && Math.abs(r.price - p.poc) < 1e-9) cls.push('poc');
      if (isSingle(p, r.price)) cls.push('single');
      if (i === rs.length - 1 && p.poor_high) cls.push('poor');
      if (i === 0 && p.poor_low) cls.push('poor');
      const cell = volume
        ? `<span class="vol-bar" style="width:${(100 * (p.volume[i] || 0) / maxVol).toFixed(1)}%"></span>`
        : `<span class="letters">${esc(r.letters)}</span>`;
      html.push(`<div class="${cls.join(' ')}" data-price="${r.price}"><span class="px">${fmt.format(r.price)}</span>${cell}</div>`);
    }
    body.innerHTML = html.join('');
    const flags = [p.poor_high ? 'poor high' : '', p.poor_low ? 'poor low' : '',
                   p.excess_high ? 'excess high' : '', p.excess_low ? 'excess low' : '',
                   (p.single_prints || []).length ? `${p.single_prints.length} single-print zone(s)` : ''];
    $('tpo-flags').textContent = flags.filter(Boolean).join(' · ');
  }

  function setMode(m) {
    mode = m;
    localStorage.setItem('amt.profileMode', m);
    for (const b of document.querySelectorAll('#tpo-mode button')) b.classList.toggle('active', b.dataset.mode === m);
    render();
  }
  for (const b of document.querySelectorAll('#tpo-mode button')) b.addEventListener('click', () => setMode(b.dataset.mode));
  document.addEventListener('amt:profile', render);
  setMode(mode);
  window.amtTpo = { render, setMode, get mode() { return mode; } };
})();
