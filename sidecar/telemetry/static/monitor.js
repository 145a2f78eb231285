// The monitoring page: polls /metrics (all models' status, client-side timelines of traffic and latency), the
// drill-down of the selected model (distributions, confusion matrix, decisions) and, less often, its history.
import {modelFigures, parsePrometheus, rates} from './metrics.js';
import {PALETTE, distributionChart, esc, formatNumber, lineChart} from './charts.js';

const params = new URLSearchParams(location.search);
const POLL_SECONDS = Math.min(60, Math.max(1, Number(params.get('interval')) || 3));
const HISTORY_SECONDS = 30;           // the history is refreshed this often (and when a model is selected)
const HISTORY_SPAN = 3600;            // seconds of history asked for
const HISTORY_PAGES = 5;              // pages of at most 1000 buckets followed
const TIMELINE_POINTS = 1200;         // points kept per live series (an hour at the default interval)
const DISTRIBUTIONS_SHOWN = 6;
const TOKEN_KEY = 'sidecar-admin-token';

// The model named in the address's #fragment; a malformed one (such as #%E0) selects none instead of stopping the page.
function hashModel() {
  try {
    return decodeURIComponent(location.hash.slice(1)) || null;
  } catch (error) {
    return null;
  }
}

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  models: [],
  selected: hashModel(),
  previous: null,            // {time, figures: Map(model -> figures)}
  timelines: new Map(),      // model -> {traffic, errors, p50, p95, drift: {detector: points}, outliers, quality}
  latest: new Map(),         // model -> {figures, rates}
  history: new Map(),        // model -> {fetched, available, message, buckets}
  drill: null,
  timer: null,
  paused: false,
  polling: false,
};

class Unauthorized extends Error {}

async function get(path) {
  const headers = state.token ? {Authorization: `Bearer ${state.token}`} : {};
  const response = await fetch(path, {headers, cache: 'no-store'});
  if (response.status === 401) throw new Unauthorized('the admin listener wants a token');
  return response;
}

async function getJSON(path) {
  const response = await get(path);
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  return {status: response.status, body};
}

function timeline(model) {
  if (!state.timelines.has(model)) {
    state.timelines.set(model, {traffic: [], errors: [], p50: [], p95: [], mean: [], drift: {}, outliers: [], quality: []});
  }
  return state.timelines.get(model);
}

function push(points, t, value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return;
  points.push([t, value]);
  if (points.length > TIMELINE_POINTS) points.splice(0, points.length - TIMELINE_POINTS);
}

async function pollMetrics(now) {
  const [index, metrics] = await Promise.all([getJSON('v1/monitor'), get('metrics')]);
  if (metrics.status !== 200) throw new Error(`/metrics answered ${metrics.status}`);
  const samples = parsePrometheus(await metrics.text());
  state.models = (index.body && Array.isArray(index.body.models)) ? index.body.models : [];
  const figures = new Map(state.models.map((m) => [m, modelFigures(samples, m)]));
  for (const [model, f] of figures) {
    const before = state.previous && state.previous.figures.get(model);
    const r = before ? rates(before, f, now - state.previous.time) : null;
    state.latest.set(model, {figures: f, rates: r});
    const line = timeline(model);
    if (r) {
      push(line.traffic, now, r.requestsPerSecond);
      push(line.errors, now, r.errorsPerSecond);
      push(line.p50, now, r.p50Seconds === null ? null : r.p50Seconds * 1000);
      push(line.p95, now, r.p95Seconds === null ? null : r.p95Seconds * 1000);
      push(line.mean, now, r.meanSeconds === null ? null : r.meanSeconds * 1000);
      push(line.outliers, now, r.outlierRate);
    }
    for (const [detector, p] of Object.entries(f.pValues)) {
      line.drift[detector] = line.drift[detector] || [];
      push(line.drift[detector], now, p);
    }
    push(line.quality, now, f.accuracy ?? f.rmse);
  }
  state.previous = {time: now, figures};
}

