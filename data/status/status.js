// status.js - the live status page: polls status.json once a second, keeps the history here in
// the browser (the server only reports "now"), and draws the charts on canvas. No libraries,
// nothing fetched from anywhere but crunchd.
'use strict';

const POLL_MS = 1000;
const HISTORY = 120; // samples kept for the charts (two minutes)
const history = { t: [], workers: [], queue: [], rate: [] };
let previous = null;
let samples = 0;
const requestsSeen = [];

const $ = (id) => document.getElementById(id);

function formatSeconds(s) {
  if (s === 0) return '-';
  if (s < 0.001) return (s * 1e6).toFixed(0) + ' \u00b5s';
  if (s < 1) return (s * 1e3).toFixed(s < 0.01 ? 2 : 1) + ' ms';
  return s.toFixed(s < 10 ? 2 : 1) + ' s';
}

function formatUptime(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  return 'up ' + (d ? d + 'd ' : '') + (d || h ? h + 'h ' : '') + m + 'm ' + Math.floor(s % 60) + 's';
}

function push(series, value) {
  series.push(value);
  if (series.length > HISTORY) series.shift();
}

// A line chart with a filled area; y from 0 to max(series, floor).
function drawChart(canvas, series, color, floor) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * ratio;
  canvas.height = h * ratio;
  const ctx = canvas.getContext('2d');
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(floor, ...series) * 1.1;
  const x = (i) => 30 + (i / (HISTORY - 1)) * (w - 34);
  const y = (v) => h - 14 - (v / max) * (h - 22);
  ctx.strokeStyle = '#dde1e8';
  ctx.fillStyle = '#6b7385';
  ctx.font = '10px system-ui, sans-serif';
  ctx.lineWidth = 1;
  for (const v of [0, max / 2, max]) {
    ctx.beginPath();
    ctx.moveTo(30, y(v));
    ctx.lineTo(w - 4, y(v));
    ctx.stroke();
    ctx.fillText(v >= 10 ? v.toFixed(0) : v.toFixed(1), 2, y(v) + 3);
  }
  if (series.length < 2) return;
  const offset = HISTORY - series.length;
  ctx.beginPath();
  series.forEach((v, i) => (i ? ctx.lineTo(x(i + offset), y(v)) : ctx.moveTo(x(i + offset), y(v))));
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  ctx.stroke();
  ctx.lineTo(x(series.length - 1 + offset), y(0));
  ctx.lineTo(x(offset), y(0));
  ctx.closePath();
  ctx.globalAlpha = 0.15;
  ctx.fillStyle = color;
  ctx.fill();
  ctx.globalAlpha = 1;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
}

function renderRoutes(routes) {
  const body = $('routes').tBodies[0];
  body.replaceChildren();
  for (const r of routes) {
    if (r.requests === 0) continue;
    const row = body.insertRow();
    cell(row, r.route);
    cell(row, r.requests, 'num');
    cell(row, formatSeconds(r.p50), 'num');
    cell(row, formatSeconds(r.p90), 'num');
    cell(row, formatSeconds(r.p99), 'num');
  }
}

function renderSlowest(jobs) {
  const body = $('slowest').tBodies[0];
  body.replaceChildren();
  for (const j of jobs) {
    const row = body.insertRow();
    cell(row, j.function);
    cell(row, j.args);
    cell(row, j.outcome, 'outcome-' + j.outcome);
    cell(row, formatSeconds(j.run_seconds), 'num');
    cell(row, new Date(j.finished * 1000).toLocaleTimeString());
  }
}

// Running jobs. The bars of the first few follow the job's Server-Sent Events (GET
// /jobs/ID/events) as they come; the others (and, with a separate ops listener, all of them)
// move with the once-a-second poll. An EventSource holds one of the browser's six connections
// to crunchd, so at most LIVE_MAX are open, leaving room for the poll.
const LIVE_MAX = 4;
const watched = new Map(); // job id -> { source, fraction, message, seen: [fractions] }

function watch(id) {
  const entry = { source: new EventSource('jobs/' + id + '/events'), fraction: null, message: null,
                  seen: [] };
  entry.source.addEventListener('progress', (e) => {
    const p = JSON.parse(e.data);
    entry.fraction = p.fraction;
    entry.message = p.message || null;
    entry.seen.push(p.fraction);
    if (entry.seen.length > 50) entry.seen.shift();
    drawBar(id);
  });
  entry.source.addEventListener('outcome', () => entry.source.close());
  entry.source.onerror = () => { if (entry.source.readyState === EventSource.CLOSED) watched.delete(id); };
  watched.set(id, entry);
}

