// Hand-written SVG charts: time series, reference-vs-current distributions. Strings from the data are escaped.

const NS = 'http://www.w3.org/2000/svg';
export const PALETTE = ['#2563eb', '#ea580c', '#16a34a', '#9333ea', '#dc2626', '#0891b2', '#ca8a04', '#db2777'];

export function esc(value) {
  return String(value).replace(/[&<>"']/g, (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
}

export function formatNumber(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return '–';
  const magnitude = Math.abs(value);
  if (magnitude !== 0 && (magnitude < 1e-3 || magnitude >= 1e6)) return value.toExponential(1);
  return Number(value.toPrecision(digits)).toString();
}

function clock(seconds) {
  const d = new Date(seconds * 1000);
  return d.toTimeString().slice(0, 8);
}

function niceTicks(min, max, count) {
  const span = max - min || 1;
  const step0 = span / count;
  const power = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= step0) || step0;
  const ticks = [];
  for (let t = Math.ceil(min / step) * step; t <= max + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

/**
 * A line chart of time series into `container`.
 * series: [{label, color, points: [[epochSeconds, value], ...], dashed}]
 * options: {log, min, max, threshold: {value, label}, format, empty}
 * Returns the number of points drawn.
 */
export function lineChart(container, series, options = {}) {
  const width = Math.max(280, Math.floor(container.clientWidth || 440));
  const height = 170;
  const margin = {left: 52, right: 10, top: 10, bottom: 22};
  const format = options.format || ((v) => formatNumber(v));
  const drawn = series.map((s) => ({...s, points: s.points.filter(([, v]) => v !== null && Number.isFinite(v))}))
    .filter((s) => s.points.length > 0);
  const total = drawn.reduce((n, s) => n + s.points.length, 0);
  if (total === 0) {
    container.innerHTML = `<p class="chart-empty">${esc(options.empty || 'no data yet')}</p>`;
    return 0;
  }
  const ys = (v) => (options.log ? Math.log10(Math.max(v, 1e-30)) : v);
  const times = drawn.flatMap((s) => s.points.map(([t]) => t));
  let t0 = Math.min(...times);
  let t1 = Math.max(...times);
  if (t1 - t0 < 10) { t0 -= 5; t1 += 5; }
  const values = drawn.flatMap((s) => s.points.map(([, v]) => ys(v)));
  if (options.threshold) values.push(ys(options.threshold.value));
  let y0 = options.min !== undefined ? ys(options.min) : Math.min(0, ...values);
  let y1 = options.max !== undefined ? ys(options.max) : Math.max(...values);
  if (options.log) { y0 = Math.floor(Math.min(...values, -1)); y1 = 0; }
  if (y1 - y0 < 1e-12) { y1 = y0 + (Math.abs(y0) || 1); }
  if (!options.log && options.max === undefined) y1 += (y1 - y0) * 0.08;
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const x = (t) => margin.left + ((t - t0) / (t1 - t0)) * plotW;
  const y = (v) => margin.top + plotH - ((ys(v) - y0) / (y1 - y0)) * plotH;
  const yRaw = (u) => margin.top + plotH - ((u - y0) / (y1 - y0)) * plotH;

  const parts = [`<svg xmlns="${NS}" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img">`];
  const yTicks = options.log
    ? niceTicks(y0, y1, Math.min(5, y1 - y0)).filter((u) => Number.isInteger(u))
    : niceTicks(y0, y1, 4);
  for (const u of yTicks) {
    const label = options.log ? (u === 0 ? '1' : `1e${u}`) : format(u);
    parts.push(`<line class="grid" x1="${margin.left}" x2="${width - margin.right}" y1="${yRaw(u)}" y2="${yRaw(u)}"/>`,
      `<text class="tick" x="${margin.left - 4}" y="${yRaw(u) + 3}" text-anchor="end">${esc(label)}</text>`);
  }
  const xTicks = niceTicks(t0, t1, Math.max(2, Math.floor(plotW / 110)));
  for (const t of xTicks) {
    parts.push(`<text class="tick" x="${x(t)}" y="${height - 6}" text-anchor="middle">${esc(clock(t))}</text>`);
  }
  parts.push(`<line class="axis" x1="${margin.left}" x2="${margin.left}" y1="${margin.top}" y2="${margin.top + plotH}"/>`,
    `<line class="axis" x1="${margin.left}" x2="${width - margin.right}" y1="${margin.top + plotH}" y2="${margin.top + plotH}"/>`);
  if (options.threshold) {
    const ty = y(options.threshold.value);
    parts.push(`<line class="threshold" x1="${margin.left}" x2="${width - margin.right}" y1="${ty}" y2="${ty}"/>`,
      `<text class="tick threshold-label" x="${width - margin.right - 2}" y="${ty - 3}" text-anchor="end">${esc(options.threshold.label)}</text>`);
  }
  drawn.forEach((s) => {
    const d = s.points.map(([t, v], i) => `${i ? 'L' : 'M'}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join('');
    parts.push(`<path class="series${s.dashed ? ' dashed' : ''}" data-points="${s.points.length}" d="${d}" stroke="${s.color}"/>`);
    const [lt, lv] = s.points[s.points.length - 1];
    parts.push(`<circle class="last" cx="${x(lt)}" cy="${y(lv)}" r="3" fill="${s.color}"><title>${esc(s.label)}: ${esc(format(lv))} at ${esc(clock(lt))}</title></circle>`);
  });
  parts.push('</svg>');
  const legend = drawn.map((s) => {
    const last = s.points[s.points.length - 1][1];
    return `<span class="legend-item"><i style-color="${s.color}" class="swatch${s.dashed ? ' dashed' : ''}"></i>${esc(s.label)} <b>${esc(format(last))}</b></span>`;
  }).join('');
  container.innerHTML = parts.join('') + `<div class="legend">${legend}</div>`;
  container.querySelectorAll('.swatch').forEach((el) => { el.style.background = el.getAttribute('style-color'); });
  return total;
}

function boxRow(summary, y, scale, color, label) {
  const parts = [];
  const has = (k) => typeof summary[k] === 'number';
  if (has('min') && has('max')) {
    parts.push(`<line class="whisker" x1="${scale(summary.min)}" x2="${scale(summary.max)}" y1="${y}" y2="${y}" stroke="${color}"/>`);
  }
  if (has('p05') && has('p95')) {
    parts.push(`<rect class="box" x="${scale(summary.p05)}" y="${y - 8}" width="${Math.max(1, scale(summary.p95) - scale(summary.p05))}" height="16" fill="${color}"/>`);
  }
  if (has('p50')) parts.push(`<line class="median" x1="${scale(summary.p50)}" x2="${scale(summary.p50)}" y1="${y - 10}" y2="${y + 10}"/>`);
  if (has('mean')) {
    if (has('std')) {
      parts.push(`<line class="spread" x1="${scale(summary.mean - summary.std)}" x2="${scale(summary.mean + summary.std)}" y1="${y + 13}" y2="${y + 13}" stroke="${color}"/>`);
    }
    parts.push(`<circle class="mean" cx="${scale(summary.mean)}" cy="${y + 13}" r="3.5" fill="${color}"/>`);
  }
  parts.push(`<text class="tick" x="4" y="${y + 4}">${esc(label)}</text>`);
  return parts.join('');
}

/** Reference vs current of one feature: box rows for a numeric feature, paired bars for a categorical one. */
export function distributionChart(container, feature) {
  const width = Math.max(260, Math.floor(container.clientWidth || 320));
  const ref = feature.reference || {};
  const cur = feature.current || {};
  const colors = {reference: '#64748b', current: '#ea580c'};
  if (feature.kind === 'categorical') {
    const levels = [...new Set([...Object.keys(ref), ...Object.keys(cur)])].filter((k) => k !== 'count');
    levels.sort((a, b) => (cur[b] ?? 0) + (ref[b] ?? 0) - (cur[a] ?? 0) - (ref[a] ?? 0));
    const shown = levels.slice(0, 8);
    const rowH = 22;
    const height = shown.length * rowH + 24;
    const left = 80;
    const scale = (v) => left + v * (width - left - 40);
    const parts = [`<svg xmlns="${NS}" width="${width}" height="${height}" role="img">`];
    shown.forEach((level, i) => {
      const y = 6 + i * rowH;
      parts.push(`<text class="tick" x="${left - 4}" y="${y + 12}" text-anchor="end">${esc(level.slice(0, 12))}</text>`,
        `<rect class="bar" x="${left}" y="${y}" width="${scale(ref[level] ?? 0) - left}" height="8" fill="${colors.reference}"><title>reference ${esc(formatNumber(ref[level] ?? 0))}</title></rect>`,
        `<rect class="bar" x="${left}" y="${y + 9}" width="${scale(cur[level] ?? 0) - left}" height="8" fill="${colors.current}"><title>current ${esc(formatNumber(cur[level] ?? 0))}</title></rect>`);
    });
    parts.push(`<text class="tick" x="${left}" y="${height - 4}">share of instances (${levels.length} levels)</text></svg>`);
    container.innerHTML = parts.join('');
    return shown.length;
  }
  const keys = ['min', 'max', 'p05', 'p95', 'p50'];
  const values = [ref, cur].flatMap((s) => [...keys.map((k) => s[k]),
    typeof s.mean === 'number' && typeof s.std === 'number' ? s.mean - s.std : undefined,
    typeof s.mean === 'number' && typeof s.std === 'number' ? s.mean + s.std : undefined])
    .filter((v) => typeof v === 'number' && Number.isFinite(v));
  if (values.length === 0) {
    container.innerHTML = '<p class="chart-empty">no summary yet</p>';
    return 0;
  }
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (hi - lo < 1e-12) { lo -= 1; hi += 1; }
  const left = 72;
  const right = 10;
  const scale = (v) => left + ((v - lo) / (hi - lo)) * (width - left - right);
  const height = 96;
  const parts = [`<svg xmlns="${NS}" width="${width}" height="${height}" role="img">`,
    boxRow(ref, 18, scale, colors.reference, 'reference'), boxRow(cur, 56, scale, colors.current, 'current')];
  for (const t of niceTicks(lo, hi, 4)) {
    parts.push(`<text class="tick" x="${scale(t)}" y="${height - 2}" text-anchor="middle">${esc(formatNumber(t))}</text>`);
  }
  parts.push('</svg>');
  container.innerHTML = parts.join('');
  return 2;
}
