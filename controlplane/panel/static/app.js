// byoi Control Panel. Plain JavaScript, no dependency, no build step.
//
// Rules of this file: every string that comes from the API or from a
// customer is put in the page with textContent (or as a form value), never
// as HTML; no inline script or style (the Content-Security-Policy forbids
// them); every state-changing request carries the session's CSRF token.
// Validation rules live in the job package only: the form asks the server
// (api/validate) and shows its answer next to the field it names.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  let csrf = document.querySelector('meta[name="byoi-csrf"]').getAttribute('content');
  let current = null; // the server view's state: {name, deployment, after, timer, ...}

  // ---- DOM helpers (text only) ----

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function show(id) {
    for (const v of ['view-loading', 'view-signin', 'view-servers', 'view-server']) $(v).hidden = v !== id;
  }

  function badge(status) {
    const b = el('span', 'badge ' + (status || ''), status || 'none');
    return b;
  }

  function setBadge(node, status) {
    node.className = 'badge ' + (status || '');
    node.textContent = status || 'none';
  }

  function humanBytes(n) {
    if (n < 1024) return n + ' B';
    const units = 'KMGTPE';
    let div = 1024;
    let exp = 0;
    for (let m = Math.floor(n / 1024); m >= 1024; m = Math.floor(m / 1024)) {
      div *= 1024;
      exp++;
    }
    return (n / div).toFixed(1) + ' ' + units[exp] + 'iB';
  }

  function when(iso) {
    if (!iso) return '';
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleString();
  }

  function duration(s) {
    s = Math.max(0, Math.floor(Number(s) || 0));
    if (s < 60) return s + ' s';
    const m = Math.floor(s / 60);
    if (m < 60) return m + ' min ' + (s % 60) + ' s';
    return Math.floor(m / 60) + ' h ' + (m % 60) + ' min';
  }

  // ---- API ----

  class SignedOut extends Error {}

  // api calls the panel's API; the answer's JSON is in data. A 401 means
  // the session ended: the page reloads to the sign-in view.
  async function api(method, path, body, allow401) {
    const init = { method: method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (method !== 'GET') init.headers['X-CSRF-Token'] = csrf;
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = typeof body === 'string' ? body : JSON.stringify(body);
    }
    const r = await fetch(path, init);
    const text = await r.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (e) {
        data = { message: text };
      }
    }
    if (r.status === 401 && !allow401) {
      window.location.replace(window.location.pathname);
      throw new SignedOut();
    }
    return { status: r.status, ok: r.ok, data: data };
  }

  function serverPath(name, tail) {
    return 'api/dedicated/server/' + encodeURIComponent(name) + (tail || '');
  }

  function message(res) {
    return (res.data && typeof res.data.message === 'string') ? res.data.message : 'HTTP ' + res.status;
  }

  // ---- sign-in ----

  async function start() {
    const res = await api('GET', 'api/session', undefined, true);
    if (res.status === 401) {
      show('view-signin');
      $('signin-token').focus();
      return;
    }
    signedIn(res.data);
  }

  function signedIn(s) {
    csrf = s.csrf;
    $('account-name').textContent = s.customer;
    $('account').hidden = false;
    route();
  }

  $('signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const input = $('signin-token');
    const token = input.value;
    input.value = '';
    $('signin-error').textContent = '';
    $('signin-submit').disabled = true;
    try {
      const res = await api('POST', 'api/login', { token: token }, true);
      if (res.ok) {
        signedIn(res.data);
      } else {
        $('signin-error').textContent = message(res);
        input.setAttribute('aria-invalid', 'true');
        input.focus();
      }
    } finally {
      $('signin-submit').disabled = false;
    }
  });

  $('sign-out').addEventListener('click', async () => {
    await api('POST', 'api/logout');
    window.location.replace(window.location.pathname);
  });

  // ---- routing: #server/NAME or the list ----

  function route() {
    stopPolling();
    const h = window.location.hash;
    if (h.startsWith('#server/')) {
      openServer(decodeURIComponent(h.slice('#server/'.length)));
    } else {
      listServers();
    }
  }
  window.addEventListener('hashchange', () => {
    if (!$('account').hidden) route();
  });

  // ---- servers ----

  function bootText(id) {
    return Number(id) === 1 ? 'Disk' : Number(id) === 2 ? 'Rescue' : String(id);
  }

  async function listServers() {
    show('view-servers');
    const body = $('servers-body');
    const res = await api('GET', 'api/dedicated/server');
    clear(body);
    const names = res.ok && Array.isArray(res.data) ? res.data : [];
    $('servers-empty').hidden = names.length > 0;
    for (const name of names) {
      const tr = el('tr');
      const a = el('a', null, name);
      a.href = '#server/' + encodeURIComponent(name);
      const tdName = el('td');
      tdName.appendChild(a);
      const tdState = el('td');
      const tdBoot = el('td');
      const tdDisks = el('td');
      const tdDepl = el('td');
      tr.append(tdName, tdState, tdBoot, tdDisks, tdDepl);
      body.appendChild(tr);
      fillServerRow(name, tdState, tdBoot, tdDisks, tdDepl);
    }
  }

  async function fillServerRow(name, tdState, tdBoot, tdDisks, tdDepl) {
    const [info, hw, st] = await Promise.all([
      api('GET', serverPath(name)),
      api('GET', serverPath(name, '/specifications/hardware')),
      api('GET', serverPath(name, '/bringYourOwnImage')),
    ]);
    if (info.ok) {
      tdState.appendChild(badge(info.data.state === 'ok' ? 'ok' : info.data.state));
      tdBoot.textContent = bootText(info.data.bootId);
    }
    if (hw.ok) {
      const groups = hw.data.diskGroups || [];
      tdDisks.textContent = groups.length ? groups.map((g) => g.description).join('; ') : 'not reported yet';
    }
    if (st.ok) {
      tdDepl.appendChild(badge(st.data.status));
      tdDepl.appendChild(document.createTextNode(' ' + (st.data.message || '')));
    } else {
      tdDepl.textContent = '—';
    }
  }

  // ---- one server ----

  async function openServer(name) {
    show('view-server');
    current = { name: name, deployment: 0, after: 0, timer: 0, prog: null, warnings: [], touched: new Set(), submitted: false, seq: 0 };
    $('crumb-server').textContent = name;
    $('server-title').textContent = name;
    $('server-error').hidden = true;
    resetForm();
    const ok = await loadInfo();
    if (!ok) return;
    await refreshStatus(true);
    loadHistory();
  }

  async function loadInfo() {
    const name = current.name;
    const [info, hw] = await Promise.all([api('GET', serverPath(name)), api('GET', serverPath(name, '/specifications/hardware'))]);
    if (!info.ok) {
      $('server-error').textContent = message(info);
      $('server-error').hidden = false;
      for (const id of ['card-info', 'card-status', 'card-install', 'card-history']) $(id).hidden = true;
      return false;
    }
    for (const id of ['card-info', 'card-status', 'card-install', 'card-history']) $(id).hidden = false;
    $('info-state').textContent = '';
    $('info-state').appendChild(badge(info.data.state === 'ok' ? 'ok' : info.data.state));
    $('info-boot').textContent = bootText(info.data.bootId);
    $('info-os').textContent = info.data.os || '';
    $('info-efi').textContent = info.data.efiBootloaderPath || '—';
    const groups = hw.ok ? hw.data.diskGroups || [] : [];
    $('info-bootmode').textContent = hw.ok && hw.data.bootMode ? hw.data.bootMode : 'not reported yet';
    const list = $('info-disks');
    clear(list);
    const sel = $('f-diskGroup');
    const keep = sel.value;
    clear(sel);
    if (groups.length === 0) {
      list.appendChild(el('li', null, 'not reported yet: the server’s agent has not sent its inventory'));
      const o = el('option', null, '1 (default)');
      o.value = '1';
      sel.appendChild(o);
    }
    for (const g of groups) {
      list.appendChild(el('li', null, g.diskGroupId + ': ' + g.description));
      const o = el('option', null, g.diskGroupId + ' — ' + g.description);
      o.value = String(g.diskGroupId);
      sel.appendChild(o);
    }
    if (keep && [...sel.options].some((o) => o.value === keep)) sel.value = keep;
    loadDevices(name);
    return true;
  }

  // The inventory beyond OVH's shape: NICs with their drivers, and the
  // network and storage controllers no driver in the rescue claimed.
  async function loadDevices(name) {
    const res = await api('GET', serverPath(name, '/bringYourOwnImage/hardware'));
    if (!current || current.name !== name) return;
    const nics = $('info-nics'), un = $('info-unclaimed');
    clear(nics);
    clear(un);
    const d = res.ok ? res.data : {};
    for (const n of d.nics || []) nics.appendChild(el('li', null, n.name + ' ' + n.mac + (n.driver ? ' (' + n.driver + ')' : ' (no driver)')));
    if (!(d.nics || []).length) nics.appendChild(el('li', null, 'not reported yet'));
    for (const u of d.unclaimedDevices || []) un.appendChild(el('li', 'warning', u.slot + ': ' + u.message));
    if (!(d.unclaimedDevices || []).length) un.appendChild(el('li', null, 'none'));
  }

  // bootedCell is the "booted" watch of a deployment (issue 25): after
  // done, whether the new system phoned home.
  function bootedCell(d) {
    const words = { booted: 'booted', watching: 'watching', noSignOfLife: 'no sign of life', notWatched: 'not watched' };
    const text = d.booted ? (words[d.booted] || '') + (d.booted === 'booted' && d.bootedAt ? ' ' + when(d.bootedAt) : '') : '';
    return el('td', d.booted === 'noSignOfLife' ? 'history-booted warning' : 'history-booted', text);
  }

  async function loadHistory() {
    const name = current.name;
    const res = await api('GET', serverPath(name, '/bringYourOwnImage/history'));
    if (!current || current.name !== name) return;
    const body = $('history-body');
    clear(body);
    const list = res.ok && Array.isArray(res.data) ? res.data : [];
    $('history-empty').hidden = list.length > 0;
    for (const d of list) {
      const tr = el('tr', 'history-row');
      const st = el('td');
      st.appendChild(badge(d.status));
      tr.append(el('td', null, when(d.createdAt)), el('td', null, d.taskId), st, el('td', 'history-message', d.message), el('td', null, d.attempts), el('td', null, when(d.endedAt)), bootedCell(d));
      body.appendChild(tr);
      if (d.status === 'error') body.appendChild(logsRow(name, d.deploymentId));
    }
  }

  // Log tails of a failed deployment (issue 25): the end of the kernel
  // log and of the agent's log, as the agent sent them (redacted by the
  // agent and again by byoi-api: no token, header value or user data).
  // Fetched when opened; shown as text, at most logLines lines each.
  const logLines = 200;
  const logChars = 16384;

  function tailText(text) {
    let s = String(text || '');
    if (s.length > logChars) s = s.slice(s.length - logChars);
    const end = s.endsWith('\n') ? '\n' : '';
    const lines = (end ? s.slice(0, -1) : s).split('\n');
    if (lines.length > logLines) s = lines.slice(lines.length - logLines).join('\n') + end;
    return s;
  }

  function logsRow(name, id) {
    const tr = el('tr', 'history-logs');
    const td = el('td');
    td.colSpan = 7;
    const det = el('details');
    det.appendChild(el('summary', null, 'Logs of the failure (kernel and agent)'));
    const box = el('div', 'logs-body');
    det.appendChild(box);
    let loaded = false;
    det.addEventListener('toggle', async () => {
      if (!det.open || loaded) return;
      loaded = true;
      box.appendChild(el('p', 'empty', 'Loading…'));
      const res = await api('GET', serverPath(name, '/bringYourOwnImage/logs?deploymentId=' + encodeURIComponent(id)));
      clear(box);
      if (res.status === 404) {
        box.appendChild(el('p', 'empty', 'The agent sent no logs for this deployment.'));
        return;
      }
      if (!res.ok) {
        loaded = false;
        box.appendChild(el('p', 'page-error', message(res)));
        return;
      }
      const l = res.data;
      box.appendChild(el('p', 'logs-meta', 'Attempt ' + l.attempt + (l.receivedAt ? ', received ' + when(l.receivedAt) : '') + ' (last ' + logLines + ' lines of each)'));
      for (const [title, text, cls] of [['Kernel log (dmesg)', l.kernel, 'log-kernel'], ['Agent log', l.agent, 'log-agent']]) {
        box.appendChild(el('h3', 'logs-title', title));
        box.appendChild(el('pre', 'log ' + cls, tailText(text) || '(empty)'));
      }
    });
    td.appendChild(det);
    tr.appendChild(td);
    return tr;
  }

  // refreshStatus reads the server's current deployment; polling goes on
  // while it runs.
  async function refreshStatus(first) {
    const cur = current;
    const name = cur.name;
    const st = await api('GET', serverPath(name, '/bringYourOwnImage'));
    if (current !== cur) return;
    if (st.status === 404) {
      renderNone(message(st));
      return;
    }
    if (!st.ok) return;
    if (first || !cur.deployment) {
      const ev = await api('GET', serverPath(name, '/bringYourOwnImage/events?after=0&limit=1000'));
      if (current !== cur || !ev.ok) return;
      cur.deployment = ev.data.deploymentId;
      cur.after = 0;
      cur.prog = null;
      cur.warnings = [];
      takeEvents(ev.data.events);
      cur.after = ev.data.next;
    }
    const is = await api('GET', serverPath(name, '/install/status'));
    if (current !== cur) return;
    renderStatus(st.data, is.ok ? is.data : null);
    if (st.data.status === 'doing') schedulePoll();
  }

  function schedulePoll() {
    if (!current || current.timer) return;
    current.timer = window.setTimeout(pollTick, 700);
  }

  function stopPolling() {
    if (current && current.timer) window.clearTimeout(current.timer);
    if (current) current.timer = 0;
    current = null;
  }

  async function pollTick() {
    const cur = current;
    if (!cur) return;
    cur.timer = 0;
    try {
      const q = '/bringYourOwnImage/events?deployment=' + cur.deployment + '&after=' + cur.after;
      const ev = await api('GET', serverPath(cur.name, q));
      if (current !== cur) return;
      if (ev.ok) {
        takeEvents(ev.data.events);
        cur.after = ev.data.next;
      }
      const [st, is] = await Promise.all([api('GET', serverPath(cur.name, '/bringYourOwnImage')), api('GET', serverPath(cur.name, '/install/status'))]);
      if (current !== cur) return;
      if (st.status === 404) {
        renderNone(message(st));
        return;
      }
      if (st.ok) {
        renderStatus(st.data, is.ok ? is.data : null);
        if (st.data.status !== 'doing') {
          loadHistory();
          loadInfo();
          return;
        }
      }
    } catch (e) {
      if (e instanceof SignedOut) return;
    }
    schedulePoll();
  }

  // takeEvents follows the progress of the current step: bytes done and
  // total of the latest progress event, and the rate between successive
  // ones (the control plane's, or computed from the agent's times).
  function takeEvents(events) {
    const cur = current;
    for (const e of events || []) {
      if (e.kind === 'warning' && e.message && !cur.warnings.includes(e.message)) cur.warnings.push(e.message);
      if (e.kind !== 'progress') {
        if (cur.prog && e.step !== cur.prog.step) cur.prog = null;
        continue;
      }
      const t = Date.parse(e.time);
      let rate = Number(e.rate) || 0;
      const p = cur.prog;
      if (!rate && p && p.step === e.step && t > p.t && e.bytesDone >= p.done) rate = (e.bytesDone - p.done) / ((t - p.t) / 1000);
      cur.prog = { step: e.step, done: e.bytesDone, total: e.bytesTotal, t: t, rate: rate || (p && p.step === e.step ? p.rate : 0) };
    }
  }

  function renderNone(text) {
    setBadge($('status-badge'), '');
    $('status-message').textContent = text;
    $('status-message').className = 'status-message';
    $('progress-block').hidden = true;
    clear($('steps'));
    $('status-elapsed').textContent = '';
    $('rescue-button').hidden = true;
    $('warnings').hidden = true;
  }

  function renderStatus(st, is) {
    const cur = current;
    setBadge($('status-badge'), st.status);
    const msg = $('status-message');
    msg.textContent = st.message || '';
    msg.className = 'status-message' + (st.status === 'error' ? ' error' : '');
    $('rescue-button').hidden = false;
    const steps = $('steps');
    clear(steps);
    let doing = null;
    if (is) {
      for (const p of is.progress) {
        const li = el('li', p.status, p.comment);
        if (p.status === 'doing') doing = p;
        if (p.error) li.appendChild(el('span', 'step-error', p.error));
        steps.appendChild(li);
      }
      $('status-elapsed').textContent = 'Elapsed: ' + duration(is.elapsedTime);
    }
    const warn = $('warnings');
    clear(warn);
    for (const w of cur.warnings) warn.appendChild(el('li', null, w));
    warn.hidden = cur.warnings.length === 0;
    const block = $('progress-block');
    const bar = $('progress-bar');
    if (st.status === 'done') {
      block.hidden = false;
      bar.max = 100;
      bar.value = 100;
      $('progress-step').textContent = 'Installation complete';
      $('progress-numbers').textContent = '100%';
      $('progress-rate').textContent = '';
      return;
    }
    if (st.status !== 'doing') {
      block.hidden = true;
      return;
    }
    block.hidden = false;
    $('progress-step').textContent = doing ? doing.comment : st.message || '';
    const p = cur.prog;
    if (p && p.total > 0) {
      bar.max = p.total;
      bar.value = Math.min(p.done, p.total);
      $('progress-numbers').textContent = humanBytes(p.done) + ' of ' + humanBytes(p.total) + ' (' + Math.floor((100 * p.done) / p.total) + '%)';
      $('progress-rate').textContent = p.rate > 0 ? humanBytes(Math.round(p.rate)) + '/s' : '';
    } else if (p && p.done > 0) {
      bar.removeAttribute('value');
      $('progress-numbers').textContent = humanBytes(p.done);
      $('progress-rate').textContent = p.rate > 0 ? humanBytes(Math.round(p.rate)) + '/s' : '';
    } else {
      bar.removeAttribute('value');
      $('progress-numbers').textContent = '';
      $('progress-rate').textContent = '';
    }
  }

  // ---- back to rescue ----

  $('rescue-button').addEventListener('click', () => {
    $('rescue-server').textContent = current.name;
    $('rescue-dialog').showModal();
  });

  $('rescue-dialog').addEventListener('close', async () => {
    if ($('rescue-dialog').returnValue !== 'confirm' || !current) return;
    const cur = current;
    const res = await api('DELETE', serverPath(cur.name, '/bringYourOwnImage'));
    if (current !== cur) return;
    if (!res.ok) {
      $('server-error').textContent = message(res);
      $('server-error').hidden = false;
    }
    cur.deployment = 0;
    cur.prog = null;
    await loadInfo();
    await refreshStatus(true);
    loadHistory();
  });

  // ---- the install form ----

  const form = $('install-form');

  function addRow(container, kind, key, value) {
    const row = document.getElementById('kv-row').content.firstElementChild.cloneNode(true);
    const k = row.querySelector('.kv-key');
    const v = row.querySelector('.kv-value');
    v.type = kind === 'header' ? 'password' : 'text';
    v.autocomplete = kind === 'header' ? 'new-password' : 'off';
    k.placeholder = kind === 'header' ? 'Header name' : 'Key';
    v.placeholder = kind === 'header' ? 'Value (secret)' : 'Value';
    k.value = key || '';
    v.value = value || '';
    row.querySelector('.kv-remove').addEventListener('click', () => {
      row.remove();
      touch(container.id === 'headers-rows' ? 'customizations.httpHeaders' : 'customizations.configDriveMetadata');
      scheduleValidate();
    });
    container.appendChild(row);
    k.focus();
  }

  $('add-header').addEventListener('click', () => addRow($('headers-rows'), 'header'));
  $('add-meta').addEventListener('click', () => addRow($('meta-rows'), 'meta'));

  function configDriveToggled() {
    $('configdrive-fields').hidden = !$('f-configdrive').checked;
  }
  $('f-configdrive').addEventListener('change', configDriveToggled);

  function resetForm() {
    form.reset();
    clear($('headers-rows'));
    clear($('meta-rows'));
    configDriveToggled();
    clearErrors();
    $('submit-note').textContent = '';
  }

  function rows(id) {
    const out = [];
    for (const r of $(id).querySelectorAll('.kv-row')) {
      const k = r.querySelector('.kv-key').value;
      const v = r.querySelector('.kv-value').value;
      if (k !== '' || v !== '') out.push([k, v]);
    }
    return out;
  }

  // A JSON object written by hand from rows, so that a name given twice
  // reaches the server (which says so) instead of being merged here.
  function objectJSON(pairs) {
    return '{' + pairs.map((p) => JSON.stringify(p[0]) + ':' + JSON.stringify(p[1])).join(',') + '}';
  }

  // body is the reinstall body (operatingSystem byoi_64) of the form, as
  // POST .../reinstall takes it.
  function body() {
    const c = [];
    const add = (k, jsonValue) => c.push(JSON.stringify(k) + ':' + jsonValue);
    const str = (id) => $(id).value;
    add('imageURL', JSON.stringify(str('f-imageURL')));
    add('imageType', JSON.stringify(str('f-imageType')));
    if (str('f-checksum') !== '') add('imageCheckSum', JSON.stringify(str('f-checksum')));
    if (str('f-checksumType') !== '') add('imageCheckSumType', JSON.stringify(str('f-checksumType')));
    if (str('f-efi') !== '') add('efiBootloaderPath', JSON.stringify(str('f-efi')));
    const headers = rows('headers-rows');
    if (headers.length) add('httpHeaders', objectJSON(headers));
    if ($('f-configdrive').checked) {
      if (str('f-hostname') !== '') add('hostname', JSON.stringify(str('f-hostname')));
      if (str('f-sshKey') !== '') add('sshKey', JSON.stringify(str('f-sshKey')));
      if (str('f-userData') !== '') add('configDriveUserData', JSON.stringify(str('f-userData')));
      const meta = rows('meta-rows');
      if (meta.length) add('configDriveMetadata', objectJSON(meta));
    }
    const group = parseInt($('f-diskGroup').value || '1', 10);
    return '{"operatingSystem":"byoi_64","customizations":{' + c.join(',') + '},"storage":[{"diskGroupId":' + group + '}]}';
  }

  // errorTarget is the element showing errors about a field (a JSON path
  // such as "customizations.hostname"): the closest one up the path, or
  // the form's own.
  function errorTarget(field) {
    let f = field || '';
    for (;;) {
      const t = form.parentNode.querySelector('[data-error-for="' + CSS.escape(f) + '"]');
      if (t) return { node: t, field: f };
      if (f === '') return null;
      const cut = Math.max(f.lastIndexOf('.'), f.lastIndexOf('['));
      f = cut > 0 ? f.slice(0, cut) : '';
    }
  }

  function clearErrors() {
    for (const n of form.parentNode.querySelectorAll('[data-error-for]')) n.textContent = '';
    for (const n of form.querySelectorAll('[aria-invalid]')) n.removeAttribute('aria-invalid');
  }

  function showError(res) {
    clearErrors();
    const d = res.data && res.data.details;
    const t = errorTarget(d && d.field ? d.field : '');
    if (!t) return;
    if (t.field !== '' && !current.submitted && !current.touched.has(t.field)) return;
    // Not while the customer is typing in that very field.
    if (!current.submitted && document.activeElement && fieldOf(document.activeElement) === t.field) return;
    t.node.textContent = message(res);
    const input = form.querySelector('[data-field="' + CSS.escape(t.field) + '"]');
    if (input) input.setAttribute('aria-invalid', 'true');
  }

  function touch(field) {
    if (current) current.touched.add(field);
  }

  let validateTimer = 0;
  function scheduleValidate() {
    window.clearTimeout(validateTimer);
    validateTimer = window.setTimeout(validate, 120);
  }

  async function validate() {
    const cur = current;
    if (!cur) return;
    const seq = ++cur.seq;
    const res = await api('POST', 'api/validate/' + encodeURIComponent(cur.name), body());
    if (current !== cur || seq !== cur.seq) return; // a newer check is on its way
    if (res.ok) {
      clearErrors();
    } else {
      showError(res);
    }
    form.dataset.checked = String(seq);
  }

  function fieldOf(target) {
    if (target.dataset && target.dataset.field) return target.dataset.field;
    if (target.closest('#headers-rows')) return 'customizations.httpHeaders';
    if (target.closest('#meta-rows')) return 'customizations.configDriveMetadata';
    return '';
  }

  form.addEventListener('focusout', (ev) => {
    const f = fieldOf(ev.target);
    if (f) touch(f);
    scheduleValidate();
  });
  form.addEventListener('change', (ev) => {
    const f = fieldOf(ev.target);
    if (f) touch(f);
    scheduleValidate();
  });

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const cur = current;
    cur.submitted = true;
    cur.seq++; // answers of checks already sent are stale now
    const btn = $('install-submit');
    btn.disabled = true;
    $('submit-note').textContent = '';
    try {
      const res = await api('POST', serverPath(cur.name, '/reinstall'), body());
      if (current !== cur) return;
      if (!res.ok) {
        showError(res);
        return;
      }
      clearErrors();
      // Secrets typed in the form are not kept on the page.
      for (const v of $('headers-rows').querySelectorAll('.kv-value')) v.value = '';
      $('f-userData').value = '';
      $('submit-note').textContent = 'Installation started: task ' + res.data.taskId + '.';
      cur.submitted = false;
      cur.touched.clear();
      cur.deployment = 0;
      cur.prog = null;
      await loadInfo();
      await refreshStatus(true);
      loadHistory();
    } finally {
      btn.disabled = false;
    }
  });

  start().catch((e) => {
    if (!(e instanceof SignedOut)) {
      show('view-signin');
      $('signin-error').textContent = String(e && e.message ? e.message : e);
    }
  });
})();
