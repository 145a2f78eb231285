// Prometheus text exposition -> samples, and the per-model figures the page shows (rates from two scrapes).

export function parsePrometheus(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const sample = parseLine(line);
    if (sample !== null) samples.push(sample);
  }
  return samples;
}

function parseLine(line) {
  const brace = line.indexOf('{');
  const space = line.indexOf(' ');
  const labels = {};
  let name;
  let rest;
  if (brace !== -1 && (space === -1 || brace < space)) {
    name = line.slice(0, brace);
    let i = brace + 1;
    while (i < line.length && line[i] !== '}') {
      const eq = line.indexOf('=', i);
      if (eq === -1 || line[eq + 1] !== '"') return null;
      const key = line.slice(i, eq).trim();
      let value = '';
      let j = eq + 2;
      for (; j < line.length && line[j] !== '"'; j++) {
        if (line[j] === '\\' && j + 1 < line.length) {
          j++;
          value += line[j] === 'n' ? '\n' : line[j];
        } else {
          value += line[j];
        }
      }
      labels[key] = value;
      i = j + 1;
      if (line[i] === ',') i++;
    }
    rest = line.slice(i + 1).trim();
  } else {
    name = line.slice(0, space);
    rest = line.slice(space + 1).trim();
  }
  const value = Number(rest.split(/\s+/)[0].replace('+Inf', 'Infinity').replace('-Inf', '-Infinity'));
  return Number.isNaN(value) && !rest.startsWith('NaN') ? null : {name, labels, value};
}

// An analysis name is a model, or `model@version` when versions are analysed apart.
function matcher(analysisName) {
  const at = analysisName.lastIndexOf('@');
  if (at <= 0) return (labels) => labels.model === analysisName;
  const model = analysisName.slice(0, at);
  const version = analysisName.slice(at + 1);
  // analysis metrics carry `model="m@v"`; request metrics carry `model="m", version="v"`
  return (labels) => labels.model === analysisName || (labels.model === model && labels.version === version);
}

const SUCCESS = new Set(['OK']);

/** The figures of one model in one scrape; null fields when the sidecar exports nothing for them. */
export function modelFigures(samples, analysisName) {
  const matches = matcher(analysisName);
  const f = {
    requests: 0, errors: 0, durationCount: 0, durationSum: 0, durationBuckets: new Map(),
    referenceInstances: null, referenceTarget: null, drift: {}, pValues: {}, outliers: null, outlierChecked: null,
    accuracy: null, rmse: null, mae: null, joined: null, qualityIssues: 0, seen: false,
  };
  for (const s of samples) {
    if (!s.name.startsWith('sidecar_') || !matches(s.labels)) continue;
    f.seen = true;
    switch (s.name) {
      case 'sidecar_requests_total':
        f.requests += s.value;
        if (!(SUCCESS.has(s.labels.code) || /^2\d\d$/.test(s.labels.code))) f.errors += s.value;
        break;
      case 'sidecar_request_duration_seconds_count': f.durationCount += s.value; break;
      case 'sidecar_request_duration_seconds_sum': f.durationSum += s.value; break;
      case 'sidecar_request_duration_seconds_bucket': {
        const le = Number(s.labels.le.replace('+Inf', 'Infinity'));
        f.durationBuckets.set(le, (f.durationBuckets.get(le) || 0) + s.value);
        break;
      }
      case 'sidecar_reference_instances': f.referenceInstances = s.value; break;
      case 'sidecar_reference_target_instances': f.referenceTarget = s.value; break;
      case 'sidecar_drift_detected': f.drift[s.labels.detector] = s.value; break;
      case 'sidecar_drift_p_value':
        if (s.labels.feature === '__all__') f.pValues[s.labels.detector] = s.value;
        break;
      case 'sidecar_outliers_total': f.outliers = (f.outliers || 0) + s.value; break;
      case 'sidecar_outlier_checked_instances_total': f.outlierChecked = (f.outlierChecked || 0) + s.value; break;
      case 'sidecar_quality_accuracy': f.accuracy = s.value; break;
      case 'sidecar_quality_rmse': f.rmse = s.value; break;
      case 'sidecar_quality_mae': f.mae = s.value; break;
      case 'sidecar_quality_joined_total': f.joined = s.value; break;
      case 'sidecar_data_quality_issues_total': f.qualityIssues += s.value; break;
      default: break;
    }
  }
  return f;
}

/** Rates between two scrapes `seconds` apart; null where a counter did not move (or restarted). */
export function rates(before, after, seconds) {
  const delta = (a, b) => (a === null || b === null || b < a ? null : b - a);
  const requests = delta(before.requests, after.requests);
  const count = delta(before.durationCount, after.durationCount);
  const checked = delta(before.outlierChecked, after.outlierChecked);
  const outliers = delta(before.outliers, after.outliers);
  const buckets = [];
  for (const [le, total] of after.durationBuckets) {
    const moved = delta(before.durationBuckets.get(le) ?? 0, total);
    if (moved !== null) buckets.push([le, moved]);
  }
  buckets.sort((a, b) => a[0] - b[0]);
  return {
    requestsPerSecond: requests === null || seconds <= 0 ? null : requests / seconds,
    errorsPerSecond: requests === null || seconds <= 0 ? null : Math.max(0, after.errors - before.errors) / seconds,
    meanSeconds: count ? (after.durationSum - before.durationSum) / count : null,
    p50Seconds: count ? quantile(buckets, 0.5) : null,
    p95Seconds: count ? quantile(buckets, 0.95) : null,
    outlierRate: checked ? (outliers ?? 0) / checked : null,
  };
}

/** Prometheus' histogram_quantile: linear interpolation inside the bucket that holds the rank. */
export function quantile(cumulative, q) {
  if (cumulative.length === 0) return null;
  const total = cumulative[cumulative.length - 1][1];
  if (!total) return null;
  const rank = q * total;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const [le, count] of cumulative) {
    if (count >= rank) {
      if (le === Infinity) return lowerBound;
      return lowerBound + (le - lowerBound) * ((rank - lowerCount) / Math.max(count - lowerCount, 1e-12));
    }
    lowerBound = le;
    lowerCount = count;
  }
  return lowerBound;
}