async function pollHistory(model, now) {
  const cached = state.history.get(model);
  if (cached && now - cached.fetched < HISTORY_SECONDS) return;
  const entry = {fetched: now, available: false, message: 'history: loading…', buckets: [], bucket: null};
  state.history.set(model, entry);
  let url = `v1/monitor/${encodeURIComponent(model)}/history?from=${Math.floor(now - HISTORY_SPAN)}&to=${Math.ceil(now)}&limit=1000`;
  for (let page = 0; page < HISTORY_PAGES && url; page++) {
    const {status, body} = await getJSON(url);
    if (status !== 200 || !body || !Array.isArray(body.buckets)) {
      const reason = body && body.error ? body.error : `HTTP ${status}`;
      entry.message = status === 404
        ? `History unavailable (${reason}): the charts show what this page sampled since it opened.`
        : `History unavailable: ${reason}.`;
      return;
    }
    entry.available = true;
    entry.bucket = body.bucket || null;
    entry.buckets.push(...body.buckets);
    url = body.next ? `v1/monitor/${encodeURIComponent(model)}/history?cursor=${encodeURIComponent(body.next)}&limit=1000` : null;
  }
  const kind = entry.bucket && entry.bucket.kind === 'count' ? `${entry.bucket.instances} instances` : entry.bucket ? `${entry.bucket.seconds} s` : '?';
  entry.message = `History: ${entry.buckets.length} buckets of ${kind} over the last hour (dashed), then live samples.`;
}

function historySeries(model) {
  const entry = state.history.get(model);
  const series = {traffic: [], drift: {}, outliers: {}, quality: []};
  if (!entry || !entry.available) return series;
  for (const b of entry.buckets) {
    const t = b.end ?? b.start;
    const span = (b.end ?? 0) - (b.start ?? 0);
    if (span > 0 && typeof b.requests === 'number') series.traffic.push([t, b.requests / span]);
    for (const [detector, d] of Object.entries(b.drift || {})) {
      if (d && typeof d.min_p_value === 'number') (series.drift[detector] = series.drift[detector] || []).push([t, d.min_p_value]);
    }
    for (const [detector, o] of Object.entries(b.outliers || {})) {
      if (o && o.instances > 0) (series.outliers[detector] = series.outliers[detector] || []).push([t, o.outliers / o.instances]);
    }
    const labels = b.labels;
    if (labels && typeof labels.accuracy === 'number') series.quality.push([t, labels.accuracy]);
    else if (labels && typeof labels.rmse === 'number') series.quality.push([t, labels.rmse]);
  }
  return series;
}

// ---- rendering -------------------------------------------------------------------------------------------------

function referenceCell(f) {
  if (f.referenceInstances === null) return '<span class="muted">–</span>';
  const target = f.referenceTarget || f.referenceInstances || 1;
  const share = Math.min(1, f.referenceInstances / target);
  const label = share >= 1 ? '' : `${f.referenceInstances}/${target}`;
  return `<progress max="1" value="${share}" title="${esc(f.referenceInstances)} of ${esc(target)} instances"></progress> <span class="small">${esc(label)}</span>`;
}

function driftCell(f) {
  const detectors = Object.entries(f.drift);
  if (detectors.length === 0) return '<span class="muted">pending</span>';
  const drifted = detectors.filter(([, v]) => v >= 1).map(([d]) => d);
  return drifted.length
    ? `<span class="badge bad" title="${esc(drifted.join(', '))}">drift</span>`
    : '<span class="badge good">ok</span>';
}

function qualityText(f) {
  if (f.accuracy !== null) return `acc ${formatNumber(f.accuracy, 2)}`;
  if (f.rmse !== null) return `rmse ${formatNumber(f.rmse, 3)}`;
  return '–';
}

function renderModels() {
  const body = document.querySelector('#models tbody');
  document.getElementById('models-empty').hidden = state.models.length > 0;
  body.innerHTML = state.models.map((model) => {
    const {figures: f, rates: r} = state.latest.get(model);
    const outliers = f.outlierChecked ? `${formatNumber(100 * (f.outliers ?? 0) / f.outlierChecked, 2)}%` : '–';
    const rps = r && r.requestsPerSecond !== null ? formatNumber(r.requestsPerSecond, 3) : '–';
    return `<tr data-model="${esc(model)}" class="${model === state.selected ? 'selected' : ''}">
      <td><a href="#${esc(encodeURIComponent(model))}">${esc(model)}</a></td><td>${referenceCell(f)}</td>
      <td>${driftCell(f)}</td><td class="num">${esc(outliers)}</td><td>${esc(qualityText(f))}</td><td class="num">${esc(rps)}</td></tr>`;
  }).join('');
}

