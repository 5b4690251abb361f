// OVH's Node.js client (npm ovh 2.0.3, unchanged) drives byoi-api: run by
// e2e/ovhnode_test.go, which starts byoi-api over HTTPS on a port that is
// not 443, a real `byoi agent`, and passes the settings in BYOI_NODE_TEST
// (JSON). Every line this prints is one JSON object; the test reads them.
'use strict';
const cfg = JSON.parse(process.env.BYOI_NODE_TEST);
const warnings = [];
const client = (secret) => require('ovh')({
  host: cfg.host, port: cfg.port, basePath: '/1.0',
  appKey: cfg.appKey, appSecret: secret, consumerKey: cfg.consumerKey,
  // The schema documents: the client loads /1.0/dedicated/server.json and
  // /1.0/auth.json first, then warns about any call they do not list.
  apis: ['dedicated/server'],
  warn: (...m) => warnings.push(m.join(' ')),
});
const ovh = client(cfg.appSecret);
const sn = cfg.server, d = `/dedicated/server/${sn}`;
const say = (o) => console.log(JSON.stringify(o));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const fail = (what, got) => { throw new Error(`${what}: ${JSON.stringify(got)}`); };
const call = (m, p, params) => ovh.requestPromised(m, p, params);
// refused runs a call that must be refused with status and message.
async function refused(what, promise, status, message) {
  try {
    const got = await promise;
    fail(`${what} succeeded`, got);
  } catch (e) {
    if (e instanceof Error) throw e;
    if (e.error !== status || e.message !== message) fail(`${what}: want ${status} ${message}`, e);
    say({ refused: what, status: e.error });
  }
}

async function waitTask(id, pending, seconds) {
  for (let i = 0; i < seconds * 5; i++) {
    const t = await call('GET', `${d}/task/${id}`);
    if (t.status === 'done') return t;
    if (!pending.includes(t.status)) fail(`task ${id}`, t);
    if (i % 25 === 0) say({ task: id, status: t.status, comment: t.comment });
    await sleep(200);
  }
  fail(`task ${id} not done after ${seconds} s`, id);
}

(async () => {
  // Listing and the server's OVH fields.
  const names = await call('GET', '/dedicated/server');
  if (!names.includes(sn)) fail('GET /dedicated/server', names);
  const server = await call('GET', d);
  for (const k of ['name', 'serverId', 'bootId', 'state', 'datacenter', 'ip', 'powerState', 'monitoring', 'iam', 'os']) {
    if (!(k in server)) fail(`server field ${k}`, server);
  }
  if (server.ip !== cfg.ip || server.state !== 'ok' || server.powerState !== null) fail('server', server);
  // Boot lists, as Terraform's and OVH's CLI's reboot_rescue read them.
  const rescue = await call('GET', `${d}/boot`, { bootType: 'rescue' });
  if (rescue.length !== 1) fail('rescue boots', rescue);
  const boot = await call('GET', `${d}/boot/${rescue[0]}`);
  if (boot.bootType !== 'rescue') fail('rescue boot', boot);
  const all = await call('GET', `${d}/boot`);
  if (all.length !== 2) fail('boots', all);
  // Errors: OVH's status and message.
  await refused('another server', call('GET', '/dedicated/server/nosuch'), 404, cfg.expect.notFound);
  await refused('partitioning', call('POST', `${d}/reinstall`, {
    operatingSystem: 'byoi_64', customizations: { imageURL: cfg.imageURL },
    storage: [{ partitioning: { layout: [{ fileSystem: 'ext4', mountPoint: '/' }] } }],
  }), 400, cfg.expect.partitioning);
  await refused('wrong secret', client('not-the-secret').requestPromised('GET', d), 400, cfg.expect.invalidSignature);

  // Reinstall without imageType (OVH's schema does not require it): the
  // agent detects qcow2. Terraform's partitioning {} is accepted.
  const task = await call('POST', `${d}/reinstall`, {
    operatingSystem: 'byoi_64',
    customizations: { imageURL: cfg.imageURL, imageCheckSum: cfg.checksum, imageCheckSumType: 'sha256', hostname: cfg.hostname, sshKey: cfg.sshKey },
    storage: [{ diskGroupId: 1, partitioning: {} }],
  });
  if (task.function !== 'reinstallServer' || task.status !== 'init') fail('reinstall task', task);
  say({ reinstall: task.taskId });
  let steps = 0;
  for (let i = 0; ; i++) {
    const st = await call('GET', `${d}/install/status`);
    steps = st.progress.length;
    const t = await call('GET', `${d}/task/${task.taskId}`);
    if (t.status === 'done') break;
    if (!['init', 'todo', 'doing'].includes(t.status)) fail('reinstall', t);
    if (i > 600) fail('reinstall not done after 2 minutes', t);
    await sleep(200);
  }
  const byoi = await call('GET', `${d}/bringYourOwnImage`);
  if (byoi.status !== 'done') fail('bringYourOwnImage', byoi);
  const tasks = await call('GET', `${d}/task`, { function: 'reinstallServer', status: 'done' });
  if (!tasks.includes(task.taskId)) fail('task list', tasks);
  say({ deployed: task.taskId, steps });

  // Back to rescue and reboot: PUT bootId only sets the next boot; the
  // reboot task waits for hands (no power driver) until the server is
  // seen booting (the test starts the rescue agent again).
  await call('PUT', d, { bootId: rescue[0] });
  const reboot = await call('POST', `${d}/reboot`);
  if (reboot.function !== 'hardReboot' || reboot.status !== 'todo') fail('reboot task', reboot);
  say({ reboot: reboot.taskId, comment: reboot.comment });
  const done = await waitTask(reboot.taskId, ['todo'], 60);
  // Not POST .../authenticationSecret: this client signs no path that
  // contains "/auth" (it takes it for /auth/time), so byoi-api, as OVH,
  // answers 401 to it. OVH's CLI calls it (ovhcloud-cli's replay).
  await refused('authenticationSecret, unsigned by this client', call('POST', `${d}/authenticationSecret`), 401, cfg.expect.notAuthed);
  say({ rebooted: reboot.taskId, comment: done.comment, warnings });
})().catch((e) => {
  say({ error: String(e && e.stack || JSON.stringify(e)), warnings });
  process.exit(1);
});
