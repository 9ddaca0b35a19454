/**
 * The operator page's one inline script (page.ts embeds it, and the page's CSP allows
 * it by its hash, so it must stay a constant: per-page data travels in data-
 * attributes). Plain ES2017 for any browser a line PC or phone has, no framework.
 *
 * What it adds to the server-rendered page: each camera's live picture (the frame
 * or its heat map, fetched with the bearer token and shown as a blob: URL because an
 * <img> cannot send an Authorization header), the score of the last minutes against
 * the threshold, the recent events as thumbnails that open the event's snapshot and
 * score timeline, "mark as normal" and "capture normal frames" with the API's
 * reply, and fresh figures from the page itself instead of reloading it (which
 * would close an open event). Which of these show depends on the routes the
 * agent's /api/openapi.json lists, so the page works with whatever API it meets.
 *
 * Written without template literals or a closing script tag, so that it survives
 * being a TS template string inside an HTML <script> element.
 */
export const PAGE_SCRIPT = String.raw`
(function () {
  'use strict';
  var body = document.body;
  var apiMode = body.getAttribute('data-api') || 'none';
  var refreshMs = Math.max(1, Number(body.getAttribute('data-refresh')) || 5) * 1000;
  var LIVE_MS = 1000;
  var SCORES_MS = 2000;
  var EVENTS_MS = 3000;
  var CHART_SECONDS = 300;
  var MIN_CHART_SECONDS = 30;
  var FIGURES_MS = 2000;
  var THUMBS = 6;
  var TOKEN_KEY = 'linewatch.apiToken';
  var token = null;
  try { token = localStorage.getItem(TOKEN_KEY); } catch (e) { /* storage off: ask each visit */ }
  var routes = {};
  var tokenWaiters = [];
  var clockOffsetMs = 0;

  function $(selector, root) { return (root || document).querySelector(selector); }
  function $all(selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); }
  function enc(text) { return encodeURIComponent(text); }
  function has(method, path) { return routes[method + ' ' + path] === true; }
  function sleep(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }
  function fmt(value) { return typeof value === 'number' && isFinite(value) ? value.toPrecision(4) : String(value); }
  function timeOf(at) { return typeof at === 'number' ? at : Date.parse(at); }
  function clock(at) { var d = new Date(timeOf(at)); return isNaN(d.getTime()) ? String(at) : d.toLocaleTimeString(); }
  /** The server renders clock times in UTC (its page is the same for everyone): shown in this browser's time, like the rest. */
  function localTimes() {
    $all('time[data-clock]').forEach(function (el) { el.textContent = clock(el.getAttribute('datetime')); });
  }

  // ---- the token: asked once, kept in localStorage, sent as a header, never in a URL

  var auth = $('#auth');
  var authInput = $('#auth-token');
  var tokenNote = $('#token-note');
  function showTokenNote() { tokenNote.hidden = !token; }
  function askToken(message) {
    return new Promise(function (resolve) {
      tokenWaiters.push(resolve);
      $('#auth-message').textContent = message;
      if (auth.hidden) { auth.hidden = false; authInput.focus(); }
    });
  }
  auth.addEventListener('submit', function (event) {
    event.preventDefault();
    var value = authInput.value.trim();
    if (!value) return;
    token = value;
    try { localStorage.setItem(TOKEN_KEY, value); } catch (e) { /* kept for this visit only */ }
    authInput.value = '';
    auth.hidden = true;
    showTokenNote();
    var waiters = tokenWaiters;
    tokenWaiters = [];
    waiters.forEach(function (resolve) { resolve(); });
  });
  $('#forget-token').addEventListener('click', function () {
    token = null;
    try { localStorage.removeItem(TOKEN_KEY); } catch (e) { /* nothing kept */ }
    showTokenNote();
  });
  showTokenNote();

  /** fetch() with the bearer token; a 401 asks for the token (once for all waiting calls) and tries again. */
  function api(path, init) {
    init = init || {};
    var headers = { Accept: 'application/json' };
    if (init.json !== undefined) headers['Content-Type'] = 'application/json';
    var sent = token;
    if (sent) headers.Authorization = 'Bearer ' + sent;
    return fetch(path, {
      method: init.method || 'GET',
      headers: headers,
      body: init.json === undefined ? undefined : JSON.stringify(init.json),
      cache: 'no-store',
      credentials: 'omit',
    }).then(function (response) {
      var date = Date.parse(response.headers.get('Date') || '');
      if (!isNaN(date)) clockOffsetMs = date - Date.now();
      if (response.status !== 401) return response;
      if (token && token !== sent) return api(path, init);
      if (token === sent && sent) {
        token = null;
        try { localStorage.removeItem(TOKEN_KEY); } catch (e) { /* nothing kept */ }
        showTokenNote();
      }
      return askToken(sent ? 'The agent refused the stored token; enter its health.token.' : 'This agent\'s API needs its token (health.token in its configuration).')
        .then(function () { return api(path, init); });
    });
  }

  /** The API's reply as text for the operator: status line and the JSON body, indented. */
  function describeReply(response) {
    return response.text().then(function (text) {
      var shown = text;
      try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { /* not JSON: as sent */ }
      return { ok: response.ok, text: 'HTTP ' + response.status + (response.statusText ? ' ' + response.statusText : '') + (shown ? '\n' + shown : '') };
    });
  }
  function showReply(output, promise) {
    output.classList.remove('bad');
    output.textContent = 'waiting for the agent…';
    return promise.then(describeReply).then(function (reply) {
      output.textContent = reply.text;
      output.classList.toggle('bad', !reply.ok);
    }, function (error) {
      output.textContent = 'no reply: ' + (error && error.message ? error.message : error);
      output.classList.add('bad');
    });
  }

  // ---- images: fetched as blobs (the header travels), shown by blob: URL, the previous one freed

  function showBlob(img, blob) {
    var previous = img.getAttribute('data-blob');
    var url = URL.createObjectURL(blob);
    var free = function () { if (previous) URL.revokeObjectURL(previous); };
    img.onload = free;
    img.onerror = free;
    img.src = url;
    img.setAttribute('data-blob', url);
  }
  function loadImage(img, path) {
    return api(path).then(function (response) {
      if (!response.ok) return response.json().catch(function () { return {}; }).then(function (reply) {
        throw new Error(reply.message || ('HTTP ' + response.status));
      });
      return response.blob().then(function (blob) { showBlob(img, blob); });
    });
  }

  // ---- the score chart: an inline SVG (no library), labels as HTML so they do not stretch

  var chartCount = 0;
  function drawChart(box, points, threshold, fromMs, toMs, options) {
    options = options || {};
    var markMs = options.markMs;
    var W = 1000;
    var H = 100;
    var scores = points.map(function (p) { return p.score; }).filter(function (s) { return isFinite(s); });
    if (scores.length === 0) {
      box.innerHTML = '<div class="empty">no scores in this window yet</div>';
      return;
    }
    var hasThreshold = typeof threshold === 'number' && isFinite(threshold);
    var hi = Math.max.apply(null, scores.concat(hasThreshold ? [threshold * (threshold > 0 ? 1.5 : 0.5)] : []));
    var lo = Math.min.apply(null, scores.concat([0, hasThreshold ? threshold : 0]));
    if (!(hi > lo)) hi = lo + 1;
    var pad = (hi - lo) * 0.06;
    hi += pad;
    lo -= pad;
    var span = Math.max(1, toMs - fromMs);
    var x = function (t) { return ((t - fromMs) / span) * W; };
    var y = function (s) { return H - ((s - lo) / (hi - lo)) * H; };
    var gap = 5000;
    var lines = [];
    var current = [];
    var last = null;
    points.forEach(function (p) {
      var t = timeOf(p.at);
      if (!isFinite(p.score) || isNaN(t)) return;
      if (last !== null && t - last > gap && current.length) { lines.push(current); current = []; }
      current.push(x(t).toFixed(1) + ',' + y(p.score).toFixed(2));
      last = t;
    });
    if (current.length) lines.push(current);
    var polylines = lines.map(function (line) {
      if (line.length === 1) line = [line[0], line[0].replace(/^([\d.-]+)/, function (m) { return String(Number(m) + 2); })];
      return '<polyline class="line CLASS" points="' + line.join(' ') + '"/>';
    }).join('');
    var id = 'chart-clip-' + (++chartCount);
    var ty = hasThreshold ? y(threshold) : -1;
    var svg = '<svg viewBox="0 0 ' + W + ' ' + H + '" preserveAspectRatio="none" aria-hidden="true">';
    if (hasThreshold) {
      svg += '<defs><clipPath id="' + id + '-a"><rect x="0" y="-10" width="' + W + '" height="' + (ty + 10).toFixed(2) + '"/></clipPath>' +
        '<clipPath id="' + id + '-b"><rect x="0" y="' + ty.toFixed(2) + '" width="' + W + '" height="' + (H - ty + 10).toFixed(2) + '"/></clipPath></defs>' +
        '<g clip-path="url(#' + id + '-b)">' + polylines.replace(/CLASS/g, 'below') + '</g>' +
        '<g clip-path="url(#' + id + '-a)">' + polylines.replace(/CLASS/g, 'above') + '</g>' +
        '<line class="threshold" x1="0" x2="' + W + '" y1="' + ty.toFixed(2) + '" y2="' + ty.toFixed(2) + '"/>';
    } else {
      svg += polylines.replace(/CLASS/g, 'below');
    }
    if (markMs !== undefined) svg += '<line class="now" x1="' + x(markMs).toFixed(1) + '" x2="' + x(markMs).toFixed(1) + '" y1="0" y2="' + H + '"/>';
    svg += '</svg>';
    var label = function (text, style) { return '<span class="label" style="' + style + '">' + text + '</span>'; };
    var seconds = Math.round(span / 1000);
    // Top and bottom rows lie outside the plot (the SVG leaves 16 px each); the threshold's
    // label sits on its line at the left, where the oldest, usually quiet, scores are.
    var html = svg + label('max ' + fmt(hi - pad), 'left:2px;top:1px') +
      label(seconds >= 120 ? '−' + Math.round(seconds / 60) + ' min' : '−' + seconds + ' s', 'left:2px;bottom:1px') +
      label(clock(toMs), 'right:2px;bottom:1px');
    if (hasThreshold) html += label('threshold ' + fmt(threshold), 'left:2px;top:calc(16px + ' + Math.max(0, Math.min(100, ty)).toFixed(1) + ' * (100% - 32px) / 100 - 14px)');
    var latest = scores[scores.length - 1];
    html += label((options.latestLabel || 'now') + ' ' + fmt(latest), 'right:2px;top:1px');
    box.innerHTML = html;
    box.setAttribute('data-points', String(scores.length));
  }

  // ---- fresh figures: the page's own server-rendered parts, swapped in place

  var refreshNote = $('#refresh-note');
  function refreshFigures() {
    return fetch(location.pathname, { cache: 'no-store', credentials: 'omit' }).then(function (response) {
      if (!response.ok) throw new Error('HTTP ' + response.status);
      return response.text();
    }).then(function (html) {
      var fresh = new DOMParser().parseFromString(html, 'text/html');
      var byKey = {};
      $all('[data-live]', fresh).forEach(function (el) { byKey[el.getAttribute('data-live')] = el; });
      $all('[data-live]').forEach(function (el) {
        var key = el.getAttribute('data-live');
        if (key.indexOf('thumbs:') === 0 && el.getAttribute('data-api-owned') === 'true') return;
        if (byKey[key] && byKey[key].innerHTML !== el.innerHTML) el.innerHTML = byKey[key].innerHTML;
      });
      localTimes();
      markClickableRows();
      refreshNote.textContent = 'live · figures at ' + new Date().toLocaleTimeString();
      refreshNote.classList.remove('bad');
    }).catch(function (error) {
      refreshNote.textContent = 'agent unreachable (' + (error && error.message ? error.message : error) + ')';
      refreshNote.classList.add('bad');
    });
  }

  // ---- events: thumbnails per camera, a dialog per event

  function eventList(reply) {
    if (Array.isArray(reply)) return reply;
    return (reply && (reply.events || reply.items)) || [];
  }
  /** The event's newest figures, whether the API sends them flat or as its messages. */
  function summarise(event) {
    var messages = Array.isArray(event.messages) ? event.messages : [];
    var latest = messages.length ? messages[messages.length - 1] : {};
    var first = messages.length ? messages[0] : {};
    var pick = function (name) { return event[name] !== undefined ? event[name] : latest[name] !== undefined ? latest[name] : first[name]; };
    var ended = event.state ? event.state === 'ended' : event.endedAt ? true : messages.some(function (m) { return m.type === 'end'; });
    return {
      id: event.id,
      camera: pick('camera'),
      startedAt: pick('startedAt') || pick('at'),
      endedAt: pick('endedAt'),
      peakScore: pick('peakScore'),
      meanScore: pick('meanScore'),
      threshold: pick('threshold'),
      durationMs: pick('durationMs'),
      frames: pick('frames'),
      reason: pick('reason'),
      box: pick('box'),
      ended: ended,
      snapshotUrl: event.snapshotUrl || (event.links && (event.links.snapshot || event.links.snapshotUrl)) || snapshotPath(pick('camera'), pick('snapshot')),
    };
  }
  function snapshotPath(camera, file) {
    if (!camera || !file) return null;
    if (file.charAt(0) === '/' && (file.indexOf('/api/') === 0 || file.indexOf('/snapshots/') === 0)) return file;
    return '/snapshots/' + enc(camera) + '/' + enc(String(file).split('/').pop());
  }
  function eventPoints(event) {
    var list = event.scores || event.timeline || event.points;
    if (list && !Array.isArray(list)) list = list.points;
    return Array.isArray(list) ? list : [];
  }

  function renderThumbs(card, events) {
    var box = card.thumbs;
    box.setAttribute('data-api-owned', 'true');
    if (events.length === 0) {
      if (!$('.thumb', box)) box.innerHTML = '<p class="muted">No recent events.</p>';
      return;
    }
    var keep = {};
    events.forEach(function (raw, index) {
      var event = summarise(raw);
      keep[event.id] = true;
      var button = card.thumbById[event.id];
      if (!button) {
        button = document.createElement('button');
        button.type = 'button';
        button.className = 'thumb';
        button.setAttribute('data-event-id', event.id);
        button.innerHTML = '<img alt=""><span class="thumb-text"></span>';
        card.thumbById[event.id] = button;
      }
      var text = clock(event.startedAt) + ' · peak ' + fmt(event.peakScore) + (event.ended ? '' : ' · open');
      $('.thumb-text', button).textContent = text;
      button.title = 'event ' + event.id + ': ' + text;
      button.classList.toggle('open', !event.ended);
      var img = $('img', button);
      img.alt = 'snapshot of the event at ' + clock(event.startedAt);
      // A snapshot is rewritten while its event finds a higher peak: fetch it again then.
      var version = event.snapshotUrl + ' ' + event.peakScore;
      if (event.snapshotUrl && img.getAttribute('data-version') !== version) {
        img.setAttribute('data-version', version);
        loadImage(img, event.snapshotUrl).catch(function () { img.setAttribute('data-version', ''); });
      }
      if (box.children[index] !== button) box.insertBefore(button, box.children[index] || null);
    });
    Object.keys(card.thumbById).forEach(function (id) {
      if (!keep[id]) { card.thumbById[id].remove(); delete card.thumbById[id]; }
    });
    $all(':scope > :not(.thumb)', box).forEach(function (el) { el.remove(); });
  }

  var dialog = $('#event-dialog');
  var dialogImage = $('#event-image');
  var markButton = $('#mark-normal');
  var eventReply = $('#event-reply');
  var openEventId = null;
  $('.close', dialog).addEventListener('click', function () { dialog.close(); });
  dialog.addEventListener('close', function () { openEventId = null; clearTimeout(eventTimer); });
  dialog.addEventListener('click', function (event) { if (event.target === dialog) dialog.close(); });

  function fact(name, value) {
    if (value === undefined || value === null || value === '') return '';
    var dt = document.createElement('dt');
    dt.textContent = name;
    var dd = document.createElement('dd');
    dd.textContent = String(value);
    return [dt, dd];
  }
  var eventTimer = null;
  function openEvent(id) {
    openEventId = id;
    clearTimeout(eventTimer);
    $('#event-title').textContent = 'event ' + id;
    $('#event-facts').innerHTML = '';
    $('#event-chart').innerHTML = '<div class="empty">loading…</div>';
    eventReply.textContent = '';
    eventReply.classList.remove('bad');
    dialogImage.removeAttribute('src');
    dialogImage.removeAttribute('data-version');
    markButton.hidden = !has('POST', '/api/events/{id}/normal');
    markButton.disabled = false;
    if (!dialog.open) dialog.showModal();
    loadEvent(id);
  }
  /** Fills the dialog; an event still open is fetched again every few seconds while it is shown. */
  function loadEvent(id) {
    api('/api/events/' + enc(id)).then(function (response) {
      if (!response.ok) return describeReply(response).then(function (reply) { throw new Error(reply.text); });
      return response.json();
    }).then(function (raw) {
      if (openEventId !== id) return;
      // GET /api/events/{id} wraps the event with its messages and the scores over it.
      var event = summarise(raw.event || raw);
      $('#event-title').textContent = (event.camera || '') + ' · ' + clock(event.startedAt) + (event.ended ? '' : ' (open)');
      var facts = $('#event-facts');
      facts.innerHTML = '';
      [
        fact('camera', event.camera),
        fact('started', event.startedAt),
        fact('ended', event.ended ? event.endedAt || 'yes' : 'still open'),
        fact('reason', event.reason),
        fact('duration', typeof event.durationMs === 'number' ? (event.durationMs / 1000).toFixed(1) + ' s' : undefined),
        fact('peak score', fmt(event.peakScore)),
        fact('mean score', event.meanScore === undefined ? undefined : fmt(event.meanScore)),
        fact('threshold', fmt(event.threshold)),
        fact('frames', event.frames),
        fact('box', event.box ? event.box.x + ',' + event.box.y + ' ' + event.box.width + 'x' + event.box.height : 'none'),
        fact('id', event.id),
      ].forEach(function (pair) { if (pair) { facts.appendChild(pair[0]); facts.appendChild(pair[1]); } });
      var points = eventPoints(raw);
      var times = points.map(function (p) { return timeOf(p.at); }).filter(function (t) { return !isNaN(t); });
      var start = timeOf(event.startedAt);
      var from = times.length ? Math.min(times[0], start || times[0]) : start;
      var to = times.length ? times[times.length - 1] : start + 1000;
      drawChart($('#event-chart'), points, event.threshold, from, Math.max(to, from + 1000), { markMs: start, latestLabel: event.ended ? 'last' : 'latest' });
      // The snapshot is rewritten while the event finds a higher peak.
      var version = event.snapshotUrl + ' ' + event.peakScore;
      if (event.snapshotUrl && dialogImage.getAttribute('data-version') !== version) {
        dialogImage.setAttribute('data-version', version);
        loadImage(dialogImage, event.snapshotUrl).catch(function (error) { eventReply.textContent = 'snapshot: ' + error.message; });
      }
      if (!event.ended) eventTimer = setTimeout(function () { if (openEventId === id) loadEvent(id); }, EVENTS_MS);
    }).catch(function (error) {
      if (openEventId !== id) return;
      $('#event-chart').innerHTML = '';
      eventReply.textContent = String(error && error.message ? error.message : error);
      eventReply.classList.add('bad');
    });
  }
  markButton.addEventListener('click', function () {
    var id = openEventId;
    if (!id) return;
    markButton.disabled = true;
    showReply(eventReply, api('/api/events/' + enc(id) + '/normal', { method: 'POST', json: {} })).then(function () { markButton.disabled = false; });
  });
  document.addEventListener('click', function (event) {
    var target = event.target.closest ? event.target.closest('[data-event-id]') : null;
    if (!target || !has('GET', '/api/events/{id}')) return;
    // A plain click opens the event here; a modified one still opens the snapshot link as before.
    if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    openEvent(target.getAttribute('data-event-id'));
  });
  function markClickableRows() {
    if (!has('GET', '/api/events/{id}')) return;
    $all('tr[data-event-id]').forEach(function (row) { row.classList.add('clickable'); });
  }

  // ---- cameras

  function setUpCard(el) {
    var name = el.getAttribute('data-camera');
    var base = '/api/cameras/' + enc(name);
    var card = {
      el: el,
      name: name,
      base: base,
      heat: false,
      img: $('.live-image', el),
      note: $('.live-note', el),
      age: $('.live-age', el),
      chart: $('.chart', el),
      thumbs: $('.thumbs', el),
      thumbById: {},
      liveTimer: null,
      liveBusy: false,
    };
    var live = $('.live', el);
    // The picture's own shape, once known, instead of a letterboxed 16:9.
    card.img.addEventListener('load', function () {
      if (card.img.naturalWidth && card.img.naturalHeight) live.style.aspectRatio = card.img.naturalWidth + ' / ' + card.img.naturalHeight;
    });
    var canFrame = has('GET', '/api/cameras/{camera}/frame.jpg');
    var canHeat = has('GET', '/api/cameras/{camera}/heatmap.jpg');
    if (canFrame || canHeat) {
      card.note.textContent = 'waiting for the first frame…';
      $('.tools', el).hidden = false;
      var toggle = $('.heatmap-toggle', el);
      toggle.hidden = !canHeat;
      toggle.addEventListener('click', function () {
        card.heat = !card.heat || !canFrame;
        toggle.setAttribute('aria-pressed', String(card.heat));
        refreshLive(card);
      });
      if (!canFrame) { card.heat = true; toggle.setAttribute('aria-pressed', 'true'); }
      refreshLive(card);
    } else {
      card.note.textContent = apiMode === 'none' ? 'this agent serves no API: no live view' : 'this agent serves no live view';
    }
    if (has('GET', '/api/cameras/{camera}/scores')) {
      card.chart.hidden = false;
      card.chart.setAttribute('aria-label', 'score of the last ' + CHART_SECONDS / 60 + ' minutes against the threshold');
      every(SCORES_MS, function () { return refreshScores(card); });
    }
    if (has('GET', '/api/events')) every(EVENTS_MS, function () { return refreshEvents(card); });
    if (has('POST', '/api/cameras/{camera}/capture')) {
      var capture = $('.capture', el);
      capture.hidden = false;
      var button = $('.capture-button', capture);
      button.addEventListener('click', function () {
        var count = Math.max(1, Math.round(Number($('.capture-count', capture).value) || 1));
        button.disabled = true;
        showReply($('.capture-reply', capture), api(base + '/capture', { method: 'POST', json: { count: count } }))
          .then(function () { button.disabled = false; });
      });
    }
    return card;
  }

  /** The live picture, one request at a time per camera; a toggle cuts the wait short. */
  function refreshLive(card) {
    clearTimeout(card.liveTimer);
    if (card.liveBusy) { card.liveAgain = true; return; }
    if (document.hidden) { card.liveTimer = setTimeout(function () { refreshLive(card); }, LIVE_MS); return; }
    card.liveBusy = true;
    var kind = card.heat ? 'heatmap' : 'frame';
    loadImage(card.img, card.base + '/' + kind + '.jpg').then(function () {
      card.img.setAttribute('data-kind', kind);
      card.note.textContent = '';
      card.age.textContent = (kind === 'heatmap' ? 'heat map' : 'live') + ' · ' + new Date().toLocaleTimeString();
    }, function (error) {
      card.img.removeAttribute('src');
      card.img.removeAttribute('data-kind');
      card.note.textContent = 'no picture: ' + error.message;
    }).then(function () {
      card.liveBusy = false;
      if (card.liveAgain) { card.liveAgain = false; refreshLive(card); return; }
      card.liveTimer = setTimeout(function () { refreshLive(card); }, LIVE_MS);
    });
  }

  function refreshScores(card) {
    return api(card.base + '/scores?seconds=' + CHART_SECONDS).then(function (response) {
      if (!response.ok) throw new Error('HTTP ' + response.status);
      return response.json();
    }).then(function (reply) {
      var now = Date.now() + clockOffsetMs;
      var to = typeof reply.now === 'number' ? reply.now : typeof reply.until === 'string' ? Date.parse(reply.until) : now;
      var points = reply.points || [];
      // A camera that started a minute ago gets a minute-wide chart, not a sliver at the edge of five.
      var first = points.length ? timeOf(points[0].at) : to;
      var from = Math.min(to - MIN_CHART_SECONDS * 1000, Math.max(to - CHART_SECONDS * 1000, first - 1000));
      drawChart(card.chart, points, reply.threshold, from, to);
    }).catch(function (error) {
      card.chart.innerHTML = '<div class="empty">scores: ' + String(error.message || error).replace(/[<&]/g, '') + '</div>';
    });
  }

  function refreshEvents(card) {
    return api('/api/events?camera=' + enc(card.name) + '&limit=' + THUMBS).then(function (response) {
      if (!response.ok) throw new Error('HTTP ' + response.status);
      return response.json();
    }).then(function (reply) { renderThumbs(card, eventList(reply)); }).catch(function () { /* the figures' refresh shows an unreachable agent */ });
  }

  /** Runs the task now and then again each time it settled plus ms, waiting while the page is hidden. */
  function every(ms, task) {
    var run = function () {
      if (document.hidden) return setTimeout(run, ms);
      Promise.resolve().then(task).catch(function () { /* shown by the task */ }).then(function () { setTimeout(run, ms); });
    };
    run();
  }

  function start() {
    // Figures as fresh as the chart beside them; the server's refresh interval is for the script-less page.
    every(Math.min(refreshMs, FIGURES_MS), refreshFigures);
    $all('.card[data-camera]').forEach(setUpCard);
    localTimes();
    markClickableRows();
    document.addEventListener('visibilitychange', function () { if (!document.hidden) refreshFigures(); });
  }

  if (apiMode === 'none') { start(); return; }
  // Which routes this agent serves: the page shows only what it can do. The document needs no token.
  fetch('/api/openapi.json', { cache: 'no-store', credentials: 'omit' }).then(function (response) {
    return response.ok ? response.json() : { paths: {} };
  }).then(function (doc) {
    Object.keys(doc.paths || {}).forEach(function (path) {
      Object.keys(doc.paths[path]).forEach(function (method) { routes[method.toUpperCase() + ' ' + path] = true; });
    });
  }, function () { /* no API document: server-rendered parts only */ }).then(start);
})();
`;