function card(label, value, tone = '') {
  return `<div class="card ${tone}"><div class="card-label">${esc(label)}</div><div class="card-value">${esc(value)}</div></div>`;
}

function renderCards(model, drill) {
  const latest = state.latest.get(model);
  const f = latest ? latest.figures : null;
  const r = latest ? latest.rates : null;
  const parts = [];
  const reference = drill && drill.reference;
  if (reference) {
    parts.push(card('reference', reference.complete ? `${reference.instances} instances (${reference.source})`
      : `collecting ${reference.instances}/${reference.target}`, reference.complete ? '' : 'warn'));
  }
  const detectors = drill && drill.detectors ? Object.entries(drill.detectors) : [];
  for (const [name, d] of detectors) {
    if (!d || typeof d !== 'object' || !('drift' in d)) continue;
    parts.push(card(name.replace('_', ' '), `${d.drift ? 'DRIFT' : 'no drift'} · p ${formatNumber(d.p_value, 2)} · ${d.windows_drifted ?? 0}/${d.windows_evaluated ?? 0} windows`, d.drift ? 'bad' : 'good'));
  }
  for (const [name, o] of Object.entries((drill && drill.outliers) || {})) {
    if (o && o.instances) parts.push(card(`outliers (${name})`, `${o.outliers} of ${o.instances} (${formatNumber(100 * o.outliers / o.instances, 2)}%)`));
  }
  const dq = drill && drill.data_quality;
  if (dq && typeof dq.instances === 'number') {
    const issues = Object.values(dq.issues || {}).reduce((n, kinds) => n + Object.values(kinds).reduce((a, b) => a + b, 0), 0);
    parts.push(card('data quality issues', `${issues} in ${dq.instances} instances`, issues ? 'warn' : ''));
  }
  const q = drill && drill.quality;
  if (q) {
    const value = typeof q.accuracy === 'number' ? `accuracy ${formatNumber(q.accuracy, 3)}`
      : typeof q.rmse === 'number' ? `rmse ${formatNumber(q.rmse, 3)} · mae ${formatNumber(q.mae, 3)}` : 'waiting for feedback';
    parts.push(card(`quality (${q.window_instances ?? 0} joined)`, value));
  }
  if (r && r.requestsPerSecond !== null) {
    parts.push(card('traffic', `${formatNumber(r.requestsPerSecond, 3)} req/s · p50 ${formatNumber(r.p50Seconds === null ? null : r.p50Seconds * 1000, 3)} ms`));
  } else if (f) {
    parts.push(card('traffic', `${f.requests} requests so far`));
  }
  document.getElementById('cards').innerHTML = parts.join('');
}