function drawBar(id) {
  const row = document.querySelector('#running tr[data-job="' + id + '"]');
  const entry = watched.get(id);
  if (!row || !entry || entry.fraction === null) return;
  setBar(row, entry.fraction, entry.message);
  row.dataset.events = entry.seen.join(',');
}

function setBar(row, fraction, message) {
  const bar = row.querySelector('.bar');
  bar.querySelector('.fill').style.width = (fraction === null ? 0 : fraction * 100) + '%';
  bar.querySelector('.text').textContent = fraction === null ? 'no progress reported'
    : (fraction * 100).toFixed(0) + '%' + (message ? ' \u2014 ' + message : '');
  row.dataset.fraction = fraction === null ? '' : fraction;
}

function renderRunning(jobs) {
  const body = $('running').tBodies[0];
  const ids = new Set(jobs.map((j) => j.id));
  for (const [id, entry] of watched) {
    if (!ids.has(id)) {
      entry.source.close();
      watched.delete(id);
    }
  }
  body.replaceChildren();
  for (const j of jobs) {
    if (!watched.has(j.id) && watched.size < LIVE_MAX) watch(j.id);
    const row = body.insertRow();
    row.dataset.job = j.id;
    cell(row, j.fn);
    cell(row, formatSeconds(j.age_seconds), 'num');
    cell(row, j.client);
    const bar = document.createElement('div');
    bar.className = 'bar';
    bar.innerHTML = '<div class="fill"></div><div class="text"></div>';
    row.insertCell().appendChild(bar);
    const entry = watched.get(j.id);
    if (entry && entry.fraction !== null && entry.fraction >= (j.progress || 0)) drawBar(j.id);
    else setBar(row, j.progress, j.message);
  }
}

function render(s) {
  const rate = previous ? Math.max(0, (s.requests_total - previous.requests_total) /
                                        Math.max(s.time - previous.time, 0.001)) : 0;
  previous = s;
  push(history.workers, s.workers_busy);
  push(history.queue, s.jobs_queued);
  push(history.rate, rate);

  $('version').textContent = 'version ' + s.version;
  $('uptime').textContent = formatUptime(s.uptime_seconds);
  $('requests-total').textContent = s.requests_total;
  $('request-rate').textContent = rate.toFixed(rate < 10 ? 1 : 0);
  $('workers').textContent = s.workers_busy + ' / ' + s.workers_total;
  $('queued').textContent = s.jobs_queued + ' / ' + s.queue_limit;
  $('connections').textContent = s.connections_open + ' / ' + s.connections_suspended;
  $('jobs-ok').textContent = s.jobs.ok;
  $('jobs-failed').textContent = s.jobs.failed;
  $('jobs-timed-out').textContent = s.jobs.timed_out;
  $('jobs-client-gone').textContent = s.jobs.client_gone;
  $('jobs-shared').textContent = s.jobs.coalesced + ' / ' + s.jobs.cache_hit;
  // lines the executors contribute, e.g. worker processes alive / busy and unavailable functions
  // and the batch functions' mean batch size (dynamic batching)
  const batchNotes = (s.batches || []).map(function (b) {
    return b.function + ': mean batch ' + b.mean_size.toFixed(1) + ' of ' + b.max_batch +
      ' (' + b.batches + ' batches, mean wait ' + (b.mean_wait_seconds * 1000).toFixed(1) + ' ms)';
  });
  $('notes').textContent = (s.notes || []).concat(batchNotes).join('; ');
  renderRunning(s.running_jobs || []);
  renderRoutes(s.routes);
  renderSlowest(s.slowest_jobs);
  drawChart($('chart-workers'), history.workers, '#2f6fdb', Math.max(1, s.workers_total));
  drawChart($('chart-queue'), history.queue, '#d9822b', 1);
  drawChart($('chart-rate'), history.rate, '#2a8a4e', 1);

  // for tests and scripts: how many samples were shown, and the request counter over time
  samples++;
  requestsSeen.push(s.requests_total);
  if (requestsSeen.length > 20) requestsSeen.shift();
  document.body.dataset.samples = samples;
  document.body.dataset.requestsHistory = requestsSeen.join(',');
}

async function poll() {
  const live = $('live');
  try {
    const response = await fetch('status.json', { cache: 'no-store' });
    if (!response.ok) throw new Error('HTTP ' + response.status);
    render(await response.json());
    live.textContent = previous.draining ? 'live (draining)' : 'live';
    live.className = 'live ok';
  } catch (e) {
    live.textContent = 'no answer from crunchd (' + e.message + ')';
    live.className = 'live';
  }
  setTimeout(poll, POLL_MS);
}

poll();