function drawCharts(model) {
  const live = timeline(model);
  const past = historySeries(model);
  const counts = {};
  counts.traffic = lineChart(document.getElementById('chart-traffic'), [
    {label: 'history', color: PALETTE[0], points: past.traffic, dashed: true},
    {label: 'requests/s', color: PALETTE[0], points: live.traffic},
    {label: 'errors/s', color: PALETTE[4], points: live.errors},
  ], {min: 0, empty: 'waiting for a second sample of /metrics'});
  counts.latency = lineChart(document.getElementById('chart-latency'), [
    {label: 'p50', color: PALETTE[0], points: live.p50},
    {label: 'p95', color: PALETTE[1], points: live.p95},
    {label: 'mean', color: PALETTE[2], points: live.mean},
  ], {min: 0, empty: 'no requests since the page opened'});
  const detectors = [...new Set([...Object.keys(live.drift), ...Object.keys(past.drift)])];
  counts.drift = lineChart(document.getElementById('chart-drift'), detectors.flatMap((d, i) => [
    {label: `${d} (history)`, color: PALETTE[i % PALETTE.length], points: past.drift[d] || [], dashed: true},
    {label: d, color: PALETTE[i % PALETTE.length], points: live.drift[d] || []},
  ]), {log: true, threshold: {value: driftThreshold(), label: `p ${driftThreshold()}`},
    empty: 'no drift check yet (the reference and a first window must fill)'});
  counts.outliers = lineChart(document.getElementById('chart-outliers'), [
    ...Object.entries(past.outliers).map(([d, points], i) => ({label: `${d} (history)`, color: PALETTE[(i + 3) % PALETTE.length], points, dashed: true})),
    {label: 'outliers / checked instances', color: PALETTE[3], points: live.outliers},
  ], {min: 0, format: (v) => `${formatNumber(100 * v, 2)}%`, empty: 'no instance checked since the page opened'});
  const regression = (state.drill && state.drill.quality && typeof state.drill.quality.rmse === 'number');
  document.getElementById('quality-caption').textContent = regression ? 'Quality from feedback (RMSE)' : 'Quality from feedback (accuracy)';
  counts.quality = lineChart(document.getElementById('chart-quality'), [
    {label: 'history', color: PALETTE[2], points: past.quality, dashed: true},
    {label: regression ? 'rmse' : 'accuracy', color: PALETTE[2], points: live.quality},
  ], regression ? {min: 0} : {min: 0, max: 1, empty: 'no feedback joined yet (POST /v1/feedback)'});
  document.getElementById('detail').dataset.points = JSON.stringify(counts);
}

function driftThreshold() {
  const d = state.drill && state.drill.detectors && state.drill.detectors.feature_drift;
  return d && typeof d.threshold === 'number' ? d.threshold : 0.05;
}

function renderDistributions(drill) {
  const container = document.getElementById('distributions');
  const features = [];
  for (const [detector, d] of Object.entries((drill && drill.detectors) || {})) {
    for (const feature of (d && Array.isArray(d.features) ? d.features : [])) {
      if (feature && (feature.reference || feature.current)) features.push({...feature, detector});
    }
  }
  const p = (f) => (typeof f.adjusted_p_value === 'number' ? f.adjusted_p_value : typeof f.p_value === 'number' ? f.p_value : 1);
  features.sort((a, b) => p(a) - p(b) || (b.effect_size ?? 0) - (a.effect_size ?? 0));
  const shown = features.slice(0, DISTRIBUTIONS_SHOWN);
  if (shown.length === 0) {
    container.innerHTML = '<p class="muted">No drift check has run yet: features appear once the reference and a first window are complete.</p>';
    return;
  }
  container.innerHTML = shown.map((f, i) => `<figure class="dist-card${f.drift ? ' drifted' : ''}">
      <figcaption><b>${esc(f.name)}</b> <span class="muted">${esc(f.detector)} · ${esc(f.kind)} · p ${esc(formatNumber(p(f), 2))}${f.drift ? ' · drift' : ''}</span></figcaption>
      <div class="dist" id="dist-${i}"></div></figure>`).join('');
  shown.forEach((f, i) => distributionChart(document.getElementById(`dist-${i}`), f));
}

function renderConfusion(drill) {
  const container = document.getElementById('confusion');
  const confusion = drill && drill.quality && drill.quality.confusion;
  if (!confusion || !Array.isArray(confusion.matrix) || confusion.matrix.length === 0) {
    const regression = drill && drill.quality && typeof drill.quality.rmse === 'number';
    container.innerHTML = `<p class="muted">${regression ? 'A regression model: no confusion matrix (see RMSE above).' : 'No feedback joined yet: send ground truth to POST /v1/feedback.'}</p>`;
    return;
  }
  const labels = confusion.labels;
  const head = labels.map((l) => `<th>${esc(l)}</th>`).join('');
  const rows = confusion.matrix.map((row, i) => {
    const total = row.reduce((a, b) => a + b, 0) || 1;
    const cells = row.map((count, j) => {
      const level = Math.min(5, Math.ceil((5 * count) / total));
      return `<td class="heat-${level}${i === j ? ' diagonal' : ''}" title="truth ${esc(labels[i])}, predicted ${esc(labels[j])}: ${count} (${formatNumber(100 * count / total, 2)}% of the row)">${count}</td>`;
    }).join('');
    return `<tr><th>${esc(labels[i])}</th>${cells}</tr>`;
  }).join('');
  container.innerHTML = `<table class="confusion"><thead><tr><th class="corner">truth \\ predicted</th>${head}</tr></thead><tbody>${rows}</tbody></table>`;
}

function renderDecisions(drill) {
  const decisions = drill && drill.decisions && drill.decisions.detectors;
  const container = document.getElementById('decisions');
  if (!decisions) { container.innerHTML = ''; return; }
  container.innerHTML = `<ul>${Object.entries(decisions).map(([name, d]) => `<li><b>${esc(name)}</b>: ${d.active ? 'active' : 'off'} (${esc(d.reason)})</li>`).join('')}</ul>`;
}

function renderDetail() {
  const model = state.selected;
  const detail = document.getElementById('detail');
  document.getElementById('nothing-selected').hidden = Boolean(model);
  detail.hidden = !model;
  if (!model) return;
  document.getElementById('model-name').textContent = model;
  const entry = state.history.get(model);
  document.getElementById('history-status').textContent = entry ? entry.message : '';
  renderCards(model, state.drill);
  drawCharts(model);
  renderDistributions(state.drill);
  renderConfusion(state.drill);
  renderDecisions(state.drill);
}

function setConnection(text, tone) {
  const el = document.getElementById('connection');
  el.textContent = text;
  el.className = `connection ${tone}`;
}

// ---- the loop --------------------------------------------------------------------------------------------------

async function poll() {
  if (state.polling) return;
  state.polling = true;
  const now = Date.now() / 1000;
  try {
    await pollMetrics(now);
    if (!state.selected || !state.models.includes(state.selected)) {
      if (state.models.length && !state.selected) state.selected = state.models[0];
    }
    if (state.selected) {
      const [{status, body}] = await Promise.all([
        getJSON(`v1/monitor/${encodeURIComponent(state.selected)}`), pollHistory(state.selected, now)]);
      state.drill = status === 200 ? body : null;
    }
    renderModels();
    renderDetail();
    setConnection('live', 'good');
    document.getElementById('updated').textContent = `updated ${new Date(now * 1000).toTimeString().slice(0, 8)}`;
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  } catch (error) {
    if (error instanceof Unauthorized) {
      askForToken();
    } else {
      setConnection(`offline: ${error.message}`, 'bad');
    }
  } finally {
    state.polling = false;
  }
}

function schedule() {
  clearInterval(state.timer);
  state.timer = null;
  if (state.paused || document.hidden || !document.getElementById('token-form').hidden) return;
  state.timer = setInterval(poll, POLL_SECONDS * 1000);
}

function askForToken() {
  const form = document.getElementById('token-form');
  document.getElementById('token-message').textContent = state.token ? 'that token was refused' : '';
  setConnection('token needed', 'warn');
  form.hidden = false;
  schedule();
  document.getElementById('token').focus();
}

function start() {
  document.getElementById('interval').textContent = String(POLL_SECONDS);
  document.getElementById('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    state.token = document.getElementById('token').value;
    sessionStorage.setItem(TOKEN_KEY, state.token);
    event.target.hidden = true;
    poll().then(schedule);
  });
  document.getElementById('pause').addEventListener('click', (event) => {
    state.paused = !state.paused;
    event.target.textContent = state.paused ? 'resume' : 'pause';
    setConnection(state.paused ? 'paused' : 'live', state.paused ? 'warn' : 'good');
    if (!state.paused) poll();
    schedule();
  });
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && !state.paused) poll();
    schedule();  // nothing is fetched while the tab is hidden
  });
  window.addEventListener('hashchange', () => {
    state.selected = hashModel();
    state.drill = null;
    poll();
  });
  let resizing = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizing);
    resizing = setTimeout(renderDetail, 200);
  });
  poll().then(schedule);
}

start();
